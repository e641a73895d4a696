//! The multicast passes of a session: the first pass sends every coded message of the plan
//! (XOR-encoded from the library, cut into Reed–Solomon-protected packets), repair passes
//! send more parity for the blocks receivers report short; End markers close each pass.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use light_common::{DataHeader, HEADER_LEN, PacketKind};

use super::{Batch, SendHandle, SendStats, TxConfig, TxError, spawn_sender};
use crate::{
    coding::{Plan, Routing, encode_range, uncoded_bytes},
    fec::{FecEncoder, FecError, FecParams, Packetizer},
    transport::mac::PacketKey,
};

/// End markers sent at the close of a pass; several, since any one can be lost.
pub const END_MARKERS: usize = 5;

/// How often a pass whose messages go to several groups sends a Pulse on the session's
/// group: well inside the 2 s of quiet after which a receiver asks for what it lacks.
pub const PULSE_EVERY: Duration = Duration::from_millis(250);

/// What a pass put on the wire.
#[derive(Clone, Copy, Debug)]
pub struct PassStats {
    /// Coded payload bytes of the messages it carried (the plan's bytes; 0 for repair).
    pub payload_bytes: u64,
    /// Packets sent, End markers included.
    pub packets: u64,
    /// UDP payload bytes sent: Light headers, FEC parity and padding included.
    pub udp_bytes: u64,
    /// Pulse packets among them (a header each).
    pub pulses: u64,
    /// The sender thread's counters.
    pub send: SendStats,
}

/// Live counter of UDP payload bytes handed to the sender, for progress reports.
pub type Progress = Arc<AtomicU64>;

/// Where a message's bytes are for a pass.
#[derive(Clone, Copy)]
enum Bytes<'a> {
    /// One uncoded segment of a library file.
    Library(&'a [u8]),
    /// The first `len` bytes of the scratch buffer (current only in the blocks
    /// [`Multicaster::encode_block`] wrote last).
    Scratch(usize),
}

impl<'a> Bytes<'a> {
    /// The bytes themselves, `scratch` being the multicaster's scratch buffer.
    fn of<'s>(self, scratch: &'s [u8]) -> &'s [u8]
    where
        'a: 's,
    {
        match self {
            Bytes::Library(b) => b,
            Bytes::Scratch(len) => &scratch[..len],
        }
    }
}

/// Sends a session's passes; remembers sequence numbers and the parity each block got.
pub struct Multicaster<'a> {
    plan: &'a Plan,
    files: &'a [&'a [u8]],
    session: u32,
    tx: TxConfig,
    enc: FecEncoder,
    message: Vec<u8>,
    /// Next sequence number per group (index 0: the session's group); each group counts
    /// its own packets, so a receiver hearing only some groups can still tell its loss.
    seqs: Vec<u32>,
    /// Group index per message (empty: all on the session's group).
    group_of: Vec<u16>,
    /// Destination per group; `None` for the session's group (the sender's own).
    dests: Vec<Option<SocketAddr>>,
    /// Parity indices already sent per (message, block), beyond the first pass.
    sent_parity: HashMap<(u32, u32), u16>,
    /// Signs every packet when the session authenticates packets.
    key: Option<PacketKey>,
}

/// Counts what a pass hands to the sender.
struct Tally<'h> {
    handle: &'h SendHandle,
    /// The batch being filled: packetizers of one block each share batches.
    open: Option<Batch>,
    key: Option<&'h PacketKey>,
    progress: &'h Progress,
    payload: u64,
    packets: u64,
    bytes: u64,
    /// The session and when it last pulsed, if the pass pulses (its messages go to more
    /// than the session's group).
    pulse: Option<(u32, std::time::Instant)>,
    pulses: u64,
}

