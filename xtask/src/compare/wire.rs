//! What crossed the bridge: per-port byte counters and the loss rule's drop counter, read in
//! the bridge namespace.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netns::Testbed;

/// Byte counters of the bridge ports, as seen from the bridge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes the server put on the wire (received by its bridge port).
    pub from_server: u64,
    /// Bytes the receivers put on the wire (feedback, requests, acknowledgements).
    pub from_receivers: u64,
    /// Bytes the bridge delivered to the receivers (multicast counts once per receiver).
    pub to_receivers: u64,
}

impl Counters {
    /// The growth from `before` to `self`.
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            from_server: self.from_server.saturating_sub(before.from_server),
            from_receivers: self.from_receivers.saturating_sub(before.from_receivers),
            to_receivers: self.to_receivers.saturating_sub(before.to_receivers),
        }
    }
}

fn in_bridge(bed: &Testbed, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &bed.bridge_ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Reads `(rx bytes, tx bytes)` per interface from `ip -s -j link` output.
pub fn parse_link_stats(json: &str) -> Result<Vec<(String, u64, u64)>> {
    let v: Value = serde_json::from_str(json).context("ip -s -j link: not JSON")?;
    let links = v.as_array().context("ip -s -j link: not an array")?;
    links
        .iter()
        .map(|l| {
            let name = l["ifname"].as_str().context("link without ifname")?;
            let bytes = |dir: &str| {
                l["stats64"][dir]["bytes"]
                    .as_u64()
                    .with_context(|| format!("{name}: no stats64.{dir}.bytes"))
            };
            Ok((name.to_owned(), bytes("rx")?, bytes("tx")?))
        })
        .collect()
}

/// The bridge ports' counters now.
pub fn counters(bed: &Testbed) -> Result<Counters> {
    let stats = parse_link_stats(&in_bridge(bed, &["ip", "-s", "-j", "link", "show"])?)?;
    let mut c = Counters::default();
    for (name, rx, tx) in stats {
        if name == bed.server.bridge_port {
            c.from_server += rx;
        } else if bed.receivers.iter().any(|r| r.bridge_port == name) {
            c.from_receivers += rx;
            c.to_receivers += tx;
        }
    }
    Ok(c)
}

/// Packets the loss rule has dropped so far (0 when there is no rule).
pub fn loss_drops(bed: &Testbed) -> Result<u64> {
    let Ok(text) = in_bridge(bed, &["nft", "-j", "list", "table", "bridge", "lossy"]) else {
        return Ok(0);
    };
    Ok(parse_nft_drops(&text))
}

/// Sums the packet counters of the rules in `nft -j list table` output.
pub fn parse_nft_drops(json: &str) -> u64 {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return 0;
    };
    let mut n = 0;
    for item in v["nftables"].as_array().into_iter().flatten() {
        for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
            n += expr["counter"]["packets"].as_u64().unwrap_or(0);
        }
    }
    n
}

/// Removes the loss rule (the next scenario starts lossless).
pub fn clear_loss(bed: &Testbed) {
    let _ = in_bridge(bed, &["nft", "delete", "table", "bridge", "lossy"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_stats_parse() {
        let j = r#"[{"ifname":"a","stats64":{"rx":{"bytes":10,"packets":1},"tx":{"bytes":20}}},
                   {"ifname":"b","stats64":{"rx":{"bytes":3},"tx":{"bytes":4}}}]"#;
        let s = parse_link_stats(j).unwrap();
        assert_eq!(s, vec![("a".into(), 10, 20), ("b".into(), 3, 4)]);
        assert!(parse_link_stats("[{\"ifname\":\"a\"}]").is_err());
    }

    #[test]
    fn nft_counter_parse() {
        let j = r#"{"nftables":[{"metainfo":{}},{"table":{"name":"lossy"}},
            {"rule":{"expr":[{"match":{}},{"counter":{"packets":7,"bytes":700}},{"drop":null}]}}]}"#;
        assert_eq!(parse_nft_drops(j), 7);
        assert_eq!(parse_nft_drops("garbage"), 0);
    }

    #[test]
    fn since_subtracts() {
        let a = Counters {
            from_server: 5,
            from_receivers: 1,
            to_receivers: 9,
        };
        let b = Counters {
            from_server: 15,
            from_receivers: 2,
            to_receivers: 29,
        };
        assert_eq!(
            b.since(a),
            Counters {
                from_server: 10,
                from_receivers: 1,
                to_receivers: 20
            }
        );
    }
}
