//! Installs what building and testing Light needs, idempotently: nightly `rust-src`,
//! `bpf-linker` built against the nightly toolchain's LLVM 22, and Debian packages.
//! Every step checks first, so a second run takes well under a second.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Debian packages the testbed and tests use (ping checks that XDP passes other traffic): (command that proves it is there, package).
const DEBIAN: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("ping", "iputils-ping"),
];

fn quiet(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn loud(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start: {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(prog).is_file())
}

/// Runs every set-up step.
pub fn all() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()
}

/// The nightly toolchain (for `-Z build-std`) and its `rust-src` component.
pub fn nightly_rust_src() -> Result<()> {
    let installed = quiet(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("the nightly toolchain is missing: `rustup toolchain install nightly` first")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding nightly rust-src");
        loud(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "rustup component add rust-src --toolchain nightly",
        )?;
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = quiet(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("cannot ask the nightly rustc for its sysroot")?;
    Ok(PathBuf::from(s.trim()))
}

/// `bpf-linker`, built with the nightly toolchain's own libLLVM (LLVM 22).
pub fn bpf_linker() -> Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")).is_some() {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("the nightly toolchain ships no libLLVM.so.*")?;
    // bpf-linker's build looks for LLVM_PREFIX/lib/libLLVM.so; point it at rustc's copy.
    let prefix = home().join(".cache/light/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&lib), &link)?;
    }
    eprintln!("setup: building bpf-linker against {lib} (takes a few minutes, once)");
    loud(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", &prefix),
        "cargo install bpf-linker",
    )
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// iproute2 and nftables for the namespace testbed.
pub fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {}", missing.join(" "));
    loud(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    loud(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}
