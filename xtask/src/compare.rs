//! `cargo xtask bench e2e`: Light against udpcast and UFTP, end to end, on the same
//! namespace testbed and the same generated files, in one run.
//!
//! Scenarios: every receiver wants the same file (empty caches); distinct demands (Light with
//! cache budgets, filled ahead with `light cache fill` and not timed, as a deployment fills
//! them off-peak, its bytes and the server's CPU for it left out of the run's figures; the
//! peers move every requested file, one transfer after the other); and the
//! same file with 1% loss towards one receiver. Light runs with `--fixed-loss`, so one
//! repetition does not inherit the parity an earlier one's loss asked for. For every tool: wall time to the last receiver,
//! goodput per receiver, bytes on the bridge, CPU seconds, medians over repetitions; every
//! copy is verified by hash and a run that does not verify is reported as failed.

mod proc;
mod report;
mod tools;
mod wire;

use std::{
    collections::HashMap,
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

pub use report::{Rep, Row};
use tools::{Job, LightRx, Settings, Tool};

use crate::netns::Testbed;

/// A tool taking part in the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum ToolName {
    /// Light, the receive path it picks itself: AF_XDP, or the socket where that is faster
    /// (jumbo frames on veth).
    Light,
    /// Light, AF_XDP receive path even where the socket is faster (`--require-xdp`).
    LightXdp,
    /// Light, socket receive path (`--no-xdp`).
    LightNoxdp,
    /// udpcast (`udp-sender` / `udp-receiver`).
    Udpcast,
    /// UFTP (`uftp` / `uftpd`).
    Uftp,
}

/// A workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Scenario {
    /// Every receiver wants the same file; caches empty.
    Same,
    /// Receiver i wants file i; Light has cache budgets, the peers have no caches.
    Cached,
    /// Like `same`, with random loss towards the first receiver.
    Loss,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Same => "same",
            Scenario::Cached => "cached",
            Scenario::Loss => "loss",
        }
    }
}

/// What the comparison runs.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Tools to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ToolName::Light, ToolName::Udpcast, ToolName::Uftp])]
    pub tools: Vec<ToolName>,
    /// Scenarios to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Scenario::Same, Scenario::Cached, Scenario::Loss])]
    pub scenarios: Vec<Scenario>,
    /// Receiver counts K.
    #[arg(long = "k", value_delimiter = ',', default_values_t = [1usize, 4, 8])]
    pub ks: Vec<usize>,
    /// Link MTUs (also `bench rx`'s).
    #[arg(
        long = "mtu",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u32).range(1280..=9000),
        default_values_t = [1500u32, 9000]
    )]
    pub mtus: Vec<u32>,
    /// Size of each file, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub file_mib: u64,
    /// Repetitions per tool and scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Quick mode: K ∈ {1, 4}, 8 MiB files, 1 repetition (overrides those flags).
    #[arg(long)]
    pub quick: bool,
    /// Loss towards the first receiver in the `loss` scenario, per mille.
    #[arg(long, default_value_t = 10)]
    pub loss_per_mille: u32,
    /// Where the JSON, Markdown and SVG results go (default: <target>/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep generated files and outputs here instead of a temporary directory; on a tmpfs
    /// (e.g. /dev/shm/bench) the disk drops out of the comparison.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The `light` binary (default: <target>/release/light).
    #[arg(long)]
    pub light_bin: Option<PathBuf>,
    /// `udp-sender --max-bitrate` (e.g. 2000m); none caps nothing.
    #[arg(long, default_value = "none")]
    pub udpcast_bitrate: String,
    /// `uftp -R` rates in Kbit/s to try (-1: as fast as the interface). UFTP runs once per
    /// rate and the targets compare Light with the fastest: at MTU 1500 UFTP is CPU-bound and
    /// the rate barely matters, at MTU 9000 the uncapped rate is twice as fast as 1 Gbit/s.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [1_000_000i64, -1],
        allow_negative_numbers = true
    )]
    pub uftp_rate_kbps: Vec<i64>,
    /// Extra `udp-sender` arguments, space-separated.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub udpcast_args: String,
    /// Extra `light serve` arguments, space-separated (e.g. `--no-packet-auth`).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub light_args: String,
    /// Extra `light receive` arguments for every receiver, space-separated (e.g.
    /// `--direct-io`).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub light_receive_args: String,
    /// Extra `uftp` arguments, space-separated.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub uftp_args: String,
    /// Let UDP GSO batches cross the bridge as one buffer. By default the server's link
    /// segments them (`ethtool -K tx-udp-segmentation off`), so the bridge, its loss rule and
    /// the receivers see MTU-sized packets as on a real wire.
    #[arg(long)]
    pub keep_udp_gso: bool,
    /// Caps the server's link at this many Mbit/s (a `tbf` qdisc on its egress), as a LAN
    /// port does: the run is then bound by the wire, not by the 2 test cores all hosts
    /// share. Receivers' links stay uncapped (none carries more than the server's). Give the
    /// peers matching rates, e.g. `--uftp-rate-kbps 950000,-1 --udpcast-bitrate 950m`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub link_mbit: Option<u32>,
    /// Longest one transfer may take, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Keep every run's logs under `<out>/logs` (failed runs' logs always go to
    /// `<out>/failed-logs`); set `RUST_LOG=info` for Light's timestamped phases.
    #[arg(long)]
    pub keep_logs: bool,
}

