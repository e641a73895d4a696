//! Sender side: Reed–Solomon parity and packets written into caller-provided buffers.

use super::{FecError, FecParams, Layout};
use light_common::{DataHeader, HEADER_LEN, PacketKind};
use reed_solomon_simd::ReedSolomonEncoder;

/// Reusable Reed–Solomon encoder for one session's [`FecParams`].
pub struct FecEncoder {
    params: FecParams,
    rs: ReedSolomonEncoder,
    /// Zero-padded copy of a message's last, partial symbol.
    pad: Vec<u8>,
    /// All `max_parity_per_block` parity symbols of the block in `parity_of`.
    parity: Vec<u8>,
    /// Block whose parity `parity` holds, for the current packetizer (reset by every new
    /// packetizer: the sender re-encodes its buffer between them).
    parity_of: Option<u32>,
}

impl FecEncoder {
    /// An encoder for `params` (allocates the RS working space once).
    pub fn new(params: FecParams) -> Result<Self, FecError> {
        params.validate()?;
        let rs = ReedSolomonEncoder::new(
            usize::from(params.source_per_block),
            usize::from(params.max_parity_per_block),
            params.symbol_size,
        )?;
        Ok(Self {
            params,
            rs,
            pad: vec![0; params.symbol_size],
            parity: vec![0; params.symbol_size * usize::from(params.max_parity_per_block)],
            parity_of: None,
        })
    }

    /// The parameters this encoder uses.
    pub fn params(&self) -> FecParams {
        self.params
    }

    /// Computes (or reuses) all parity symbols of `block` of `message`.
    fn encode_block(
        &mut self,
        message: &[u8],
        layout: &Layout,
        block: u32,
    ) -> Result<(), FecError> {
        if self.parity_of == Some(block) {
            return Ok(());
        }
        self.parity_of = None;
        let k = layout.block_sources(block);
        if k == 0 {
            return Err(FecError::BlockOutOfRange {
                block,
                blocks: layout.blocks,
            });
        }
        let s = self.params.symbol_size;
        self.rs.reset(
            usize::from(k),
            usize::from(self.params.max_parity_per_block),
            s,
        )?;
        let first = layout.first_symbol(block);
        for sym in first..first + u64::from(k) {
            let range = layout.symbol_range(sym);
            if range.len() == s {
                self.rs.add_original_shard(&message[range])?;
            } else {
                self.pad.fill(0);
                self.pad[..range.len()].copy_from_slice(&message[range]);
                self.rs.add_original_shard(&self.pad)?;
            }
        }
        let out = self.rs.encode()?;
        for (dst, src) in self.parity.chunks_exact_mut(s).zip(out.recovery_iter()) {
            dst.copy_from_slice(src);
        }
        self.parity_of = Some(block);
        Ok(())
    }

    /// Parity symbols `first_parity_index..first_parity_index+count` of `block`, for repair.
    ///
    /// They combine with any other parity of the same block in one decode.
    pub fn repair_symbols(
        &mut self,
        message: &[u8],
        block: u32,
        first_parity_index: u16,
        count: u16,
    ) -> Result<Vec<Vec<u8>>, FecError> {
        let layout = self.params.layout(message.len() as u64)?;
        self.check_parity_range(first_parity_index, count)?;
        self.parity_of = None;
        self.encode_block(message, &layout, block)?;
        let s = self.params.symbol_size;
        let start = usize::from(first_parity_index) * s;
        Ok(self.parity[start..start + usize::from(count) * s]
            .chunks_exact(s)
            .map(<[u8]>::to_vec)
            .collect())
    }

    fn check_parity_range(&self, first: u16, count: u16) -> Result<(), FecError> {
        let end = u32::from(first) + u32::from(count);
        if end > u32::from(self.params.max_parity_per_block) {
            return Err(FecError::ParityOutOfRange {
                first,
                end,
                max: self.params.max_parity_per_block,
            });
        }
        Ok(())
    }
}

/// One run of shards to send: `block`, shard indices `start..end` (parity at `>= k`).
#[derive(Clone, Copy, Debug)]
struct Run {
    block: u32,
    next: u32,
    end: u32,
}

/// A cursor that writes one message's packets, one per call, into caller buffers.
///
/// No allocation per packet: the send path fills its preallocated batch with
/// [`Packetizer::next_into`] until it returns `None`.
pub struct Packetizer<'a> {
    enc: &'a mut FecEncoder,
    message: &'a [u8],
    layout: Layout,
    runs: Vec<Run>,
    run: usize,
    header: DataHeader,
}

impl<'a> Packetizer<'a> {
    /// Every source symbol and the first-pass parity of every block, block by block.
    pub fn first_pass(
        enc: &'a mut FecEncoder,
        session: u32,
        message_index: u32,
        message: &'a [u8],
        first_seq: u32,
    ) -> Result<Self, FecError> {
        let params = enc.params;
        let layout = params.layout(message.len() as u64)?;
        if layout.blocks == 0 {
            return Err(FecError::EmptyMessage(message_index));
        }
        let runs = (0..layout.blocks)
            .map(|block| Run {
                block,
                next: 0,
                end: u32::from(layout.block_sources(block)) + u32::from(params.parity_per_block),
            })
            .collect();
        Ok(Self::with_runs(
            enc,
            session,
            message_index,
            message,
            layout,
            runs,
            first_seq,
        ))
    }

    /// Every source symbol of one block again: the repair of last resort, when a block
    /// lost more shards than its parity can ever cover.
    pub fn block_sources(
        enc: &'a mut FecEncoder,
        session: u32,
        message_index: u32,
        message: &'a [u8],
        block: u32,
        first_seq: u32,
    ) -> Result<Self, FecError> {
        Self::one_block(enc, session, message_index, message, block, None, first_seq)
    }

