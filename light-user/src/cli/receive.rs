//! `light receive`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::{listen::RxArgs, units::parse_size};
use crate::{
    control::receiver::{ProgressFn, ReceiveConfig, receive},
    transport::rx::{AttachMode, RxPath},
};

/// Arguments of `light receive`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// This receiver's id (unique in the session).
    receiver: u32,
    /// Content to receive: its id, its path relative to the library, or a directory of
    /// the library (everything under it). Repeat (`-c a -c b`) for several contents in one
    /// session; they share the one cache.
    #[arg(short = 'c', long = "content", required = true)]
    contents: Vec<String>,
    /// Server control address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    server: SocketAddr,
    /// Directory the file is saved in (under its library path).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Directory the cache is kept in.
    #[arg(long, default_value = ".light-cache")]
    cache_dir: PathBuf,
    /// Interface facing the server (default: the one that routes to it).
    #[arg(long)]
    iface: Option<String>,
    /// Use the plain socket path instead of XDP/AF_XDP.
    #[arg(long)]
    no_xdp: bool,
    /// Fail instead of falling back to the socket path when XDP cannot be used, and use
    /// AF_XDP even where the socket path is faster: jumbo frames on a link without
    /// zero-copy AF_XDP, such as veth (each frame would be copied twice on the way in).
    #[arg(long, conflicts_with = "no_xdp")]
    require_xdp: bool,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    /// Seconds to keep retrying the connection to the server.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Secret the server asks for (also from the LIGHT_TOKEN environment variable).
    #[arg(long, env = "LIGHT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The server's public key as `light serve` prints it: refuse manifests it did not sign
    /// (also from the LIGHT_SERVER_KEY environment variable).
    #[arg(long, env = "LIGHT_SERVER_KEY", value_parser = parse_key)]
    server_key: Option<String>,
    /// Write the file's whole pages past the page cache (`O_DIRECT`). Costs less CPU where
    /// copying into the page cache is dear; on disks slow to allocate fresh blocks the page
    /// cache and its writeback are faster (measured in the README's Performance section).
    /// Either way, pages already on disk leave the page cache 64 MiB behind the newest.
    #[arg(long)]
    direct_io: bool,
    /// Received bytes that may wait in memory for the disk (`256MiB`, `1GiB`). When the disk
    /// is slower than the network, reception pauses at this much (give or take one receive
    /// batch) and what it misses meanwhile is repaired like any loss.
    #[arg(long, default_value = "256MiB", value_parser = parse_write_buffer)]
    write_buffer: u64,
    /// Print a one-line JSON summary per content on stdout.
    #[arg(long)]
    json: bool,
}

/// Smallest `--write-buffer`: a few FEC blocks, so a pause ends with a stretch of reading.
const MIN_WRITE_BUFFER: u64 = 4 << 20;

fn parse_write_buffer(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < MIN_WRITE_BUFFER {
        return Err(format!(
            "`{s}` is less than the smallest write buffer, {} MiB",
            MIN_WRITE_BUFFER >> 20
        ));
    }
    Ok(n)
}

fn parse_key(s: &str) -> Result<String, String> {
    if crate::catalog::is_public_key(s) {
        Ok(s.trim().to_owned())
    } else {
        Err("expected the 64-hex-digit key `light serve` prints".into())
    }
}

/// Runs `light receive`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let stop = super::stop_flag()?;
    let path = RxArgs {
        iface: a.iface.clone().unwrap_or_default(),
        no_xdp: a.no_xdp,
        require_xdp: a.require_xdp,
        xdp_mode: a.xdp_mode,
    }
    .path();
    let cfg = ReceiveConfig {
        receiver: a.receiver,
        contents: a.contents.clone(),
        server: a.server,
        out: a.out,
        cache_dir: a.cache_dir,
        iface: a.iface,
        path,
        connect_timeout: Duration::from_secs_f64(a.connect_timeout),
        idle_timeout: Duration::from_secs(30),
        token: a.token.clone(),
        server_key: a.server_key.clone(),
        direct_io: a.direct_io,
        write_buffer: a.write_buffer,
    };
    // indicatif hides the bar when stderr is not a terminal.
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let b = bar.clone();
    let progress: ProgressFn = Arc::new(move |content: &str, done, total| {
        if b.message() != content {
            b.set_message(content.to_owned());
        }
        b.set_length(total);
        b.set_position(done);
    });
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let summaries = rt.block_on(receive(cfg, stop, progress));
    bar.finish_and_clear();
    let summaries = summaries.with_context(|| format!("receiving {}", a.contents.join(", ")))?;
    for summary in summaries {
        if a.json {
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            println!(
                "verified {} ({} bytes: {} from cache, {} decoded) in {:.2} s, {:.3} Gbit/s over {}",
                summary.path,
                summary.bytes,
                summary.from_cache_bytes,
                summary.decoded_bytes,
                summary.seconds,
                summary.goodput_gbps,
                summary.rx_path
            );
        }
    }
    Ok(())
}

impl RxArgs {
    /// The receive path these flags select.
    pub fn path(&self) -> RxPath {
        if self.no_xdp {
            RxPath::Socket
        } else {
            RxPath::Xdp {
                mode: self.xdp_mode,
                insist: self.require_xdp,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_buffer_takes_sizes_down_to_the_minimum() {
        assert_eq!(parse_write_buffer("256MiB"), Ok(256 << 20));
        assert_eq!(parse_write_buffer("4MiB"), Ok(MIN_WRITE_BUFFER));
        let e = parse_write_buffer("1M").unwrap_err();
        assert!(e.contains("smallest write buffer, 4 MiB"), "{e}");
        assert!(parse_write_buffer("lots").is_err());
    }
}
