//! The data-plane header that starts every Light UDP payload.

use bytemuck::{Pod, Zeroable};

/// Identifies a Light packet ("LGHT" read as little-endian u32).
pub const MAGIC: u32 = u32::from_le_bytes(*b"LGHT");
/// Wire format version carried in every header.
pub const VERSION: u8 = 1;
/// Size in bytes of [`DataHeader`] on the wire.
pub const HEADER_LEN: usize = core::mem::size_of::<DataHeader>();
/// Length of the truncated keyed MAC carried in each header.
pub const MAC_LEN: usize = 16;
/// Offset of the MAC field in the header (the last [`MAC_LEN`] bytes).
pub const MAC_OFFSET: usize = HEADER_LEN - MAC_LEN;

/// What a data-plane packet carries.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// A source symbol of a coded message.
    Source = 1,
    /// A Reed–Solomon parity symbol.
    Parity = 2,
    /// Marks the end of a multicast pass (the prototype's `LAST_PACKET`).
    End = 3,
    /// A test/benchmark packet with an arbitrary payload.
    Probe = 4,
    /// Sent on the session's group while a pass's messages go to other groups: the pass
    /// still runs, so a receiver whose groups are quiet does not take it for the end.
    Pulse = 5,
}

impl PacketKind {
    /// Decodes a kind byte.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Source),
            2 => Some(Self::Parity),
            3 => Some(Self::End),
            4 => Some(Self::Probe),
            5 => Some(Self::Pulse),
            _ => None,
        }
    }
}

/// Why a buffer is not a valid Light packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than a header.
    Truncated,
    /// Magic does not match: not a Light packet.
    BadMagic,
    /// A version this build does not speak.
    BadVersion(u8),
    /// Unknown packet kind.
    BadKind(u8),
    /// `payload_len` disagrees with the bytes that follow the header.
    BadLength,
    /// Shard index or shard counts are inconsistent.
    BadShard,
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => f.write_str("packet shorter than the Light header"),
            Self::BadMagic => f.write_str("not a Light packet (bad magic)"),
            Self::BadVersion(v) => write!(f, "unsupported Light wire version {v}"),
            Self::BadKind(k) => write!(f, "unknown packet kind {k}"),
            Self::BadLength => f.write_str("payload length disagrees with packet size"),
            Self::BadShard => f.write_str("inconsistent shard index or counts"),
        }
    }
}

impl core::error::Error for HeaderError {}

/// Fixed 48-byte header; all integers little-endian on the wire.
///
/// One coded message is split into FEC blocks; each block holds `source_shards` source
/// symbols followed by parity symbols, all `payload_len` bytes long.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DataHeader {
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u8,
    /// A [`PacketKind`] byte.
    pub kind: u8,
    /// Reserved, zero.
    pub flags: u16,
    /// Session id, so packets of another session are dropped.
    pub session: u32,
    /// Sequence number within the session (replay detection, loss accounting).
    pub seq: u32,
    /// Coded message index in the session's plan.
    pub message: u32,
    /// FEC block index within the message.
    pub block: u32,
    /// Shard index within the block: `< source_shards` is source, else parity.
    pub shard: u16,
    /// Number of source shards in this block.
    pub source_shards: u16,
    /// Number of parity shards planned for this block in the first pass.
    pub parity_shards: u16,
    /// Bytes of payload after the header.
    pub payload_len: u16,
    /// MAC over header (this field left out) and payload: AES-128 of their POLYVAL hash.
    pub mac: [u8; MAC_LEN],
}

impl DataHeader {
    /// A header of `kind` with every index zero and the MAC cleared.
    pub const fn new(kind: PacketKind, session: u32) -> Self {
        Self {
            magic: MAGIC.to_le(),
            version: VERSION,
            kind: kind as u8,
            flags: 0,
            session: session.to_le(),
            seq: 0,
            message: 0,
            block: 0,
            shard: 0,
            source_shards: 0,
            parity_shards: 0,
            payload_len: 0,
            mac: [0; MAC_LEN],
        }
    }