/// A space-separated argument string as separate arguments.
fn words(args: &str) -> Vec<String> {
    args.split_whitespace().map(String::from).collect()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Writes `len` deterministic, incompressible bytes: the BLAKE3 output stream keyed by `seed`.
pub fn generate_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut xof = blake3::Hasher::new_keyed(&key).finalize_xof();
    let mut f = std::io::BufWriter::new(
        fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        xof.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// The BLAKE3 hash of a file's contents.
pub fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn apt_get(args: &[&str]) -> Result<bool> {
    let st = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("cannot run apt-get")?;
    Ok(st.success())
}

/// Installs the Debian packages of the requested peer tools (and `ethtool` when `ethtool` is
/// set) if their programs are missing (`apt-get update` only when the first attempt fails).
pub fn ensure_packages(tools: &[ToolName], ethtool: bool) -> Result<()> {
    let missing: Vec<&str> = [
        (tools.contains(&ToolName::Udpcast), "udp-sender", "udpcast"),
        (tools.contains(&ToolName::Uftp), "uftp", "uftp"),
        (ethtool, "ethtool", "ethtool"),
    ]
    .iter()
    .filter(|(wanted, prog, _)| *wanted && !have(prog))
    .map(|(_, _, pkg)| *pkg)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("compare: installing {}", missing.join(" "));
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&missing);
    if !apt_get(&install)? {
        ensure!(apt_get(&["update"])?, "apt-get update failed");
        ensure!(apt_get(&install)?, "apt-get install {missing:?} failed");
    }
    Ok(())
}

/// Light's cache budgets for distinct demands with K receivers and a library of K files:
/// none (the baseline the cached runs are measured against), 25%, and the budgets that make
/// t = K·M/N equal 1 and 2, below a full cache, deduplicated.
pub fn cache_budgets(k: usize) -> Vec<String> {
    let mut pcts: Vec<f64> = vec![0.0, 25.0, 100.0 / k as f64, 200.0 / k as f64];
    pcts.retain(|&p| p < 100.0);
    pcts.sort_by(f64::total_cmp);
    pcts.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    pcts.iter()
        .map(|&p| {
            let t = p / 100.0 * k as f64;
            let pct = format!("{p:.2}");
            let pct = pct.trim_end_matches('0').trim_end_matches('.');
            format!(
                "{pct}% (t={})",
                format!("{t:.2}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
            )
        })
        .collect()
}

/// The `--cache` value inside a budget label (`"12.5% (t=1)"` → `"12.5%"`).
fn budget_arg(label: &str) -> &str {
    label.split(' ').next().unwrap_or(label)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// All results of one comparison run, as written to `e2e.json`.
#[derive(Serialize)]
struct Results<'a> {
    file_bytes: u64,
    reps: usize,
    loss_per_mille: u32,
    udpcast_bitrate: &'a str,
    uftp_rate_kbps: &'a [i64],
    light_args: &'a str,
    light_receive_args: &'a str,
    keep_udp_gso: bool,
    link_mbit: Option<u32>,
    rows: &'a [Row],
}

/// Runs the comparison, writes `e2e.json`, `e2e.md` and `e2e.svg` to the output directory and
/// prints the Markdown table. Fails only when the set-up fails, not when a tool's run does.
pub fn run(a: &CompareArgs) -> Result<()> {
    crate::netns::require_root()?;
    let mut a = a.clone();
    if a.quick {
        a.ks = vec![1, 4];
        a.file_mib = 8;
        a.reps = 1;
    }
    ensure!(
        !a.tools.is_empty() && !a.ks.is_empty() && a.reps >= 1,
        "need tools, K values and repetitions"
    );
    ensure!(
        !a.uftp_rate_kbps.is_empty() && a.uftp_rate_kbps.iter().all(|&r| r == -1 || r > 0),
        "UFTP rates are positive Kbit/s or -1"
    );
    ensure!(a.ks.iter().all(|&k| (1..=200).contains(&k)), "K in 1..=200");
    ensure_packages(&a.tools, !a.keep_udp_gso)?;
    let out = a.out.clone().unwrap_or_else(|| target_dir().join("bench"));
    fs::create_dir_all(&out)?;
    let _ = fs::remove_dir_all(out.join("failed-logs"));
    let _ = fs::remove_dir_all(out.join("logs"));
    let _tmp;
    let work = match &a.workdir {
        Some(w) => w.clone(),
        None => {
            let t = std::env::temp_dir().join(format!("light-compare-{}", std::process::id()));
            _tmp = TempDir(t.clone());
            t
        }
    };
    let file_bytes = a.file_mib << 20;
    let kmax = *a.ks.iter().max().expect("checked non-empty");
    let files = work.join("files");
    fs::create_dir_all(&files)?;
    let mut hashes = HashMap::new();
    for i in 0..kmax {
        let p = files.join(tools::file_name(i));
        if fs::metadata(&p).map(|m| m.len()).ok() != Some(file_bytes) {
            eprintln!("compare: writing {} ({} MiB)", p.display(), a.file_mib);
            generate_file(&p, file_bytes, i as u64 + 1)?;
        }
        hashes.insert(i, hash_file(&p)?);
    }
    let settings = Settings {
        light_bin: a
            .light_bin
            .clone()
            .unwrap_or_else(|| target_dir().join("release/light")),
        udpcast_bitrate: (a.udpcast_bitrate != "none").then(|| a.udpcast_bitrate.clone()),
        udpcast_args: words(&a.udpcast_args),
        uftp_args: words(&a.uftp_args),
        light_args: words(&a.light_args),
        light_receive_args: words(&a.light_receive_args),
        timeout: Duration::from_secs(a.timeout),
    };
    let mut rows: Vec<Row> = Vec::new();
    for &mtu in &a.mtus {
        for &k in &a.ks {
            // A library of exactly K files, so Light's budget in % of the library gives t = K·M/N.
            let library = work.join(format!("library-k{k}"));
            let _ = fs::remove_dir_all(&library);
            fs::create_dir_all(&library)?;
            for i in 0..k {
                let name = tools::file_name(i);
                fs::hard_link(files.join(&name), library.join(&name))
                    .or_else(|_| fs::copy(files.join(&name), library.join(&name)).map(|_| ()))?;
            }
            if a.tools.iter().any(|t| {
                matches!(
                    t,
                    ToolName::Light | ToolName::LightXdp | ToolName::LightNoxdp
                )
            }) {
                tools::light_pack(&settings, &library)?;
            }
            let bed = Testbed::new(k, mtu)?;
            if !a.keep_udp_gso {
                bed.segment_server_gso()?;
            }
            if let Some(mbit) = a.link_mbit {
                bed.cap_server_link(mbit)?;
            }
            for &scenario in &a.scenarios {
                let start = rows.len();
                let variants = variants(&a.tools, &a.uftp_rate_kbps, scenario, k);
                for (_, name, variant) in &variants {
                    rows.push(Row {
                        scenario: scenario.name().to_owned(),
                        mtu,
                        k,
                        tool: name.clone(),
                        variant: variant.clone(),
                        file_bytes,
                        runs: Vec::new(),
                        median: None,
                    });
                }
                let demands: Vec<usize> = match scenario {
                    Scenario::Cached => (0..k).collect(),
                    Scenario::Same | Scenario::Loss => vec![0; k],
                };
                // Repetitions interleave the tools, so slow drifts of the machine hit all alike,
                // and each repetition starts one tool later, so no tool always runs first
                // (on a VM that hands freed memory back to its host, the first writer after
                // a pause pays a host fault per fresh page).
                for rep in 0..a.reps {
                    for i in run_order(rep, variants.len()) {
                        let (tool, _, _) = &variants[i];
                        let row = &mut rows[start + i];
                        eprintln!(
                            "compare: {} MTU {mtu} K={k} {} rep {}/{}",
                            row.scenario,
                            row.label(),
                            rep + 1,
                            a.reps
                        );
                        let job = Job {
                            bed: &bed,
                            mtu,
                            library: &library,
                            demands: &demands,
                            dir: &work.join("run"),
                            fill_ahead: scenario == Scenario::Cached,
                            link_mbit: a.link_mbit,
                        };
                        let loss = (scenario == Scenario::Loss).then_some(a.loss_per_mille);
                        let r = one_rep(tool, &job, &settings, loss, &hashes, file_bytes);
                        match &r.error {
                            Some(e) => eprintln!("compare:   FAILED: {e}"),
                            None => eprintln!(
                                "compare:   verified, {:.2} s, {:.0} Mbit/s per receiver",
                                r.wall_s, r.goodput_mbit_s
                            ),
                        }
                        if r.error.is_some() {
                            keep_logs(&work.join("run"), &out.join("failed-logs"), row, rep);
                        } else if a.keep_logs {
                            keep_logs(&work.join("run"), &out.join("logs"), row, rep);
                        }
                        row.runs.push(r);
                    }
                }
                for r in &mut rows[start..] {
                    r.summarize();
                }
            }
        }
    }
    let _ = fs::remove_dir_all(work.join("run"));
    let mut md = report::markdown(&rows);
    if let Some(mbit) = a.link_mbit {
        md.insert_str(
            0,
            &format!("Server link capped at {mbit} Mbit/s (tbf).\n\n"),
        );
    }
    let json = serde_json::to_string_pretty(&Results {
        file_bytes,
        reps: a.reps,
        loss_per_mille: a.loss_per_mille,
        udpcast_bitrate: &a.udpcast_bitrate,
        uftp_rate_kbps: &a.uftp_rate_kbps,
        light_args: &a.light_args,
        light_receive_args: &a.light_receive_args,
        keep_udp_gso: a.keep_udp_gso,
        link_mbit: a.link_mbit,
        rows: &rows,
    })?;
    fs::write(out.join("e2e.json"), json)?;
    fs::write(out.join("e2e.md"), &md)?;
    report::svg(&rows, &out.join("e2e.svg"))?;
    println!("{md}");
    eprintln!("compare: results in {}/e2e.{{json,md,svg}}", out.display());
    Ok(())
}

/// The order in which repetition `rep` runs `n` tools: all of them, starting at `rep % n`.
fn run_order(rep: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |j| (rep + j) % n)
}

/// The tool configurations of a scenario: (tool, tool name, variant label).
fn variants(
    tools: &[ToolName],
    uftp_rates: &[i64],
    scenario: Scenario,
    k: usize,
) -> Vec<(Tool, String, String)> {
    let mut v = Vec::new();
    for &t in tools {
        match t {
            ToolName::Light | ToolName::LightXdp | ToolName::LightNoxdp => {
                let rx = match t {
                    ToolName::LightXdp => LightRx::Xdp,
                    ToolName::LightNoxdp => LightRx::Socket,
                    _ => LightRx::Default,
                };
                let budgets = match scenario {
                    Scenario::Cached => cache_budgets(k),
                    Scenario::Same | Scenario::Loss => vec![String::new()],
                };
                for b in budgets {
                    let cache = if b.is_empty() { "0" } else { budget_arg(&b) }.to_owned();
                    let tool = Tool::Light { cache, rx };
                    let name = tool_label(&tool).to_owned();
                    v.push((tool, name, b));
                }
            }
            ToolName::Udpcast => v.push((Tool::Udpcast, "udpcast".into(), String::new())),
            ToolName::Uftp => {
                for &rate_kbps in uftp_rates {
                    let label = uftp_rate_label(rate_kbps);
                    v.push((Tool::Uftp { rate_kbps }, "uftp".into(), label));
                }
            }
        }
    }
    v
}

/// Runs one repetition: loss rule, counters, the transfer, verification of every copy.
fn one_rep(
    tool: &Tool,
    job: &Job<'_>,
    s: &Settings,
    loss: Option<u32>,
    hashes: &HashMap<usize, blake3::Hash>,
    file_bytes: u64,
) -> Rep {
    let mut rep = Rep::default();
    let result = (|| -> Result<()> {
        wire::clear_loss(job.bed);
        if let Some(pm) = loss {
            job.bed.set_loss(0, tool.data_port(), pm)?;
        }
        let before = wire::counters(job.bed)?;
        let run = tools::run(tool, job, s);
        let after = wire::counters(job.bed)?;
        rep.loss_drops = wire::loss_drops(job.bed)?;
        wire::clear_loss(job.bed);
        let from = run
            .as_ref()
            .ok()
            .and_then(|m| m.wire_from)
            .unwrap_or(before);
        rep.wire = after.since(from).into();
        let m = run?;
        rep.wall_s = m.wall_s;
        rep.writeback_s = m.writeback_s;
        rep.sender_cpu_s = m.sender_cpu_s;
        rep.receivers_cpu_s = m.receivers_cpu_s;
        rep.delivery_s = m
            .report
            .as_ref()
            .and_then(|r| r["multicast_seconds"].as_f64());
        rep.light_report = m.report;
        rep.goodput_mbit_s = file_bytes as f64 * 8.0 / 1e6 / m.wall_s.max(1e-9);
        for (r, copy) in m.copies.iter().enumerate() {
            let want = hashes[&job.demands[r]];
            match hash_file(copy) {
                Ok(h) if h == want => {}
                Ok(_) => bail!("receiver {}: copy differs from the original", r + 1),
                Err(e) => bail!("receiver {}: no copy ({e:#})", r + 1),
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => rep.verified = true,
        Err(e) => rep.error = Some(format!("{}: failed to run ({e:#})", tool_label(tool))),
    }
    rep
}

fn tool_label(t: &Tool) -> &'static str {
    match t {
        Tool::Light {
            rx: LightRx::Default,
            ..
        } => "light",
        Tool::Light {
            rx: LightRx::Xdp, ..
        } => "light-xdp",
        Tool::Light {
            rx: LightRx::Socket,
            ..
        } => "light-noxdp",
        Tool::Udpcast => "udpcast",
        Tool::Uftp { .. } => "uftp",
    }
}

/// The variant label of a UFTP rate: `-R 1000000` → `1000 Mbit/s`, `-R -1` → `max rate`.
fn uftp_rate_label(kbps: i64) -> String {
    if kbps < 0 {
        "max rate".to_owned()
    } else {
        format!("{} Mbit/s", kbps as f64 / 1000.0)
    }
}

/// Copies a run's logs under `dir` (next to the results), for diagnosis.
fn keep_logs(run: &Path, dir: &Path, row: &Row, rep: usize) {
    let dest = dir.join(format!(
        "{}-mtu{}-k{}-{}-rep{rep}",
        row.scenario,
        row.mtu,
        row.k,
        row.label().replace([' ', '%', '(', ')', '='], "")
    ));
    if fs::create_dir_all(&dest).is_ok()
        && let Ok(entries) = fs::read_dir(run.join("logs"))
    {
        for e in entries.flatten() {
            let _ = fs::copy(e.path(), dest.join(e.file_name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_k() {
        assert_eq!(cache_budgets(1), vec!["0% (t=0)", "25% (t=0.25)"]);
        assert_eq!(cache_budgets(4), vec!["0% (t=0)", "25% (t=1)", "50% (t=2)"]);
        assert_eq!(
            cache_budgets(8),
            vec!["0% (t=0)", "12.5% (t=1)", "25% (t=2)"]
        );
        assert_eq!(budget_arg("12.5% (t=1)"), "12.5%");
    }

    #[test]
    fn generated_files_are_deterministic_and_distinct() {
        let dir = std::env::temp_dir().join(format!("compare-gen-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        generate_file(&a, 3 << 20 | 5, 1).unwrap();
        generate_file(&b, 3 << 20 | 5, 1).unwrap();
        generate_file(&c, 3 << 20 | 5, 2).unwrap();
        assert_eq!(fs::metadata(&a).unwrap().len(), 3 << 20 | 5);
        assert_eq!(hash_file(&a).unwrap(), hash_file(&b).unwrap());
        assert_ne!(hash_file(&a).unwrap(), hash_file(&c).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn each_repetition_runs_every_tool_once_and_a_different_one_first() {
        let orders: Vec<Vec<usize>> = (0..4).map(|rep| run_order(rep, 3).collect()).collect();
        assert_eq!(orders[0], [0, 1, 2]);
        assert_eq!(orders[1], [1, 2, 0]);
        assert_eq!(orders[2], [2, 0, 1]);
        assert_eq!(orders[3], orders[0]);
    }

    #[test]
    fn variants_per_scenario() {
        let all = [ToolName::Light, ToolName::Udpcast, ToolName::Uftp];
        let v = variants(&all, &[1_000_000, -1], Scenario::Cached, 8);
        let names: Vec<_> = v.iter().map(|x| format!("{} {}", x.1, x.2)).collect();
        assert_eq!(
            names,
            [
                "light 0% (t=0)",
                "light 12.5% (t=1)",
                "light 25% (t=2)",
                "udpcast ",
                "uftp 1000 Mbit/s",
                "uftp max rate"
            ]
        );
        assert_eq!(v[5].0, Tool::Uftp { rate_kbps: -1 });
        assert_eq!(
            v[1].0,
            Tool::Light {
                cache: "12.5%".into(),
                rx: LightRx::Default
            }
        );
        let same = variants(&[ToolName::LightNoxdp], &[-1], Scenario::Same, 4);
        assert_eq!(
            same[0].0,
            Tool::Light {
                cache: "0".into(),
                rx: LightRx::Socket
            }
        );
    }
}
