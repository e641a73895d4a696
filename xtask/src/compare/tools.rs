//! One transfer per tool: Light (`light serve` / `light receive`), udpcast
//! (`udp-sender` / `udp-receiver`) and UFTP (`uftp` / `uftpd`), started in the testbed's
//! namespaces with the settings that serve each best, every wait bounded.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    proc::{Exit, Proc, WaitError, wait_all, wait_exited},
    wire,
};
use crate::netns::{Host, Testbed};

/// Light's control (TCP) and multicast data (UDP) port.
pub const LIGHT_PORT: u16 = 7700;
/// udpcast's port base: the receivers listen on it, and the sender's data goes there
/// (checked with the loss rule's drop counter; the sender itself uses base+1).
pub const UDPCAST_PORTBASE: u16 = 9000;
/// udpcast's rendezvous group: the default is the interface's broadcast address, which the
/// testbed's addresses do not set.
const UDPCAST_RDV: &str = "224.0.0.1";
/// Socket buffer size for the peers' receivers: the default `net.core.rmem_max` (4 MiB),
/// large enough to ride out bursts; the host's limits are left alone.
const RCVBUF: &str = "4194304";
/// UFTP's port: clients listen on it, and the server multicasts the data to it.
pub const UFTP_PORT: u16 = 1044;

/// The receive path Light's receivers are told to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LightRx {
    /// Their own choice (AF_XDP, or the socket where that is faster).
    Default,
    /// AF_XDP, even where the socket path is faster (`--require-xdp`).
    Xdp,
    /// The socket path (`--no-xdp`).
    Socket,
}

/// Which program moves the files.
#[derive(Clone, Debug, PartialEq)]
pub enum Tool {
    /// Light; `cache` is the `--cache` budget, `rx` the receivers' receive path.
    Light {
        /// `--cache` budget (`0`, `25%`, ...).
        cache: String,
        /// Which receive path the receivers are told to take.
        rx: LightRx,
    },
    /// udpcast.
    Udpcast,
    /// UFTP at `-R rate_kbps` (-1: as fast as the interface).
    Uftp {
        /// `uftp -R` rate in Kbit/s.
        rate_kbps: i64,
    },
}

impl Tool {
    /// The UDP destination port of the tool's data packets (where loss is injected).
    pub fn data_port(&self) -> u16 {
        match self {
            Tool::Light { .. } => LIGHT_PORT,
            Tool::Udpcast => UDPCAST_PORTBASE,
            Tool::Uftp { .. } => UFTP_PORT,
        }
    }
}

/// Per-tool knobs from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `light` binary.
    pub light_bin: PathBuf,
    /// `udp-sender --max-bitrate` value, or `None` for no cap.
    pub udpcast_bitrate: Option<String>,
    /// Extra `udp-sender` arguments.
    pub udpcast_args: Vec<String>,
    /// Extra `uftp` arguments.
    pub uftp_args: Vec<String>,
    /// Extra `light serve` arguments.
    pub light_args: Vec<String>,
    /// Extra `light receive` arguments.
    pub light_receive_args: Vec<String>,
    /// Longest a single transfer may take.
    pub timeout: Duration,
}

/// One transfer set-up: who wants which file, where things go.
pub struct Job<'a> {
    /// The hosts.
    pub bed: &'a Testbed,
    /// Link MTU (the peers' block sizes and Light's `--mtu` follow it).
    pub mtu: u32,
    /// Directory holding `file-<i>.bin` for every file in the library.
    pub library: &'a Path,
    /// The library file index each receiver asks for.
    pub demands: &'a [usize],
    /// Scratch directory for outputs, caches and logs of this run (emptied first).
    pub dir: &'a Path,
    /// Light fills its receivers' caches before the timed run (`light cache fill`), as a
    /// deployment does off-peak; the timed run is the delivery session alone.
    pub fill_ahead: bool,
    /// The server link's cap in Mbit/s, if any: lifted while caches are filled ahead (not
    /// timed, off-peak), so a capped bench does not spend minutes on placement.
    pub link_mbit: Option<u32>,
}

