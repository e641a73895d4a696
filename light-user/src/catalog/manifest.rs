//! Manifests: a file's size, its chunking, one BLAKE3 hash per chunk and a root hash.
//!
//! A manifest is what the server sends a receiver over the control channel before data
//! flows, so it is validated on deserialization: a manifest that parses has a safe relative
//! path, a sane chunk size and exactly the right number of chunk hashes, so that no method
//! here can panic or index out of bounds. Whether the root agrees with the chunk hashes is a
//! separate check, [`Manifest::verify_root`].

use std::fmt;
use std::ops::Range;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{CatalogError, Result};

/// Default chunk size, 1 MiB: a 32-byte hash per MiB costs 0.003 % of the file, a chunk is a
/// small unit to verify and to resume at, and BLAKE3 reaches its full SIMD speed on inputs
/// this large.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// Largest accepted chunk size, 256 MiB: a receiver allocates one chunk-sized buffer to
/// re-read a chunk, so a hostile manifest must not be able to ask for gigabytes.
pub const MAX_CHUNK_SIZE: u32 = 1 << 28;

/// A 32-byte BLAKE3 hash; hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The BLAKE3 hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut out = [0u8; 64];
        let s = self.encode_hex(&mut out);
        s.to_owned()
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(Self(out))
    }

    fn encode_hex<'a>(&self, out: &'a mut [u8; 64]) -> &'a str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (pair, b) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        // Only ASCII hex digits were written.
        std::str::from_utf8(out).unwrap_or_default()
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode_hex(&mut [0u8; 64]))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.encode_hex(&mut [0u8; 64]))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HexVisitor;
        impl Visitor<'_> for HexVisitor {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a BLAKE3 hash as 64 hex characters")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Digest, E> {
                Digest::from_hex(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(HexVisitor)
    }
}

/// The manifest of one version of one content: enough for a receiver to verify every chunk
/// and the whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ManifestWire")]
pub struct Manifest {
    content_id: u32,
    version: u32,
    path: String,
    size: u64,
    chunk_size: u32,
    chunks: Vec<Digest>,
    root: Digest,
}

/// The unvalidated shape of a manifest on the wire.
#[derive(Deserialize)]
struct ManifestWire {
    content_id: u32,
    version: u32,
    path: String,
    size: u64,
    chunk_size: u32,
    chunks: Vec<Digest>,
    root: Digest,
}

impl TryFrom<ManifestWire> for Manifest {
    type Error = CatalogError;
    fn try_from(w: ManifestWire) -> Result<Self> {
        Manifest::from_parts(
            w.content_id,
            w.version,
            w.path,
            w.size,
            w.chunk_size,
            w.chunks,
            w.root,
        )
    }
}

impl Manifest {
    /// Builds a manifest from chunk hashes, computing the root.
    pub fn new(
        content_id: u32,
        version: u32,
        path: String,
        size: u64,
        chunk_size: u32,
        chunks: Vec<Digest>,
    ) -> Result<Self> {
        let root = compute_root(&chunks, size);
        Self::from_parts(content_id, version, path, size, chunk_size, chunks, root)
    }

    /// Builds the manifest of in-memory `data`, hashing it in `chunk_size` chunks.
    pub fn from_data(
        content_id: u32,
        version: u32,
        path: String,
        chunk_size: u32,
        data: &[u8],
    ) -> Result<Self> {
        check_chunk_size(chunk_size)?;
        let chunks = data.chunks(chunk_size as usize).map(Digest::of).collect();
        Self::new(
            content_id,
            version,
            path,
            data.len() as u64,
            chunk_size,
            chunks,
        )
    }

    /// Checks everything except the root, which [`Manifest::verify_root`] checks.
    pub(crate) fn from_parts(
        content_id: u32,
        version: u32,
        path: String,
        size: u64,
        chunk_size: u32,
        chunks: Vec<Digest>,
        root: Digest,
    ) -> Result<Self> {
        check_chunk_size(chunk_size)?;
        validate_relative_path(&path)?;
        let expected = size.div_ceil(u64::from(chunk_size));
        if chunks.len() as u64 != expected {
            return Err(CatalogError::InvalidManifest(format!(
                "{path:?}: {} chunk hashes for {size} bytes in chunks of {chunk_size} \
                 (expected {expected})",
                chunks.len()
            )));
        }
        Ok(Self {
            content_id,
            version,
            path,
            size,
            chunk_size,
            chunks,
            root,
        })
    }

    /// The content id in the server's catalog.
    pub fn content_id(&self) -> u32 {
        self.content_id
    }

