//! The comparison's results: per-repetition measurements, medians, and their JSON, Markdown
//! and SVG renderings.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use serde::Serialize;

use super::wire::Counters;

/// Bytes seen on the bridge during one run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Wire {
    /// Bytes the server sent.
    pub from_server: u64,
    /// Bytes the receivers sent (feedback).
    pub from_receivers: u64,
    /// Bytes delivered to the receivers.
    pub to_receivers: u64,
}

impl From<Counters> for Wire {
    fn from(c: Counters) -> Self {
        Self {
            from_server: c.from_server,
            from_receivers: c.from_receivers,
            to_receivers: c.to_receivers,
        }
    }
}

/// One repetition of one tool in one scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rep {
    /// Every receiver's copy matched the original.
    pub verified: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Seconds to the last receiver done.
    pub wall_s: f64,
    /// Seconds a `sync` right after the run took (writeback the tool left behind).
    pub writeback_s: f64,
    /// File bytes per receiver over wall time, in Mbit/s.
    pub goodput_mbit_s: f64,
    /// Bridge byte counters over the run.
    pub wire: Wire,
    /// Sender CPU seconds.
    pub sender_cpu_s: f64,
    /// All receivers' CPU seconds together.
    pub receivers_cpu_s: f64,
    /// Light only: seconds of its multicast delivery phase (`multicast_seconds` in its
    /// report), i.e. without connection set-up and cache placement.
    pub delivery_s: Option<f64>,
    /// Packets the loss rule dropped.
    pub loss_drops: u64,
    /// Light's server report, when it printed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub light_report: Option<serde_json::Value>,
}

/// Medians over the verified repetitions.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Median {
    /// Seconds to the last receiver done.
    pub wall_s: f64,
    /// Seconds until every copy is on disk: wall time plus the writeback left behind.
    pub on_disk_s: f64,
    /// Goodput per receiver, Mbit/s.
    pub goodput_mbit_s: f64,
    /// Light's delivery phase, seconds.
    pub delivery_s: Option<f64>,
    /// Bytes the server sent.
    pub from_server: f64,
    /// Bytes the receivers sent.
    pub from_receivers: f64,
    /// Sender CPU seconds.
    pub sender_cpu_s: f64,
    /// Receivers' CPU seconds.
    pub receivers_cpu_s: f64,
}

/// One tool in one scenario on one topology, over all repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `same`, `cached` or `loss`.
    pub scenario: String,
    /// Link MTU.
    pub mtu: u32,
    /// Receivers.
    pub k: usize,
    /// `light`, `light-xdp`, `light-noxdp`, `udpcast`, `uftp`.
    pub tool: String,
    /// Tool variant (Light's cache budget), empty if none.
    pub variant: String,
    /// Size of each file.
    pub file_bytes: u64,
    /// Every repetition.
    pub runs: Vec<Rep>,
    /// Medians over the verified repetitions (`None` if none verified).
    pub median: Option<Median>,
}

/// The median of `v` (mean of the middle two for even lengths); `None` when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl Row {
    /// Fills in `median` from the verified runs.
    pub fn summarize(&mut self) {
        let ok: Vec<&Rep> = self.runs.iter().filter(|r| r.verified).collect();
        let m = |f: &dyn Fn(&Rep) -> f64| median(ok.iter().map(|r| f(r)).collect());
        self.median = m(&|r| r.wall_s).map(|wall_s| Median {
            wall_s,
            on_disk_s: m(&|r| r.wall_s + r.writeback_s).unwrap_or(0.0),
            goodput_mbit_s: m(&|r| r.goodput_mbit_s).unwrap_or(0.0),
            delivery_s: median(ok.iter().filter_map(|r| r.delivery_s).collect()),
            from_server: m(&|r| r.wire.from_server as f64).unwrap_or(0.0),
            from_receivers: m(&|r| r.wire.from_receivers as f64).unwrap_or(0.0),
            sender_cpu_s: m(&|r| r.sender_cpu_s).unwrap_or(0.0),
            receivers_cpu_s: m(&|r| r.receivers_cpu_s).unwrap_or(0.0),
        });
    }

    /// Number of verified repetitions.
    pub fn verified(&self) -> usize {
        self.runs.iter().filter(|r| r.verified).count()
    }

    /// Tool and variant as one label.
    pub fn label(&self) -> String {
        if self.variant.is_empty() {
            self.tool.clone()
        } else {
            format!("{} {}", self.tool, self.variant)
        }
    }
}

