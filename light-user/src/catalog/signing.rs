//! The server's ed25519 identity: it signs every manifest it announces, and receivers that
//! pin its public key refuse manifests it did not sign.

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::{CATALOG_DIR, CatalogError, Manifest, io_err};

/// File under the catalog directory holding the 32-byte secret key (mode 0600).
pub const KEY_FILE: &str = "server.key";

/// The server's signing key.
pub struct ServerKey(SigningKey);

impl ServerKey {
    /// Loads the library's key, creating one on first use.
    pub fn load_or_create(library: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let dir = library.as_ref().join(CATALOG_DIR);
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let secret: [u8; 32] = bytes.try_into().map_err(|_| {
                    CatalogError::Corrupt(format!("{} is not a 32-byte key", path.display()))
                })?;
                Ok(Self(SigningKey::from_bytes(&secret)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
                let key = SigningKey::from_bytes(&rand::random());
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err("create", &path))?;
                f.write_all(key.as_bytes())
                    .map_err(io_err("write", &path))?;
                f.sync_all().map_err(io_err("sync", &path))?;
                Ok(Self(key))
            }
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// The public key receivers pin, in hex.
    pub fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }

    /// Signs a manifest; the signature in hex.
    pub fn sign(&self, manifest: &Manifest) -> String {
        hex(&self.0.sign(&signed_bytes(manifest)).to_bytes())
    }
}

/// What a signature covers: the manifest's identity and its root hash, which commits to
/// every chunk hash and the size (receivers check that with `Manifest::verify_root`).
fn signed_bytes(m: &Manifest) -> Vec<u8> {
    format!(
        "light-manifest-v1\0{}\0{}\0{}\0{}\0{}\0{}",
        m.content_id(),
        m.version(),
        m.path(),
        m.size(),
        m.chunk_size(),
        m.root().to_hex()
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Whether `signature_hex` is `public_hex`'s signature of `manifest`, and the manifest's
/// root matches its chunk hashes.
pub fn verify_manifest(public_hex: &str, manifest: &Manifest, signature_hex: &str) -> bool {
    let (Some(pk), Some(sig)) = (unhex::<32>(public_hex), unhex::<64>(signature_hex)) else {
        return false;
    };
    let Ok(pk) = VerifyingKey::from_bytes(&pk) else {
        return false;
    };
    manifest.verify_root()
        && pk
            .verify(&signed_bytes(manifest), &Signature::from_bytes(&sig))
            .is_ok()
}

/// Whether `s` is a well-formed public key in hex (for argument checking).
pub fn is_public_key(s: &str) -> bool {
    unhex::<32>(s).is_some_and(|b| VerifyingKey::from_bytes(&b).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_key_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let key = ServerKey::load_or_create(dir.path()).unwrap();
        let again = ServerKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.public_hex(), again.public_hex(), "the key persists");
        let m = Manifest::from_data(1, 1, "a/b.bin".into(), 4, b"hello world").unwrap();
        let sig = key.sign(&m);
        assert!(verify_manifest(&key.public_hex(), &m, &sig));
        let other = ServerKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!verify_manifest(&other.public_hex(), &m, &sig));
        let m2 = Manifest::from_data(1, 2, "a/b.bin".into(), 4, b"hello world").unwrap();
        assert!(!verify_manifest(&key.public_hex(), &m2, &sig));
        assert!(!verify_manifest("zz", &m, &sig));
        assert!(is_public_key(&key.public_hex()) && !is_public_key("00"));
    }
}
