//! `light serve`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;

use super::units::{Rate, parse_budget, parse_rate};
use crate::{
    coding::{CacheBudget, MAX_GROUPS, SchemeChoice},
    control::server::{ServeConfig, serve},
};

/// Placement family, as the command line names it.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Scheme {
    /// Pick the scheme with the lower rate.
    Auto,
    /// Maddah-Ali–Niesen placement with YMA delivery (grouping as needed).
    Centralized,
    /// Random hash-seeded placement.
    Decentralized,
}

/// Arguments of `light serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Library directory: every file below it can be requested (packed on start).
    #[arg(long)]
    library: PathBuf,
    /// Receivers to wait for before placing caches and multicasting. Also the number of
    /// cache slots: caches filled ahead (`light cache fill`) stay valid as long as the
    /// library, -k, --cache, --scheme and the packet size (--mtu, group family) stay.
    #[arg(long, short = 'k')]
    receivers: usize,
    /// Cache budget per receiver: a share of the library (`25%`), a size (`2GiB`), or `0`.
    #[arg(long, default_value = "0", value_parser = parse_budget)]
    cache: CacheBudget,
    /// Placement scheme.
    #[arg(long, value_enum, default_value_t = Scheme::Auto)]
    scheme: Scheme,
    /// Multicast group (IPv4 or IPv6).
    #[arg(long, default_value = "239.77.0.1")]
    group: std::net::IpAddr,
    /// Multicast UDP port.
    #[arg(long, default_value_t = 7700)]
    port: u16,
    /// Further multicast groups, counted up from --group in its low 16 bits, for coded
    /// messages only some receivers need: each receiver joins just its own (at most 64),
    /// so switches with IGMP/MLD snooping and the receivers' NICs drop the rest. 0 sends
    /// everything on --group.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_GROUPS)))]
    subset_groups: u16,
    /// Interface the multicast leaves through (default: the one holding the --bind address).
    #[arg(long)]
    iface: Option<String>,
    /// Send rate in bit/s (`800M`, `10G`) or `max`.
    #[arg(long, default_value = "1G", value_parser = parse_rate)]
    rate: Rate,
    /// Control channel address receivers connect to.
    #[arg(long, default_value = "0.0.0.0:7700")]
    bind: SocketAddr,
    /// Seconds to wait for the receivers.
    #[arg(long, default_value_t = 300.0)]
    wait: f64,
    /// Start after --wait with at least this many receivers (default: all of them).
    #[arg(long)]
    min_receivers: Option<usize>,
    /// Link MTU; sizes the packets.
    #[arg(long, default_value_t = 1500)]
    mtu: usize,
    /// Expected packet loss (0–1); sizes the first pass's Reed–Solomon parity. Raised to
    /// the worst loss receivers measured in the last sessions (up to 20%), unless
    /// --fixed-loss.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Size the parity from --loss alone, not from the loss recent sessions measured
    /// (reproducible benchmarks).
    #[arg(long)]
    fixed_loss: bool,
    /// Secret every receiver must present (also from the LIGHT_TOKEN environment variable).
    #[arg(long, env = "LIGHT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Do not sign data packets (no per-packet MAC): for trusted networks and benchmarks.
    #[arg(long)]
    no_packet_auth: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Serve Prometheus metrics over HTTP on this address (`GET /metrics`), e.g.
    /// `0.0.0.0:9770`; off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

/// Runs `light serve`.
pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.receivers >= 1, "--receivers must be at least 1");
    let cfg = ServeConfig {
        library: a.library,
        receivers: a.receivers,
        min_receivers: a.min_receivers.unwrap_or(a.receivers),
        wait: Duration::from_secs_f64(a.wait),
        budget: a.cache,
        scheme: match a.scheme {
            Scheme::Auto => SchemeChoice::Auto,
            Scheme::Centralized => SchemeChoice::Centralized,
            Scheme::Decentralized => SchemeChoice::Decentralized,
        },
        group: a.group,
        port: a.port,
        subset_groups: a.subset_groups,
        iface: a.iface,
        rate: a.rate.0,
        bind: a.bind,
        mtu: a.mtu,
        expected_loss: a.loss,
        adapt_loss: !a.fixed_loss,
        done_timeout: Duration::from_secs(60),
        token: a.token,
        authenticate_packets: !a.no_packet_auth,
        metrics: a.metrics,
    };
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let report = rt.block_on(serve(cfg))?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    anyhow::ensure!(
        report.all_verified(),
        "not every receiver verified its file"
    );
    Ok(())
}