/// What a finished transfer measured (the copies are not verified yet).
#[derive(Debug)]
pub struct Measured {
    /// Seconds from starting the sender to the last process of the transfer ending.
    pub wall_s: f64,
    /// CPU seconds of the sender(s).
    pub sender_cpu_s: f64,
    /// CPU seconds of all receivers together.
    pub receivers_cpu_s: f64,
    /// Where each receiver's copy should be.
    pub copies: Vec<PathBuf>,
    /// Light's server report (its JSON stdout), if any.
    pub report: Option<serde_json::Value>,
    /// The bridge's counters when the timed part began, for a tool that did untimed work
    /// on the wire first (Light's cache fill); `None`: counted from the start of the run.
    pub wire_from: Option<wire::Counters>,
    /// Seconds a `sync` took right after the transfer: the writeback the tool left behind
    /// (Light's receivers fsync before they exit; the peers leave their files to the page
    /// cache).
    pub writeback_s: f64,
}

/// The name of library file `i`.
pub fn file_name(i: usize) -> String {
    format!("file-{i}.bin")
}

fn ns_cmd(host: &Host, prog: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &host.ns]).arg(prog);
    c
}

fn describe(p: &Proc, e: Exit) -> String {
    let how = match e.code {
        Some(c) => format!("exited {c}"),
        None => "was killed".to_owned(),
    };
    format!("{} {how}: {}", p.name, p.stderr_excerpt(300))
}

/// Runs one tool on the job.
pub fn run(tool: &Tool, job: &Job<'_>, s: &Settings) -> Result<Measured> {
    ensure!(
        job.demands.len() == job.bed.receivers.len(),
        "one demand per receiver"
    );
    let _ = fs::remove_dir_all(job.dir);
    // Every tool starts on a quiet disk: the previous run's writeback (a tool that does
    // not fsync leaves its files dirty) is not charged to the next one.
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::create_dir_all(job.dir.join("logs"))?;
    let mut m = transfer(tool, job, s)?;
    let t = Instant::now();
    // SAFETY: as above.
    unsafe { libc::sync() };
    m.writeback_s = t.elapsed().as_secs_f64();
    Ok(m)
}

fn transfer(tool: &Tool, job: &Job<'_>, s: &Settings) -> Result<Measured> {
    match tool {
        Tool::Light { cache, rx } => light(job, s, cache, *rx),
        Tool::Udpcast | Tool::Uftp { .. } => {
            // Peers have no caches: one transfer per distinct requested file, one after the other.
            let mut files: Vec<usize> = job.demands.to_vec();
            files.sort_unstable();
            files.dedup();
            let mut total = Measured {
                wall_s: 0.0,
                sender_cpu_s: 0.0,
                receivers_cpu_s: 0.0,
                copies: vec![PathBuf::new(); job.demands.len()],
                report: None,
                wire_from: None,
                writeback_s: 0.0,
            };
            for f in files {
                let who: Vec<usize> = (0..job.demands.len())
                    .filter(|&r| job.demands[r] == f)
                    .collect();
                let m = match tool {
                    Tool::Uftp { rate_kbps } => uftp(job, s, *rate_kbps, f, &who)?,
                    _ => udpcast(job, s, f, &who)?,
                };
                total.wall_s += m.wall_s;
                total.sender_cpu_s += m.sender_cpu_s;
                total.receivers_cpu_s += m.receivers_cpu_s;
                for (r, c) in who.iter().zip(m.copies) {
                    total.copies[*r] = c;
                }
            }
            Ok(total)
        }
    }
}

fn out_dir(job: &Job<'_>, r: usize) -> Result<PathBuf> {
    let d = job.dir.join(format!("out-{r}"));
    fs::create_dir_all(&d)?;
    Ok(d)
}

