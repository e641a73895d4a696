//! `light serve`: gathers K receivers over the control channel, places their caches,
//! announces the plan, multicasts the coded delivery and reports the outcome.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::net::TcpListener;

use super::{
    CacheTag, ControlError, ServerChannel, ToReceiver, ToServer,
    live::{Live, SessionPhase},
    placement::{Placement, place},
    session::{MappedFile, PlanAnnouncement, SessionError},
};
use crate::{
    catalog::{Catalog, ContentInfo, ServerKey, SessionOutcome, pack},
    coding::{CacheBudget, Plan, PlanInput, SchemeChoice, plan},
    fec::FecParams,
    transport::mac::PacketKey,
    transport::tx::{
        MulticastIf, TxConfig, TxError,
        multicast::{Multicaster, PassStats, Progress},
    },
};

/// Everything `light serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Library directory (packed on start; a no-op when unchanged).
    pub library: PathBuf,
    /// Receivers expected.
    pub receivers: usize,
    /// Start without stragglers once this many are in and `wait` has passed.
    pub min_receivers: usize,
    /// How long to wait for receivers.
    pub wait: Duration,
    /// Cache budget per receiver.
    pub budget: CacheBudget,
    /// Placement family.
    pub scheme: SchemeChoice,
    /// Multicast group.
    pub group: IpAddr,
    /// Multicast UDP port.
    pub port: u16,
    /// Interface multicast leaves through (default: the one holding the bind address).
    pub iface: Option<String>,
    /// Pacing rate in bytes/s (`None`: as fast as the sender goes).
    pub rate: Option<u64>,
    /// Control channel address.
    pub bind: SocketAddr,
    /// Link MTU, sizes the packets.
    pub mtu: usize,
    /// Expected packet loss, sizes the parity.
    pub expected_loss: f64,
    /// Secret receivers must present; `None` admits any receiver.
    pub token: Option<String>,
    /// Sign every data packet with a per-session keyed MAC.
    pub authenticate_packets: bool,
    /// How long receivers get after the pass to report.
    pub done_timeout: Duration,
    /// Where to serve Prometheus metrics over HTTP (`None`: nowhere).
    pub metrics: Option<SocketAddr>,
}

/// One receiver's line in the report.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiverOutcome {
    /// Receiver id.
    pub receiver: u32,
    /// Requested content.
    pub content: String,
    /// `verified`, `failed: …`, `refused: …`, `lost: …`.
    pub outcome: String,
    /// Cache bytes sent to it.
    pub placed_bytes: u64,
    /// Its decode/verify time after the pass, seconds (when it reported).
    pub seconds: Option<f64>,
}

/// The session report.
#[derive(Clone, Debug, Serialize)]
pub struct SessionReport {
    /// Session id.
    pub session: u32,
    /// Scheme the planner chose.
    pub scheme: String,
    /// Caching parameter t = KM/N.
    pub t: f64,
    /// Subfiles per file.
    pub subpacketization: u64,
    /// Theoretical delivery rate, in files.
    pub theoretical_rate: f64,
    /// Measured rate: coded payload bytes / mean file size.
    pub measured_rate: f64,
    /// Plan payload bytes (before FEC and headers); the first pass carries exactly these.
    pub plan_payload_bytes: u64,
    /// UDP payload bytes multicast (FEC parity, padding and headers included).
    pub multicast_bytes: u64,
    /// Packets multicast.
    pub multicast_packets: u64,
    /// Repair rounds run after the first pass.
    pub repair_rounds: u32,
    /// UDP payload bytes of repair parity (and its End markers).
    pub repair_bytes: u64,
    /// Packets of repair.
    pub repair_packets: u64,
    /// Bytes that unicasting every receiver its uncached part would take.
    pub uncoded_bytes: u64,
    /// Cache bytes placed over unicast.
    pub placed_bytes: u64,
    /// Seconds from first byte placed to the last receiver's report.
    pub seconds: f64,
    /// Seconds the multicast pass took.
    pub multicast_seconds: f64,
    /// Multicast goodput: requested-file bytes delivered per second of pass, per receiver.
    pub multicast_gbps: f64,
    /// UDP GSO status of the send socket.
    pub gso: String,
    /// FEC parameters used.
    pub fec: FecParams,
    /// Per receiver.
    pub receivers: Vec<ReceiverOutcome>,
}

