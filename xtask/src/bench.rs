//! `cargo xtask bench rx`: the AF_XDP receive path against the socket path on the same veth,
//! in one run, with the receiver pinned to one core and the sender to the other.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{demo::light_bin, netns::Testbed};

const GROUP: &str = "239.77.9.1";
const PORT: &str = "7790";

/// One measured receive run.
#[derive(Debug)]
struct RxRun {
    label: &'static str,
    summary: String,
    pps: f64,
    gbps: f64,
    received: f64,
}

fn field(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

fn run_once(
    bed: &Testbed,
    label: &'static str,
    rx_flags: &[&str],
    packets: u64,
    size: usize,
) -> Result<RxRun> {
    let light = light_bin();
    let light = light.to_str().context("non-UTF-8 target path")?;
    let r = &bed.receivers[0];
    let mut listener = Command::new("ip")
        .args([
            "netns", "exec", &r.ns, "taskset", "-c", "1", light, "listen", "--json",
        ])
        .args([
            "--iface", &r.iface, "--group", GROUP, "--port", PORT, "--idle", "1.5",
        ])
        .args(["--seconds", "120"])
        .args(rx_flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start light listen")?;
    // Give it time to attach XDP and join the group.
    thread::sleep(Duration::from_millis(1500));
    let s = &bed.server;
    let status = Command::new("ip")
        .args(["netns", "exec", &s.ns, "taskset", "-c", "0", light, "probe"])
        .args(["--iface", &s.iface, "--group", GROUP, "--port", PORT])
        .args(["--count", &packets.to_string(), "--size", &size.to_string()])
        .status()
        .context("start light probe")?;
    if !status.success() {
        let _ = listener.kill();
        bail!("light probe failed ({status})");
    }
    let out = listener.wait_with_output()?;
    let summary = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        bail!("light listen failed ({}): {summary}", out.status);
    }
    Ok(RxRun {
        label,
        pps: field(&summary, "pps").unwrap_or(0.0),
        gbps: field(&summary, "gbps").unwrap_or(0.0),
        received: field(&summary, "valid").unwrap_or(0.0),
        summary,
    })
}

/// Runs the receive-path comparison at each of `mtus` (payloads 100 bytes under the MTU:
/// 1400 at 1500, 8900 at 9000, where AF_XDP takes each frame in three chunks) and prints
/// packets/s, Gbit/s, loss and the ratio.
pub fn rx(packets: u64, mtus: &[u32]) -> Result<()> {
    crate::netns::require_root()?;
    for &mtu in mtus {
        let size = mtu as usize - 100;
        let bed = Testbed::new(1, mtu)?;
        let xdp = run_once(&bed, "AF_XDP", &["--require-xdp"], packets, size)?;
        let sock = run_once(&bed, "socket", &["--no-xdp"], packets, size)?;
        println!(
            "receive path benchmark, MTU {mtu}: {packets} packets of {size}-byte payload, one veth, receiver pinned to CPU 1"
        );
        println!(
            "{:<8} {:>12} {:>10} {:>12} {:>8}",
            "path", "packets/s", "Gbit/s", "received", "loss"
        );
        for r in [&xdp, &sock] {
            let loss = 1.0 - r.received / packets as f64;
            println!(
                "{:<8} {:>12.0} {:>10.3} {:>12.0} {:>7.2}%",
                r.label,
                r.pps,
                r.gbps,
                r.received,
                loss * 100.0
            );
            eprintln!("  {}: {}", r.label, r.summary);
        }
        println!(
            "goodput ratio AF_XDP / socket: {:.2}",
            xdp.gbps / sock.gbps.max(1e-9)
        );
    }
    Ok(())
}
