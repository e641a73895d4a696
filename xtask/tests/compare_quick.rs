//! The end-to-end comparison in quick mode with the peer tools only (udpcast, UFTP): every
//! run must verify (udpcast under loss may instead fail cleanly: its receiver sometimes
//! aborts), the loss rule must hit each tool's data port, and the JSON, Markdown and
//! SVG results must be written. Needs root (network namespaces); CI runs as root.

use clap::Parser;
use xtask::{compare::CompareArgs, netns::require_root};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: CompareArgs,
}

#[test]
fn quick_peers_verify_and_write_results() {
    require_root().unwrap();
    let out = std::env::temp_dir().join(format!("compare-quick-{}", std::process::id()));
    let cli = Cli::parse_from([
        "compare",
        "--quick",
        "--tools",
        "udpcast,uftp",
        "--timeout",
        "120",
        "--out",
        out.to_str().unwrap(),
    ]);
    xtask::compare::run(&cli.args).unwrap();

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("e2e.json")).unwrap()).unwrap();
    assert_eq!(json["file_bytes"], 8 << 20);
    let rows = json["rows"].as_array().unwrap();
    // (udpcast + UFTP at its two default rates) × 3 scenarios × K ∈ {1, 4} × MTU ∈ {1500, 9000}.
    assert_eq!(rows.len(), 3 * 3 * 2 * 2, "{rows:#?}");
    let uftp_rates: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter(|r| r["tool"] == "uftp")
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        uftp_rates,
        ["1000 Mbit/s", "max rate"].into(),
        "every rate tried is a row of its own"
    );
    for r in rows {
        let runs = r["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1);
        let mut all_verified = true;
        for run in runs {
            if run["verified"] != true {
                // udpcast's receiver now and then aborts under loss ("Receiver error"): the
                // harness must record that as a clean failure row. Anything else verifies.
                let error = run["error"].as_str().unwrap_or_default();
                assert!(
                    r["tool"] == "udpcast"
                        && r["scenario"] == "loss"
                        && error.starts_with("udpcast:"),
                    "{r:#}"
                );
                all_verified = false;
                continue;
            }
            assert!(run["wall_s"].as_f64().unwrap() > 0.0);
            // At least the file itself crossed the wire from the server.
            assert!(
                run["wire"]["from_server"].as_u64().unwrap() >= 8 << 20,
                "{r:#}"
            );
            if r["scenario"] == "loss" {
                assert!(
                    run["loss_drops"].as_u64().unwrap() > 0,
                    "loss rule missed {}'s data port: {r:#}",
                    r["tool"]
                );
            }
        }
        if all_verified {
            assert!(r["median"]["goodput_mbit_s"].as_f64().unwrap() > 0.0);
        }
    }
    let md = std::fs::read_to_string(out.join("e2e.md")).unwrap();
    assert!(
        md.contains("| cached | 9000 | 4 | uftp max rate | 1/1 |"),
        "{md}"
    );
    let svg = std::fs::read_to_string(out.join("e2e.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("udpcast") && svg.contains("<polyline"));
    std::fs::remove_dir_all(&out).unwrap();
}