impl SessionReport {
    /// True when every admitted receiver verified its file (refused requests were never
    /// part of the session).
    pub fn all_verified(&self) -> bool {
        self.receivers
            .iter()
            .filter(|r| !r.outcome.starts_with("refused"))
            .all(|r| r.outcome == "verified")
    }

    /// Human-readable multi-line report.
    pub fn text(&self) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let mut s = format!(
            "session {}: {}\n  t = {:.3}, subpacketization {}, theoretical rate {:.4} files, measured {:.4}\n  \
             placed {:.3} GiB over unicast; multicast {:.3} GiB ({} packets, plan payload {:.3} GiB, FEC+headers {:+.1}%)\n  \
             coded delivery {:.3} GiB vs {:.3} GiB unicasting each receiver its uncached part ({:.2}x less)\n  \
             multicast pass {:.2} s ({:.3} Gbit/s of file data per receiver), session {:.2} s, GSO {}\n  \
             repair: {} rounds, {} packets, {:.3} MiB\n",
            self.session,
            self.scheme,
            self.t,
            self.subpacketization,
            self.theoretical_rate,
            self.measured_rate,
            gib(self.placed_bytes),
            gib(self.multicast_bytes),
            self.multicast_packets,
            gib(self.plan_payload_bytes),
            (self.multicast_bytes as f64 / self.plan_payload_bytes.max(1) as f64 - 1.0) * 100.0,
            gib(self.plan_payload_bytes),
            gib(self.uncoded_bytes),
            self.uncoded_bytes as f64 / self.plan_payload_bytes.max(1) as f64,
            self.multicast_seconds,
            self.multicast_gbps,
            self.seconds,
            self.gso,
            self.repair_rounds,
            self.repair_packets,
            self.repair_bytes as f64 / (1u64 << 20) as f64,
        );
        for r in &self.receivers {
            s.push_str(&format!(
                "  receiver {:>4} {:<24} {} (cache {:.3} GiB{})\n",
                r.receiver,
                r.content,
                r.outcome,
                gib(r.placed_bytes),
                r.seconds
                    .map(|t| format!(", done {t:.2} s after the pass"))
                    .unwrap_or_default()
            ));
        }
        s
    }
}

/// A receiver admitted to the session.
struct Admitted {
    id: u32,
    content: ContentInfo,
    chan: ServerChannel,
    /// Its cache slot in the placement.
    slot: u32,
    /// The cache it says it holds.
    have: Option<CacheTag>,
    /// A message (or error) read while only progress was expected, not yet handled.
    pending: Option<Result<ToServer, ControlError>>,
}

impl Admitted {
    /// The next message: one read ahead if any, else the channel's next. Cancel-safe.
    async fn next_message(&mut self) -> Result<ToServer, ControlError> {
        match self.pending.take() {
            Some(m) => m,
            None => self.chan.recv().await,
        }
    }
}

/// What the connection handlers share with the session.
struct Shared {
    catalog: Arc<Mutex<Catalog>>,
    placement: Arc<Placement>,
    files: Arc<Vec<MappedFile>>,
    token: Option<String>,
    session: u32,
    /// Receivers admitted to the session: their cache slots are not given away.
    in_session: Mutex<Vec<u32>>,
    /// What the session is doing, for status and metrics.
    live: Arc<Live>,
}

impl Shared {
    fn admits(&self, token: Option<&str>) -> bool {
        self.token.is_none() || same_secret(token, self.token.as_deref())
    }

    fn slot_of(&self, receiver: u32) -> Result<u32, String> {
        let busy = self
            .in_session
            .lock()
            .map_err(|_| "session lock poisoned".to_owned())?
            .clone();
        let catalog = self
            .catalog
            .lock()
            .map_err(|_| "catalog lock poisoned".to_owned())?;
        self.placement
            .slot_of(&catalog, receiver, &busy)
            .map_err(|e| e.to_string())
    }
}

