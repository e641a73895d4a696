//! Live state of a running `light serve`: what the session is doing right now, shared by
//! the session (which updates it at each step), the metrics endpoint and status queries.
//!
//! Updates are a few atomic adds or a short lock of a small map, so the session never
//! waits on a reader; the catalog part of a status answer is read on a connection of its
//! own (SQLite WAL lets it read while the session writes).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    DropCounts,
    metrics::{Exposition, Kind, serve_metrics},
};
use crate::{
    catalog::{Catalog, CatalogError},
    transport::tx::multicast::{PassStats, Progress},
};

/// Where the session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionPhase {
    /// Waiting for receivers.
    Gathering,
    /// Sending caches and announcements.
    Placing,
    /// The first multicast pass (and the wait for the receivers' reports after it).
    Multicast,
    /// Repair round N (1-based), and the wait for reports after it.
    Repair(u32),
    /// Every receiver has an outcome.
    Finished,
}

impl std::fmt::Display for SessionPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gathering => f.write_str("gathering"),
            Self::Placing => f.write_str("placing"),
            Self::Multicast => f.write_str("multicast"),
            Self::Repair(n) => write!(f, "repair round {n}"),
            Self::Finished => f.write_str("finished"),
        }
    }
}

/// One receiver as the live session sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReceiverLive {
    /// Receiver id.
    pub receiver: u32,
    /// Library path of the content it asked for.
    pub content: String,
    /// Size of that content.
    pub size: u64,
    /// Bytes of it the receiver reported done (cached and decoded).
    pub bytes: u64,
    /// `placing`, `ready`, `receiving`, `verified`, `failed: …`, `lost: …`, `refused: …`.
    pub state: String,
    /// Cache bytes sent to it.
    pub placed_bytes: u64,
    /// Packets it dropped, by reason, as it last reported.
    pub drops: DropCounts,
}

/// Counters that only grow.
#[derive(Default)]
struct Counters {
    sessions_started: AtomicU64,
    sessions_completed: AtomicU64,
    sessions_failed: AtomicU64,
    admitted: AtomicU64,
    refused: AtomicU64,
    lost: AtomicU64,
    verified: AtomicU64,
    failed: AtomicU64,
    placed_bytes: AtomicU64,
    repair_rounds: AtomicU64,
}

/// What changes together, under one short lock.
struct State {
    session: Option<u32>,
    phase: SessionPhase,
    receivers: BTreeMap<u32, ReceiverLive>,
    /// UDP bytes and packets of finished passes: `[first, repair]`.
    pass_bytes: [u64; 2],
    pass_packets: [u64; 2],
    /// Multicast rate from the last two samples, bit/s.
    rate_bps: f64,
    last_sample: Option<(Instant, u64)>,
}

/// The shared live state of one `light serve`.
pub struct Live {
    library: PathBuf,
    counters: Counters,
    /// Bytes the running pass has handed to the sender so far (the pass thread stores it).
    pass: Progress,
    state: Mutex<State>,
}

