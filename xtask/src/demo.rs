//! `cargo xtask run`: a demo delivery on test hosts. A server and receivers in network
//! namespaces on a bridge; a generated library; each receiver asks for a different file with
//! its cache filled; every copy is compared byte for byte with the original.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::{Host, Testbed};

/// What the demo does.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Number of receivers (test hosts besides the server).
    #[arg(long, default_value_t = 4)]
    pub receivers: usize,
    /// Size of each library file, in MiB.
    #[arg(long, default_value_t = 64)]
    pub file_mib: u64,
    /// Files in the demo library.
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    /// Cache budget per receiver passed to `light serve --cache` (e.g. 25%, 0).
    #[arg(long, default_value = "25%")]
    pub cache: String,
    /// Every receiver asks for the same file instead of different ones.
    #[arg(long)]
    pub same: bool,
    /// Receivers use the socket path instead of XDP.
    #[arg(long)]
    pub no_xdp: bool,
    /// Send rate passed to `light serve --rate`.
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// Link MTU of the test hosts.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Keep the demo's files (library, outputs) in this directory instead of a temporary one.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Instead of the demo, run the built `light` with these arguments on this host's real
    /// interfaces, e.g. `cargo xtask run -- serve --library /srv/lib -k 8 --cache 25%`.
    #[arg(last = true)]
    pub light_args: Vec<String>,
}

/// The release `light` binary `cargo xtask build` makes.
pub fn light_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/light")
}

/// Deterministic pseudo-random bytes (xorshift), so files differ and do not compress.
pub fn fill_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

