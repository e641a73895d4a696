//! Builds the XDP program (`light-ebpf`) with the nightly toolchain so the `light` binary can
//! embed it. Needs nightly `rust-src` and `bpf-linker`: `cargo xtask setup` installs both.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest
        .parent()
        .expect("light-user lives in the workspace")
        .to_path_buf();
    let ebpf_dir = root.join("light-ebpf");
    for watched in [
        "light-ebpf/src",
        "light-ebpf/Cargo.toml",
        "light-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("ebpf");

    // A nested cargo inherits the outer build's RUSTC, flags and toolchain pins; start clean.
    let mut cmd = Command::new("rustup");
    cmd.env_clear();
    for keep in ["PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME", "TMPDIR"] {
        if let Some(v) = env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let status = cmd
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "building the XDP program failed ({s}); run `cargo xtask setup` to install nightly \
             rust-src and bpf-linker, then build again"
        ),
        Err(e) => panic!("cannot run rustup to build the XDP program: {e}"),
    }
    let obj = target_dir.join("bpfel-unknown-none/release/light-xdp");
    println!("cargo:rustc-env=LIGHT_EBPF_OBJ={}", obj.display());
}