/// Serves one `light cache fill` connection: the receiver's cache, outside the session.
async fn serve_fill(
    mut chan: ServerChannel,
    receiver: u32,
    token: Option<String>,
    have: Option<CacheTag>,
    shared: &Shared,
) {
    let slot = if shared.admits(token.as_deref()) {
        shared.slot_of(receiver)
    } else {
        Err("missing or wrong token".to_owned())
    };
    let slot = match slot {
        Ok(s) => s,
        Err(reason) => {
            eprintln!("light: refused to fill receiver {receiver}'s cache: {reason}");
            let _ = chan.send(&ToReceiver::Refused { reason }).await;
            return;
        }
    };
    if chan
        .send(&ToReceiver::Accepted {
            session: shared.session,
        })
        .await
        .is_err()
    {
        return;
    }
    chan.set_timeout(Duration::from_secs(60));
    match place(
        &mut chan,
        receiver,
        slot,
        have.as_ref(),
        &shared.placement,
        &shared.files,
        &shared.catalog,
    )
    .await
    {
        Ok(0) => eprintln!("light: receiver {receiver}'s cache (slot {slot}) is already valid"),
        Ok(n) => {
            shared.live.cache_filled(n);
            eprintln!("light: filled receiver {receiver}'s cache (slot {slot}, {n} bytes)")
        }
        Err(e) => eprintln!("light: filling receiver {receiver}'s cache failed: {e}"),
    }
}

/// Payload bytes per packet for an MTU: IPv6 + UDP + Light headers subtracted, rounded
/// down to a multiple of 64 (reed-solomon-simd's fast path).
pub fn symbol_size(mtu: usize, group: IpAddr) -> usize {
    let ip = if group.is_ipv4() { 20 } else { 40 };
    (mtu.saturating_sub(ip + 8 + light_common::HEADER_LEN) / 64 * 64).max(64)
}

