//! Per-packet authentication: POLYVAL over the whole packet (MAC field left out, length
//! appended), then AES-128 over that hash; the header's MAC field holds all 16 bytes. The key is handed out per session over the control channel, so an
//! injector on the LAN cannot make a receiver accept its packets.
//!
//! Hash-then-encrypt needs no nonce (a universal hash fed to a PRF is a PRF), so replays
//! and resent shards verify as they should and no sequence number reuse can leak the key.
//! It replaced a keyed BLAKE3: on 1456-byte packets BLAKE3 runs one 64-byte compression
//! after another, while POLYVAL and AES use the carry-less multiply and AES instructions;
//! the MAC was half of a receiver's CPU time (`benches/`, `mac` group, has both).

use aes::{
    Aes128,
    cipher::{BlockCipherEncrypt, KeyInit},
};
use light_common::{HEADER_LEN, MAC_LEN, MAC_OFFSET};

mod hash;
use hash::HashKey;

/// Context string separating the MAC's subkeys from any other use of the session key.
const SUBKEYS: &str = "light 2026-11 packet MAC: POLYVAL hash key, AES-128 key";

/// A session's packet key.
#[derive(Clone)]
pub struct PacketKey {
    /// The 32 bytes the announcement carries.
    raw: [u8; 32],
    /// POLYVAL keyed with the hash subkey.
    hash: HashKey,
    /// Encrypts the hash: makes the universal hash a MAC.
    prf: Aes128,
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("PacketKey(..)")
    }
}

impl PacketKey {
    fn new(raw: [u8; 32]) -> Self {
        let sub = blake3::derive_key(SUBKEYS, &raw);
        let (h, k) = sub.split_at(16);
        let (mut hk, mut kk) = ([0u8; 16], [0u8; 16]);
        hk.copy_from_slice(h);
        kk.copy_from_slice(k);
        Self {
            raw,
            hash: HashKey::new(hk),
            prf: Aes128::new(&kk.into()),
        }
    }

    /// A fresh random key.
    pub fn random() -> Self {
        Self::new(rand::random())
    }

    /// Parses the hex form sent in the announcement.
    pub fn from_hex(s: &str) -> Option<Self> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| Self::new(*h.as_bytes()))
    }

    /// The hex form for the announcement.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.raw).to_hex().to_string()
    }

    fn mac(&self, packet: &[u8]) -> [u8; MAC_LEN] {
        // The header up to the MAC is two whole blocks; the MAC field is the header's end.
        // Zero padding would hide trailing zero bytes: the length block tells them apart.
        let mut len = [0u8; 16];
        len[..8].copy_from_slice(&(packet.len() as u64).to_le_bytes());
        let mut tag = self
            .hash
            .hash(&[&packet[..MAC_OFFSET], &packet[HEADER_LEN..]], len)
            .into();
        self.prf.encrypt_block(&mut tag);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&tag[..MAC_LEN]);
        out
    }

    /// Writes the MAC into a complete packet (header + payload). Shorter buffers are left
    /// alone: they are not packets.
    pub fn sign(&self, packet: &mut [u8]) {
        if packet.len() >= HEADER_LEN {
            let mac = self.mac(packet);
            packet[MAC_OFFSET..HEADER_LEN].copy_from_slice(&mac);
        }
    }

    /// Whether a packet carries this key's MAC (constant-time comparison).
    pub fn verify(&self, packet: &[u8]) -> bool {
        if packet.len() < HEADER_LEN {
            return false;
        }
        let mac = self.mac(packet);
        mac.iter()
            .zip(&packet[MAC_OFFSET..HEADER_LEN])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use light_common::{DataHeader, PacketKind};
    use proptest::prelude::*;

    fn packet(payload: &[u8]) -> Vec<u8> {
        let mut h = DataHeader::new(PacketKind::Source, 3);
        h.source_shards = 1;
        h.parity_shards = 1;
        h.payload_len = payload.len() as u16;
        let mut p = vec![0u8; HEADER_LEN];
        h.write_to(&mut p).unwrap();
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn signed_packets_verify_and_still_parse() {
        let k = PacketKey::random();
        let mut p = packet(b"payload");
        k.sign(&mut p);
        assert!(k.verify(&p));
        assert!(DataHeader::parse(&p).is_ok());
        assert!(
            !PacketKey::random().verify(&p),
            "another key must not verify"
        );
        assert!(PacketKey::from_hex(&k.to_hex()).unwrap().verify(&p));
    }

    #[test]
    fn trailing_zeros_change_the_mac() {
        let k = PacketKey::random();
        let mut p = packet(b"abc");
        k.sign(&mut p);
        let mut longer = p.clone();
        longer.push(0);
        assert!(!k.verify(&longer), "a zero byte appended must not verify");
        longer.truncate(p.len() - 1);
        assert!(!k.verify(&longer), "a byte cut off must not verify");
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_caught(payload in proptest::collection::vec(any::<u8>(), 0..200), bit: usize) {
            let k = PacketKey::random();
            let mut p = packet(&payload);
            k.sign(&mut p);
            let i = bit % (p.len() * 8);
            p[i / 8] ^= 1 << (i % 8);
            prop_assert!(!k.verify(&p));
        }

        #[test]
        fn verify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = PacketKey::random().verify(&bytes);
        }
    }
}
