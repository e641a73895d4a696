//! Reed–Solomon erasure coding of coded messages: parameters, packetizer (sender side) and
//! assembler (receiver side). Sans-IO: bytes in, packets/events out.
//!
//! A message of `L` bytes is cut into `ceil(L / S)` symbols of `S` bytes (the last one
//! zero-padded) and grouped into blocks of up to `k` source symbols; each block gets `r`
//! first-pass parity symbols and up to `max_parity_per_block` in total with repair.
//!
//! reed-solomon-simd's recovery shard `i` depends on the recovery count the encoder was
//! created with (checked in `tests::recovery_shards_depend_on_recovery_count`), so every
//! block is always encoded (and decoded) with the fixed count `max_parity_per_block`: the
//! first pass sends the prefix `0..r` and repair sends later indices, which therefore
//! combine with first-pass parity in one decode.

mod assembler;
mod packetizer;

pub use assembler::{Assembler, BlockDecoder, Event, Missing, Restore, Stats};
pub use packetizer::{FecEncoder, Packetizer};

use serde::{Deserialize, Serialize};

/// Errors of the FEC layer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FecError {
    /// The parameters cannot be used (reason given).
    #[error("invalid FEC parameters: {0}")]
    InvalidParams(&'static str),
    /// A message of zero bytes has no symbols and is never sent.
    #[error("message {0} is empty; zero-length messages are not sent")]
    EmptyMessage(u32),
    /// The message is too long for the 32-bit block index.
    #[error("message of {0} bytes needs more than 2^32 blocks")]
    MessageTooLong(u64),
    /// A block index beyond the message's last block.
    #[error("block {block} out of range (message has {blocks} blocks)")]
    BlockOutOfRange {
        /// Requested block.
        block: u32,
        /// Blocks in the message.
        blocks: u32,
    },
    /// Parity indices beyond `max_parity_per_block`.
    #[error("parity {first}..{end} exceeds the maximum of {max} parity symbols per block")]
    ParityOutOfRange {
        /// First requested parity index.
        first: u16,
        /// One past the last requested parity index.
        end: u32,
        /// `max_parity_per_block`.
        max: u16,
    },
    /// A caller-provided packet buffer is shorter than header plus symbol.
    #[error("packet buffer of {got} bytes, need {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// reed-solomon-simd refused an operation.
    #[error("reed-solomon: {0}")]
    ReedSolomon(#[from] reed_solomon_simd::Error),
}

/// Erasure-coding parameters shared by sender and receivers of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FecParams {
    /// Payload bytes per packet (one symbol); even, as reed-solomon-simd requires.
    pub symbol_size: usize,
    /// Source symbols per full block (`k`).
    pub source_per_block: u16,
    /// Parity symbols sent per block in the first pass (`r`).
    pub parity_per_block: u16,
    /// Parity symbols a block can ever get (first pass plus repair); fixes the RS code.
    pub max_parity_per_block: u16,
}

/// Source symbols per block chosen by [`FecParams::for_loss`].
pub const DEFAULT_SOURCE_PER_BLOCK: u16 = 448;
/// Fewest parity shards a block can be repaired with ([`FecParams::for_loss`]).
const MIN_REPAIR_CEILING: u16 = 64;

impl FecParams {
    /// Validated parameters.
    pub fn new(
        symbol_size: usize,
        source_per_block: u16,
        parity_per_block: u16,
        max_parity_per_block: u16,
    ) -> Result<Self, FecError> {
        let p = Self {
            symbol_size,
            source_per_block,
            parity_per_block,
            max_parity_per_block,
        };
        p.validate()?;
        Ok(p)
    }

