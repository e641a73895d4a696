//! Per-packet authentication: a keyed BLAKE3 MAC, truncated to the header's MAC field, over
//! the whole packet with that field zeroed. The key is handed out per session over the
//! control channel, so an injector on the LAN cannot make a receiver accept its packets.

use light_common::{HEADER_LEN, MAC_LEN, MAC_OFFSET};

/// A session's packet key.
#[derive(Clone)]
pub struct PacketKey([u8; 32]);

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("PacketKey(..)")
    }
}

impl PacketKey {
    /// A fresh random key.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Parses the hex form sent in the announcement.
    pub fn from_hex(s: &str) -> Option<Self> {
        blake3::Hash::from_hex(s).ok().map(|h| Self(*h.as_bytes()))
    }

    /// The hex form for the announcement.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }

    fn mac(&self, packet: &[u8]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&packet[..MAC_OFFSET]);
        h.update(&[0u8; MAC_LEN]);
        h.update(&packet[HEADER_LEN..]);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&h.finalize().as_bytes()[..MAC_LEN]);
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