fn light(job: &Job<'_>, s: &Settings, cache: &str, rx: LightRx) -> Result<Measured> {
    ensure!(
        s.light_bin.is_file(),
        "light binary not found at {} (build it: cargo build --release -p light-user)",
        s.light_bin.display()
    );
    let bed = job.bed;
    let logs = job.dir.join("logs");
    let ctl = format!("{}:{LIGHT_PORT}", bed.server.addr);
    let k = bed.receivers.len().to_string();
    let mut cmd = ns_cmd(&bed.server, &s.light_bin);
    cmd.arg("serve")
        .arg("--library")
        .arg(job.library)
        .args(["--receivers", &k, "--cache", cache, "--bind", &ctl])
        .args([
            "--iface",
            &bed.server.iface,
            "--rate",
            "max",
            // The wait covers the untimed cache fill too; the bench's own timeout bounds it.
            "--wait",
            &s.timeout.as_secs().to_string(),
            "--mtu",
            &job.mtu.to_string(),
        ])
        // Parity from --loss alone: repetitions do not inherit the loss earlier ones saw.
        .arg("--fixed-loss")
        .arg("--json")
        .args(&s.light_args);
    let mut t0 = Instant::now();
    // Receivers retry the connect until the server has bound: no head start needed.
    let mut server = Proc::spawn(cmd, "light-serve", &logs)?;
    let (mut wire_from, mut fill_cpu_s) = (None, 0.0);
    if job.fill_ahead {
        if job.link_mbit.is_some() {
            bed.uncap_server_link()?;
        }
        let filled = fill_caches(job, s, &ctl, &logs);
        // Capped again whatever the fill did: later runs on this testbed expect the cap.
        if let Some(mbit) = job.link_mbit {
            bed.cap_server_link(mbit)?;
        }
        filled?;
        eprintln!(
            "compare:   caches filled ahead in {:.2} s (not timed)",
            t0.elapsed().as_secs_f64()
        );
        // Neither the fill's bytes nor the server's CPU for it belong to the delivery.
        wire_from = Some(wire::counters(bed)?);
        fill_cpu_s = server.cpu_so_far()?;
        t0 = Instant::now();
    }
    let mut receivers = Vec::new();
    let mut copies = Vec::new();
    for (r, host) in bed.receivers.iter().enumerate() {
        let name = file_name(job.demands[r]);
        let out = out_dir(job, r)?;
        let cache_dir = job.dir.join(format!("cache-{r}"));
        let mut cmd = ns_cmd(host, &s.light_bin);
        cmd.args(["receive", &(r + 1).to_string(), "-c", &name])
            .args(["--server", &ctl, "--iface", &host.iface, "--json"])
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache_dir);
        match rx {
            LightRx::Default => {}
            LightRx::Xdp => {
                cmd.arg("--require-xdp");
            }
            LightRx::Socket => {
                cmd.arg("--no-xdp");
            }
        }
        cmd.args(&s.light_receive_args);
        receivers.push(Proc::spawn(cmd, &format!("light-receive-{r}"), &logs)?);
        copies.push(out.join(name));
    }
    let mut all = sender_and(&mut server, &mut receivers);
    let mut m = finish(&mut all, t0, s, copies, true)?;
    m.sender_cpu_s -= fill_cpu_s;
    m.wire_from = wire_from;
    m.report = serde_json::from_str(server.stdout_text().trim()).ok();
    Ok(m)
}

/// Runs `light cache fill` on every receiver, all at once, and waits for them.
fn fill_caches(job: &Job<'_>, s: &Settings, ctl: &str, logs: &Path) -> Result<()> {
    let mut fills = Vec::new();
    for (r, host) in job.bed.receivers.iter().enumerate() {
        let mut cmd = ns_cmd(host, &s.light_bin);
        cmd.args(["cache", "fill", &(r + 1).to_string(), "--server", ctl])
            .arg("--cache-dir")
            .arg(job.dir.join(format!("cache-{r}")));
        fills.push(Proc::spawn(cmd, &format!("light-fill-{r}"), logs)?);
    }
    let mut refs: Vec<&mut Proc> = fills.iter_mut().collect();
    match wait_all(&mut refs, Instant::now() + s.timeout) {
        Ok(()) => Ok(()),
        Err(WaitError::Timeout) => bail!("light cache fill timed out"),
        Err(WaitError::Failed(i)) => {
            let e = refs[i].poll().context("a failed fill has an exit")?;
            bail!("{}", describe(refs[i], e));
        }
    }
}

