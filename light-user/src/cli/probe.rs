//! `light probe`: multicast numbered Light probe packets through the real send path
//! (receive-path benchmarks and network checks).

use std::{net::SocketAddr, time::Instant};

use anyhow::Context;
use light_common::{DataHeader, HEADER_LEN, PacketKind};

use super::units::{Rate, parse_rate};
use crate::transport::{
    rx::socket::ifindex,
    tx::{MulticastIf, TxConfig, spawn_sender},
};

/// Arguments of `light probe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Interface to send on.
    #[arg(long)]
    iface: String,
    /// Multicast group.
    #[arg(long, default_value = "239.77.0.1")]
    group: std::net::IpAddr,
    /// UDP port.
    #[arg(long, default_value_t = 7700)]
    port: u16,
    /// Packets to send.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Light payload bytes per packet (after the 48-byte header).
    #[arg(long, default_value_t = 1400)]
    size: usize,
    /// Send rate in bit/s or `max`.
    #[arg(long, default_value = "max", value_parser = parse_rate)]
    rate: Rate,
}

/// Runs `light probe`.
pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.size <= usize::from(u16::MAX) - HEADER_LEN,
        "--size too large"
    );
    let mut tx = TxConfig::new(SocketAddr::new(a.group, a.port));
    tx.rate = a.rate.0;
    tx.packet_capacity = HEADER_LEN + a.size;
    tx.socket.interface = Some(MulticastIf::Index(ifindex(&a.iface)?));
    let (handle, thread) = spawn_sender(tx).context("open the send socket")?;
    let start = Instant::now();
    let mut h = DataHeader::new(PacketKind::Probe, 1);
    h.payload_len = a.size as u16;
    let mut seq = 0u64;
    while seq < a.count {
        let mut batch = handle.batch()?;
        while seq < a.count {
            let Some(p) = batch.next_packet() else { break };
            p.resize(HEADER_LEN + a.size, 0);
            h.seq = seq as u32;
            h.write_to(p)?;
            seq += 1;
        }
        handle.submit(batch)?;
    }
    // An End marker lets listeners stop at once instead of waiting for silence.
    let mut batch = handle.batch()?;
    let p = batch.next_packet().context("empty batch")?;
    p.resize(HEADER_LEN, 0);
    DataHeader::new(PacketKind::End, 1).write_to(p)?;
    handle.submit(batch)?;
    drop(handle);
    let stats = thread
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "light probe: {} packets, {} bytes in {secs:.3} s ({:.0} pkt/s, {:.3} Gbit/s), GSO {:?}",
        stats.packets,
        stats.bytes,
        stats.packets as f64 / secs,
        stats.bytes as f64 * 8.0 / secs / 1e9,
        stats.gso
    );
    Ok(())
}