struct Guard(Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One session on the testbed: what to run.
#[derive(Clone, Debug)]
pub struct SessionSpec {
    /// The `light` binary.
    pub light: PathBuf,
    /// Library directory (already holding the files).
    pub library: PathBuf,
    /// Working directory for outputs and caches.
    pub work: PathBuf,
    /// Content each receiver asks for (library-relative path), one per receiver.
    pub demands: Vec<String>,
    /// Receivers the server waits for (defaults to `demands.len()` when 0).
    pub expect: usize,
    /// `--cache` for the server.
    pub cache: String,
    /// `--rate` for the server.
    pub rate: String,
    /// Receivers use the socket path.
    pub no_xdp: bool,
    /// Test-host MTU.
    pub mtu: u32,
    /// Seconds the server waits for the receivers (`--wait`).
    pub wait_secs: u32,
    /// Extra `light serve` arguments.
    pub serve_args: Vec<String>,
    /// Extra `light receive` arguments per receiver (missing entries: none).
    pub receive_args: Vec<Vec<String>>,
}

/// What a receiver process did.
#[derive(Debug)]
pub struct ReceiverRun {
    /// It exited 0.
    pub ok: bool,
    /// Its stdout (the JSON summary) or its stderr when it failed.
    pub output: String,
    /// Its output file equals the library's file byte for byte.
    pub identical: bool,
}

/// What a session did.
#[derive(Debug)]
pub struct SessionRun {
    /// The server exited 0.
    pub server_ok: bool,
    /// The server's stdout (its report).
    pub report: String,
    /// Per receiver, in `demands` order.
    pub receivers: Vec<ReceiverRun>,
}

fn collect(c: &mut Child, deadline: Instant) -> Result<(bool, String, String)> {
    loop {
        if let Some(status) = c.try_wait()? {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = c.stdout.take() {
                std::io::Read::read_to_string(&mut o, &mut out)?;
            }
            if let Some(mut e) = c.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            return Ok((status.success(), out, err));
        }
        if Instant::now() > deadline {
            bail!("session did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a server and one receiver per demand on `bed`, waits for all of them (bounded),
/// and compares every output with the library's file.
pub fn run_session(bed: &Testbed, spec: &SessionSpec) -> Result<SessionRun> {
    spawn_session(bed, spec)?.wait(Duration::from_secs(600))
}

/// A session whose processes are running (killed on drop).
pub struct Running {
    procs: Guard,
    spec: SessionSpec,
    server: Host,
    receivers: Vec<Host>,
}

impl Running {
    /// Process id of the server (`ip netns exec` execs `light`, so it is light's pid).
    pub fn server_pid(&self) -> u32 {
        self.procs.0[0].id()
    }

    /// Process id of receiver `i` (0-based, in `demands` order).
    pub fn receiver_pid(&self, i: usize) -> u32 {
        self.procs.0[i + 1].id()
    }

    /// Starts receiver `i` again, as it was started (after it was killed): its outcome is
    /// the new process's.
    pub fn restart_receiver(&mut self, i: usize) -> Result<()> {
        let old = &mut self.procs.0[i + 1];
        let _ = old.kill();
        let _ = old.wait();
        self.procs.0[i + 1] = spawn_receiver(&self.server, &self.receivers, &self.spec, i)?;
        Ok(())
    }

    /// Waits (at most `limit`) for every process and compares every output with the library.
    pub fn wait(mut self, limit: Duration) -> Result<SessionRun> {
        let deadline = Instant::now() + limit;
        let (server_ok, report, _) = collect(&mut self.procs.0[0], deadline)?;
        let mut receivers = Vec::new();
        for (i, want) in self.spec.demands.iter().enumerate() {
            let (ok, out, err) = collect(&mut self.procs.0[i + 1], deadline)?;
            let got = self.spec.work.join(format!("out-{i}")).join(want);
            let identical =
                ok && fs::read(&got).ok() == fs::read(self.spec.library.join(want)).ok();
            receivers.push(ReceiverRun {
                ok,
                output: if ok { out } else { err },
                identical,
            });
        }
        Ok(SessionRun {
            server_ok,
            report,
            receivers,
        })
    }
}

/// The control address servers listen on in the testbed.
fn control_addr(bed: &Testbed) -> String {
    format!("{}:7700", bed.server.addr)
}

/// Starts `light serve` for `spec` on `bed`'s server host; its stdout (the report) is piped.
pub fn spawn_server(bed: &Testbed, spec: &SessionSpec) -> Result<Child> {
    let expect = if spec.expect == 0 {
        spec.demands.len()
    } else {
        spec.expect
    };
    Command::new("ip")
        .args(["netns", "exec", &bed.server.ns])
        .arg(&spec.light)
        .args(["serve", "--library"])
        .arg(&spec.library)
        .args([
            "--receivers",
            &expect.to_string(),
            "--cache",
            &spec.cache,
            "--rate",
            &spec.rate,
        ])
        .args(["--iface", &bed.server.iface, "--bind", &control_addr(bed)])
        .args(["--wait", &spec.wait_secs.to_string()])
        .args(["--mtu", &spec.mtu.to_string()])
        .args(&spec.serve_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start light serve")
}

/// Runs `light cache fill` for every receiver of `spec` on its own host, in parallel, into
/// the cache directory its `light receive` uses; returns each one's success and output.
pub fn fill_caches(bed: &Testbed, spec: &SessionSpec) -> Result<Vec<(bool, String)>> {
    let mut procs = Guard(Vec::new());
    for (i, r) in bed.receivers.iter().take(spec.demands.len()).enumerate() {
        procs.0.push(
            Command::new("ip")
                .args(["netns", "exec", &r.ns])
                .arg(&spec.light)
                .args(["cache", "fill", &(i + 1).to_string(), "--json"])
                .args(["--server", &control_addr(bed), "--cache-dir"])
                .arg(spec.work.join(format!("cache-{i}")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("start light cache fill")?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    procs
        .0
        .iter_mut()
        .map(|c| {
            let (ok, out, err) = collect(c, deadline)?;
            Ok((ok, if ok { out } else { err }))
        })
        .collect()
}

/// Starts a server and one receiver per demand on `bed` and returns at once.
pub fn spawn_session(bed: &Testbed, spec: &SessionSpec) -> Result<Running> {
    ensure!(
        spec.demands.len() <= bed.receivers.len(),
        "more demands than test hosts"
    );
    let mut procs = Guard(Vec::new());
    procs.0.push(spawn_server(bed, spec)?);
    for i in 0..spec.demands.len() {
        let _ = fs::remove_dir_all(spec.work.join(format!("out-{i}")));
        procs
            .0
            .push(spawn_receiver(&bed.server, &bed.receivers, spec, i)?);
    }
    Ok(Running {
        procs,
        spec: spec.clone(),
        server: bed.server.clone(),
        receivers: bed.receivers.clone(),
    })
}

/// Starts receiver `i` of `spec` (id i + 1) on its test host; its output goes to
/// `WORK/out-i`, its cache to `WORK/cache-i`.
fn spawn_receiver(
    server: &Host,
    receivers: &[Host],
    spec: &SessionSpec,
    i: usize,
) -> Result<Child> {
    let r = &receivers[i];
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &r.ns])
        .arg(&spec.light)
        .args(["receive", &(i + 1).to_string(), "-c", &spec.demands[i]])
        .args([
            "--server",
            &format!("{}:7700", server.addr),
            "--iface",
            &r.iface,
        ])
        .args(["--json", "--out"])
        .arg(spec.work.join(format!("out-{i}")))
        .arg("--cache-dir")
        .arg(spec.work.join(format!("cache-{i}")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if spec.no_xdp {
        cmd.arg("--no-xdp");
    }
    cmd.args(spec.receive_args.get(i).into_iter().flatten());
    cmd.spawn().context("start light receive")
}

/// Runs the demo and prints the server's report and each receiver's outcome.
pub fn run(a: &DemoArgs) -> Result<()> {
    if !a.light_args.is_empty() {
        let status = Command::new(light_bin())
            .args(&a.light_args)
            .status()
            .context("run light")?;
        ensure!(
            status.success(),
            "light {} failed ({status})",
            a.light_args.join(" ")
        );
        return Ok(());
    }
    crate::netns::require_root()?;
    ensure!(
        a.files >= 1 && a.receivers >= 1,
        "need at least one file and one receiver"
    );
    let tmp;
    let work = match &a.workdir {
        Some(w) => w.clone(),
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let lib = work.join("library");
    fs::create_dir_all(&lib)?;
    eprintln!(
        "demo: writing {} files of {} MiB in {}",
        a.files,
        a.file_mib,
        lib.display()
    );
    for i in 0..a.files {
        let p = lib.join(format!("file-{i}.bin"));
        if fs::metadata(&p).map(|m| m.len()).ok() != Some(a.file_mib << 20) {
            fill_file(&p, a.file_mib << 20, i as u64 + 1)?;
        }
    }
    let bed = Testbed::new(a.receivers, a.mtu)?;
    let spec = SessionSpec {
        light: light_bin(),
        library: lib,
        work,
        demands: (0..a.receivers)
            .map(|i| format!("file-{}.bin", if a.same { 0 } else { i % a.files }))
            .collect(),
        expect: 0,
        cache: a.cache.clone(),
        rate: a.rate.clone(),
        no_xdp: a.no_xdp,
        mtu: a.mtu,
        wait_secs: 60,
        serve_args: Vec::new(),
        receive_args: Vec::new(),
    };
    let run = run_session(&bed, &spec)?;
    println!("{}", run.report.trim_end());
    let mut failed = !run.server_ok;
    for (i, r) in run.receivers.iter().enumerate() {
        failed |= !r.identical;
        println!(
            "receiver {}: {} {}",
            i + 1,
            if r.identical {
                "VERIFIED (identical to the library copy)"
            } else {
                "FAILED"
            },
            r.output.trim()
        );
    }
    if failed {
        bail!("demo delivery failed");
    }
    Ok(())
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("light-demo-{}", std::process::id()));
        fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