    /// Parameters for an expected packet loss rate `loss` (0..1) and symbol size.
    ///
    /// Rule: `k = 448` source symbols; `r` is the smallest parity count such that
    /// `r >= n·p + 3·sqrt(n·p·(1-p)) + 1` with `n = k + r` (the block survives a loss count
    /// three standard deviations above the mean, plus one), at least 1. The repair ceiling
    /// is `4·r`, at least 64 and at most `k` (never below `r`): repair parity covers a block
    /// that lost a quarter of its shards, and a block that lost more (a burst) gets its
    /// sources again. Every block is encoded with the ceiling as its recovery count, so it
    /// is what the first pass pays for: packetizing blocks of 8800-byte symbols runs at
    /// 1.9 GiB/s with ceiling 256 and 4.0 GiB/s with 64 (`reed_solomon/encode_ceiling`).
    ///
    /// Why 448: reed-solomon-simd decodes with a fixed cost per block (the error locator
    /// over GF(2^16), ~0.25 ms) plus transforms over `pow2(pow2(ceiling) + k)` shards. With
    /// the usual ceiling of 64, k = 448 fills those 512 shards; k = 256 pays for the same
    /// 512 while carrying 43% fewer bytes (`reed_solomon/decode_block`). Larger blocks
    /// amortize the locator but need the next transform size and more cache: k = 896
    /// decoded at 0.90× (1400-byte symbols) and 0.94× (8800) the bytes per second of 448.
    pub fn for_loss(loss: f64, symbol_size: usize) -> Result<Self, FecError> {
        if !(0.0..1.0).contains(&loss) {
            return Err(FecError::InvalidParams("loss rate must be in [0, 1)"));
        }
        let k = DEFAULT_SOURCE_PER_BLOCK;
        let mut r: u16 = 1;
        loop {
            let n = f64::from(k + r);
            let need = n * loss + 3.0 * (n * loss * (1.0 - loss)).sqrt() + 1.0;
            if f64::from(r) >= need {
                break;
            }
            r = r
                .checked_add(1)
                .filter(|&r| u32::from(k) + u32::from(r) < 4096)
                .ok_or(FecError::InvalidParams(
                    "loss rate too high for Reed–Solomon",
                ))?;
        }
        let ceiling = r.saturating_mul(4).max(MIN_REPAIR_CEILING).min(k).max(r);
        Self::new(symbol_size, k, r, ceiling)
    }

    fn validate(&self) -> Result<(), FecError> {
        if self.symbol_size == 0 || !self.symbol_size.is_multiple_of(2) {
            return Err(FecError::InvalidParams(
                "symbol size must be even and non-zero",
            ));
        }
        if self.symbol_size > usize::from(u16::MAX) {
            return Err(FecError::InvalidParams(
                "symbol size must fit the u16 payload length",
            ));
        }
        if self.source_per_block == 0 {
            return Err(FecError::InvalidParams(
                "need at least one source symbol per block",
            ));
        }
        if self.max_parity_per_block == 0 || self.parity_per_block > self.max_parity_per_block {
            return Err(FecError::InvalidParams(
                "need 0 < max_parity_per_block and parity_per_block <= max_parity_per_block",
            ));
        }
        if u32::from(self.source_per_block) + u32::from(self.max_parity_per_block)
            > u32::from(u16::MAX)
        {
            return Err(FecError::InvalidParams("shard index must fit in u16"));
        }
        let max = usize::from(self.max_parity_per_block);
        // Shorter last blocks use fewer originals with the same recovery count.
        if !(1..=usize::from(self.source_per_block))
            .all(|k| reed_solomon_simd::ReedSolomonEncoder::supports(k, max))
        {
            return Err(FecError::InvalidParams(
                "shard counts unsupported by reed-solomon-simd",
            ));
        }
        Ok(())
    }

    /// Symbols, blocks and per-block source counts of a message of `len` bytes.
    pub fn layout(&self, len: u64) -> Result<Layout, FecError> {
        let s = self.symbol_size as u64;
        let symbols = len.div_ceil(s);
        let blocks = symbols.div_ceil(u64::from(self.source_per_block));
        let blocks = u32::try_from(blocks).map_err(|_| FecError::MessageTooLong(len))?;
        Ok(Layout {
            len,
            symbols,
            blocks,
            k: self.source_per_block,
            symbol_size: self.symbol_size,
        })
    }

    /// Packets (source plus first-pass parity) needed to send a message of `len` bytes.
    pub fn packets_for(&self, len: u64) -> Result<u64, FecError> {
        let l = self.layout(len)?;
        Ok(l.symbols + u64::from(l.blocks) * u64::from(self.parity_per_block))
    }
}

/// How a message is cut into symbols and blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Message bytes.
    pub len: u64,
    /// Number of symbols, `ceil(len / symbol_size)`.
    pub symbols: u64,
    /// Number of blocks.
    pub blocks: u32,
    k: u16,
    symbol_size: usize,
}