impl Tally<'_> {
    fn drain(
        &mut self,
        pk: &mut Packetizer<'_>,
        message: u32,
        need: usize,
        dest: Option<SocketAddr>,
    ) -> Result<(), TxError> {
        while pk.remaining() > 0 {
            let mut batch = match self.open.take() {
                // A batch goes to one destination.
                Some(b) if b.dest() != dest => {
                    self.handle.submit(b)?;
                    self.handle.batch()?
                }
                Some(b) => b,
                None => self.handle.batch()?,
            };
            batch.set_dest(dest);
            while pk.remaining() > 0 {
                // The packetizer writes all `need` bytes (header, payload, zero padding).
                let Some(v) = batch.next_packet_sized(need) else {
                    break;
                };
                let n = pk
                    .next_into(v)
                    .map_err(|source| TxError::Packetize { message, source })?
                    .ok_or(TxError::Config("packetizer ended early".into()))?;
                v.truncate(n);
                if let Some(k) = self.key {
                    k.sign(v);
                }
                self.packets += 1;
                self.bytes += n as u64;
            }
            if batch.is_full() {
                self.progress.store(self.bytes, Ordering::Relaxed);
                self.handle.submit(batch)?;
                self.pulse()?;
            } else {
                self.open = Some(batch);
            }
        }
        Ok(())
    }

    /// Sends a Pulse on the session's group if [`PULSE_EVERY`] has passed since the last.
    fn pulse(&mut self) -> Result<(), TxError> {
        let Some((session, last)) = &mut self.pulse else {
            return Ok(());
        };
        if last.elapsed() < PULSE_EVERY {
            return Ok(());
        }
        *last = std::time::Instant::now();
        let pulse = DataHeader::new(PacketKind::Pulse, *session);
        self.pulses += 1;
        self.header_only(&pulse, None)
    }

    /// Sends a packet that is `header` alone (signed if packets are) to `dest` (`None`: the
    /// session's group) in a batch of its own.
    fn header_only(
        &mut self,
        header: &DataHeader,
        dest: Option<SocketAddr>,
    ) -> Result<(), TxError> {
        let mut batch = self.handle.batch()?;
        batch.set_dest(dest);
        let v = batch.next_packet().ok_or(TxError::BatchFull(0))?;
        v.resize(HEADER_LEN, 0);
        header
            .write_to(v)
            .map_err(|_| TxError::Config("header-only packet buffer".into()))?;
        if let Some(k) = self.key {
            k.sign(v);
        }
        self.packets += 1;
        self.bytes += HEADER_LEN as u64;
        self.handle.submit(batch)
    }

    /// Hands the batch being filled to the sender.
    fn flush(&mut self) -> Result<(), TxError> {
        if let Some(batch) = self.open.take() {
            self.handle.submit(batch)?;
        }
        self.progress.store(self.bytes, Ordering::Relaxed);
        Ok(())
    }
}

