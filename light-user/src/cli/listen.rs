//! `light listen`: receive Light packets and count them.

use std::{
    net::IpAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Context;
use light_common::DataHeader;

use crate::transport::rx::{AttachMode, Receiver, RxConfig, RxPath};

/// Receive options shared by the receiving subcommands.
#[derive(Debug, clap::Args)]
pub struct RxArgs {
    /// Interface facing the server.
    #[arg(long)]
    pub iface: String,
    /// Use the plain socket path instead of XDP/AF_XDP.
    #[arg(long)]
    pub no_xdp: bool,
    /// Fail instead of falling back to the socket path when XDP cannot be used, and use
    /// AF_XDP even where the socket path is faster: jumbo frames on a link without
    /// zero-copy AF_XDP, such as veth (each frame would be copied twice on the way in).
    #[arg(long, conflicts_with = "no_xdp")]
    pub require_xdp: bool,
    /// XDP attach mode: driver (native) with skb fallback, or one of them only.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub xdp_mode: AttachMode,
}

impl RxArgs {
    /// The receive configuration for `group:port`.
    pub fn config(&self, group: IpAddr, port: u16) -> RxConfig {
        RxConfig {
            iface: self.iface.clone(),
            group,
            port,
            path: if self.no_xdp {
                RxPath::Socket
            } else {
                RxPath::Xdp {
                    mode: self.xdp_mode,
                    insist: self.require_xdp,
                }
            },
            max_datagram: 9216,
        }
    }
}

/// Arguments of `light listen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    rx: RxArgs,
    /// Multicast group to join.
    #[arg(long, default_value = "239.77.0.1")]
    group: IpAddr,
    /// UDP port of the Light data stream.
    #[arg(long, default_value_t = 7700)]
    port: u16,
    /// Stop after this many valid Light packets.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds (default: until Ctrl-C, `--count`, or an End packet).
    #[arg(long)]
    seconds: Option<f64>,
    /// Stop after this many seconds without any packet once packets have arrived.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Print the summary as one JSON line.
    #[arg(long)]
    json: bool,
}

/// Runs `light listen`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let stop = super::stop_flag()?;
    let (mut rx, fallback) = Receiver::open(&a.rx.config(a.group, a.port))
        .with_context(|| format!("cannot receive on {}", a.rx.iface))?;
    if let Some(why) = &fallback {
        eprintln!("light: not using XDP: {why}; using the socket path");
    }
    eprintln!(
        "light: listening on {}:{} via {}",
        a.group,
        a.port,
        rx.describe()
    );
    let (mut valid, mut invalid, mut ended) = (0u64, 0u64, false);
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let deadline = a.seconds.map(|s| start + Duration::from_secs_f64(s));
    let idle = Duration::from_secs_f64(a.idle);
    while !stop.load(Ordering::Relaxed) && !ended {
        let n = rx.recv_batch(
            Duration::from_millis(100),
            &mut |p| match DataHeader::parse(p) {
                Ok((h, _)) if h.packet_kind() == Some(light_common::PacketKind::End) => {
                    ended = true
                }
                Ok(_) => valid += 1,
                Err(_) => invalid += 1,
            },
        )?;
        let now = Instant::now();
        if n > 0 {
            first.get_or_insert(now);
            last = now;
        }
        if a.count.is_some_and(|c| valid >= c)
            || deadline.is_some_and(|d| now >= d)
            || (first.is_some() && now - last > idle)
        {
            break;
        }
    }
    let s = rx.stats();
    let oversize = rx.oversize().unwrap_or(0);
    if let Some(note) = Receiver::oversize_note(oversize) {
        eprintln!("light: {note}");
    }
    let span = first
        .map(|f| (last - f).as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-9);
    let pps = valid as f64 / span;
    let gbps = s.bytes as f64 * 8.0 / span / 1e9;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "path": rx.describe(), "valid": valid, "invalid": invalid, "bytes": s.bytes,
                "malformed_frames": s.malformed, "oversize_frames": oversize, "seconds": span,
                "pps": pps, "gbps": gbps,
                "end_seen": ended,
            })
        );
    } else {
        println!(
            "{valid} Light packets ({invalid} invalid, {} malformed frames), {} bytes in {span:.3} s: \
             {pps:.0} pkt/s, {gbps:.3} Gbit/s via {}",
            s.malformed,
            s.bytes,
            rx.describe()
        );
    }
    Ok(())
}
