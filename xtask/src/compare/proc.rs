//! Child processes of one transfer: output to log files, reaped with `wait4` so their CPU
//! time is known, every wait bounded, and anything still running killed by PID on drop.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// How a process ended.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// Exit code, or `None` when a signal ended it.
    pub code: Option<i32>,
    /// User plus system CPU seconds of the process.
    pub cpu_s: f64,
    /// When it was reaped.
    pub at: Instant,
}

/// A started process (`ip netns exec` execs in place, so the PID is the tool's own).
pub struct Proc {
    /// Short name for messages.
    pub name: String,
    pid: libc::pid_t,
    /// Its stdout, captured in a file.
    pub stdout: PathBuf,
    /// Its stderr, captured in a file.
    pub stderr: PathBuf,
    exit: Option<Exit>,
}

fn cpu_seconds(ru: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds. The command name in brackets
/// may hold spaces and brackets, so fields are counted from its last `)`: state is field 3,
/// utime 14, stime 15.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout/stderr in `logs/<name>.{out,err}`.
    pub fn spawn(mut cmd: Command, name: &str, logs: &Path) -> Result<Self> {
        let stdout = logs.join(format!("{name}.out"));
        let stderr = logs.join(format!("{name}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        // Dropping a std Child neither waits nor kills; this process is reaped by wait4 below.
        let pid = child.id() as libc::pid_t;
        drop(child);
        Ok(Self {
            name: name.to_owned(),
            pid,
            stdout,
            stderr,
            exit: None,
        })
    }

    /// User plus system CPU seconds the running process has used so far (from
    /// `/proc/<pid>/stat`); 0 once it has been reaped.
    pub fn cpu_so_far(&self) -> Result<f64> {
        if self.exit.is_some() {
            return Ok(0.0);
        }
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        stat_cpu_seconds(&stat).with_context(|| format!("{path} has no CPU times: {stat:?}"))
    }

    fn reap(&mut self, flags: libc::c_int) -> Option<Exit> {
        if self.exit.is_some() {
            return self.exit;
        }
        let mut status = 0;
        // SAFETY: rusage is plain old data that wait4 fills in; zeroed is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointers; pid is our own unreaped child.
        let r = unsafe { libc::wait4(self.pid, &mut status, flags, &mut ru) };
        if r == self.pid {
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            self.exit = Some(Exit {
                code,
                cpu_s: cpu_seconds(&ru),
                at: Instant::now(),
            });
        } else if r < 0 {
            // Not our child any more (cannot happen unless reaped elsewhere): stop tracking it.
            self.exit = Some(Exit {
                code: None,
                cpu_s: 0.0,
                at: Instant::now(),
            });
        }
        self.exit
    }

    /// Its exit, if it has ended (non-blocking).
    pub fn poll(&mut self) -> Option<Exit> {
        self.reap(libc::WNOHANG)
    }

    /// Sends SIGTERM (so tools can close cleanly), waits up to 3 s, then SIGKILL; returns the exit.
    pub fn stop(&mut self) -> Exit {
        if let Some(e) = self.poll() {
            return e;
        }
        // SAFETY: signalling our own unreaped child; its PID cannot be reused before wait4.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Some(e) = self.poll() {
                return e;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        self.reap(0).unwrap_or(Exit {
            code: None,
            cpu_s: 0.0,
            at: Instant::now(),
        })
    }

    /// Up to `n` bytes of stderr for a failure message: from the first line that reports an
    /// error or panic (what follows is often a backtrace), else its end.
    pub fn stderr_excerpt(&self, n: usize) -> String {
        excerpt(
            &String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default()),
            n,
        )
    }

    /// Its whole stdout.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

/// Waits until every process in `procs` has exited, however it ended, or `deadline` passes;
/// returns whether all exited.
pub fn wait_exited(procs: &mut [&mut Proc], deadline: Instant) -> bool {
    loop {
        if procs.iter_mut().all(|p| p.poll().is_some()) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Removes ANSI colour sequences (`ESC [ ... letter`), which tracing puts in its logs.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Up to `n` bytes of `text` on one line, without colours or backtrace: from the first line
/// that starts an error report (`Error…`, a panic), else the first mentioning an error or
/// failure, else the last `n` bytes.
pub fn excerpt(text: &str, n: usize) -> String {
    let text = strip_ansi(text);
    let text = text.split("Stack backtrace:").next().unwrap_or_default();
    let offset = |l: &str| l.as_ptr() as usize - text.as_ptr() as usize;
    let report = text
        .lines()
        .find(|l| l.trim_start().starts_with("Error") || l.contains("panicked at"));
    let mention = || {
        text.lines().find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("fail")
        })
    };
    let mut from = report
        .or_else(mention)
        .map(offset)
        .unwrap_or_else(|| text.len().saturating_sub(n));
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let mut to = (from + n).min(text.len());
    while !text.is_char_boundary(to) {
        to -= 1;
    }
    text[from..to]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::{Proc, excerpt, stat_cpu_seconds};
    use std::{
        process::Command,
        time::{Duration, Instant},
    };

    #[test]
    fn stat_cpu_counts_fields_after_the_last_bracket() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let line = format!(
            "42 (we) ird) R 1 42 42 0 -1 4194560 100 0 0 0 {} {} 0 0 20 0 3 0 5 0 0",
            2 * hz,
            hz
        );
        assert_eq!(stat_cpu_seconds(&line), Some(3.0));
        assert_eq!(stat_cpu_seconds("42 (cut) R 1"), None);
    }

    #[test]
    fn cpu_so_far_sees_a_busy_child() {
        let logs = std::env::temp_dir().join(format!("xtask-proc-test-{}", std::process::id()));
        std::fs::create_dir_all(&logs).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "while :; do :; done"]);
        let busy = Proc::spawn(cmd, "busy", &logs).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut cpu = 0.0;
        while cpu < 0.05 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            cpu = busy.cpu_so_far().unwrap();
        }
        drop(busy);
        std::fs::remove_dir_all(&logs).unwrap();
        assert!(cpu >= 0.05, "a spinning shell used {cpu} s of CPU in 10 s");
    }

    #[test]
    fn excerpt_starts_at_the_error() {
        let t = "banner\nmore\nError: it broke\nStack backtrace:\n 0: x\n";
        assert_eq!(excerpt(t, 15), "Error: it broke");
        assert_eq!(excerpt("a\nb\nlast words", 10), "last words");
        assert_eq!(excerpt("ééé", 3), "é");
        assert_eq!(excerpt("", 5), "");
        let log = "\u{1b}[33m WARN\u{1b}[0m lost error=closed\nError: receiving x\n\nCaused by:\n    short\n\nStack backtrace:\n 0: y\n";
        assert_eq!(excerpt(log, 200), "Error: receiving x Caused by: short");
        assert_eq!(
            excerpt("ok\n\u{1b}[1mfailed to bind\u{1b}[0m\n", 200),
            "failed to bind"
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.stop();
        }
    }
}

/// Why waiting for a transfer's processes stopped early.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed.
    Timeout,
    /// The process at this index exited unsuccessfully (so the others may never finish).
    Failed(usize),
}

/// Waits until every process in `procs` has exited successfully; stops at the first failure
/// or when `deadline` passes.
pub fn wait_all(procs: &mut [&mut Proc], deadline: Instant) -> Result<(), WaitError> {
    loop {
        let mut running = false;
        for (i, p) in procs.iter_mut().enumerate() {
            match p.poll() {
                None => running = true,
                Some(e) if e.code != Some(0) => return Err(WaitError::Failed(i)),
                Some(_) => {}
            }
        }
        if !running {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(WaitError::Timeout);
        }
        thread::sleep(Duration::from_millis(10));
    }
}
