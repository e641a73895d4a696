//! One multicast pass of a session's plan: every coded message is XOR-encoded from the
//! library, cut into Reed–Solomon-protected packets and handed to the sender thread in
//! batches; End markers close the pass.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use light_common::{DataHeader, HEADER_LEN, PacketKind};

use super::{SendHandle, SendStats, TxConfig, TxError, spawn_sender};
use crate::{
    coding::{Plan, encode_message},
    fec::{FecEncoder, FecParams, Packetizer},
};

/// End markers sent at the close of a pass; several, since any one can be lost.
const END_MARKERS: usize = 5;

/// What a pass put on the wire.
#[derive(Clone, Copy, Debug)]
pub struct PassStats {
    /// Coded payload bytes (the plan's message bytes).
    pub payload_bytes: u64,
    /// Packets sent, End markers included.
    pub packets: u64,
    /// UDP payload bytes sent: Light headers, FEC parity and padding included.
    pub udp_bytes: u64,
    /// The sender thread's counters.
    pub send: SendStats,
}

/// Live counter of UDP payload bytes handed to the sender, for progress reports.
pub type Progress = Arc<AtomicU64>;

/// Multicasts every message of `plan` once (source + first-pass parity), then End markers.
///
/// `files` are the library's file contents in plan file order. Runs on the calling thread;
/// the socket work runs on the sender thread behind a bounded queue.
pub fn send_pass(
    plan: &Plan,
    files: &[&[u8]],
    fec: FecParams,
    session: u32,
    mut tx: TxConfig,
    progress: &Progress,
) -> Result<PassStats, TxError> {
    tx.packet_capacity = HEADER_LEN + fec.symbol_size;
    let (handle, thread) = spawn_sender(tx)?;
    let produced = produce(plan, files, fec, session, &handle, progress);
    drop(handle);
    let send = thread.join().map_err(|_| TxError::Stopped)??;
    let (payload_bytes, packets, udp_bytes) = produced?;
    Ok(PassStats {
        payload_bytes,
        packets,
        udp_bytes,
        send,
    })
}

fn produce(
    plan: &Plan,
    files: &[&[u8]],
    fec: FecParams,
    session: u32,
    handle: &SendHandle,
    progress: &Progress,
) -> Result<(u64, u64, u64), TxError> {
    let mut enc =
        FecEncoder::new(fec).map_err(|source| TxError::Packetize { message: 0, source })?;
    let longest = plan.messages().iter().map(|m| m.len).max().unwrap_or(0);
    let mut message = vec![0u8; usize::try_from(longest).unwrap_or(usize::MAX)];
    let (mut payload, mut packets, mut bytes, mut seq) = (0u64, 0u64, 0u64, 0u32);
    let need = HEADER_LEN + fec.symbol_size;
    for (idx, spec) in plan.messages().iter().enumerate() {
        let idx = idx as u32;
        if spec.len == 0 {
            // Nothing to send: receivers complete empty messages from the plan alone.
            continue;
        }
        let buf = &mut message[..spec.len as usize];
        encode_message(spec, files, buf).map_err(|source| TxError::Encode {
            message: idx,
            source,
        })?;
        payload += spec.len;
        let mut pk =
            Packetizer::first_pass(&mut enc, session, idx, buf, seq).map_err(|source| {
                TxError::Packetize {
                    message: idx,
                    source,
                }
            })?;
        while pk.remaining() > 0 {
            let mut batch = handle.batch()?;
            while pk.remaining() > 0 {
                let Some(v) = batch.next_packet() else { break };
                v.resize(need, 0);
                let n = pk
                    .next_into(v)
                    .map_err(|source| TxError::Packetize {
                        message: idx,
                        source,
                    })?
                    .expect("remaining() > 0 promises a packet");
                v.truncate(n);
                packets += 1;
                bytes += n as u64;
            }
            progress.store(bytes, Ordering::Relaxed);
            handle.submit(batch)?;
        }
        seq = pk.next_seq();
    }
    let mut end = DataHeader::new(PacketKind::End, session);
    for _ in 0..END_MARKERS {
        end.seq = seq;
        seq = seq.wrapping_add(1);
        let mut batch = handle.batch()?;
        let v = batch.next_packet().expect("a fresh batch has room");
        v.resize(HEADER_LEN, 0);
        end.write_to(v).expect("buffer holds a header");
        packets += 1;
        bytes += HEADER_LEN as u64;
        handle.submit(batch)?;
        // Spread the markers so one burst of loss does not take them all.
        std::thread::sleep(Duration::from_millis(2));
    }
    progress.store(bytes, Ordering::Relaxed);
    Ok((payload, packets, bytes))
}
