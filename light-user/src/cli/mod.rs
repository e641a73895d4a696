//! The `light` command line: argument parsing and the glue from subcommands to the library.

mod cache;
mod listen;
mod pack;
mod probe;
mod receive;
mod serve;
mod status;
mod units;

use clap::{Parser, Subcommand};

/// Light delivers large files from one server to many receivers on a LAN: coded caching
/// over multicast, Reed–Solomon repair, and an XDP/AF_XDP receive path.
#[derive(Debug, Parser)]
#[command(name = "light", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Index a library directory: content ids, sizes, BLAKE3 chunk hashes, versions.
    Pack(pack::Args),
    /// Serve a library: wait for receivers, place caches, multicast the coded delivery.
    Serve(serve::Args),
    /// Ask a server for one content, receive it, verify every chunk and save it.
    Receive(receive::Args),
    /// Manage receiver caches (fill them ahead of a session).
    #[command(subcommand)]
    Cache(cache::Command),
    /// Receive Light packets on a multicast group and report what arrived (diagnostics and
    /// the receive-path benchmark).
    Listen(listen::Args),
    /// Show a running server's library, known receivers and live session progress.
    Status(status::Args),
    /// Multicast numbered probe packets through the batched send path (benchmarks).
    Probe(probe::Args),
}

/// Parses the command line and runs it.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Pack(a) => pack::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Receive(a) => receive::run(a),
        Command::Cache(c) => cache::run(c),
        Command::Listen(a) => listen::run(a),
        Command::Status(a) => status::run(a),
        Command::Probe(a) => probe::run(a),
    }
}

/// A flag set by Ctrl-C / SIGTERM so loops can stop and release XDP cleanly.
pub(crate) fn stop_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || f.store(true, std::sync::atomic::Ordering::SeqCst))?;
    Ok(flag)
}