    /// Converts every integer field between host and little-endian order (an involution).
    #[must_use]
    const fn swap_le(mut self) -> Self {
        self.magic = u32::from_le(self.magic);
        self.flags = u16::from_le(self.flags);
        self.session = u32::from_le(self.session);
        self.seq = u32::from_le(self.seq);
        self.message = u32::from_le(self.message);
        self.block = u32::from_le(self.block);
        self.shard = u16::from_le(self.shard);
        self.source_shards = u16::from_le(self.source_shards);
        self.parity_shards = u16::from_le(self.parity_shards);
        self.payload_len = u16::from_le(self.payload_len);
        self
    }

    /// Writes the header (host-order fields) into the first [`HEADER_LEN`] bytes of `out`.
    ///
    /// Returns `Err(Truncated)` if `out` is too short.
    pub fn write_to(&self, out: &mut [u8]) -> Result<(), HeaderError> {
        let dst = out.get_mut(..HEADER_LEN).ok_or(HeaderError::Truncated)?;
        dst.copy_from_slice(bytemuck::bytes_of(&self.swap_le()));
        Ok(())
    }

    /// Parses and validates a packet, returning the host-order header and its payload.
    pub fn parse(packet: &[u8]) -> Result<(Self, &[u8]), HeaderError> {
        let raw = packet.get(..HEADER_LEN).ok_or(HeaderError::Truncated)?;
        let h: Self = bytemuck::pod_read_unaligned::<Self>(raw).swap_le();
        if h.magic != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if h.version != VERSION {
            return Err(HeaderError::BadVersion(h.version));
        }
        let kind = PacketKind::from_u8(h.kind).ok_or(HeaderError::BadKind(h.kind))?;
        let payload = &packet[HEADER_LEN..];
        if payload.len() != h.payload_len as usize {
            return Err(HeaderError::BadLength);
        }
        if matches!(kind, PacketKind::Source | PacketKind::Parity) {
            let total = h.source_shards as u32 + h.parity_shards as u32;
            let is_source = (h.shard as u32) < h.source_shards as u32;
            if h.source_shards == 0 || (kind == PacketKind::Source) != is_source || total == 0 {
                return Err(HeaderError::BadShard);
            }
        }
        Ok((h, payload))
    }

    /// The packet kind (valid after [`DataHeader::parse`]).
    pub fn packet_kind(&self) -> Option<PacketKind> {
        PacketKind::from_u8(self.kind)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn header_is_48_bytes() {
        assert_eq!(HEADER_LEN, 48);
        assert_eq!(core::mem::offset_of!(DataHeader, mac), MAC_OFFSET);
    }

    #[test]
    fn magic_is_ascii_on_the_wire() {
        let mut buf = [0u8; HEADER_LEN];
        DataHeader::new(PacketKind::End, 7)
            .write_to(&mut buf)
            .unwrap();
        assert_eq!(&buf[..4], b"LGHT");
        assert_eq!(buf[4], VERSION);
        assert_eq!(&buf[8..12], &7u32.to_le_bytes());
    }

    proptest! {
        #[test]
        fn roundtrip(session: u32, seq: u32, message: u32, block: u32, k in 1u16..1000,
                     extra in 0u16..1000, pick: u16, payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let shard = pick % (k + extra.max(1));
            let kind = if shard < k { PacketKind::Source } else { PacketKind::Parity };
            let mut h = DataHeader::new(kind, session);
            h.seq = seq; h.message = message; h.block = block; h.shard = shard;
            h.source_shards = k; h.parity_shards = extra.max(1); h.payload_len = payload.len() as u16;
            let mut pkt = std::vec![0u8; HEADER_LEN];
            h.write_to(&mut pkt).unwrap();
            pkt.extend_from_slice(&payload);
            let (back, body) = DataHeader::parse(&pkt).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(body, &payload[..]);
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = DataHeader::parse(&bytes);
        }

        #[test]
        fn truncation_is_rejected(cut in 0usize..HEADER_LEN + 10) {
            let mut h = DataHeader::new(PacketKind::Probe, 1);
            h.payload_len = 10;
            let mut pkt: Vec<u8> = std::vec![0u8; HEADER_LEN + 10];
            h.write_to(&mut pkt).unwrap();
            prop_assert!(DataHeader::parse(&pkt[..cut]).is_err());
        }
    }
}