/// Runs one session to the end and returns its report.
pub async fn serve(cfg: ServeConfig) -> Result<SessionReport, SessionError> {
    let library = cfg.library.clone();
    let (catalog, contents) = tokio::task::spawn_blocking(move || {
        pack(&library)?;
        let catalog = Catalog::open(&library)?;
        let mut contents: Vec<ContentInfo> = catalog
            .contents()?
            .into_iter()
            .filter(|c| !c.removed)
            .collect();
        contents.sort_by_key(|c| c.id);
        Ok::<_, SessionError>((catalog, contents))
    })
    .await
    .map_err(|e| SessionError::Protocol(format!("library task: {e}")))??;
    if contents.is_empty() {
        return Err(SessionError::Protocol(format!(
            "the library {} holds no files",
            cfg.library.display()
        )));
    }
    let signer = Arc::new(ServerKey::load_or_create(&cfg.library)?);
    eprintln!(
        "light: server key {} (receivers pin it with --server-key)",
        signer.public_hex()
    );
    let live = Arc::new(Live::new(&cfg.library));
    let _metrics = live
        .start(cfg.metrics)
        .await
        .map_err(|source| SessionError::Io {
            op: "serve metrics on",
            path: format!("{:?}", cfg.metrics).into(),
            source,
        })?;
    let unfinished = catalog.fail_unfinished_sessions()?;
    if unfinished > 0 {
        eprintln!("light: {unfinished} earlier session(s) never ended; recorded as failed");
    }
    let session: u32 = rand::random::<u32>() | 1;
    let key = cfg.authenticate_packets.then(PacketKey::random);
    let file_lens: Vec<u64> = contents.iter().map(|c| c.size).collect();
    let fec = FecParams::for_loss(cfg.expected_loss, symbol_size(cfg.mtu, cfg.group))?;
    let receivers = u32::try_from(cfg.receivers)
        .map_err(|_| SessionError::Protocol("too many receivers".into()))?;
    // The caches of the K receiver slots, as the catalog recorded them (or now records).
    let placement = Arc::new(Placement::load_or_create(
        &catalog,
        &contents,
        PlanInput {
            receivers,
            file_lens: file_lens.clone(),
            budget: cfg.budget,
            scheme: cfg.scheme,
            demands: vec![0; cfg.receivers],
            seed: rand::random(),
            // A subfile shorter than one FEC block wastes parity and packets.
            min_subfile_bytes: (fec.symbol_size * usize::from(fec.source_per_block)) as u64,
            packet_bytes: (fec.symbol_size * 64) as u64,
        },
    )?);
    let files = Arc::new(map_files(&cfg.library, &contents)?);
    let catalog = Arc::new(Mutex::new(catalog));
    let listener = TcpListener::bind(cfg.bind)
        .await
        .map_err(|source| SessionError::Io {
            op: "bind control port",
            path: cfg.bind.to_string().into(),
            source,
        })?;
    eprintln!(
        "light: serving {} files from {} on {}; waiting for {} receivers",
        contents.len(),
        cfg.library.display(),
        cfg.bind,
        cfg.receivers
    );
    let shared = Arc::new(Shared {
        catalog: catalog.clone(),
        placement: placement.clone(),
        files: files.clone(),
        token: cfg.token.clone(),
        session,
        in_session: Mutex::new(Vec::new()),
        live: live.clone(),
    });

    let (admitted, mut outcomes) = gather(&cfg, &listener, &shared).await?;
    // Late arrivals are told why they cannot join rather than left hanging; cache fills
    // are served all the same.
    let late_shared = shared.clone();
    let late = tokio::spawn(async move {
        while let Ok((mut chan, _)) = ServerChannel::accept(&listener).await {
            let shared = late_shared.clone();
            tokio::spawn(async move {
                chan.set_timeout(Duration::from_secs(10));
                let (content, token) = match chan.recv().await {
                    Ok(ToServer::Hello { content, token, .. }) => (content, token),
                    Ok(ToServer::Fill {
                        receiver,
                        token,
                        have_cache,
                    }) => return serve_fill(chan, receiver, token, have_cache, &shared).await,
                    Ok(ToServer::Status { token }) => {
                        return answer_status(chan, token, &shared).await;
                    }
                    _ => return,
                };
                shared.live.refused();
                // The most useful reason first: a wrong token or unknown content would be
                // refused in any session.
                let reason = if !shared.admits(token.as_deref()) {
                    "missing or wrong token".to_owned()
                } else {
                    match shared.catalog.lock().map(|c| c.resolve(&content)) {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the session has already started".to_owned(),
                    }
                };
                let _ = chan.send(&ToReceiver::Refused { reason }).await;
            });
        }
    });

    let index_of: BTreeMap<u32, u32> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id, i as u32))
        .collect();
    let mut demands = vec![None; cfg.receivers];
    for a in &admitted {
        demands[a.slot as usize] = Some(index_of[&a.content.id]);
    }
    let input = placement.session_input(&demands);
    let plan_input = input.clone();
    let plan = Arc::new(
        tokio::task::spawn_blocking(move || plan(&plan_input))
            .await
            .map_err(|e| SessionError::Protocol(format!("planner task: {e}")))??,
    );
    eprintln!(
        "light: plan: {}; t = {:.3}; rate {:.4} files; {} messages, {} payload bytes",
        plan.scheme(),
        plan.t(),
        plan.theoretical_rate(),
        plan.messages().len(),
        plan.payload_bytes()
    );
    let session_row = catalog
        .lock()
        .map_err(|_| SessionError::Protocol("catalog lock poisoned".into()))?
        .record_session_start(&input)?;
    live.session_started(session);
    live.set_phase(SessionPhase::Placing);
    let present: Vec<u32> = admitted.iter().map(|a| a.slot).collect();

    let start = Instant::now();

    // Place caches and announce, all receivers in parallel; each comes back when Ready.
    let mut tasks = Vec::new();
    for a in admitted {
        live.receiver_state(a.id, "placing");
        let (shared, input, slot) = (shared.clone(), input.clone(), a.slot);
        let ann = Announcement {
            session,
            group: cfg.group,
            port: cfg.port,
            fec,
            key: key.as_ref().map(PacketKey::to_hex),
            signer: signer.clone(),
        };
        tasks.push(tokio::spawn(async move {
            (slot, place_and_announce(a, input, &shared, ann).await)
        }));
    }
    let mut ready = Vec::new();
    let mut placed_total = 0;
    for t in tasks {
        let (slot, r) = t
            .await
            .map_err(|e| SessionError::Protocol(format!("receiver task: {e}")))?;
        match r {
            Ok((a, placed)) => {
                live.placed(a.id, placed);
                placed_total += placed;
                outcomes.push(ReceiverOutcome {
                    receiver: a.id,
                    content: a.content.path.clone(),
                    outcome: "lost: no report".into(),
                    placed_bytes: placed,
                    seconds: None,
                });
                ready.push((outcomes.len() - 1, a));
            }
            Err((id, content, e)) => {
                let outcome = format!("failed before the multicast (slot {slot}): {e}");
                live.outcome(id, &outcome);
                outcomes.push(ReceiverOutcome {
                    receiver: id,
                    content,
                    outcome,
                    placed_bytes: 0,
                    seconds: None,
                })
            }
        }
    }

    // The passes run on a thread of their own (encoder there, sender on its own thread).
    let mut tx = TxConfig::new(SocketAddr::new(cfg.group, cfg.port));
    tx.rate = cfg.rate;
    if let Some(name) = cfg
        .iface
        .clone()
        .or_else(|| crate::transport::iface::owning(cfg.bind.ip()))
    {
        tx.socket.interface = Some(MulticastIf::Index(crate::transport::rx::socket::ifindex(
            &name,
        )?));
    }
    let passes = PassThread::spawn(plan.clone(), files.clone(), fec, session, tx, key, &live);
    live.set_phase(SessionPhase::Multicast);
    for (_, a) in &ready {
        live.receiver_state(a.id, "receiving");
    }
    let pass_started = Instant::now();
    let (back, pass) = with_heartbeats(ready, passes.run(PassCmd::First), &live).await;
    let pass = pass?.0;
    live.pass_done(false, &pass);
    let mut ready = back;
    let pass_secs = pass_started.elapsed().as_secs_f64();

    // Rounds: every receiver still in reports Done or the blocks it lacks; the lacking
    // blocks get more parity, once for all who miss them.
    let (mut repair_rounds, mut repair_bytes, mut repair_packets) = (0u32, 0u64, 0u64);
    let mut active = std::mem::take(&mut ready);
    let mut finished = Vec::new();
    // Rounds go on while they help: a round that leaves more shards missing than the best
    // so far counts against a small budget of stalls.
    let (mut best, mut stalls) = (u64::MAX, 0);
    for round in 0..=MAX_REPAIR_ROUNDS {
        let mut waits = Vec::new();
        for (i, mut a) in active.drain(..) {
            let (timeout, live) = (cfg.done_timeout, live.clone());
            waits.push(tokio::spawn(async move {
                // Receivers heartbeat every HEARTBEAT; a long silence means they are gone.
                a.chan.set_timeout(timeout);
                let mut beat = tokio::time::interval(HEARTBEAT);
                let mut heard = Instant::now();
                let verdict = loop {
                    tokio::select! {
                        msg = a.next_message() => {
                            heard = Instant::now();
                            match msg {
                                Ok(ToServer::Progress { bytes, drops }) => {
                                    live.progress(a.id, bytes, drops);
                                }
                                Ok(ToServer::Done { ok: true, .. }) => break Verdict::Verified,
                                Ok(ToServer::Done { ok: false, detail, .. }) => {
                                    break Verdict::Failed(detail);
                                }
                                Ok(ToServer::Nack { blocks }) => break Verdict::Nack(blocks),
                                Ok(_) => {}
                                Err(e) => break Verdict::Lost(e.to_string()),
                            }
                        }
                        _ = beat.tick() => {
                            if heard.elapsed() > SILENCE {
                                break Verdict::Lost(format!(
                                    "silent for {} s", SILENCE.as_secs()
                                ));
                            }
                            if let Err(e) = a.chan.send(&ToReceiver::Heartbeat).await {
                                break Verdict::Lost(e.to_string());
                            }
                        }
                    }
                };
                (i, a, verdict, pass_started.elapsed().as_secs_f64())
            }));
        }
        let mut requests: BTreeMap<(u32, u32), u16> = BTreeMap::new();
        for w in waits {
            let (i, a, verdict, t) = w
                .await
                .map_err(|e| SessionError::Protocol(format!("receiver task: {e}")))?;
            outcomes[i].seconds = Some(t - pass_secs);
            match verdict {
                Verdict::Verified => outcomes[i].outcome = "verified".into(),
                Verdict::Failed(d) => outcomes[i].outcome = format!("failed: {d}"),
                Verdict::Lost(e) => outcomes[i].outcome = format!("lost: {e}"),
                Verdict::Nack(blocks) => {
                    live.receiver_state(a.id, format!("repairing (round {round})"));
                    for [m, b, n] in blocks {
                        let e = requests.entry((m, b)).or_insert(0);
                        *e = (*e).max(n.min(u32::from(u16::MAX)) as u16);
                    }
                    outcomes[i].outcome = format!("incomplete after {round} repair rounds");
                    active.push((i, a));
                    continue;
                }
            }
            live.outcome(a.id, &outcomes[i].outcome);
            finished.push(a);
        }
        let asked: u64 = requests.values().map(|&n| u64::from(n)).sum();
        if asked < best {
            best = asked;
        } else {
            stalls += 1;
        }
        if active.is_empty() || round == MAX_REPAIR_ROUNDS || stalls > MAX_REPAIR_STALLS {
            break;
        }
        let blocks = requests.len();
        live.set_phase(SessionPhase::Repair(round + 1));
        let (back, repaired) =
            with_heartbeats(active, passes.run(PassCmd::Repair(requests)), &live).await;
        active = back;
        let (stats, exhausted) = repaired?;
        live.pass_done(true, &stats);
        tracing::info!(
            round = round + 1,
            receivers = active.len(),
            blocks,
            asked,
            sent = stats.packets,
            exhausted,
            "repair round"
        );
        if exhausted > 0 {
            tracing::info!(
                exhausted,
                "blocks ran out of repair parity; their sources were resent"
            );
        }
        repair_rounds += 1;
        repair_bytes += stats.udp_bytes;
        repair_packets += stats.packets;
    }
    finished.extend(active.into_iter().map(|(i, a)| {
        live.outcome(a.id, &outcomes[i].outcome);
        a
    }));
    late.abort();

    let mean_file = file_lens.iter().sum::<u64>() as f64 / file_lens.len() as f64;
    let delivered: u64 = outcomes.iter().filter(|o| o.outcome == "verified").count() as u64;
    let demanded_mean = if delivered > 0 {
        finished.iter().map(|a| a.content.size).sum::<u64>() as f64 / finished.len().max(1) as f64
    } else {
        0.0
    };
    let report = SessionReport {
        session,
        scheme: plan.scheme().to_string(),
        t: plan.t(),
        subpacketization: plan.subpacketization(),
        theoretical_rate: plan.theoretical_rate(),
        measured_rate: pass.payload_bytes as f64 / mean_file.max(1.0),
        plan_payload_bytes: plan.payload_bytes(),
        multicast_bytes: pass.udp_bytes,
        multicast_packets: pass.packets,
        repair_rounds,
        repair_bytes,
        repair_packets,
        uncoded_bytes: uncoded_bytes(&plan, &present),
        placed_bytes: placed_total,
        seconds: start.elapsed().as_secs_f64(),
        multicast_seconds: pass_secs,
        multicast_gbps: demanded_mean * 8.0 / pass_secs.max(1e-9) / 1e9,
        gso: format!("{:?}", pass.send.gso),
        fec,
        receivers: outcomes,
    };
    for mut a in finished {
        let summary = serde_json::to_value(&report).unwrap_or_default();
        let _ = a.chan.send(&ToReceiver::Report { summary }).await;
    }
    live.session_ended(report.all_verified());
    let outcome = if report.all_verified() {
        SessionOutcome::Completed
    } else {
        SessionOutcome::Partial
    };
    if let Ok(c) = catalog.lock() {
        c.record_session_end(
            session_row,
            outcome,
            report.multicast_bytes,
            report.placed_bytes,
        )?;
    }
    Ok(report)
}

