//! `cargo xtask fuzz`: installs `cargo-fuzz` and runs every target of the `fuzz/` crate for a
//! bounded time, each on a scratch copy of its committed seed corpus (so a run never grows
//! the corpus in the repository), failing with the target and crash artifact on a crash.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The repository root (this crate lives in `xtask/`).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the repository")
        .to_path_buf()
}

/// `cargo +nightly fuzz <args>` from the repository root, with the outer cargo's toolchain
/// pins removed so that `+nightly` and cargo-fuzz's own nested cargo agree.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .arg("fuzz")
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null());
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "CARGO"] {
        cmd.env_remove(var);
    }
    cmd
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs `cargo-fuzz` unless `cargo +nightly fuzz --version` already works.
pub fn install() -> Result<()> {
    if !succeeds(Command::new("rustc").args(["+nightly", "--version"])) {
        bail!("fuzzing needs the nightly toolchain: run `cargo xtask setup` first");
    }
    if succeeds(&mut cargo_fuzz(&["--version"])) {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz (takes a minute or two, once)");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .stdin(Stdio::null())
        .status()
        .context("cannot start `cargo install cargo-fuzz`")?;
    if !status.success() {
        bail!("`cargo install cargo-fuzz --locked` failed ({status})");
    }
    if !succeeds(&mut cargo_fuzz(&["--version"])) {
        bail!("cargo-fuzz was installed but `cargo +nightly fuzz --version` still fails");
    }
    Ok(())
}

/// The fuzz targets registered in `fuzz/Cargo.toml`.
fn targets() -> Result<Vec<String>> {
    let out = cargo_fuzz(&["list"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `cargo fuzz list`")?;
    if !out.status.success() {
        bail!("`cargo fuzz list` failed ({})", out.status);
    }
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        bail!("`cargo fuzz list` names no fuzz targets");
    }
    Ok(list)
}

/// Copies the committed seeds of `target` into a fresh `dir`; returns how many.
fn copy_corpus(target: &str, dir: &Path) -> Result<usize> {
    let seeds = root().join("fuzz/corpus").join(target);
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut n = 0;
    // A target without committed seeds starts from libFuzzer's empty input.
    if let Ok(entries) = fs::read_dir(&seeds) {
        for e in entries {
            let e = e.with_context(|| format!("read {}", seeds.display()))?;
            if e.file_type()?.is_file() {
                fs::copy(e.path(), dir.join(e.file_name()))
                    .with_context(|| format!("copy {}", e.path().display()))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// What one libFuzzer run printed that matters.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    runs: Option<u64>,
    exec_per_sec: Option<u64>,
    artifact: Option<String>,
}

/// Extracts the final statistics (`-print_final_stats=1`) and a crash artifact path.
fn parse_log(log: &str) -> Outcome {
    let mut o = Outcome::default();
    for line in log.lines() {
        let stat = |name: &str| {
            line.strip_prefix(name)
                .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
        };
        if let Some(v) = stat("stat::number_of_executed_units") {
            o.runs = Some(v);
        } else if let Some(v) = stat("stat::average_exec_per_sec") {
            o.exec_per_sec = Some(v);
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            o.artifact = Some(path.trim().to_owned());
        }
    }
    o
}

/// What to show of a failed run: from the first panic or sanitizer report on (30 lines),
/// since cargo-fuzz's own summary and backtrace fill the end of the log; else the end.
fn excerpt(log: &str) -> String {
    const MARKS: [&str; 3] = ["panicked at", "==ERROR:", "ERROR: libFuzzer"];
    let lines: Vec<&str> = log.lines().collect();
    let from = lines
        .iter()
        .position(|l| MARKS.iter().any(|m| l.contains(m)))
        .unwrap_or(lines.len().saturating_sub(30));
    lines[from..lines.len().min(from + 30)].join("\n")
}

/// Runs every fuzz target for `seconds_per_target` seconds; fails naming each target that
/// crashed (or hung, or ran out of memory) and the input libFuzzer saved for it.
pub fn run(seconds_per_target: u64) -> Result<()> {
    if seconds_per_target == 0 {
        // libFuzzer reads -max_total_time=0 as "no limit".
        bail!("fuzz time per target must be at least one second");
    }
    install()?;
    let targets = targets()?;
    eprintln!("fuzz: building {} targets", targets.len());
    let status = cargo_fuzz(&["build"])
        .status()
        .context("cannot run `cargo fuzz build`")?;
    if !status.success() {
        bail!("`cargo fuzz build` failed ({status})");
    }
    let scratch = std::env::temp_dir().join(format!("light-fuzz-{}", std::process::id()));
    let mut failures = Vec::new();
    for target in &targets {
        let corpus = scratch.join(target);
        let seeds = copy_corpus(target, &corpus)?;
        let corpus_arg = corpus.to_str().context("non-UTF-8 temporary directory")?;
        let max_time = format!("-max_total_time={seconds_per_target}");
        let out = cargo_fuzz(&["run", target, corpus_arg, "--"])
            .args([&max_time, "-print_final_stats=1", "-timeout=20"])
            .output()
            .with_context(|| format!("cannot run `cargo fuzz run {target}`"))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let o = parse_log(&log);
        let grown = fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        let _ = fs::remove_dir_all(&corpus);
        let fmt = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        if out.status.success() {
            println!(
                "fuzz {target:<16} ok     {:>9} exec/s  {:>11} runs  corpus {seeds} -> {grown}",
                fmt(o.exec_per_sec),
                fmt(o.runs),
            );
            continue;
        }
        println!("fuzz {target:<16} FAILED ({})", out.status);
        eprintln!("---- `cargo fuzz run {target}` ----\n{}", excerpt(&log));
        failures.push(match o.artifact {
            Some(a) => format!(
                "{target}: crash input saved as {a} (reproduce: cargo +nightly fuzz run {target} {a})"
            ),
            None => format!("{target}: `cargo fuzz run` failed ({}) without a crash input", out.status),
        });
    }
    let _ = fs::remove_dir_all(&scratch);
    println!(
        "fuzz: {} passed, {} failed",
        targets.len() - failures.len(),
        failures.len()
    );
    if !failures.is_empty() {
        bail!("fuzzing found failures:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_final_stats_and_artifact() {
        let log = "#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   ==1== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='/r/fuzz/artifacts/header_parse/'; Test unit written to \
                   /r/fuzz/artifacts/header_parse/crash-da39a3ee\n\
                   stat::number_of_executed_units: 123456\n\
                   stat::average_exec_per_sec:     2057\n\
                   stat::new_units_added:          12\n";
        assert_eq!(
            parse_log(log),
            Outcome {
                runs: Some(123_456),
                exec_per_sec: Some(2057),
                artifact: Some("/r/fuzz/artifacts/header_parse/crash-da39a3ee".to_owned()),
            }
        );
        assert_eq!(
            parse_log("Done 5 runs in 1 second(s)\n"),
            Outcome::default()
        );
    }

    #[test]
    fn excerpt_starts_at_the_panic() {
        let log = "#1 INITED\n#2 NEW\nthread '<unnamed>' panicked at x.rs:1:2:\nboom\n==9== ERROR: libFuzzer: deadly signal\n";
        assert!(excerpt(log).starts_with("thread '<unnamed>' panicked at x.rs:1:2:\nboom\n"));
        let quiet: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert!(excerpt(&quiet).starts_with("line 20\n"));
        assert!(excerpt(&quiet).ends_with("line 49"));
    }
}