    /// What [`Packetizer::first_pass`] sends of one block (its sources, then its first-pass
    /// parity), for a sender that encodes its message block by block.
    pub fn block_first_pass(
        enc: &'a mut FecEncoder,
        session: u32,
        message_index: u32,
        message: &'a [u8],
        block: u32,
        first_seq: u32,
    ) -> Result<Self, FecError> {
        let parity = u32::from(enc.params.parity_per_block);
        let mut pk = Self::one_block(enc, session, message_index, message, block, None, first_seq)?;
        pk.runs[0].end += parity;
        Ok(pk)
    }

    /// Repair parity `first_parity_index..+count` of one block.
    #[allow(clippy::too_many_arguments)] // Mirrors the header fields it fills.
    pub fn repair(
        enc: &'a mut FecEncoder,
        session: u32,
        message_index: u32,
        message: &'a [u8],
        block: u32,
        first_parity_index: u16,
        count: u16,
        first_seq: u32,
    ) -> Result<Self, FecError> {
        enc.check_parity_range(first_parity_index, count)?;
        let parity = Some((first_parity_index, count));
        Self::one_block(
            enc,
            session,
            message_index,
            message,
            block,
            parity,
            first_seq,
        )
    }

    /// Shards of one block: its sources (`parity: None`) or a parity range.
    fn one_block(
        enc: &'a mut FecEncoder,
        session: u32,
        message_index: u32,
        message: &'a [u8],
        block: u32,
        parity: Option<(u16, u16)>,
        first_seq: u32,
    ) -> Result<Self, FecError> {
        let layout = enc.params.layout(message.len() as u64)?;
        let k = u32::from(layout.block_sources(block));
        if k == 0 {
            return Err(FecError::BlockOutOfRange {
                block,
                blocks: layout.blocks,
            });
        }
        let (next, end) = match parity {
            None => (0, k),
            Some((first, count)) => {
                let start = k + u32::from(first);
                (start, start + u32::from(count))
            }
        };
        let runs = vec![Run { block, next, end }];
        Ok(Self::with_runs(
            enc,
            session,
            message_index,
            message,
            layout,
            runs,
            first_seq,
        ))
    }

    fn with_runs(
        enc: &'a mut FecEncoder,
        session: u32,
        message_index: u32,
        message: &'a [u8],
        layout: Layout,
        runs: Vec<Run>,
        first_seq: u32,
    ) -> Self {
        enc.parity_of = None;
        let mut header = DataHeader::new(PacketKind::Source, session);
        header.message = message_index;
        header.seq = first_seq;
        header.parity_shards = enc.params.parity_per_block;
        // Fits u16: validated symbol size.
        header.payload_len = enc.params.symbol_size as u16;
        Self {
            enc,
            message,
            layout,
            runs,
            run: 0,
            header,
        }
    }

    /// Packets still to write.
    pub fn remaining(&self) -> usize {
        self.runs[self.run.min(self.runs.len())..]
            .iter()
            .map(|r| (r.end - r.next) as usize)
            .sum()
    }

    /// The sequence number the next packet (or the caller's next packet) gets.
    pub fn next_seq(&self) -> u32 {
        self.header.seq
    }

    /// Fills a batch: writes packets into `bufs` in order, their lengths into `lens`, and
    /// returns how many were written (fewer than `bufs.len()` only at the end).
    pub fn fill<B: AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        lens: &mut [usize],
    ) -> Result<usize, FecError> {
        let mut n = 0;
        for (buf, len) in bufs.iter_mut().zip(lens.iter_mut()) {
            match self.next_into(buf.as_mut())? {
                Some(l) => *len = l,
                None => break,
            }
            n += 1;
        }
        Ok(n)
    }

    /// Writes the next packet into `buf` and returns its length, or `None` when done.
    pub fn next_into(&mut self, buf: &mut [u8]) -> Result<Option<usize>, FecError> {
        let s = self.enc.params.symbol_size;
        let need = HEADER_LEN + s;
        if buf.len() < need {
            return Err(FecError::BufferTooSmall {
                need,
                got: buf.len(),
            });
        }
        while self.run < self.runs.len() && self.runs[self.run].next >= self.runs[self.run].end {
            self.run += 1;
        }
        let Some(run) = self.runs.get_mut(self.run) else {
            return Ok(None);
        };
        let (block, shard) = (run.block, run.next);
        run.next += 1;
        let k = self.layout.block_sources(block);
        let payload = &mut buf[HEADER_LEN..need];
        let kind = if shard < u32::from(k) {
            let range = self
                .layout
                .symbol_range(self.layout.first_symbol(block) + u64::from(shard));
            let n = range.len();
            payload[..n].copy_from_slice(&self.message[range]);
            payload[n..].fill(0);
            PacketKind::Source
        } else {
            self.enc.encode_block(self.message, &self.layout, block)?;
            let p = (shard - u32::from(k)) as usize * s;
            payload.copy_from_slice(&self.enc.parity[p..p + s]);
            PacketKind::Parity
        };
        self.header.kind = kind as u8;
        self.header.block = block;
        // Fits u16: shard < k + max_parity <= u16::MAX (validated).
        self.header.shard = shard as u16;
        self.header.source_shards = k;
        self.header
            .write_to(buf)
            .map_err(|_| FecError::BufferTooSmall {
                need,
                got: buf.len(),
            })?;
        self.header.seq = self.header.seq.wrapping_add(1);
        Ok(Some(need))
    }
}
