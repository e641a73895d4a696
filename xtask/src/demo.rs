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

use crate::netns::Testbed;

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
}

fn light_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/light")
}

/// Deterministic pseudo-random bytes (xorshift), so files differ and do not compress.
fn fill_file(path: &Path, len: u64, seed: u64) -> Result<()> {
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

/// Runs the demo and prints the server's report and each receiver's outcome.
pub fn run(a: &DemoArgs) -> Result<()> {
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
    let light = light_bin();
    let ctl = format!("{}:7700", bed.server.addr);
    let mut procs = Guard(Vec::new());
    let server = Command::new("ip")
        .args(["netns", "exec", &bed.server.ns])
        .arg(&light)
        .args(["serve", "--library"])
        .arg(&lib)
        .args([
            "--receivers",
            &a.receivers.to_string(),
            "--cache",
            &a.cache,
            "--rate",
            &a.rate,
        ])
        .args(["--iface", &bed.server.iface, "--bind", &ctl, "--wait", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .context("start light serve")?;
    procs.0.push(server);
    let mut outs = Vec::new();
    for (i, r) in bed.receivers.iter().enumerate() {
        let want = if a.same { 0 } else { i % a.files };
        let out = work.join(format!("out-{i}"));
        let cache = work.join(format!("cache-{i}"));
        let _ = fs::remove_dir_all(&out);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &r.ns])
            .arg(&light)
            .args([
                "receive",
                &(i + 1).to_string(),
                "-c",
                &format!("file-{want}.bin"),
            ])
            .args(["--server", &ctl, "--iface", &r.iface, "--json", "--out"])
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache)
            .stdout(Stdio::piped());
        if a.no_xdp {
            cmd.arg("--no-xdp");
        }
        // Let the server bind before the first connect; receivers also retry on their own.
        std::thread::sleep(Duration::from_millis(if i == 0 { 300 } else { 20 }));
        procs.0.push(cmd.spawn().context("start light receive")?);
        outs.push((out, want));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut results = Vec::new();
    for c in procs.0.iter_mut() {
        loop {
            if let Some(status) = c.try_wait()? {
                let mut s = String::new();
                if let Some(mut o) = c.stdout.take() {
                    std::io::Read::read_to_string(&mut o, &mut s)?;
                }
                results.push((status, s));
                break;
            }
            if Instant::now() > deadline {
                bail!("demo did not finish within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (server_status, report) = &results[0];
    println!("{}", report.trim_end());
    let mut failed = !server_status.success();
    for (i, ((status, summary), (out, want))) in results[1..].iter().zip(&outs).enumerate() {
        let name = format!("file-{want}.bin");
        let same =
            status.success() && fs::read(out.join(&name)).ok() == Some(fs::read(lib.join(&name))?);
        failed |= !same;
        println!(
            "receiver {}: {} {}",
            i + 1,
            if same { "VERIFIED" } else { "FAILED" },
            summary.trim()
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
