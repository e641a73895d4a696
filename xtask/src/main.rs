//! `cargo xtask`: set up the toolchain, build, test, run the demo, benchmark.

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and demo driver for Light")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install nightly rust-src, bpf-linker (LLVM 22) and the Debian packages the tests use.
    Setup,
    /// Set up, then build the XDP program and the `light` binary (release).
    Build,
    /// Set up, then run formatting and lint checks and every test (needs root for XDP tests).
    Test,
    /// Run every fuzz target for a bounded time on a copy of its committed seed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Set up, build, and run a demo delivery: a server and receivers in network
    /// namespaces, receivers asking for different files with caches filled.
    Run(xtask::demo::DemoArgs),
    /// Benchmarks: `rx` compares the AF_XDP and socket receive paths on a veth testbed;
    /// `e2e` runs Light, udpcast and UFTP on the same test hosts and files.
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value = "rx")]
        which: Bench,
        /// Packets per run (`rx`).
        #[arg(long, default_value_t = 400_000)]
        packets: u64,
        /// Options of the end-to-end comparison (`e2e`).
        #[command(flatten)]
        e2e: Box<xtask::compare::CompareArgs>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// AF_XDP vs socket receive path.
    Rx,
    /// Light vs udpcast vs UFTP, end to end, on namespace test hosts.
    E2e,
}

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS_IN_TEST: u64 = 15;

fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => xtask::setup::all(),
        Cmd::Build => {
            xtask::setup::all()?;
            cargo(&["build", "--release", "-p", "light-user"])
        }
        Cmd::Test => {
            xtask::setup::all()?;
            xtask::netns::require_root()?;
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&["test", "--workspace", "--", "--test-threads", "2"])?;
            // A bounded fuzzing pass over every target (the seeds are in fuzz/corpus).
            xtask::fuzz::run(FUZZ_SECONDS_IN_TEST)
        }
        Cmd::Fuzz { seconds } => {
            xtask::setup::all()?;
            xtask::fuzz::run(seconds)
        }
        Cmd::Run(a) => {
            xtask::setup::all()?;
            cargo(&["build", "--release", "-p", "light-user"])?;
            xtask::demo::run(&a)
        }
        Cmd::Bench {
            which: Bench::E2e,
            e2e,
            ..
        } => {
            xtask::setup::all()?;
            cargo(&["build", "--release", "-p", "light-user"])?;
            xtask::compare::run(&e2e)
        }
        Cmd::Bench {
            which: Bench::Rx,
            packets,
            e2e,
        } => {
            xtask::setup::all()?;
            cargo(&["build", "--release", "-p", "light-user"])?;
            xtask::bench::rx(packets, &e2e.mtus)
        }
    }
}