/// The Markdown table of all rows.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | MTU | K | tool | verified | wall s | on disk s | goodput Mbit/s per \
         receiver | Light delivery s | server sent MB | receivers sent MB | sender CPU s | \
         receivers CPU s | loss drops |\n\
         |---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let status = match r.runs.iter().find_map(|x| x.error.as_deref()) {
            None => format!("{}/{}", r.verified(), r.runs.len()),
            Some(e) => format!(
                "{}/{} FAILED: {}",
                r.verified(),
                r.runs.len(),
                e.replace('|', "\\|")
            ),
        };
        let drops = median(r.runs.iter().map(|x| x.loss_drops as f64).collect()).unwrap_or(0.0);
        let cells = match r.median {
            Some(m) => format!(
                "{:.2} | {:.2} | {:.0} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {drops:.0}",
                m.wall_s,
                m.on_disk_s,
                m.goodput_mbit_s,
                m.delivery_s.map_or("–".to_owned(), |d| format!("{d:.2}")),
                m.from_server / 1e6,
                m.from_receivers / 1e6,
                m.sender_cpu_s,
                m.receivers_cpu_s
            ),
            None => "– | – | – | – | – | – | – | – | –".to_owned(),
        };
        s += &format!(
            "| {} | {} | {} | {} | {status} | {cells} |\n",
            r.scenario,
            r.mtu,
            r.k,
            r.label()
        );
    }
    let t = targets(rows);
    if !t.is_empty() {
        s += "\n| scenario | MTU | K | ratio (median wall times, same run) | value | target |\n\
              |---|---:|---:|---|---:|---|\n";
        s += &t;
    }
    s
}