/// Bytes that sending every receiver present (by slot) the uncached part of its file would
/// take.
fn uncoded_bytes(plan: &Plan, present: &[u32]) -> u64 {
    present
        .iter()
        .map(|&r| {
            let file = plan.demand(r).unwrap_or(0) as usize;
            let cached: u64 = plan.cached_parts_of_demand(r).iter().map(|p| p.len).sum();
            plan.file_lens()[file] - cached
        })
        .sum()
}

/// Accepts receivers until K are in, or the deadline passes with at least the minimum;
/// serves cache fills meanwhile.
async fn gather(
    cfg: &ServeConfig,
    listener: &TcpListener,
    shared: &Arc<Shared>,
) -> Result<(Vec<Admitted>, Vec<ReceiverOutcome>), SessionError> {
    let deadline = tokio::time::Instant::now() + cfg.wait;
    let mut admitted: BTreeMap<u32, Admitted> = BTreeMap::new();
    let mut refused = Vec::new();
    type Hello = (
        u32,
        String,
        Option<CacheTag>,
        ServerChannel,
        Result<ContentInfo, String>,
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Hello>(64);
    while admitted.len() < cfg.receivers {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            acc = ServerChannel::accept(listener) => {
                let (mut chan, peer) = acc.map_err(SessionError::control("accept"))?;
                let (tx, shared) = (tx.clone(), shared.clone());
                tokio::spawn(async move {
                    chan.set_timeout(Duration::from_secs(10));
                    let (receiver, content, token, have_cache) = match chan.recv().await {
                        Ok(ToServer::Hello { receiver, content, token, have_cache }) => {
                            (receiver, content, token, have_cache)
                        }
                        Ok(ToServer::Fill { receiver, token, have_cache }) => {
                            return serve_fill(chan, receiver, token, have_cache, &shared).await;
                        }
                        Ok(ToServer::Status { token }) => {
                            return answer_status(chan, token, &shared).await;
                        }
                        _ => {
                            tracing::info!(%peer, "connection closed before a valid hello");
                            return;
                        }
                    };
                    let resolved = if !shared.admits(token.as_deref()) {
                        Err("missing or wrong token".to_owned())
                    } else {
                        shared.catalog.lock().map_err(|_| "catalog lock poisoned".to_owned())
                            .and_then(|c| c.resolve(&content).map_err(|e| e.to_string()))
                    };
                    let _ = tx.send((receiver, content, have_cache, chan, resolved)).await;
                });
            }
            Some((id, content, have, mut chan, r)) = rx.recv() => {
                let r = r.and_then(|info| {
                    if admitted.contains_key(&id) {
                        return Err(format!("receiver id {id} is already in this session"));
                    }
                    let slot = shared.slot_of(id)?;
                    if let Ok(mut s) = shared.in_session.lock() {
                        s.push(id);
                    }
                    Ok((info, slot))
                });
                match r {
                    Ok((info, slot)) => {
                        chan.send(&ToReceiver::Accepted { session: shared.session }).await.map_err(SessionError::control("accept a receiver"))?;
                        eprintln!("light: receiver {id} wants {} (slot {slot}; {} of {})", info.path, admitted.len() + 1, cfg.receivers);
                        shared.live.admitted(id, &info.path, info.size);
                        admitted.insert(id, Admitted { id, content: info, chan, slot, have, pending: None });
                    }
                    Err(reason) => {
                        let _ = chan.send(&ToReceiver::Refused { reason: reason.clone() }).await;
                        eprintln!("light: refused receiver {id} ({content}): {reason}");
                        shared.live.refused();
                        refused.push(ReceiverOutcome { receiver: id, content, outcome: format!("refused: {reason}"), placed_bytes: 0, seconds: None });
                    }
                }
            }
        }
    }
    if admitted.len() < cfg.min_receivers.max(1) {
        return Err(SessionError::TooFewReceivers {
            got: admitted.len(),
            need: cfg.min_receivers.max(1),
        });
    }
    Ok((admitted.into_values().collect(), refused))
}

