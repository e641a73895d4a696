//! Receiver side: collects shards per block, decodes blocks, emits completed messages.

use super::{FecError, FecParams, Layout};
use light_common::{DataHeader, PacketKind};
use reed_solomon_simd::ReedSolomonDecoder;
use std::collections::BTreeMap;

/// What the assembler reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Every block of `message` is decoded; `bytes` is the message (exact length).
    MessageComplete {
        /// Message index in the plan.
        message: u32,
        /// The message bytes.
        bytes: Vec<u8>,
    },
    /// A block of a streamed message (see [`Assembler::stream`]) is decoded.
    Piece {
        /// Message index in the plan.
        message: u32,
        /// Offset of `bytes` in the message.
        offset: u64,
        /// The block's bytes (the last block stops at the message's end).
        bytes: Vec<u8>,
        /// This was the message's last block: the message is complete.
        last: bool,
    },
    /// A block of a streamed message has enough shards, but some sources must still be
    /// restored from parity: [`Restore::run`] gives the bytes of its [`Event::Piece`].
    Restore(Restore),
}

/// A streamed block to restore from parity. A decode takes milliseconds (blocks of 8800-byte
/// symbols decode at about 1.1 GB/s), long enough for the socket to overflow behind a
/// receive loop that decodes inline, so the loop hands it to another thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    /// Message index in the plan.
    pub message: u32,
    /// Offset of the block in the message.
    pub offset: u64,
    /// This is the message's last block.
    pub last: bool,
    params: FecParams,
    /// The block's source symbols (`k · symbol_size` bytes), the missing ones unset.
    bytes: Vec<u8>,
    /// Bytes of the block within the message (less than `bytes` for the last block).
    len: usize,
    k: u16,
    have: Vec<u64>,
    parity_idx: Vec<u16>,
    parity: Vec<u8>,
}

/// A reusable Reed–Solomon decoder for [`Restore::run`] (allocated on first use).
#[derive(Default)]
pub struct BlockDecoder(Option<ReedSolomonDecoder>);

impl Restore {
    /// Bytes of the piece [`Restore::run`] yields.
    pub fn piece_len(&self) -> usize {
        self.len
    }

    /// Restores the missing sources; the block's bytes, as an [`Event::Piece`] has them.
    /// Fails only on inconsistent shards, which the assembler's checks rule out.
    pub fn run(mut self, decoder: &mut BlockDecoder) -> Result<Vec<u8>, FecError> {
        decode_block(
            &mut decoder.0,
            self.params,
            &mut self.bytes,
            self.k,
            &self.have,
            &self.parity_idx,
            &self.parity,
        )?;
        self.bytes.truncate(self.len);
        Ok(self.bytes)
    }
}

/// Shards still needed by one incomplete block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    /// Message index.
    pub message: u32,
    /// Block index within the message.
    pub block: u32,
    /// Further shards (source or parity) the block needs to decode.
    pub needed: u16,
}

/// Packet counters of an [`Assembler`], by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets given to [`Assembler::on_packet`].
    pub packets: u64,
    /// Source shards stored.
    pub source: u64,
    /// Parity shards stored.
    pub parity: u64,
    /// Rejected by header parsing (truncated, bad magic/version/kind/length/shard).
    pub malformed: u64,
    /// Valid packets of another kind (end marker, probe).
    pub other_kind: u64,
    /// Packets of another session.
    pub foreign_session: u64,
    /// Messages this receiver does not need.
    pub unexpected_message: u64,
    /// Block, shard, shard counts or payload length disagree with the expected layout.
    pub bad_index: u64,
    /// A shard already held.
    pub duplicate: u64,
    /// Shards of blocks or messages already complete.
    pub late: u64,
    /// Blocks completed with all sources received (no decode).
    pub blocks_direct: u64,
    /// Blocks completed by Reed–Solomon decoding.
    pub blocks_decoded: u64,
    /// Reed–Solomon decode failures (the block's parity is discarded and re-collected).
    pub decode_errors: u64,
    /// Messages completed.
    pub messages_complete: u64,
    /// Packets of this session, any kind (every one carries the next sequence number).
    pub in_session: u64,
    /// Packets the server sent to the groups this receiver heard, as far as it can tell:
    /// per group, one more than the highest sequence number of a packet the caller
    /// authenticated (a used shard or an End marker of this session), summed.
    /// Unauthenticated packets cannot stretch it.
    pub span: u64,
}