/// The targets as ratios of median wall times within each scenario, MTU and K:
/// Light's goodput against the better peer, the cached runs against Light without a cache
/// and against the better peer, and the AF_XDP path against the socket path.
fn targets(rows: &[Row]) -> String {
    let mut s = String::new();
    let mut groups: Vec<(&str, u32, usize)> = Vec::new();
    for r in rows {
        let g = (r.scenario.as_str(), r.mtu, r.k);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for (scenario, mtu, k) in groups {
        let group: Vec<&Row> = rows
            .iter()
            .filter(|r| r.scenario == scenario && r.mtu == mtu && r.k == k)
            .collect();
        let time = |tool: &str, variant: &str, of: fn(&Median) -> f64| {
            group
                .iter()
                .find(|r| r.tool == tool && r.variant == variant)
                .and_then(|r| r.median)
                .map(|m| of(&m))
        };
        let wall = |tool: &str, variant: &str| time(tool, variant, |m| m.wall_s);
        // The better peer at the settings that served it best in this run (UFTP runs once
        // per rate tried).
        let best_peer = |of: fn(&Median) -> f64| {
            group
                .iter()
                .filter(|r| r.tool == "udpcast" || r.tool == "uftp")
                .filter_map(|r| r.median.map(|m| (of(&m), r.label())))
                .min_by(|a, b| a.0.total_cmp(&b.0))
        };
        let peer = best_peer(|m| m.wall_s);
        let mut line = |what: String, v: f64, target: &str| {
            s += &format!("| {scenario} | {mtu} | {k} | {what} | {v:.2} | {target} |\n");
        };
        let variants: Vec<&str> = group
            .iter()
            .filter(|r| r.tool == "light")
            .map(|r| r.variant.as_str())
            .collect();
        for v in variants {
            let Some(light) = wall("light", v) else {
                continue;
            };
            let label = if v.is_empty() {
                "light".to_owned()
            } else {
                format!("light {v}")
            };
            let uncached = v.starts_with("0%");
            if scenario == "cached" && !uncached {
                if let Some(none) = group
                    .iter()
                    .find(|r| r.tool == "light" && r.variant.starts_with("0%"))
                    .and_then(|r| r.median)
                {
                    line(
                        format!("{label} time / light without cache"),
                        light / none.wall_s,
                        "≤ 0.6",
                    );
                    // The same without the cache placement (which coded caching does ahead
                    // of time, off-peak): the multicast delivery phases alone.
                    let delivery = group
                        .iter()
                        .find(|r| r.tool == "light" && r.variant == v)
                        .and_then(|r| r.median)
                        .and_then(|m| m.delivery_s);
                    if let (Some(d), Some(n)) = (delivery, none.delivery_s) {
                        line(
                            format!("{label} delivery phase / light's without cache"),
                            d / n,
                            "(placement excluded)",
                        );
                    }
                }
                if let Some((p, name)) = &peer {
                    line(format!("{label} time / {name} time"), light / p, "≤ 0.4");
                }
            } else if scenario != "cached"
                && let Some((p, name)) = &peer
            {
                let target = if scenario == "loss" {
                    "≥ 2"
                } else {
                    "≥ 1.5"
                };
                line(format!("{label} goodput / {name}"), p / light, target);
                // The same to the point where every copy is on disk: Light's receivers
                // fsync, the peers leave writeback behind.
                let on_disk = |m: &Median| m.on_disk_s;
                if let (Some(l), Some((p, name))) = (time("light", v, on_disk), best_peer(on_disk))
                {
                    line(
                        format!("{label} goodput to disk / {name}"),
                        p / l,
                        "(durable copies)",
                    );
                }
            }
            // AF_XDP as insisted on, where that ran; otherwise Light's own choice, which
            // is the socket path for jumbo frames on the testbed's veth links.
            if let Some(socket) = wall("light-noxdp", v) {
                match wall("light-xdp", v) {
                    Some(xdp) => line(
                        format!(
                            "{}: AF_XDP goodput / socket path",
                            label.replace("light", "light-xdp")
                        ),
                        socket / xdp,
                        "≥ 1.3",
                    ),
                    None => line(
                        format!("{label}: default receive path goodput / socket path"),
                        socket / light,
                        "≥ 1.3 (for AF_XDP)",
                    ),
                }
            }
        }
    }
    s
}

/// Points (K, goodput) per tool label.
type Series = BTreeMap<String, Vec<(u32, f64)>>;

/// Draws median goodput by K, one line per tool, one panel per scenario and MTU.
pub fn svg(rows: &[Row], path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plot {}: {e}", path.display());
    let mut panels: Vec<((String, u32), Series)> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    for r in rows {
        let label = r.label();
        if !labels.contains(&label) {
            labels.push(label.clone());
        }
        let key = (r.scenario.clone(), r.mtu);
        let at = match panels.iter().position(|p| p.0 == key) {
            Some(i) => i,
            None => {
                panels.push((key, Series::new()));
                panels.len() - 1
            }
        };
        let series = panels[at].1.entry(label).or_default();
        if let Some(m) = r.median {
            series.push((r.k as u32, m.goodput_mbit_s));
        }
    }
    // One row of panels per scenario (in run order), one column per MTU.
    let mut scenarios: Vec<&str> = Vec::new();
    for r in rows {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    panels.sort_by_key(|((s, mtu), _)| (scenarios.iter().position(|x| x == s), *mtu));
    let kmax = rows.iter().map(|r| r.k as u32).max().unwrap_or(1);
    let cols = rows
        .iter()
        .map(|r| r.mtu)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        .max(1);
    let nrows = panels.len().div_ceil(cols).max(1);
    let root = SVGBackend::new(path, (560 * cols as u32, 380 * nrows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((nrows, cols));
    for (area, ((scenario, mtu), series)) in areas.iter().zip(&panels) {
        let ymax = series.values().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{scenario}, MTU {mtu}: goodput per receiver"),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0u32..kmax + 1, 0f64..ymax)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("receivers K")
            .y_desc("Mbit/s")
            .draw()
            .map_err(|e| err(&e))?;
        for (label, pts) in series {
            let i = labels.iter().position(|l| l == label).unwrap_or(0);
            let color = Palette99::pick(i).to_rgba();
            let mut pts = pts.clone();
            pts.sort_by_key(|p| p.0);
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    fn row(tool: &str, k: usize, runs: Vec<Rep>) -> Row {
        let mut r = Row {
            scenario: "same".into(),
            mtu: 1500,
            k,
            tool: tool.into(),
            variant: String::new(),
            file_bytes: 1 << 20,
            runs,
            median: None,
        };
        r.summarize();
        r
    }

    #[test]
    fn targets_are_same_run_ratios() {
        let rep = |w: f64| Rep {
            verified: true,
            wall_s: w,
            delivery_s: Some(w / 2.0),
            ..Rep::default()
        };
        let at = |scenario: &str, tool: &str, variant: &str, w: f64| {
            let mut r = row(tool, 4, vec![rep(w)]);
            r.scenario = scenario.into();
            r.variant = variant.into();
            r
        };
        let rows = [
            at("same", "light", "", 2.0),
            at("same", "light-noxdp", "", 3.0),
            at("same", "udpcast", "", 8.0),
            at("same", "uftp", "1000 Mbit/s", 6.0),
            {
                // Fastest to exit, but it leaves 1.5 s of writeback behind.
                let mut r = at("same", "uftp", "max rate", 5.0);
                r.runs[0].writeback_s = 1.5;
                r.summarize();
                r
            },
            at("loss", "light", "", 2.0),
            at("loss", "light-xdp", "", 2.5),
            at("loss", "light-noxdp", "", 3.0),
            at("cached", "light", "0% (t=0)", 10.0),
            at("cached", "light", "25% (t=1)", 4.0),
            at("cached", "uftp", "", 20.0),
        ];
        let md = markdown(&rows);
        assert!(
            md.contains("| same | 1500 | 4 | light goodput / uftp max rate | 2.50 | ≥ 1.5 |"),
            "{md}"
        );
        assert!(
            md.contains("| light goodput to disk / uftp 1000 Mbit/s | 3.00 | (durable copies) |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| same | 1500 | 4 | light: default receive path goodput / socket path | 1.50 | ≥ 1.3 (for AF_XDP) |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| loss | 1500 | 4 | light-xdp: AF_XDP goodput / socket path | 1.20 | ≥ 1.3 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| light 25% (t=1) time / light without cache | 0.40 | ≤ 0.6 |"),
            "{md}"
        );
        assert!(
            md.contains("| light 25% (t=1) time / uftp time | 0.20 | ≤ 0.4 |"),
            "{md}"
        );
        assert!(!md.contains("light 0% (t=0) time"), "{md}");
    }

    #[test]
    fn failed_runs_are_excluded_and_reported() {
        let good = |w: f64| Rep {
            verified: true,
            wall_s: w,
            goodput_mbit_s: 8.0 / w,
            ..Rep::default()
        };
        let bad = Rep {
            error: Some("a|b".into()),
            wall_s: 100.0,
            ..Rep::default()
        };
        let r = row("udpcast", 4, vec![good(1.0), bad, good(3.0)]);
        assert_eq!(r.verified(), 2);
        assert_eq!(r.median.unwrap().wall_s, 2.0);
        let none = row("light", 4, vec![Rep::default()]);
        assert!(none.median.is_none());
        let md = markdown(&[r, none]);
        assert!(md.contains("| 2/3 FAILED: a\\|b |"), "{md}");
        assert!(md.contains("| 0/1 |") && md.contains("– | –"), "{md}");
    }

    #[test]
    fn svg_has_text_and_lines() {
        let dir = std::env::temp_dir().join(format!("compare-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("g.svg");
        let ok = |g: f64| Rep {
            verified: true,
            wall_s: 1.0,
            goodput_mbit_s: g,
            ..Rep::default()
        };
        svg(
            &[
                row("udpcast", 1, vec![ok(900.0)]),
                row("udpcast", 4, vec![ok(700.0)]),
                row("uftp", 1, vec![ok(500.0)]),
            ],
            &p,
        )
        .unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..80.min(s.len())]);
        assert!(s.contains("udpcast") && s.contains("uftp") && s.contains("<polyline"));
    }
}