/// Indexes a library with `light pack` (content ids, chunk hashes), as a deployment does once
/// before serving it; `light serve` then only checks that nothing changed. Not timed: the
/// peers have no index to build either.
pub fn light_pack(s: &Settings, library: &Path) -> Result<()> {
    // `light pack` does not trust the stamp of a file modified less than 2 s before it
    // runs (git's "racily clean" rule) and leaves it to be re-hashed by the next pack,
    // which is `light serve`'s, inside the timed run. A library is packed long after its
    // files are written in a deployment, so the files just generated are let settle first.
    let settled = newest_mtime(library)? + PACK_SETTLE;
    if let Ok(wait) = settled.duration_since(SystemTime::now()) {
        thread::sleep(wait);
    }
    let st = Command::new(&s.light_bin)
        .arg("pack")
        .arg(library)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", s.light_bin.display()))?;
    ensure!(
        st.success(),
        "light pack {} failed: {st}",
        library.display()
    );
    Ok(())
}

/// Age past which `light pack` trusts a file's stamp (its racy window, 2 s, plus margin).
const PACK_SETTLE: Duration = Duration::from_millis(2500);

/// The latest modification time of the files directly in `dir`.
fn newest_mtime(dir: &Path) -> Result<SystemTime> {
    let mut newest = SystemTime::UNIX_EPOCH;
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let m = e?.metadata()?;
        if m.is_file() {
            newest = newest.max(m.modified()?);
        }
    }
    Ok(newest)
}

fn udpcast(job: &Job<'_>, s: &Settings, file: usize, who: &[usize]) -> Result<Measured> {
    let bed = job.bed;
    let logs = job.dir.join("logs");
    let base = UDPCAST_PORTBASE.to_string();
    let secs = s.timeout.as_secs().max(1).to_string();
    let mut receivers = Vec::new();
    let mut copies = Vec::new();
    for &r in who {
        let host = &bed.receivers[r];
        let copy = out_dir(job, r)?.join(file_name(file));
        let mut cmd = ns_cmd(host, Path::new("udp-receiver"));
        cmd.arg("--file")
            .arg(&copy)
            .args(["--interface", &host.iface, "--portbase", &base])
            .args(["--mcast-rdv-address", UDPCAST_RDV])
            .args(["--nokbd", "--no-progress", "--start-timeout", &secs])
            .args(["--receive-timeout", "30", "--exit-wait", "100"])
            .args(["--rcvbuf", RCVBUF]);
        receivers.push(Proc::spawn(
            cmd,
            &format!("udp-receiver-{r}-f{file}"),
            &logs,
        )?);
        copies.push(copy);
    }
    // The receivers announce themselves once bound; the sender starts when all are there.
    thread::sleep(Duration::from_millis(200));
    let mut cmd = ns_cmd(&bed.server, Path::new("udp-sender"));
    // Jumbo frames carry bigger blocks (measured: less CPU and overhead at MTU 9000).
    cmd.args(["--blocksize", &block_size(job.mtu).to_string()])
        .arg("--file")
        .arg(job.library.join(file_name(file)))
        .args(["--interface", &bed.server.iface, "--portbase", &base])
        .args(["--mcast-rdv-address", UDPCAST_RDV])
        .args(["--min-receivers", &who.len().to_string()])
        .args(["--nokbd", "--no-progress", "--start-timeout", "30"])
        .args(&s.udpcast_args);
    if let Some(rate) = &s.udpcast_bitrate {
        cmd.args(["--max-bitrate", rate]);
    }
    let t0 = Instant::now();
    let mut sender = Proc::spawn(cmd, &format!("udp-sender-f{file}"), &logs)?;
    finish(
        &mut sender_and(&mut sender, &mut receivers),
        t0,
        s,
        copies,
        true,
    )
}