impl Stats {
    /// Share of the session's packets that never arrived: the packets received against
    /// [`Stats::span`] (0 before any authenticated packet).
    pub fn loss(&self) -> f64 {
        if self.span == 0 {
            return 0.0;
        }
        // Replays and duplicates are not new packets.
        let got = self
            .in_session
            .saturating_sub(self.duplicate)
            .min(self.span);
        1.0 - got as f64 / self.span as f64
    }
}

struct BlockState {
    k: u16,
    /// Bit per shard index (source and parity).
    have: Vec<u64>,
    count: u16,
    /// Parity shard indices (relative to k) and their bytes, in arrival order.
    parity_idx: Vec<u16>,
    parity: Vec<u8>,
    /// Source symbols of a streamed message's block (allocated on its first shard).
    data: Vec<u8>,
    done: bool,
}

struct MessageState {
    layout: Layout,
    /// Source symbols in order; `symbols * symbol_size` bytes, truncated when complete.
    /// Empty for a streamed message, whose blocks hold their own symbols.
    buf: Vec<u8>,
    stream: bool,
    /// The group it is sent on (its sequence numbers count that group's packets).
    group: u16,
    blocks: Vec<BlockState>,
    blocks_left: u32,
    done: bool,
}

/// Why a packet is not used (each has its counter in [`Stats`]).
#[derive(Clone, Copy, Debug)]
enum Reject {
    OtherKind,
    ForeignSession,
    UnexpectedMessage,
    Late,
    BadIndex,
    Duplicate,
}

/// Sans-IO receiver of Source/Parity packets for a set of expected messages.
pub struct Assembler {
    params: FecParams,
    session: u32,
    messages: BTreeMap<u32, MessageState>,
    decoder: Option<ReedSolomonDecoder>,
    stats: Stats,
    /// Highest authenticated sequence number per group (index 0: the session's group,
    /// which carries the End markers).
    seq_high: Vec<Option<u32>>,
    /// Block buffers handed back by the consumer ([`Assembler::recycle`]), reused so a
    /// streamed block costs no fresh pages (a new 360 KB buffer is page-faulted and zeroed
    /// by the kernel, then unmapped again when the writer drops it).
    spare: Vec<Vec<u8>>,
}

/// Most block buffers kept for reuse (the writer holds the others in flight).
const MAX_SPARE: usize = 64;

impl Assembler {
    /// Expects the messages `(index, length)`; other messages are ignored and counted.
    pub fn new(
        params: FecParams,
        session: u32,
        messages: impl IntoIterator<Item = (u32, u64)>,
    ) -> Result<Self, FecError> {
        params.validate()?;
        let mut map = BTreeMap::new();
        for (index, len) in messages {
            let layout = params.layout(len)?;
            if layout.blocks == 0 {
                return Err(FecError::EmptyMessage(index));
            }
            let total =
                usize::from(params.source_per_block) + usize::from(params.max_parity_per_block);
            let blocks = (0..layout.blocks)
                .map(|b| BlockState {
                    k: layout.block_sources(b),
                    have: vec![0; total.div_ceil(64)],
                    count: 0,
                    parity_idx: Vec::new(),
                    parity: Vec::new(),
                    data: Vec::new(),
                    done: false,
                })
                .collect();
            let bytes = usize::try_from(layout.symbols * params.symbol_size as u64)
                .map_err(|_| FecError::MessageTooLong(len))?;
            map.insert(
                index,
                MessageState {
                    layout,
                    buf: vec![0; bytes],
                    stream: false,
                    group: 0,
                    blocks,
                    blocks_left: layout.blocks,
                    done: false,
                },
            );
        }
        Ok(Self {
            params,
            session,
            messages: map,
            decoder: None,
            stats: Stats::default(),
            seq_high: Vec::new(),
            spare: Vec::new(),
        })
    }