impl Live {
    /// Fresh state for a server of `library`, gathering.
    pub fn new(library: &Path) -> Self {
        Self {
            library: library.to_path_buf(),
            counters: Counters::default(),
            pass: Progress::default(),
            state: Mutex::new(State {
                session: None,
                phase: SessionPhase::Gathering,
                receivers: BTreeMap::new(),
                pass_bytes: [0; 2],
                pass_packets: [0; 2],
                rate_bps: 0.0,
                last_sample: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent field by field; a panicked updater loses nothing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live byte counter to give the multicast thread.
    pub fn pass_progress(&self) -> Progress {
        self.pass.clone()
    }

    /// The session started (plan made and recorded).
    pub fn session_started(&self, session: u32) {
        self.counters
            .sessions_started
            .fetch_add(1, Ordering::Relaxed);
        self.state().session = Some(session);
    }

    /// The session ended; `completed` when every admitted receiver verified its file.
    pub fn session_ended(&self, completed: bool) {
        let c = if completed {
            &self.counters.sessions_completed
        } else {
            &self.counters.sessions_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state();
        s.phase = SessionPhase::Finished;
        s.rate_bps = 0.0;
    }

    /// Moves the session to `phase`.
    pub fn set_phase(&self, phase: SessionPhase) {
        self.state().phase = phase;
    }

    /// A receiver was admitted to the session.
    pub fn admitted(&self, receiver: u32, content: &str, size: u64) {
        self.counters.admitted.fetch_add(1, Ordering::Relaxed);
        self.state().receivers.insert(
            receiver,
            ReceiverLive {
                receiver,
                content: content.to_owned(),
                size,
                bytes: 0,
                state: "admitted".into(),
                placed_bytes: 0,
                drops: DropCounts::default(),
            },
        );
    }

    /// A request was refused (it never joins the session's receivers).
    pub fn refused(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// `receiver` moves on to its next content (a session delivering several).
    pub fn content(&self, receiver: u32, content: &str, size: u64) {
        if let Some(r) = self.state().receivers.get_mut(&receiver) {
            content.clone_into(&mut r.content);
            r.size = size;
            r.bytes = 0;
        }
    }

    /// Sets an admitted receiver's state.
    pub fn receiver_state(&self, receiver: u32, state: impl Into<String>) {
        if let Some(r) = self.state().receivers.get_mut(&receiver) {
            r.state = state.into();
        }
    }

    /// The receiver has its cache (`placed` bytes sent) and listens on the group.
    pub fn placed(&self, receiver: u32, placed: u64) {
        self.counters
            .placed_bytes
            .fetch_add(placed, Ordering::Relaxed);
        if let Some(r) = self.state().receivers.get_mut(&receiver) {
            r.placed_bytes = placed;
            r.state = "ready".into();
        }
    }

    /// A cache was filled outside a session (`light cache fill`).
    pub fn cache_filled(&self, bytes: u64) {
        self.counters
            .placed_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// The receiver reported its progress.
    pub fn progress(&self, receiver: u32, bytes: u64, drops: DropCounts) {
        if let Some(r) = self.state().receivers.get_mut(&receiver) {
            r.bytes = bytes.min(r.size);
            r.drops = drops;
        }
    }

    /// The receiver's final outcome: `verified`, `failed: …` or `lost: …`.
    pub fn outcome(&self, receiver: u32, outcome: &str) {
        let c = if outcome == "verified" {
            &self.counters.verified
        } else if outcome.starts_with("lost") {
            &self.counters.lost
        } else {
            &self.counters.failed
        };
        c.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = self.state().receivers.get_mut(&receiver) {
            if outcome == "verified" {
                r.bytes = r.size;
            }
            r.state = outcome.to_owned();
        }
    }

    /// A pass ended: its bytes move from the live counter to the totals (under the lock
    /// readers take, so the reported total never goes back).
    pub fn pass_done(&self, repair: bool, stats: &PassStats) {
        self.pass_counted(repair, stats.udp_bytes, stats.packets);
    }

    fn pass_counted(&self, repair: bool, udp_bytes: u64, packets: u64) {
        let mut s = self.state();
        let i = usize::from(repair);
        s.pass_bytes[i] += udp_bytes;
        s.pass_packets[i] += packets;
        self.pass.store(0, Ordering::Relaxed);
        if repair {
            self.counters.repair_rounds.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Multicast bytes `[first pass, repair]` so far, the running pass included.
    fn multicast_bytes(s: &State, running: u64) -> [u64; 2] {
        let mut b = s.pass_bytes;
        match s.phase {
            SessionPhase::Multicast => b[0] += running,
            SessionPhase::Repair(_) => b[1] += running,
            _ => {}
        }
        b
    }

    /// Updates the multicast rate gauge from the bytes sent since the previous sample.
    pub fn sample_rate(&self, now: Instant) {
        let mut s = self.state();
        let b = Self::multicast_bytes(&s, self.pass.load(Ordering::Relaxed));
        let total = b[0] + b[1];
        if let Some((t, prev)) = s.last_sample {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                s.rate_bps = total.saturating_sub(prev) as f64 * 8.0 / dt;
            }
        }
        if s.phase == SessionPhase::Finished {
            s.rate_bps = 0.0;
        }
        s.last_sample = Some((now, total));
    }

    /// Samples the rate every `every` until the task is aborted.
    pub fn spawn_rate_sampler(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                me.sample_rate(Instant::now());
            }
        })
    }

    /// Starts the rate sampler and, with `metrics` set, the metrics endpoint on it; both
    /// stop when the returned guard is dropped.
    pub async fn start(
        self: &Arc<Self>,
        metrics: Option<SocketAddr>,
    ) -> std::io::Result<Background> {
        let mut tasks = vec![self.spawn_rate_sampler(RATE_SAMPLE)];
        if let Some(addr) = metrics {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!(
                "light: metrics on http://{}/metrics",
                listener.local_addr()?
            );
            let me = self.clone();
            tasks.push(tokio::spawn(serve_metrics(
                listener,
                Arc::new(move || me.metrics_text()),
            )));
        }
        Ok(Background(tasks))
    }

    /// The live session as JSON: id, phase, byte counts, rate and every receiver.
    pub fn session_json(&self) -> Value {
        let s = self.state();
        let b = Self::multicast_bytes(&s, self.pass.load(Ordering::Relaxed));
        json!({
            "id": s.session,
            "phase": s.phase.to_string(),
            "multicast_bytes": b[0],
            "repair_bytes": b[1],
            "placed_bytes": self.counters.placed_bytes.load(Ordering::Relaxed),
            "repair_rounds": self.counters.repair_rounds.load(Ordering::Relaxed),
            "rate_bps": s.rate_bps,
            "receivers": s.receivers.values().collect::<Vec<_>>(),
        })
    }

    /// The whole status answer: library and known receivers from the catalog (read on a
    /// connection of its own), and the live session.
    pub async fn status(&self) -> Value {
        let library = self.library.clone();
        let catalog = tokio::task::spawn_blocking(move || catalog_status(&library))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let (library, receivers, error) = match catalog {
            Ok((l, r)) => (l, r, Value::Null),
            Err(e) => (Value::Null, Value::Array(Vec::new()), Value::String(e)),
        };
        json!({
            "library": library,
            "receivers": receivers,
            "catalog_error": error,
            "session": self.session_json(),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn metrics_text(&self) -> String {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut e = Exposition::new();
        let simple: [(&str, &str, &AtomicU64); 10] = [
            (
                "light_sessions_started_total",
                "Sessions started (planned and recorded).",
                &c.sessions_started,
            ),
            (
                "light_sessions_completed_total",
                "Sessions in which every admitted receiver verified its file.",
                &c.sessions_completed,
            ),
            (
                "light_sessions_failed_total",
                "Sessions that ended with a receiver not verified.",
                &c.sessions_failed,
            ),
            (
                "light_receivers_admitted_total",
                "Receivers admitted to a session.",
                &c.admitted,
            ),
            (
                "light_receivers_refused_total",
                "Receiver requests refused (token, unknown content, duplicate id, late).",
                &c.refused,
            ),
            (
                "light_receivers_lost_total",
                "Deliveries (receiver, content) whose receiver went silent or disconnected.",
                &c.lost,
            ),
            (
                "light_receivers_verified_total",
                "Deliveries (receiver, content) verified by their receiver.",
                &c.verified,
            ),
            (
                "light_receivers_failed_total",
                "Deliveries (receiver, content) that failed otherwise.",
                &c.failed,
            ),
            (
                "light_placed_bytes_total",
                "Cache bytes placed over unicast.",
                &c.placed_bytes,
            ),
            (
                "light_repair_rounds_total",
                "Repair rounds multicast.",
                &c.repair_rounds,
            ),
        ];
        for (name, help, v) in simple {
            e.single(name, Kind::Counter, help, get(v));
        }
        let s = self.state();
        let b = Self::multicast_bytes(&s, self.pass.load(Ordering::Relaxed));
        let passes = [("first", 0), ("repair", 1)];
        let name = "light_multicast_bytes_total";
        e.family(
            name,
            Kind::Counter,
            "UDP payload bytes multicast (headers, FEC parity and padding included).",
        );
        for (pass, i) in passes {
            e.sample(name, &[("pass", pass)], b[i] as f64);
        }
        let name = "light_multicast_packets_total";
        e.family(
            name,
            Kind::Counter,
            "Packets multicast, counted when a pass ends.",
        );
        for (pass, i) in passes {
            e.sample(name, &[("pass", pass)], s.pass_packets[i] as f64);
        }
        e.single(
            "light_multicast_rate_bits_per_second",
            Kind::Gauge,
            "Multicast send rate over the last sampling interval.",
            s.rate_bps,
        );
        let per_receiver = [
            (
                "light_receiver_progress_bytes",
                "Bytes of its content each receiver reported done.",
                true,
            ),
            (
                "light_receiver_size_bytes",
                "Size of the content each receiver asked for.",
                false,
            ),
        ];
        for (name, help, progress) in per_receiver {
            e.family(name, Kind::Gauge, help);
            for r in s.receivers.values() {
                let v = if progress { r.bytes } else { r.size };
                e.sample(name, &[("receiver", &r.receiver.to_string())], v as f64);
            }
        }
        let name = "light_receiver_packet_drops_total";
        e.family(
            name,
            Kind::Counter,
            "Packets receivers dropped, by reason, as they reported.",
        );
        for r in s.receivers.values() {
            let id = r.receiver.to_string();
            for (reason, n) in r.drops.by_reason() {
                e.sample(name, &[("receiver", &id), ("reason", reason)], n as f64);
            }
        }
        e.finish()
    }
}

/// A receiver's drop counters as its data thread last stored them, for the control loop
/// to report with [`super::ToServer::Progress`].
#[derive(Debug, Default)]
pub struct SharedDrops([AtomicU64; 5], AtomicU64);

impl SharedDrops {
    /// Stores the assembler's counters and the MAC failures.
    pub fn record(&self, stats: &crate::fec::Stats, auth_failed: u64) {
        let v = [
            stats.malformed,
            stats.foreign_session,
            stats.duplicate,
            stats.late,
            auth_failed,
        ];
        for (a, v) in self.0.iter().zip(v) {
            a.store(v, Ordering::Relaxed);
        }
        // Stored as the bits + 1, so 0 means "no packet of the session yet".
        let loss = if stats.in_session > 0 {
            stats.loss().to_bits().saturating_add(1)
        } else {
            0
        };
        self.1.store(loss, Ordering::Relaxed);
    }

    /// The loss measured so far (`None` before the first packet of the session).
    pub fn loss(&self) -> Option<f64> {
        match self.1.load(Ordering::Relaxed) {
            0 => None,
            b => Some(f64::from_bits(b - 1)),
        }
    }

    /// The counters as the message carries them.
    pub fn snapshot(&self) -> DropCounts {
        let [malformed, foreign_session, duplicate, late, auth_failed] =
            self.0.each_ref().map(|a| a.load(Ordering::Relaxed));
        DropCounts {
            malformed,
            foreign_session,
            duplicate,
            late,
            auth_failed,
        }
    }
}

/// How often the multicast rate gauge is sampled.
pub const RATE_SAMPLE: Duration = Duration::from_secs(1);

/// Tasks that serve a session's metrics; they stop when this is dropped.
pub struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Library contents and known receivers, from a read-only catalog connection of its own.
fn catalog_status(library: &Path) -> Result<(Value, Value), CatalogError> {
    let catalog = Catalog::open_read_only(library)?;
    let contents: Vec<Value> = catalog
        .contents()?
        .into_iter()
        .filter(|c| !c.removed)
        .map(|c| json!({"id": c.id, "path": c.path, "version": c.version, "size": c.size}))
        .collect();
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let receivers: Vec<Value> = catalog
        .receivers()?
        .into_iter()
        .map(|r| json!({"id": r.id, "last_seen_unix": unix(r.last_seen), "cache_tag": r.cache_tag}))
        .collect();
    Ok((
        json!({"path": library.display().to_string(), "contents": contents}),
        Value::Array(receivers),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn multicast_bytes_include_the_running_pass_and_never_go_back() {
        let live = Live::new(Path::new("/nonexistent"));
        let first = r#"light_multicast_bytes_total{pass="first"}"#;
        live.set_phase(SessionPhase::Multicast);
        live.pass_progress().store(1000, Ordering::Relaxed);
        assert_eq!(sample(&live.metrics_text(), first), 1000.0);
        // The pass ends with a little more than the last live store (End markers).
        live.pass_counted(false, 1200, 10);
        assert_eq!(sample(&live.metrics_text(), first), 1200.0);
        live.set_phase(SessionPhase::Repair(1));
        live.pass_progress().store(50, Ordering::Relaxed);
        let text = live.metrics_text();
        assert_eq!(sample(&text, first), 1200.0);
        assert_eq!(
            sample(&text, r#"light_multicast_bytes_total{pass="repair"}"#),
            50.0
        );
        live.pass_counted(true, 60, 1);
        let text = live.metrics_text();
        assert_eq!(sample(&text, "light_repair_rounds_total"), 1.0);
        assert_eq!(
            sample(&text, r#"light_multicast_packets_total{pass="first"}"#),
            10.0
        );
    }

    #[test]
    fn receivers_are_tracked_from_admission_to_outcome() {
        let live = Live::new(Path::new("/nonexistent"));
        live.admitted(3, "a.bin", 100);
        live.admitted(4, "b.bin", 100);
        live.refused();
        live.placed(3, 25);
        let drops = DropCounts {
            late: 2,
            auth_failed: 1,
            ..Default::default()
        };
        live.progress(3, 60, drops);
        live.outcome(4, "lost: silent for 15 s");
        let text = live.metrics_text();
        assert_eq!(
            sample(&text, r#"light_receiver_progress_bytes{receiver="3"}"#),
            60.0
        );
        assert_eq!(
            sample(
                &text,
                r#"light_receiver_packet_drops_total{receiver="3",reason="late"}"#
            ),
            2.0
        );
        assert_eq!(sample(&text, "light_receivers_admitted_total"), 2.0);
        assert_eq!(sample(&text, "light_receivers_refused_total"), 1.0);
        assert_eq!(sample(&text, "light_receivers_lost_total"), 1.0);
        assert_eq!(sample(&text, "light_placed_bytes_total"), 25.0);
        let session = live.session_json();
        assert_eq!(session["phase"], "gathering");
        assert_eq!(session["receivers"][0]["bytes"], 60);
        assert_eq!(session["receivers"][0]["state"], "ready");
        assert_eq!(session["receivers"][1]["state"], "lost: silent for 15 s");
        live.outcome(3, "verified");
        live.session_ended(false);
        let session = live.session_json();
        assert_eq!(session["phase"], "finished");
        assert_eq!(session["receivers"][0]["bytes"], 100);
    }

    #[test]
    fn rate_is_measured_between_samples() {
        let live = Live::new(Path::new("/nonexistent"));
        live.set_phase(SessionPhase::Multicast);
        let t0 = Instant::now();
        live.sample_rate(t0);
        live.pass_progress().store(1_000_000, Ordering::Relaxed);
        live.sample_rate(t0 + Duration::from_secs(2));
        let rate = r"light_multicast_rate_bits_per_second";
        assert_eq!(sample(&live.metrics_text(), rate), 4_000_000.0);
        live.session_ended(true);
        live.sample_rate(t0 + Duration::from_secs(3));
        assert_eq!(sample(&live.metrics_text(), rate), 0.0);
    }

    #[test]
    fn receiver_drops_are_reported_by_reason() {
        let shared = SharedDrops::default();
        let stats = crate::fec::Stats {
            malformed: 1,
            foreign_session: 2,
            duplicate: 3,
            late: 4,
            bad_index: 99,
            ..Default::default()
        };
        shared.record(&stats, 5);
        let d = shared.snapshot();
        assert_eq!(
            [
                d.malformed,
                d.foreign_session,
                d.duplicate,
                d.late,
                d.auth_failed
            ],
            [1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn phases_read_as_words() {
        assert_eq!(SessionPhase::Repair(3).to_string(), "repair round 3");
        assert_eq!(SessionPhase::Placing.to_string(), "placing");
    }

    #[tokio::test]
    async fn status_reads_the_catalog_on_its_own_connection_while_a_writer_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.bin"), b"hello").unwrap();
        crate::catalog::pack(dir.path()).unwrap();
        let held = Catalog::open(dir.path()).unwrap();
        held.upsert_receiver("7", Some("tag")).unwrap();
        // A writer in the middle of a transaction (as a session recording its end) does
        // not stop the status reader, which sees the last committed state.
        let writer = rusqlite::Connection::open(dir.path().join(".light/catalog.sqlite")).unwrap();
        writer
            .execute_batch("BEGIN IMMEDIATE; UPDATE receivers SET cache_tag = 'uncommitted';")
            .unwrap();
        let live = Live::new(dir.path());
        live.admitted(7, "x.bin", 5);
        let status = live.status().await;
        assert_eq!(status["library"]["contents"][0]["path"], "x.bin");
        assert_eq!(status["library"]["contents"][0]["size"], 5);
        assert_eq!(status["receivers"][0]["id"], "7");
        assert_eq!(status["receivers"][0]["cache_tag"], "tag");
        assert_eq!(status["session"]["receivers"][0]["receiver"], 7);
        assert!(status["catalog_error"].is_null(), "{status}");
        writer.execute_batch("ROLLBACK").unwrap();
        drop(held);
    }
}