/// The library's files, mapped read-only, in plan file order.
fn map_files(
    library: &std::path::Path,
    contents: &[ContentInfo],
) -> Result<Vec<MappedFile>, SessionError> {
    contents
        .iter()
        .map(|c| MappedFile::open(&library.join(&c.path), c.size))
        .collect()
}

/// Sends a receiver its cache (unless it holds it) and the announcement, and waits until
/// it is listening. Returns the cache bytes sent.
async fn place_and_announce(
    mut a: Admitted,
    input: PlanInput,
    shared: &Shared,
    ann: Announcement,
) -> Result<(Admitted, u64), (u32, String, SessionError)> {
    let (id, content) = (a.id, a.content.path.clone());
    let fail = |e: SessionError| (id, content.clone(), e);
    a.chan.set_timeout(Duration::from_secs(60));
    let placed = place(
        &mut a.chan,
        id,
        a.slot,
        a.have.as_ref(),
        &shared.placement,
        &shared.files,
        &shared.catalog,
    )
    .await
    .map_err(fail)?;
    let manifest = shared
        .catalog
        .lock()
        .map_err(|_| fail(SessionError::Protocol("catalog lock poisoned".into())))?
        .manifest(a.content.id)
        .map_err(|e| fail(e.into()))?;
    let announce = ToReceiver::Announce {
        session: ann.session,
        group: ann.group.to_string(),
        port: ann.port,
        plan: serde_json::to_value(PlanAnnouncement {
            input,
            slot: a.slot,
            key: ann.key,
            manifest_signature: ann.signer.sign(&manifest),
        })
        .unwrap_or_default(),
        manifest: serde_json::to_value(&manifest).unwrap_or_default(),
        fec: serde_json::to_value(ann.fec).unwrap_or_default(),
    };
    a.chan
        .send(&announce)
        .await
        .map_err(|e| fail(SessionError::control("announce")(e)))?;
    loop {
        match a
            .chan
            .recv()
            .await
            .map_err(|e| fail(SessionError::control("wait for ready")(e)))?
        {
            ToServer::Ready => return Ok((a, placed)),
            ToServer::Done {
                ok: false, detail, ..
            } => return Err(fail(SessionError::Incomplete(detail))),
            _ => continue,
        }
    }
}