    /// Says `message` is sent on group `group` ([`crate::coding::Routing`]), whose packets
    /// have sequence numbers of their own. Only before its first packet; false if unknown
    /// or late.
    pub fn route(&mut self, message: u32, group: u16) -> bool {
        match self.messages.get_mut(&message) {
            Some(m) if m.blocks.iter().all(|b| b.count == 0) => {
                m.group = group;
                true
            }
            _ => false,
        }
    }

    /// Hands out `message` block by block ([`Event::Piece`]) instead of whole: the
    /// receiver can write it while the rest arrives, and holds one block's bytes at a time
    /// instead of the whole message. Only before its first packet; false if unknown or late.
    pub fn stream(&mut self, message: u32) -> bool {
        match self.messages.get_mut(&message) {
            Some(m) if m.blocks.iter().all(|b| b.count == 0) => {
                m.stream = true;
                m.buf = Vec::new();
                true
            }
            _ => false,
        }
    }

    /// Takes back the bytes of a streamed [`Event::Piece`] once they are written, to hold
    /// a later block.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        // Smaller buffers (pieces split across file ranges) would be grown, costing what
        // reuse saves.
        let block = usize::from(self.params.source_per_block) * self.params.symbol_size;
        if self.spare.len() < MAX_SPARE && buf.capacity() >= block {
            self.spare.push(buf);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// True when every expected message is complete.
    pub fn is_complete(&self) -> bool {
        self.messages.values().all(|m| m.done)
    }

    /// Per incomplete block, how many more shards it needs (message, then block order).
    pub fn missing(&self) -> Vec<Missing> {
        let mut out = Vec::new();
        for (&message, m) in &self.messages {
            if m.done {
                continue;
            }
            for (block, b) in m.blocks.iter().enumerate() {
                if !b.done {
                    // Fits u32: block count is u32.
                    out.push(Missing {
                        message,
                        block: block as u32,
                        needed: b.k - b.count,
                    });
                }
            }
        }
        out
    }

    /// Counts `n` packets of this session that a filter below dropped, unseen, because
    /// they carried messages not expected here: they arrived (for the loss estimate) and
    /// were not used.
    pub fn note_filtered(&mut self, n: u64) {
        let st = &mut self.stats;
        st.in_session += n;
        st.unexpected_message += n;
    }

    /// True if [`Assembler::on_packet`] would use this packet (a wanted shard not held
    /// yet); every other packet only moves counters. Lets the receiver skip the MAC of
    /// packets it drops anyway: other receivers' messages, duplicates, late repair.
    pub fn wants(&self, packet: &[u8]) -> bool {
        DataHeader::parse(packet).is_ok_and(|(h, payload)| self.check(&h, payload.len()).is_ok())
    }

    /// Whether a packet of this header is a shard to use (`Ok(is_source)`) or why not.
    fn check(&self, h: &DataHeader, payload_len: usize) -> Result<bool, Reject> {
        let is_source = match h.packet_kind() {
            Some(PacketKind::Source) => true,
            Some(PacketKind::Parity) => false,
            _ => return Err(Reject::OtherKind),
        };
        if h.session != self.session {
            return Err(Reject::ForeignSession);
        }
        let m = self
            .messages
            .get(&h.message)
            .ok_or(Reject::UnexpectedMessage)?;
        if m.done {
            return Err(Reject::Late);
        }
        let b = m.blocks.get(h.block as usize).ok_or(Reject::BadIndex)?;
        if h.source_shards != b.k
            || h.parity_shards != self.params.parity_per_block
            || payload_len != self.params.symbol_size
            || u32::from(h.shard) >= u32::from(b.k) + u32::from(self.params.max_parity_per_block)
        {
            return Err(Reject::BadIndex);
        }
        if b.done {
            return Err(Reject::Late);
        }
        let (word, bit) = (usize::from(h.shard) / 64, 1u64 << (h.shard % 64));
        if b.have[word] & bit != 0 {
            return Err(Reject::Duplicate);
        }
        Ok(is_source)
    }

    /// Takes one packet; returns an event when it completes a message. The caller has
    /// authenticated the packets that count: every one [`Assembler::wants`] and every End
    /// marker (only their sequence numbers bound the loss span).
    pub fn on_packet(&mut self, packet: &[u8]) -> Option<Event> {
        self.stats.packets += 1;
        let Ok((h, payload)) = DataHeader::parse(packet) else {
            self.stats.malformed += 1;
            return None;
        };
        let checked = self.check(&h, payload.len());
        if h.session == self.session {
            let st = &mut self.stats;
            st.in_session += 1;
            // A checked shard is of a known message; an End marker names its group in the
            // message field, and counts only for a group this receiver hears.
            let group = match checked {
                Ok(_) => self.messages.get(&h.message).map(|m| m.group),
                Err(_) if h.packet_kind() == Some(PacketKind::End) => u16::try_from(h.message)
                    .ok()
                    .filter(|&g| g == 0 || self.messages.values().any(|m| m.group == g)),
                Err(_) => None,
            };
            if let Some(g) = group.map(usize::from) {
                if self.seq_high.len() <= g {
                    self.seq_high.resize(g + 1, None);
                }
                let high = &mut self.seq_high[g];
                let old = high.map_or(0, |s| u64::from(s) + 1);
                let new = high.map_or(h.seq, |s| s.max(h.seq));
                *high = Some(new);
                st.span += u64::from(new) + 1 - old;
            }
        }
        let is_source = match checked {
            Ok(is_source) => is_source,
            Err(r) => {
                let st = &mut self.stats;
                *match r {
                    Reject::OtherKind => &mut st.other_kind,
                    Reject::ForeignSession => &mut st.foreign_session,
                    Reject::UnexpectedMessage => &mut st.unexpected_message,
                    Reject::Late => &mut st.late,
                    Reject::BadIndex => &mut st.bad_index,
                    Reject::Duplicate => &mut st.duplicate,
                } += 1;
                return None;
            }
        };
        let params = self.params;
        // Both exist: `check` found them.
        let m = self.messages.get_mut(&h.message)?;
        let b = m.blocks.get_mut(h.block as usize)?;
        let shard = h.shard;
        let (word, bit) = (usize::from(shard) / 64, 1u64 << (shard % 64));
        b.have[word] |= bit;
        b.count += 1;
        let s = params.symbol_size;
        // The block's source symbols: its own buffer when streamed, else its part of the
        // message buffer (in range: the block's symbols lie within the message's).
        let base = m.layout.first_symbol(h.block) as usize * s;
        let span = usize::from(b.k) * s;
        if is_source {
            self.stats.source += 1;
            let at = usize::from(shard) * s;
            let blk = if m.stream {
                if b.data.is_empty() {
                    b.data = block_buffer(&mut self.spare, span);
                }
                &mut b.data[..]
            } else {
                &mut m.buf[base..base + span]
            };
            blk[at..at + s].copy_from_slice(payload);
        } else {
            self.stats.parity += 1;
            b.parity_idx.push(shard - b.k);
            b.parity.extend_from_slice(payload);
        }
        if b.count < b.k {
            return None;
        }
        // A streamed block hands its decode to the caller (see [`Restore`]).
        let restore = m.stream && !b.parity_idx.is_empty();
        let complete = if b.parity_idx.is_empty() {
            self.stats.blocks_direct += 1;
            true
        } else if restore {
            if b.data.is_empty() {
                b.data = block_buffer(&mut self.spare, span);
            }
            self.stats.blocks_decoded += 1;
            true
        } else {
            // A whole message's block: decoded in place in the message buffer.
            let decoder = &mut self.decoder;
            let blk = &mut m.buf[base..base + span];
            match decode_block(decoder, params, blk, b.k, &b.have, &b.parity_idx, &b.parity) {
                Ok(()) => {
                    self.stats.blocks_decoded += 1;
                    true
                }
                Err(_) => {
                    self.stats.decode_errors += 1;
                    for &p in &b.parity_idx {
                        let i = usize::from(b.k + p);
                        b.have[i / 64] &= !(1u64 << (i % 64));
                    }
                    b.count -= u16::try_from(b.parity_idx.len()).unwrap_or(b.count);
                    b.parity_idx.clear();
                    b.parity.clear();
                    false
                }
            }
        };
        if !complete {
            return None;
        }
        b.done = true;
        let parity = std::mem::take(&mut b.parity);
        let parity_idx = std::mem::take(&mut b.parity_idx);
        m.blocks_left -= 1;
        let last = m.blocks_left == 0;
        if last {
            m.done = true;
            self.stats.messages_complete += 1;
        }
        if m.stream {
            let mut bytes = std::mem::take(&mut b.data);
            // The last block's tail past the message's end is padding.
            let len = (m.layout.len - base as u64).min(span as u64) as usize;
            if restore {
                return Some(Event::Restore(Restore {
                    params,
                    message: h.message,
                    offset: base as u64,
                    last,
                    bytes,
                    len,
                    k: b.k,
                    have: std::mem::take(&mut b.have),
                    parity_idx,
                    parity,
                }));
            }
            bytes.truncate(len);
            return Some(Event::Piece {
                message: h.message,
                offset: base as u64,
                bytes,
                last,
            });
        }
        if !last {
            return None;
        }
        let mut bytes = std::mem::take(&mut m.buf);
        // Fits usize: the buffer of symbols * s >= len bytes was allocated.
        bytes.truncate(m.layout.len as usize);
        Some(Event::MessageComplete {
            message: h.message,
            bytes,
        })
    }
}

/// A buffer of `span` bytes for a block, from `spare` when one is there. A reused buffer
/// keeps its old bytes: a block is handed out only once every source symbol in it was
/// received or restored, which overwrites all `span` bytes.
fn block_buffer(spare: &mut Vec<Vec<u8>>, span: usize) -> Vec<u8> {
    let mut buf = spare.pop().unwrap_or_default();
    buf.resize(span, 0);
    buf
}

/// Restores the missing sources of a block (its `k` source symbols in `blk`, those held
/// flagged in `have`) from the parity shards `parity` with relative indices `parity_idx`.
fn decode_block(
    decoder: &mut Option<ReedSolomonDecoder>,
    params: FecParams,
    blk: &mut [u8],
    k: u16,
    have: &[u64],
    parity_idx: &[u16],
    parity: &[u8],
) -> Result<(), FecError> {
    let s = params.symbol_size;
    let (k, max) = (usize::from(k), usize::from(params.max_parity_per_block));
    let dec = match decoder {
        Some(d) => {
            d.reset(k, max, s)?;
            d
        }
        None => decoder.insert(ReedSolomonDecoder::new(k, max, s)?),
    };
    for i in 0..k {
        if have[i / 64] & (1u64 << (i % 64)) != 0 {
            dec.add_original_shard(i, &blk[i * s..(i + 1) * s])?;
        }
    }
    for (&p, shard) in parity_idx.iter().zip(parity.chunks_exact(s)) {
        dec.add_recovery_shard(usize::from(p), shard)?;
    }
    let out = dec.decode()?;
    for (i, shard) in out.restored_original_iter() {
        blk[i * s..(i + 1) * s].copy_from_slice(shard);
    }
    Ok(())
}