    /// The version of the content this manifest describes (1 for the first).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Relative path inside the library, forward slashes.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunk size in bytes; every chunk but the last has this length.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The per-chunk BLAKE3 hashes, in file order.
    pub fn chunks(&self) -> &[Digest] {
        &self.chunks
    }

    /// The root: BLAKE3 over the concatenated chunk hashes followed by the size as u64 LE.
    pub fn root(&self) -> Digest {
        self.root
    }

    /// Number of chunks (0 for an empty file).
    pub fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// Byte range of chunk `index` in the file, or `None` past the last chunk.
    pub fn chunk_range(&self, index: u64) -> Option<Range<u64>> {
        if index >= self.chunk_count() {
            return None;
        }
        let start = index * u64::from(self.chunk_size);
        Some(start..self.size.min(start + u64::from(self.chunk_size)))
    }

    /// Index of the chunk holding byte `offset`, or `None` past the end.
    pub fn chunk_of(&self, offset: u64) -> Option<u64> {
        (offset < self.size).then(|| offset / u64::from(self.chunk_size))
    }

    /// The BLAKE3 of chunk `index`, if it exists.
    pub fn chunk_digest(&self, index: u64) -> Option<Digest> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.chunks.get(i))
            .copied()
    }

    /// True if `data` is exactly chunk `index` (right length and hash).
    pub fn verify_chunk(&self, index: u64, data: &[u8]) -> bool {
        let Some(range) = self.chunk_range(index) else {
            return false;
        };
        data.len() as u64 == range.end - range.start
            && usize::try_from(index).is_ok_and(|i| Digest::of(data) == self.chunks[i])
    }

    /// True if the root matches the chunk hashes and the size.
    pub fn verify_root(&self) -> bool {
        compute_root(&self.chunks, self.size) == self.root
    }
}

/// BLAKE3 over the concatenated chunk hashes followed by `size` as u64 little-endian; the
/// size is included so that an empty file and truncations have distinct roots.
pub(crate) fn compute_root(chunks: &[Digest], size: u64) -> Digest {
    let mut h = blake3::Hasher::new();
    for c in chunks {
        h.update(&c.0);
    }
    h.update(&size.to_le_bytes());
    Digest(*h.finalize().as_bytes())
}

/// Rejects chunk sizes a receiver should not have to allocate, and zero.
pub(crate) fn check_chunk_size(chunk_size: u32) -> Result<()> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(CatalogError::InvalidChunkSize(chunk_size));
    }
    Ok(())
}

/// A content path must stay inside whatever directory it is joined to: relative, '/'
/// separated, no empty, `.` or `..` components, no NUL.
pub(crate) fn validate_relative_path(path: &str) -> Result<()> {
    let ok = !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(CatalogError::UnsafePath(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trip() {
        let d = Digest::of(b"light");
        let hex = d.to_hex();
        assert_eq!(hex, blake3::hash(b"light").to_hex().as_str());
        assert_eq!(Digest::from_hex(&hex), Some(d));
        assert_eq!(Digest::from_hex(&hex.to_uppercase()), Some(d));
        assert_eq!(Digest::from_hex(&hex[1..]), None);
        assert_eq!(Digest::from_hex(&format!("{}g", &hex[1..])), None);
    }

    #[test]
    fn paths_that_escape_are_rejected() {
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(validate_relative_path(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b/c.bin", "..a", "a..", ".hidden/x"] {
            assert!(validate_relative_path(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn chunk_ranges_cover_the_file() {
        let data = vec![7u8; 10];
        let m = Manifest::from_data(1, 1, "f".into(), 4, &data).unwrap();
        assert_eq!(m.chunk_count(), 3);
        assert_eq!(m.chunk_range(0), Some(0..4));
        assert_eq!(m.chunk_range(2), Some(8..10));
        assert_eq!(m.chunk_range(3), None);
        assert_eq!(m.chunk_of(9), Some(2));
        assert_eq!(m.chunk_of(10), None);
        assert!(m.verify_chunk(2, &data[8..]));
        assert!(!m.verify_chunk(2, &data[7..]));
        assert!(!m.verify_chunk(3, &[]));
        assert!(m.verify_root());
    }

    #[test]
    fn empty_file_has_no_chunks_and_a_size_bound_root() {
        let m = Manifest::from_data(1, 1, "e".into(), 4, &[]).unwrap();
        assert_eq!(m.chunk_count(), 0);
        assert!(m.verify_root());
        assert_eq!(m.root(), compute_root(&[], 0));
        assert_ne!(m.root(), compute_root(&[], 1));
    }
}
