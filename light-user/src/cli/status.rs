//! `light status`: asks a running server what it holds and what its session is doing.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::control::{ReceiverChannel, ToReceiver, ToServer};

/// Arguments of `light status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server control address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    server: SocketAddr,
    /// The server's secret, when it has one (also from the LIGHT_TOKEN environment variable).
    #[arg(long, env = "LIGHT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the status as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Runs `light status`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let status = rt.block_on(query(a.server, a.token))?;
    if a.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", render(&status, SystemTime::now()));
    }
    Ok(())
}

/// Sends the status query and returns the server's answer.
async fn query(server: SocketAddr, token: Option<String>) -> anyhow::Result<Value> {
    let mut chan = ReceiverChannel::connect(server)
        .await
        .with_context(|| format!("connect to {server}"))?;
    chan.set_timeout(Duration::from_secs(10));
    chan.send(&ToServer::Status { token })
        .await
        .context("send the status query")?;
    loop {
        match chan.recv().await.context("wait for the status")? {
            ToReceiver::Status { status } => return Ok(status),
            ToReceiver::Refused { reason } => bail!("the server refused: {reason}"),
            // The order check lets only keep-alives through here.
            _ => continue,
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The status as readable tables (`now` dates the receivers' last contact).
fn render(status: &Value, now: SystemTime) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let lib = &status["library"];
    if let Some(e) = status["catalog_error"].as_str() {
        let _ = writeln!(out, "catalog: {e}");
    }
    let contents = list(&lib["contents"]);
    let _ = writeln!(
        out,
        "library {} ({} contents)",
        s(&lib["path"]),
        contents.len()
    );
    let _ = writeln!(out, "  {:>6} {:>7} {:>12}  path", "id", "version", "size");
    for c in contents {
        let _ = writeln!(
            out,
            "  {:>6} {:>7} {:>12}  {}",
            u(&c["id"]),
            u(&c["version"]),
            mib(u(&c["size"])),
            s(&c["path"])
        );
    }
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let receivers = list(&status["receivers"]);
    let _ = writeln!(out, "known receivers ({})", receivers.len());
    let _ = writeln!(out, "  {:>8} {:>14}  cache", "id", "last seen");
    for r in receivers {
        let ago = now.saturating_sub(u(&r["last_seen_unix"]));
        let tag = r["cache_tag"].as_str().map_or("none".into(), |t| {
            // Tags are long hex hashes; the head tells them apart.
            t.chars().take(16).collect::<String>()
        });
        let _ = writeln!(
            out,
            "  {:>8} {:>14}  {tag}",
            s(&r["id"]),
            format!("{ago} s ago")
        );
    }
    let sess = &status["session"];
    let id = sess["id"]
        .as_u64()
        .map_or("(not started)".into(), |i| i.to_string());
    let _ = writeln!(
        out,
        "session {id}: {}; multicast {} (+{} repair, {} rounds), placed {}, {:.1} Mbit/s",
        s(&sess["phase"]),
        mib(u(&sess["multicast_bytes"])),
        mib(u(&sess["repair_bytes"])),
        u(&sess["repair_rounds"]),
        mib(u(&sess["placed_bytes"])),
        sess["rate_bps"].as_f64().unwrap_or(0.0) / 1e6
    );
    let _ = writeln!(
        out,
        "  {:>8}  {:<24} {:>26}  state",
        "receiver", "content", "done / total"
    );
    for r in list(&sess["receivers"]) {
        let (done, size) = (u(&r["bytes"]), u(&r["size"]));
        let pct = if size == 0 {
            100.0
        } else {
            done as f64 * 100.0 / size as f64
        };
        let _ = writeln!(
            out,
            "  {:>8}  {:<24} {:>26}  {}",
            u(&r["receiver"]),
            s(&r["content"]),
            format!("{} / {} ({pct:.0}%)", mib(done), mib(size)),
            s(&r["state"])
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section() {
        let status = serde_json::json!({
            "library": {"path": "/srv/lib", "contents": [
                {"id": 4, "path": "movies/a.mkv", "version": 2, "size": 3u64 << 20}
            ]},
            "receivers": [{"id": "7", "last_seen_unix": 1000, "cache_tag": "0123456789abcdef0123"}],
            "catalog_error": null,
            "session": {
                "id": 99, "phase": "repair round 2", "multicast_bytes": 1u64 << 20,
                "repair_bytes": 0, "repair_rounds": 1, "placed_bytes": 0, "rate_bps": 2.5e6,
                "receivers": [{"receiver": 7, "content": "movies/a.mkv", "bytes": 3u64 << 19,
                               "size": 3u64 << 20, "state": "receiving"}]
            }
        });
        let text = render(&status, SystemTime::UNIX_EPOCH + Duration::from_secs(1012));
        for want in [
            "library /srv/lib (1 contents)",
            "movies/a.mkv",
            "12 s ago  0123456789abcdef\n",
            "session 99: repair round 2; multicast 1.0 MiB (+0.0 MiB repair, 1 rounds)",
            "2.5 Mbit/s",
            "1.5 MiB / 3.0 MiB (50%)  receiving",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn a_partial_answer_still_renders() {
        let text = render(
            &serde_json::json!({"catalog_error": "locked"}),
            SystemTime::now(),
        );
        assert!(text.contains("catalog: locked") && text.contains("(not started)"));
    }
}