fn uftp(
    job: &Job<'_>,
    s: &Settings,
    rate_kbps: i64,
    file: usize,
    who: &[usize],
) -> Result<Measured> {
    let bed = job.bed;
    let logs = job.dir.join("logs");
    let port = UFTP_PORT.to_string();
    let uid = |r: usize| format!("0x{:08x}", r + 1);
    let mut receivers = Vec::new();
    let mut copies = Vec::new();
    for &r in who {
        let host = &bed.receivers[r];
        let out = out_dir(job, r)?;
        let mut cmd = ns_cmd(host, Path::new("uftpd"));
        // -d: stay in the foreground (we own the PID); -q: no DNS lookup of the server.
        cmd.args(["-d", "-q", "-x", "1", "-p", &port, "-I", &host.iface])
            .args(["-U", &uid(r), "-B", RCVBUF, "-D"])
            .arg(&out);
        receivers.push(Proc::spawn(cmd, &format!("uftpd-{r}-f{file}"), &logs)?);
        copies.push(out.join(file_name(file)));
    }
    thread::sleep(Duration::from_millis(500));
    let ids: Vec<String> = who.iter().map(|&r| uid(r)).collect();
    let block = block_size(job.mtu).to_string();
    let mut cmd = ns_cmd(&bed.server, Path::new("uftp"));
    cmd.args(["-x", "1", "-p", &port, "-I", &bed.server.iface])
        .args(["-R", &rate_kbps.to_string(), "-b", &block])
        .args(["-B", RCVBUF, "-H", &ids.join(",")])
        .args(&s.uftp_args)
        .arg(job.library.join(file_name(file)));
    let t0 = Instant::now();
    let mut sender = Proc::spawn(cmd, &format!("uftp-f{file}"), &logs)?;
    // uftpd is a daemon: the transfer ends when the server has every client's completion.
    let waited = wait_all(&mut [&mut sender], t0 + s.timeout);
    for r in &mut receivers {
        r.stop();
    }
    match waited {
        Err(WaitError::Timeout) => bail!("timed out after {:?}", s.timeout),
        _ => finish(
            &mut sender_and(&mut sender, &mut receivers),
            t0,
            s,
            copies,
            false,
        ),
    }
}

/// Peers' data block size: a little below the MTU, as UFTP's manual advises (room for the
/// IP, UDP and tool headers); udpcast's default 1456 fits MTU 1500 the same way.
fn block_size(mtu: u32) -> u32 {
    (mtu - 200).max(1024)
}

fn sender_and<'p>(sender: &'p mut Proc, receivers: &'p mut [Proc]) -> Vec<&'p mut Proc> {
    std::iter::once(sender)
        .chain(receivers.iter_mut())
        .collect()
}

/// Waits for sender (first) and receivers and checks their exits; `receivers_end` says whether
/// the receivers' exits count (not for daemons that we stop ourselves).
fn finish(
    all: &mut [&mut Proc],
    t0: Instant,
    s: &Settings,
    copies: Vec<PathBuf>,
    receivers_end: bool,
) -> Result<Measured> {
    let counted = if receivers_end { all.len() } else { 1 };
    match wait_all(&mut all[..counted], t0 + s.timeout) {
        Ok(()) => {}
        Err(WaitError::Timeout) => bail!("timed out after {:?}", s.timeout),
        Err(WaitError::Failed(i)) => {
            // The others often fail for the same reason a moment later (a server reports only
            // that a receiver failed; the receiver says why): give them a little time.
            wait_exited(
                &mut all[..counted],
                Instant::now() + Duration::from_secs(10),
            );
            let mut why: Vec<String> = Vec::new();
            for j in std::iter::once(i).chain(0..counted) {
                if let Some(e) = all[j].poll().filter(|e| e.code != Some(0)) {
                    let d = describe(all[j], e);
                    if !why.contains(&d) && why.len() < 2 {
                        why.push(d);
                    }
                }
            }
            bail!("{}", why.join("; "))
        }
    }
    let mut end = t0;
    let mut cpu = Vec::new();
    for (i, p) in all.iter_mut().enumerate() {
        let e = p.poll().unwrap_or_else(|| p.stop());
        if i < counted {
            end = end.max(e.at);
        }
        cpu.push(e.cpu_s);
    }
    Ok(Measured {
        wall_s: (end - t0).as_secs_f64(),
        sender_cpu_s: cpu[0],
        receivers_cpu_s: cpu[1..].iter().sum(),
        copies,
        report: None,
        wire_from: None,
        writeback_s: 0.0,
    })
}
