//! `light cache fill`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;

use crate::control::cache::{FillConfig, fill};

/// `light cache` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Fill receivers' caches ahead of a session (off-peak), from a running `light serve`.
    /// A later `light receive` with the same id and cache directory then skips placement.
    /// A cache already valid is only checked (by hash), not downloaded again.
    Fill(FillArgs),
}

/// Arguments of `light cache fill`.
#[derive(Debug, clap::Args)]
pub struct FillArgs {
    /// Receiver ids to fill (in parallel), as they will later run `light receive <ID>`.
    #[arg(required = true)]
    receivers: Vec<u32>,
    /// Server control address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    server: SocketAddr,
    /// Directory the caches are kept in (the same as `light receive --cache-dir`).
    #[arg(long, default_value = ".light-cache")]
    cache_dir: PathBuf,
    /// Secret the server asks for (also from the LIGHT_TOKEN environment variable).
    #[arg(long, env = "LIGHT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds to keep retrying the connection to the server.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Print one JSON summary line per receiver on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `light cache ...`.
pub fn run(c: Command) -> anyhow::Result<()> {
    let Command::Fill(a) = c;
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let results = rt.block_on(async {
        let tasks: Vec<_> = a
            .receivers
            .iter()
            .map(|&receiver| {
                tokio::spawn(fill(FillConfig {
                    receiver,
                    server: a.server,
                    cache_dir: a.cache_dir.clone(),
                    token: a.token.clone(),
                    connect_timeout: Duration::from_secs_f64(a.connect_timeout),
                }))
            })
            .collect();
        let mut out = Vec::new();
        for (t, &r) in tasks.into_iter().zip(&a.receivers) {
            out.push((r, t.await));
        }
        out
    });
    let mut failed = Vec::new();
    for (receiver, r) in results {
        match r {
            Ok(Ok(s)) if a.json => println!("{}", serde_json::to_string(&s)?),
            Ok(Ok(s)) => {
                if let Some(why) = &s.discarded {
                    println!("receiver {receiver}: discarded the old cache: {why}");
                }
                println!(
                    "receiver {receiver}: cache of {} bytes ready ({} downloaded) in {:.2} s",
                    s.cache_bytes, s.downloaded_bytes, s.seconds
                );
            }
            Ok(Err(e)) => {
                eprintln!("receiver {receiver}: {e}");
                failed.push(receiver);
            }
            Err(e) => {
                eprintln!("receiver {receiver}: fill task failed: {e}");
                failed.push(receiver);
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "filling the caches of {failed:?} failed");
    Ok(())
}