/// Repair rounds after the first pass before giving up on a receiver.
const MAX_REPAIR_ROUNDS: u32 = 64;
/// Rounds that fail to reduce the missing shards before giving up.
const MAX_REPAIR_STALLS: u32 = 4;

/// What a receiver said at the end of a round.
enum Verdict {
    Verified,
    Failed(String),
    Lost(String),
    Nack(Vec<[u32; 3]>),
}

/// A pass to run.
enum PassCmd {
    First,
    Repair(BTreeMap<(u32, u32), u16>),
}

type PassReply = tokio::sync::oneshot::Sender<Result<(PassStats, usize), TxError>>;

/// The thread that owns the [`Multicaster`] (it borrows the plan and the mapped files).
struct PassThread {
    cmds: std::sync::mpsc::Sender<(PassCmd, PassReply)>,
}

impl PassThread {
    fn spawn(
        plan: Arc<Plan>,
        files: Arc<Vec<MappedFile>>,
        fec: FecParams,
        session: u32,
        tx: TxConfig,
        key: Option<PacketKey>,
        live: &Live,
    ) -> Self {
        let (cmds, rx) = std::sync::mpsc::channel::<(PassCmd, PassReply)>();
        let progress: Progress = live.pass_progress();
        std::thread::spawn(move || {
            let slices: Vec<&[u8]> = files.iter().map(|m| m.as_ref()).collect();
            let mut m = Multicaster::new(&plan, &slices, fec, session, tx, key);
            for (cmd, reply) in rx {
                let r = match (&mut m, cmd) {
                    (Err(e), _) => Err(TxError::Config(e.to_string())),
                    (Ok(m), PassCmd::First) => m.first_pass(&progress).map(|s| (s, 0)),
                    (Ok(m), PassCmd::Repair(req)) => m.repair(&req, &progress),
                };
                let _ = reply.send(r);
            }
        });
        Self { cmds }
    }