impl Layout {
    /// Source symbols in `block` (the last block may be shorter); 0 if out of range.
    pub fn block_sources(&self, block: u32) -> u16 {
        let start = u64::from(block) * u64::from(self.k);
        // Fits u16: bounded by k.
        self.symbols.saturating_sub(start).min(u64::from(self.k)) as u16
    }

    /// Index of the first symbol of `block`.
    pub fn first_symbol(&self, block: u32) -> u64 {
        u64::from(block) * u64::from(self.k)
    }

    /// Byte range of `block` inside the message, clipped to the message length (empty for
    /// a block past the end).
    pub fn block_range(&self, block: u32) -> std::ops::Range<u64> {
        let s = self.symbol_size as u64;
        let first = self.first_symbol(block);
        let end = first + u64::from(self.block_sources(block));
        (first * s).min(self.len)..(end * s).min(self.len)
    }

    /// Byte range of symbol `sym` inside the message, clipped to the message length.
    fn symbol_range(&self, sym: u64) -> std::ops::Range<usize> {
        let s = self.symbol_size as u64;
        let start = (sym * s).min(self.len);
        let end = (sym * s + s).min(self.len);
        start as usize..end as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use light_common::{DataHeader, HEADER_LEN, PacketKind};
    use proptest::prelude::*;
    use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

    fn recovery(k: usize, r: usize, data: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut e = ReedSolomonEncoder::new(k, r, data[0].len()).unwrap();
        for d in data {
            e.add_original_shard(d).unwrap();
        }
        e.encode()
            .unwrap()
            .recovery_iter()
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// The finding the module's design rests on: for a small recovery count the shards
    /// differ from those of a larger count, so the count must be fixed per session.
    #[test]
    fn recovery_shards_depend_on_recovery_count() {
        let k = 64;
        let data: Vec<Vec<u8>> = (0..k)
            .map(|i| (0..64).map(|j| (i * 31 + j * 7 + 1) as u8).collect())
            .collect();
        let big = recovery(k, 64, &data);
        let small = recovery(k, 4, &data);
        assert_ne!(small[..], big[..4]);
        // Decoding with another recovery count than the encoder's fails to restore.
        let mut d = ReedSolomonDecoder::new(k, 4, 64).unwrap();
        for (i, shard) in data.iter().enumerate().skip(2) {
            d.add_original_shard(i, shard).unwrap();
        }
        d.add_recovery_shard(0, &big[0]).unwrap();
        d.add_recovery_shard(1, &big[1]).unwrap();
        let out = d.decode().unwrap();
        assert_ne!(out.restored_original(0), Some(&data[0][..]));
    }

    #[test]
    fn for_loss_rule() {
        let p0 = FecParams::for_loss(0.0, 1200).unwrap();
        assert_eq!((p0.source_per_block, p0.parity_per_block), (448, 1));
        let p1 = FecParams::for_loss(0.01, 1200).unwrap();
        let p5 = FecParams::for_loss(0.05, 1200).unwrap();
        let p10 = FecParams::for_loss(0.10, 1200).unwrap();
        assert!(p1.parity_per_block < p5.parity_per_block);
        assert!(p5.parity_per_block < p10.parity_per_block);
        // Enough to cover mean loss plus three sigma.
        let n = f64::from(448 + p10.parity_per_block);
        assert!(f64::from(p10.parity_per_block) >= n * 0.1 + 3.0 * (n * 0.09).sqrt());
        // The repair ceiling: 4·r within 64..=k, never below r.
        assert_eq!(p1.max_parity_per_block, 64);
        assert_eq!(p5.max_parity_per_block, 4 * p5.parity_per_block);
        assert_eq!(
            FecParams::for_loss(0.2, 1200).unwrap().max_parity_per_block,
            448
        );
        let p60 = FecParams::for_loss(0.6, 1200).unwrap();
        assert!(p60.parity_per_block > 448);
        assert_eq!(p60.max_parity_per_block, p60.parity_per_block);
        assert!(FecParams::for_loss(1.0, 1200).is_err());
        assert!(FecParams::for_loss(0.01, 1201).is_err());
        assert!(FecParams::new(1200, 64, 65, 64).is_err());
    }

    fn all_packets(
        params: FecParams,
        enc: &mut FecEncoder,
        message: u32,
        data: &[u8],
    ) -> Vec<Vec<u8>> {
        let mut p = Packetizer::first_pass(enc, 9, message, data, 0).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; HEADER_LEN + params.symbol_size];
        while let Some(n) = p.next_into(&mut buf).unwrap() {
            out.push(buf[..n].to_vec());
        }
        out
    }

    #[test]
    fn repair_parity_combines_with_first_pass() {
        let params = FecParams::new(64, 16, 4, 16).unwrap();
        let data: Vec<u8> = (0..16 * 64 + 10).map(|i| (i * 13 % 251) as u8).collect();
        let mut enc = FecEncoder::new(params).unwrap();
        let pkts = all_packets(params, &mut enc, 3, &data);
        let mut asm = Assembler::new(params, 9, [(3u32, data.len() as u64)]).unwrap();
        // Block 0: lose 7 sources; deliver the rest plus all 4 first-pass parity.
        for (i, p) in pkts.iter().enumerate().take(20) {
            if !(2..9).contains(&i) {
                assert!(asm.on_packet(p).is_none());
            }
        }
        assert_eq!(
            asm.missing(),
            vec![
                Missing {
                    message: 3,
                    block: 0,
                    needed: 3
                },
                Missing {
                    message: 3,
                    block: 1,
                    needed: 1
                },
            ]
        );
        // Repair parity 4..7 for block 0.
        let mut rp = Packetizer::repair(&mut enc, 9, 3, &data, 0, 4, 3, 100).unwrap();
        let mut buf = vec![0u8; HEADER_LEN + 64];
        while let Some(n) = rp.next_into(&mut buf).unwrap() {
            let (h, _) = DataHeader::parse(&buf[..n]).unwrap();
            assert_eq!(h.packet_kind(), Some(PacketKind::Parity));
            assert!(asm.on_packet(&buf[..n]).is_none());
        }
        assert_eq!(asm.stats().blocks_decoded, 1);
        // Second block: one source then done.
        let ev = pkts[20..].iter().find_map(|p| asm.on_packet(p));
        assert_eq!(
            ev,
            Some(Event::MessageComplete {
                message: 3,
                bytes: data.clone()
            })
        );
        // Repair symbols match what the packetizer sent.
        let r = enc.repair_symbols(&data, 0, 4, 3).unwrap();
        assert_eq!(r.len(), 3);
        assert!(enc.repair_symbols(&data, 0, 14, 3).is_err());
        assert!(enc.repair_symbols(&data, 2, 0, 1).is_err());
    }

    /// An End marker of session 9 carrying `seq`.
    fn end_marker(seq: u32) -> Vec<u8> {
        end_marker_on(0, seq)
    }

    fn end_marker_on(group: u32, seq: u32) -> Vec<u8> {
        let mut h = DataHeader::new(PacketKind::End, 9);
        h.seq = seq;
        h.message = group;
        let mut v = vec![0u8; HEADER_LEN];
        h.write_to(&mut v).unwrap();
        v
    }

    #[test]
    fn loss_is_measured_from_sequence_numbers() {
        let params = FecParams::new(64, 16, 4, 16).unwrap();
        let data: Vec<u8> = (0..40 * 64).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = FecEncoder::new(params).unwrap();
        let pkts = all_packets(params, &mut enc, 3, &data);
        assert_eq!(pkts.len(), 40 + 3 * 4);
        let mut asm = Assembler::new(params, 9, [(3u32, data.len() as u64)]).unwrap();
        assert_eq!(asm.stats().loss(), 0.0);
        // Every fourth packet lost, one received twice, one of another session, then the
        // pass's End marker (seq 52).
        for (i, p) in pkts.iter().enumerate().filter(|(i, _)| i % 4 != 1) {
            asm.on_packet(p);
            if i == 0 {
                asm.on_packet(p);
            }
        }
        let mut foreign = pkts[1].clone();
        foreign[8..12].copy_from_slice(&77u32.to_le_bytes());
        asm.on_packet(&foreign);
        asm.on_packet(&end_marker(52));
        let st = asm.stats();
        assert_eq!((st.span, st.duplicate), (53, 1));
        assert_eq!(st.foreign_session, 1);
        // Packets 1, 5, ..., 49 lost: 13 of 53.
        assert!((st.loss() - 13.0 / 53.0).abs() < 1e-9, "{}", st.loss());
    }

    #[test]
    fn each_group_counts_its_own_sequence_numbers() {
        let params = FecParams::new(64, 16, 4, 16).unwrap();
        let data: Vec<u8> = (0..40 * 64).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = FecEncoder::new(params).unwrap();
        // Message 3 on group 2: its 52 packets are seq 0..=51 of that group.
        let pkts = all_packets(params, &mut enc, 3, &data);
        let mut asm = Assembler::new(params, 9, [(3u32, data.len() as u64)]).unwrap();
        assert!(asm.route(3, 2));
        assert!(!asm.route(4, 1), "an unknown message has no route");
        for (_, p) in pkts.iter().enumerate().filter(|(i, _)| i % 4 != 1) {
            asm.on_packet(p);
        }
        assert!(!asm.route(3, 1), "routes are set before the first packet");
        // Group 2's End markers continue its count (seq 52..=56); 53-55 were lost. One for
        // a group this receiver does not hear counts for nothing.
        for seq in [52, 56] {
            asm.on_packet(&end_marker_on(2, seq));
        }
        asm.on_packet(&end_marker_on(7, 900));
        // The session's group carried only its End markers, seq 0..=4; 1 and 3 were lost.
        for seq in [0, 2, 4] {
            asm.on_packet(&end_marker(seq));
        }
        let st = asm.stats();
        assert_eq!((st.span, st.in_session), (57 + 5, 39 + 2 + 1 + 3));
        assert!((st.loss() - 17.0 / 62.0).abs() < 1e-9, "{}", st.loss());
    }

    #[test]
    fn the_last_sequence_number_spans_every_packet_before_it() {
        let params = FecParams::new(64, 16, 4, 16).unwrap();
        let mut asm = Assembler::new(params, 9, [(3u32, 64)]).unwrap();
        asm.on_packet(&end_marker(7));
        asm.on_packet(&end_marker(u32::MAX));
        asm.on_packet(&end_marker(3));
        assert_eq!(asm.stats().span, 1 << 32);
    }

    #[test]
    fn only_authenticated_packets_bound_the_loss_span() {
        let params = FecParams::new(64, 16, 4, 16).unwrap();
        let data: Vec<u8> = (0..40 * 64).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = FecEncoder::new(params).unwrap();
        let pkts = all_packets(params, &mut enc, 3, &data);
        let mut asm = Assembler::new(params, 9, [(3u32, data.len() as u64)]).unwrap();
        // Filtered arrivals alone, before any packet the receiver checked: no span, no loss.
        asm.note_filtered(40);
        assert_eq!(asm.stats().loss(), 0.0);
        // A shard of a message this receiver does not want (never MAC-checked) claiming a
        // late sequence number stretches nothing.
        let mut other = pkts[0].clone();
        other[12..16].copy_from_slice(&5000u32.to_le_bytes());
        other[16..20].copy_from_slice(&4u32.to_le_bytes());
        asm.on_packet(&other);
        assert_eq!(asm.stats().span, 0);
        // This message's 52 packets (seq 0..=51) arrive; of the 48 other messages' packets
        // sent after them (seq 52..=99) the filter dropped 40 (noted above), 8 never
        // arrived; the End marker (seq 100) bounds the span.
        for p in &pkts {
            asm.on_packet(p);
        }
        asm.on_packet(&end_marker(100));
        let st = asm.stats();
        assert_eq!((st.span, st.in_session), (101, 94));
        assert_eq!(st.unexpected_message, 41);
        // 94 arrivals (one forged) over 101 sequence numbers.
        assert!((st.loss() - 7.0 / 101.0).abs() < 1e-9, "{}", st.loss());
    }

    #[test]
    fn batches_match_single_packets() {
        let params = FecParams::new(16, 3, 2, 2).unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        let mut enc = FecEncoder::new(params).unwrap();
        let single = all_packets(params, &mut enc, 5, &data);
        let mut p = Packetizer::first_pass(&mut enc, 9, 5, &data, 0).unwrap();
        assert_eq!(p.remaining(), single.len());
        let mut bufs = vec![vec![0u8; HEADER_LEN + 16]; 4];
        let mut lens = [0usize; 4];
        let mut batched = Vec::new();
        loop {
            let n = p.fill(&mut bufs, &mut lens).unwrap();
            batched.extend((0..n).map(|i| bufs[i][..lens[i]].to_vec()));
            if n < bufs.len() {
                break;
            }
        }
        assert_eq!(batched, single);
        assert_eq!(p.next_seq(), single.len() as u32);
        let mut small = [0u8; 10];
        let mut p = Packetizer::first_pass(&mut enc, 9, 5, &data, 0).unwrap();
        assert!(matches!(
            p.next_into(&mut small),
            Err(FecError::BufferTooSmall { .. })
        ));
    }

    /// A sender that packetizes one block at a time (encoding each just before) sends
    /// exactly what the whole-message first pass does; block ranges tile the message.
    #[test]
    fn block_by_block_matches_the_first_pass() {
        let params = FecParams::new(16, 3, 2, 2).unwrap();
        let mut enc = FecEncoder::new(params).unwrap();
        for len in [1usize, 16, 47, 48, 49, 100] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let whole = all_packets(params, &mut enc, 5, &data);
            let layout = params.layout(len as u64).unwrap();
            let (mut blocks, mut seq, mut at) = (Vec::new(), 0, 0);
            for block in 0..layout.blocks {
                let range = layout.block_range(block);
                assert_eq!(range.start, at, "len {len} block {block}");
                at = range.end;
                let mut p =
                    Packetizer::block_first_pass(&mut enc, 9, 5, &data, block, seq).unwrap();
                let mut buf = vec![0u8; HEADER_LEN + params.symbol_size];
                while let Some(n) = p.next_into(&mut buf).unwrap() {
                    blocks.push(buf[..n].to_vec());
                }
                seq = p.next_seq();
            }
            assert_eq!(at, len as u64);
            assert_eq!(blocks, whole, "len {len}");
            assert!(Packetizer::block_first_pass(&mut enc, 9, 5, &data, layout.blocks, 0).is_err());
        }
    }