impl<'a> Multicaster<'a> {
    /// Prepares to multicast `plan` from `files` (library contents in plan file order).
    pub fn new(
        plan: &'a Plan,
        files: &'a [&'a [u8]],
        fec: FecParams,
        session: u32,
        mut tx: TxConfig,
        key: Option<PacketKey>,
    ) -> Result<Self, TxError> {
        tx.packet_capacity = HEADER_LEN + fec.symbol_size;
        let enc =
            FecEncoder::new(fec).map_err(|source| TxError::Packetize { message: 0, source })?;
        Ok(Self {
            plan,
            files,
            session,
            tx,
            enc,
            message: Vec::new(),
            seqs: vec![0],
            group_of: Vec::new(),
            dests: vec![None],
            sent_parity: HashMap::new(),
            key,
        })
    }

    /// Sends each message on its group of `routing` (made for this plan and the sender's
    /// destination as the session's group) instead of all on the session's group.
    pub fn set_routing(&mut self, routing: &Routing) {
        let port = self.tx.socket.dest.port();
        self.group_of = (0..self.plan.messages().len() as u32)
            .map(|m| routing.group_of(m))
            .collect();
        let groups = routing.groups();
        self.seqs.resize(groups, 0);
        self.dests = (0..groups)
            .map(|g| (g > 0).then(|| SocketAddr::new(routing.addr(g as u16), port)))
            .collect();
    }

    /// The group index message `idx` is sent on.
    fn group(&self, idx: u32) -> usize {
        self.group_of
            .get(idx as usize)
            .map_or(0, |&g| usize::from(g))
    }

    /// Message `idx`'s bytes: the library's own when it is one uncoded segment (no copy:
    /// a 256 MiB message took 0.2 s to copy before its first packet), else the scratch
    /// buffer, sized for it, where [`Multicaster::encode_block`] encodes each block in turn.
    fn prepare(&mut self, idx: u32) -> Result<Bytes<'a>, TxError> {
        let spec = &self.plan.messages()[idx as usize];
        if let Some(bytes) = uncoded_bytes(spec, self.files) {
            return bytes.map(Bytes::Library).map_err(|source| TxError::Encode {
                message: idx,
                source,
            });
        }
        let len = usize::try_from(spec.len)
            .map_err(|_| TxError::Config(format!("message of {} bytes", spec.len)))?;
        if self.message.len() < len {
            // Fresh zeroed pages, touched as blocks are encoded (a resize wrote them all at
            // once, up to a subfile, before the first packet).
            self.message = vec![0; len];
        }
        Ok(Bytes::Scratch(len))
    }

    /// XOR-encodes the block of message `idx` at `range` (its [`crate::fec::Layout::block_range`])
    /// into the scratch buffer, right before its packets, so it is still in cache for them
    /// (whole messages, encoded up front, left the link idle for the XOR of up to a
    /// subfile at every message).
    fn encode_block(
        &mut self,
        idx: u32,
        bytes: Bytes<'a>,
        range: Range<u64>,
    ) -> Result<(), TxError> {
        if let Bytes::Library(_) = bytes {
            return Ok(());
        }
        let out = &mut self.message[range.start as usize..range.end as usize];
        encode_range(
            &self.plan.messages()[idx as usize],
            self.files,
            range.start,
            out,
        )
        .map_err(|source| TxError::Encode {
            message: idx,
            source,
        })
    }

    /// Runs one pass: `body` feeds packets, then End markers follow.
    fn pass(
        &mut self,
        progress: &Progress,
        body: impl FnOnce(&mut Self, &mut Tally<'_>) -> Result<(), TxError>,
    ) -> Result<PassStats, TxError> {
        let (handle, thread) = spawn_sender(self.tx.clone())?;
        let key = self.key.clone();
        let mut tally = Tally {
            handle: &handle,
            open: None,
            key: key.as_ref(),
            progress,
            payload: 0,
            packets: 0,
            bytes: 0,
            pulse: (self.dests.len() > 1).then(|| (self.session, std::time::Instant::now())),
            pulses: 0,
        };
        let produced = body(self, &mut tally)
            .and_then(|()| tally.flush())
            .and_then(|()| self.end_markers(&mut tally));
        let (payload_bytes, packets, udp_bytes, pulses) =
            (tally.payload, tally.packets, tally.bytes, tally.pulses);
        drop(handle);
        let send = thread.join().map_err(|_| TxError::Stopped)??;
        produced?;
        Ok(PassStats {
            payload_bytes,
            packets,
            udp_bytes,
            pulses,
            send,
        })
    }

    /// Sends every group its End markers; each names its group in the message field and
    /// takes that group's next sequence numbers, so it bounds the group's loss span.
    fn end_markers(&mut self, tally: &mut Tally<'_>) -> Result<(), TxError> {
        let mut end = DataHeader::new(PacketKind::End, self.session);
        for _ in 0..END_MARKERS {
            for (g, (seq, &dest)) in self.seqs.iter_mut().zip(&self.dests).enumerate() {
                end.message = g as u32;
                end.seq = *seq;
                *seq = seq.wrapping_add(1);
                tally.header_only(&end, dest)?;
            }
            // Spread the markers so one burst of loss does not take them all.
            std::thread::sleep(Duration::from_millis(2));
        }
        tally.progress.store(tally.bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Sends one block of message `idx` (`bytes`, from [`Multicaster::prepare`], the block
    /// encoded): the parity range `Some((first, count))`, or its sources.
    fn send_block(
        &mut self,
        tally: &mut Tally<'_>,
        idx: u32,
        bytes: Bytes<'a>,
        block: u32,
        parity: Option<(u16, u16)>,
    ) -> Result<(), TxError> {
        let need = HEADER_LEN + self.enc.params().symbol_size;
        let message = bytes.of(&self.message);
        let g = self.group(idx);
        let (session, seq) = (self.session, self.seqs[g]);
        let mut pk = match parity {
            Some((first, count)) => Packetizer::repair(
                &mut self.enc,
                session,
                idx,
                message,
                block,
                first,
                count,
                seq,
            ),
            None => Packetizer::block_sources(&mut self.enc, session, idx, message, block, seq),
        }
        .map_err(|source| TxError::Packetize {
            message: idx,
            source,
        })?;
        tally.drain(&mut pk, idx, need, self.dests[g])?;
        self.seqs[g] = pk.next_seq();
        Ok(())
    }

    /// Every message once: all source symbols and the first-pass parity.
    pub fn first_pass(&mut self, progress: &Progress) -> Result<PassStats, TxError> {
        self.pass(progress, |me, tally| {
            let need = HEADER_LEN + me.enc.params().symbol_size;
            for idx in 0..me.plan.messages().len() as u32 {
                let err = |source| TxError::Packetize {
                    message: idx,
                    source,
                };
                let bytes = me.prepare(idx)?;
                let len = bytes.of(&me.message).len() as u64;
                tally.payload += len;
                let layout = me.enc.params().layout(len).map_err(err)?;
                if layout.blocks == 0 {
                    return Err(err(FecError::EmptyMessage(idx)));
                }
                let g = me.group(idx);
                for block in 0..layout.blocks {
                    me.encode_block(idx, bytes, layout.block_range(block))?;
                    let (session, seq) = (me.session, me.seqs[g]);
                    let message = bytes.of(&me.message);
                    let mut pk = Packetizer::block_first_pass(
                        &mut me.enc,
                        session,
                        idx,
                        message,
                        block,
                        seq,
                    )
                    .map_err(err)?;
                    tally.drain(&mut pk, idx, need, me.dests[g])?;
                    me.seqs[g] = pk.next_seq();
                }
            }
            Ok(())
        })
    }

    /// More parity for the blocks receivers reported short (`(message, block) → needed`,
    /// merged across receivers); blocks out of parity get their sources again. Returns the
    /// pass and how many blocks ran out of parity.
    /// `rate` (bytes/s) caps this pass below the configured rate.
    pub fn repair(
        &mut self,
        requests: &BTreeMap<(u32, u32), u16>,
        rate: Option<u64>,
        progress: &Progress,
    ) -> Result<(PassStats, usize), TxError> {
        let configured = self.tx.rate;
        if let Some(r) = rate {
            self.tx.rate = Some(configured.map_or(r, |c| c.min(r)));
        }
        let mut exhausted = 0;
        let stats = self.pass(progress, |me, tally| {
            let params = me.enc.params();
            for (&(idx, block), &needed) in requests {
                // A receiver's request naming no block of the plan is ignored, not allowed
                // to fail the pass for everyone.
                let Some(spec) = me.plan.messages().get(idx as usize) else {
                    continue;
                };
                let Some(range) = params
                    .layout(spec.len)
                    .ok()
                    .filter(|l| block < l.blocks)
                    .map(|l| l.block_range(block))
                else {
                    continue;
                };
                let sent = *me
                    .sent_parity
                    .get(&(idx, block))
                    .unwrap_or(&params.parity_per_block);
                // Send half again what was asked: the repair itself crosses a lossy link.
                let want = needed.saturating_add(needed / 2 + 1);
                let count = want.min(params.max_parity_per_block.saturating_sub(sent));
                let bytes = me.prepare(idx)?;
                me.encode_block(idx, bytes, range)?;
                if count > 0 {
                    me.send_block(tally, idx, bytes, block, Some((sent, count)))?;
                    me.sent_parity.insert((idx, block), sent + count);
                }
                if count < want {
                    // Out of parity: the block's sources themselves fill whatever is missing.
                    exhausted += 1;
                    me.send_block(tally, idx, bytes, block, None)?;
                }
            }
            Ok(())
        });
        self.tx.rate = configured;
        Ok((stats?, exhausted))
    }
}