    async fn run(&self, cmd: PassCmd) -> Result<(PassStats, usize), SessionError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmds
            .send((cmd, tx))
            .map_err(|_| SessionError::Protocol("multicast thread stopped".into()))?;
        Ok(rx
            .await
            .map_err(|_| SessionError::Protocol("multicast thread stopped".into()))??)
    }
}

/// What every receiver's announcement shares.
#[derive(Clone)]
struct Announcement {
    session: u32,
    group: IpAddr,
    port: u16,
    fec: FecParams,
    key: Option<String>,
    signer: Arc<ServerKey>,
}

/// Compares two secrets without an early exit on the first differing byte.
fn same_secret(got: Option<&str>, want: Option<&str>) -> bool {
    match (got, want) {
        (Some(g), Some(w)) if g.len() == w.len() => {
            g.bytes()
                .zip(w.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        }
        _ => false,
    }
}

/// How often each side of the control channel shows it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silence after which the other side of the control channel counts as gone.
pub const SILENCE: Duration = Duration::from_secs(15);

/// Runs `work` while a task per receiver keeps its control channel alive with heartbeats
/// and records its progress reports; gives the channels back with the work's result. A
/// receiver whose channel fails is returned all the same: the next read reports it lost.
async fn with_heartbeats<T>(
    receivers: Vec<(usize, Admitted)>,
    work: impl std::future::Future<Output = T>,
    live: &Arc<Live>,
) -> (Vec<(usize, Admitted)>, T) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = receivers
        .into_iter()
        .map(|(i, mut a)| {
            let (mut stop, live) = (stop_rx.clone(), live.clone());
            tokio::spawn(async move {
                let mut beat = tokio::time::interval(HEARTBEAT);
                loop {
                    tokio::select! {
                        _ = stop.changed() => break,
                        // Anything but progress is left for the round that follows.
                        msg = a.chan.recv(), if a.pending.is_none() => match msg {
                            Ok(ToServer::Progress { bytes, drops }) => live.progress(a.id, bytes, drops),
                            Ok(ToServer::Heartbeat) => {}
                            other => a.pending = Some(other),
                        },
                        _ = beat.tick() => {
                            if a.chan.send(&ToReceiver::Heartbeat).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                (i, a)
            })
        })
        .collect();
    let out = work.await;
    let _ = stop_tx.send(true);
    let mut back = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            back.push(r);
        }
    }
    (back, out)
}

/// Answers a status query (when the token matches) and closes the connection.
async fn answer_status(mut chan: ServerChannel, token: Option<String>, shared: &Shared) {
    let _ = if shared.admits(token.as_deref()) {
        let status = shared.live.status().await;
        chan.send(&ToReceiver::Status { status }).await
    } else {
        let reason = "missing or wrong token".to_owned();
        chan.send(&ToReceiver::Refused { reason }).await
    };
}