    #[test]
    fn assembler_counts_bad_packets() {
        let params = FecParams::new(32, 4, 2, 4).unwrap();
        let data = vec![7u8; 100];
        let mut enc = FecEncoder::new(params).unwrap();
        let pkts = all_packets(params, &mut enc, 1, &data);
        let mut asm = Assembler::new(params, 9, [(1u32, 100u64)]).unwrap();
        assert!(asm.on_packet(&[1, 2, 3]).is_none());
        let mut foreign = pkts[0].clone();
        foreign[8] ^= 1; // session field
        assert!(asm.on_packet(&foreign).is_none());
        let mut other_msg = pkts[0].clone();
        other_msg[16] = 2; // message field
        assert!(asm.on_packet(&other_msg).is_none());
        let mut bad_block = pkts[0].clone();
        bad_block[20] = 5; // block field
        assert!(asm.on_packet(&bad_block).is_none());
        for unused in [&[1, 2, 3][..], &foreign, &other_msg, &bad_block] {
            assert!(!asm.wants(unused));
        }
        assert!(asm.wants(&pkts[0]));
        assert!(asm.on_packet(&pkts[0]).is_none());
        assert!(!asm.wants(&pkts[0]), "a duplicate");
        assert!(asm.on_packet(&pkts[0]).is_none());
        let mut end = vec![0u8; HEADER_LEN];
        DataHeader::new(PacketKind::End, 9)
            .write_to(&mut end)
            .unwrap();
        assert!(asm.on_packet(&end).is_none());
        let ev = pkts[1..].iter().find_map(|p| asm.on_packet(p));
        assert_eq!(
            ev,
            Some(Event::MessageComplete {
                message: 1,
                bytes: data
            })
        );
        assert!(asm.on_packet(&pkts[1]).is_none());
        let s = asm.stats();
        assert_eq!(s.malformed, 1);
        assert_eq!(s.foreign_session, 1);
        assert_eq!(s.unexpected_message, 1);
        assert_eq!(s.bad_index, 1);
        assert_eq!(s.duplicate, 1);
        assert_eq!(s.other_kind, 1);
        assert_eq!(s.late, 1);
        assert_eq!(s.messages_complete, 1);
        assert!(asm.is_complete());
        assert!(Assembler::new(params, 9, [(1u32, 0u64)]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn survives_loss_up_to_parity(len in 1usize..3000, seed: u64, k in 1u16..12, r in 0u16..5,
                                      symbol in 1usize..40) {
            let params = FecParams::new(symbol * 2, k, r, r.max(1) + 2).unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1).to_le_bytes()[3]).collect();
            let mut enc = FecEncoder::new(params).unwrap();
            let mut pkts = all_packets(params, &mut enc, 0, &data);
            prop_assert_eq!(pkts.len() as u64, params.packets_for(len as u64).unwrap());
            // Drop up to r packets per block, duplicate some, shuffle.
            let mut rng = seed;
            let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); rng >> 33 };
            let mut per_block = std::collections::HashMap::<u32, u16>::new();
            pkts.retain(|p| {
                let (h, _) = DataHeader::parse(p).unwrap();
                let c = per_block.entry(h.block).or_default();
                if *c < r && next() % 2 == 0 { *c += 1; false } else { true }
            });
            let dups: Vec<Vec<u8>> = pkts.iter().filter(|_| next() % 4 == 0).cloned().collect();
            pkts.extend(dups);
            for i in (1..pkts.len()).rev() { pkts.swap(i, next() as usize % (i + 1)); }
            let mut asm = Assembler::new(params, 9, [(0u32, len as u64)]).unwrap();
            let mut events = Vec::new();
            for p in &pkts {
                // `wants` says beforehand exactly which packets get used (duplicates and
                // shards of finished blocks are not).
                let wanted = asm.wants(p);
                let used = asm.stats().source + asm.stats().parity;
                events.extend(asm.on_packet(p));
                prop_assert_eq!(wanted, asm.stats().source + asm.stats().parity > used);
            }
            prop_assert!(asm.missing().is_empty());
            // Streamed, the same packets give every block once, the last one flagged last, with
            // block buffers recycled.
            let mut streamed = Assembler::new(params, 9, [(0u32, len as u64)]).unwrap();
            prop_assert!(streamed.stream(0));
            // Blocks short of sources come as restores, decoded by the caller.
            let mut rebuilt = vec![None; len];
            let mut lasts = Vec::new();
            let mut rs = BlockDecoder::default();
            for p in &pkts {
                let (offset, bytes, last) = match streamed.on_packet(p) {
                    None => continue,
                    Some(Event::Piece { message: 0, offset, bytes, last }) => (offset, bytes, last),
                    Some(Event::Restore(r)) if r.message == 0 => {
                        let (offset, last) = (r.offset, r.last);
                        (offset, r.run(&mut rs).unwrap(), last)
                    }
                    Some(ev) => return Err(TestCaseError::fail(format!("not a piece: {ev:?}"))),
                };
                for (i, &b) in bytes.iter().enumerate() {
                    let slot = &mut rebuilt[offset as usize + i];
                    prop_assert!(slot.is_none(), "byte {} twice", offset as usize + i);
                    *slot = Some(b);
                }
                // Written buffers come back dirty: nothing of them may reach a later block.
                let mut spent = bytes;
                spent.fill(0xee);
                streamed.recycle(spent);
                lasts.push(last);
            }
            prop_assert_eq!(rebuilt.into_iter().collect::<Option<Vec<u8>>>(), Some(data.clone()));
            prop_assert_eq!(lasts.iter().filter(|&&l| l).count(), 1);
            prop_assert_eq!(lasts.last(), Some(&true));
            prop_assert!(streamed.is_complete() && !streamed.stream(0));
            // As many blocks needed parity streamed as whole.
            prop_assert_eq!(streamed.stats().blocks_decoded, asm.stats().blocks_decoded);
            prop_assert_eq!(events, vec![Event::MessageComplete { message: 0, bytes: data }]);
        }

        #[test]
        fn assembler_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let params = FecParams::new(32, 4, 2, 4).unwrap();
            let mut asm = Assembler::new(params, 0, [(0u32, 1000u64)]).unwrap();
            let mut pkt = bytes.clone();
            if pkt.len() >= HEADER_LEN {
                // Make many inputs pass the header checks so deeper validation runs.
                pkt[..4].copy_from_slice(b"LGHT");
                pkt[4] = light_common::VERSION;
                pkt[8..12].fill(0);
            }
            let _ = asm.on_packet(&bytes);
            let _ = asm.on_packet(&pkt);
        }
    }
}
