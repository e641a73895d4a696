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
    CacheTag, ControlError, ServerChannel, ToReceiver, ToServer, WriterPace,
    live::{Live, SessionPhase},
    placement::{Placement, place},
    session::{MappedFile, PlanAnnouncement, SessionError},
};
use crate::{
    catalog::{Catalog, ContentInfo, ServerKey, SessionOutcome, pack},
    coding::{CacheBudget, Plan, PlanInput, Routing, SchemeChoice, plan},
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
    /// Further groups after `group` for messages only some receivers need
    /// ([`crate::coding::Routing`]); 0 sends everything on `group`.
    pub subset_groups: u16,
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
    /// Raise the parity to the loss receivers measured in recent sessions.
    pub adapt_loss: bool,
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
    /// Most multicast groups one round used, the session's own included.
    pub multicast_groups: usize,
    /// Pulse packets of the first passes (in `multicast_bytes`, a header each).
    pub multicast_pulses: u64,
    /// Repair rounds run after the first pass.
    pub repair_rounds: u32,
    /// UDP payload bytes of repair parity (and its End markers).
    pub repair_bytes: u64,
    /// Packets of repair.
    pub repair_packets: u64,
    /// The slowest rate (Gbit/s) a repair round was held to, for a receiver that could not
    /// keep up or waits on its disk; absent when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_gbps_limit: Option<f64>,
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
    /// The worst packet loss a receiver measured (sizes the next session's parity).
    pub observed_loss: f64,
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
             multicast pass {:.2} s ({:.3} Gbit/s of file data per receiver), session {:.2} s, GSO {}, {} multicast groups\n  \
             repair: {} rounds, {} packets, {:.3} MiB{}; worst loss measured {:.2}%\n",
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
            self.multicast_groups,
            self.repair_rounds,
            self.repair_packets,
            self.repair_bytes as f64 / (1u64 << 20) as f64,
            self.repair_gbps_limit
                .map(|g| format!(", held to {:.0} Mbit/s", g * 1e3))
                .unwrap_or_default(),
            self.observed_loss * 100.0,
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
    /// The contents it asked for, one per delivery round.
    contents: Vec<ContentInfo>,
    /// Its report line per content.
    rows: Vec<usize>,
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
    /// The contents as packed when the server started (what its files and plans hold).
    known: BTreeMap<u32, ContentInfo>,
    /// What the session is doing, for status and metrics.
    live: Arc<Live>,
    /// Multicast group and port of the data plane (told to receivers when admitted).
    data: (IpAddr, u16),
}

impl Shared {
    /// The data plane's group and port as the control channel carries them.
    fn data_plane(&self) -> (String, u16) {
        (self.data.0.to_string(), self.data.1)
    }

    /// Gives receiver `id` in `slot` its cache (see [`place`]), a minute allowed per
    /// message.
    async fn place(
        &self,
        chan: &mut ServerChannel,
        id: u32,
        slot: u32,
        have: Option<&CacheTag>,
    ) -> Result<u64, SessionError> {
        chan.set_timeout(Duration::from_secs(60));
        place(
            chan,
            id,
            slot,
            have,
            &self.placement,
            &self.files,
            &self.catalog,
        )
        .await
    }

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
            contents: Vec::new(),
            data: None,
        })
        .await
        .is_err()
    {
        return;
    }
    match shared.place(&mut chan, receiver, slot, have.as_ref()).await {
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
    tracing::info!("checking the library");
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
    // The first pass's parity covers the worst loss recent sessions measured, so a lossy
    // LAN does not pay for repair rounds every time.
    let recent = if cfg.adapt_loss {
        catalog.recent_loss(RECENT_SESSIONS)?
    } else {
        None
    };
    let loss = match recent {
        Some(seen) if seen > cfg.expected_loss => {
            let adapted = seen.min(MAX_ADAPTED_LOSS);
            eprintln!(
                "light: recent sessions measured up to {:.2}% loss; first-pass parity sized \
                 for {:.2}%",
                seen * 100.0,
                adapted * 100.0
            );
            adapted
        }
        _ => cfg.expected_loss,
    };
    let fec = FecParams::for_loss(loss, symbol_size(cfg.mtu, cfg.group))?;
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
        known: contents.iter().map(|c| (c.id, c.clone())).collect(),
        data: (cfg.group, cfg.port),
    });

    tracing::info!("waiting for receivers");
    let (admitted, mut outcomes) = gather(&cfg, &listener, &shared).await?;
    tracing::info!(receivers = admitted.len(), "receivers admitted");
    // Late arrivals are told why they cannot join rather than left hanging, unless they
    // are receivers of this session coming back (they rejoin); cache fills and status
    // queries are served all the same.
    let (rejoin_tx, mut rejoins) = tokio::sync::mpsc::channel::<Rejoin>(16);
    let late_shared = shared.clone();
    let late = tokio::spawn(async move {
        while let Ok((mut chan, _)) = ServerChannel::accept(&listener).await {
            let (shared, rejoin_tx) = (late_shared.clone(), rejoin_tx.clone());
            tokio::spawn(async move {
                chan.set_timeout(Duration::from_secs(10));
                let (receiver, content, more, token, have) = match chan.recv().await {
                    Ok(ToServer::Hello {
                        receiver,
                        content,
                        token,
                        have_cache,
                        more,
                    }) => (receiver, content, more, token, have_cache),
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
                let admits = shared.admits(token.as_deref());
                let member = shared
                    .in_session
                    .lock()
                    .is_ok_and(|s| s.contains(&receiver));
                if admits && member {
                    let asked = shared
                        .catalog
                        .lock()
                        .map_err(|_| "catalog lock poisoned".to_owned())
                        .and_then(|c| resolve_all(&c, &shared.known, &content, &more))
                        .map(|cs| cs.into_iter().map(|c| c.id).collect());
                    let _ = rejoin_tx
                        .send(Rejoin {
                            receiver,
                            have,
                            chan,
                            asked,
                        })
                        .await;
                    return;
                }
                shared.live.refused();
                // The most useful reason first: a wrong token or unknown content would be
                // refused in any session.
                let reason = if !admits {
                    "missing or wrong token".to_owned()
                } else {
                    match shared.catalog.lock().map(|c| c.resolve_many(&content)) {
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
    // Round r serves every receiver's r-th content: one plan per round, all on the same
    // placement, so a receiver asking for several contents uses its one cache for each.
    let rounds = admitted.iter().map(|a| a.contents.len()).max().unwrap_or(0);
    let mut plans = Vec::new();
    for r in 0..rounds {
        let mut demands = vec![None; cfg.receivers];
        for a in admitted.iter().filter(|a| a.contents.len() > r) {
            demands[a.slot as usize] = Some(index_of[&a.contents[r].id]);
        }
        let input = placement.session_input(&demands);
        let plan_input = input.clone();
        let plan = tokio::task::spawn_blocking(move || plan(&plan_input))
            .await
            .map_err(|e| SessionError::Protocol(format!("planner task: {e}")))??;
        eprintln!(
            "light: plan{}: {}; t = {:.3}; rate {:.4} files; {} messages, {} payload bytes",
            if rounds > 1 {
                format!(" (round {} of {rounds})", r + 1)
            } else {
                String::new()
            },
            plan.scheme(),
            plan.t(),
            plan.theoretical_rate(),
            plan.messages().len(),
            plan.payload_bytes()
        );
        plans.push((input, Arc::new(plan)));
    }
    let session_row = {
        let c = catalog
            .lock()
            .map_err(|_| SessionError::Protocol("catalog lock poisoned".into()))?;
        match plans.as_slice() {
            [(input, _)] => c.record_session_start(input)?,
            many => c.record_session_start(&many.iter().map(|(i, _)| i).collect::<Vec<_>>())?,
        }
    };
    live.session_started(session);
    live.set_phase(SessionPhase::Placing);

    let start = Instant::now();
    // One report line per (receiver, content).
    let mut admitted = admitted;
    for a in &mut admitted {
        for c in &a.contents {
            a.rows.push(outcomes.len());
            outcomes.push(ReceiverOutcome {
                receiver: a.id,
                content: c.path.clone(),
                outcome: "not delivered".into(),
                placed_bytes: 0,
                seconds: None,
            });
        }
    }

    let roster: BTreeMap<u32, Member> = admitted
        .iter()
        .map(|a| {
            let m = Member {
                slot: a.slot,
                contents: a.contents.clone(),
                rows: a.rows.clone(),
            };
            (a.id, m)
        })
        .collect();

    // Caches, all receivers in parallel; those done are kept alive while others finish.
    let mut tasks = tokio::task::JoinSet::new();
    for mut a in admitted {
        live.receiver_state(a.id, "placing");
        let shared = shared.clone();
        tasks.spawn(async move {
            let r = shared
                .place(&mut a.chan, a.id, a.slot, a.have.as_ref())
                .await;
            (a, r)
        });
    }
    let mut placed = Holder::new(&live);
    let mut placed_total = 0;
    while let Some(t) = tasks.join_next().await {
        let (a, r) = t.map_err(|e| SessionError::Protocol(format!("receiver task: {e}")))?;
        match r {
            Ok(bytes) => {
                live.placed(a.id, bytes);
                placed_total += bytes;
                outcomes[a.rows[0]].placed_bytes = bytes;
                placed.hold(a);
            }
            Err(e) => {
                let outcome = format!("failed before the multicast (slot {}): {e}", a.slot);
                live.outcome(a.id, &outcome);
                for &row in &a.rows {
                    outcomes[row].outcome.clone_from(&outcome);
                }
            }
        }
    }
    let mut pool = placed.release().await;
    tracing::info!(placed_bytes = placed_total, "caches placed");

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
    let mut totals = Totals::default();
    // Receivers done with the session before its last round (they still get the report).
    let mut spent = Vec::new();
    for (r, (input, plan)) in plans.iter().enumerate() {
        let (part, idle): (Vec<Admitted>, Vec<Admitted>) =
            pool.drain(..).partition(|a| a.contents.len() > r);
        let round = Round {
            index: r,
            // Each round has its own session id in the packets: stragglers of the last
            // round cannot be taken for this one's.
            session: session.wrapping_add(2 * r as u32),
            plan: plan.clone(),
            input: input.clone(),
            ann: Announcement {
                group: cfg.group,
                port: cfg.port,
                subset_groups: cfg.subset_groups,
                fec,
                key: key.as_ref().map(PacketKey::to_hex),
                signer: signer.clone(),
            },
        };
        let (idle, done) = with_heartbeats(
            idle,
            deliver(
                &cfg,
                &round,
                part,
                &shared,
                &roster,
                tx.clone(),
                key.clone(),
                &mut rejoins,
                &mut outcomes,
                &mut totals,
            ),
            &live,
        )
        .await;
        pool = idle;
        // Receivers that lost or failed a content are not asked for their next ones.
        for a in done? {
            if outcomes[a.rows[r]].outcome == "verified" {
                pool.push(a);
            } else {
                let why = format!("not delivered: {} failed", a.contents[r].path);
                for &row in &a.rows[r + 1..] {
                    outcomes[row].outcome.clone_from(&why);
                }
                spent.push(a);
            }
        }
    }
    late.abort();

    let mean_file = file_lens.iter().sum::<u64>() as f64 / file_lens.len() as f64;
    // Receivers that verified something: the pass goodput is per receiver.
    let served = outcomes
        .iter()
        .filter(|o| o.outcome == "verified")
        .map(|o| o.receiver)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let report = SessionReport {
        session,
        scheme: plans
            .first()
            .map(|(_, p)| p.scheme().to_string())
            .unwrap_or_default(),
        t: plans.first().map_or(0.0, |(_, p)| p.t()),
        subpacketization: plans.first().map_or(0, |(_, p)| p.subpacketization()),
        theoretical_rate: plans.iter().map(|(_, p)| p.theoretical_rate()).sum(),
        measured_rate: totals.payload_bytes as f64 / mean_file.max(1.0),
        plan_payload_bytes: plans.iter().map(|(_, p)| p.payload_bytes()).sum(),
        multicast_bytes: totals.udp_bytes,
        multicast_packets: totals.packets,
        multicast_groups: totals.groups,
        multicast_pulses: totals.pulses,
        repair_rounds: totals.repair_rounds,
        repair_bytes: totals.repair_bytes,
        repair_packets: totals.repair_packets,
        repair_gbps_limit: totals.repair_limit.map(|r| r as f64 * 8.0 / 1e9),
        uncoded_bytes: totals.uncoded_bytes,
        placed_bytes: placed_total,
        seconds: start.elapsed().as_secs_f64(),
        multicast_seconds: totals.pass_secs,
        multicast_gbps: totals.delivered_bytes as f64 * 8.0
            / totals.pass_secs.max(1e-9)
            / 1e9
            / served.max(1) as f64,
        gso: totals.gso.clone(),
        observed_loss: totals.worst_loss.unwrap_or(0.0),
        fec,
        receivers: outcomes,
    };
    for mut a in pool.into_iter().chain(spent) {
        let summary = serde_json::to_value(&report).unwrap_or_default();
        let _ = a.chan.send(&ToReceiver::Report { summary }).await;
    }
    tracing::info!("report sent");
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
        if let Some(loss) = totals.worst_loss {
            c.record_observed_loss(session_row, loss)?;
        }
    }
    Ok(report)
}

/// What the session delivers to one admitted receiver.
struct Member {
    slot: u32,
    contents: Vec<ContentInfo>,
    rows: Vec<usize>,
}

/// A receiver of the session reconnecting after it lost its connection.
struct Rejoin {
    receiver: u32,
    have: Option<CacheTag>,
    chan: ServerChannel,
    /// The content ids its hello resolves to (they must be the session's for it).
    asked: Result<Vec<u32>, String>,
}

/// One delivery round: a plan for one content per participating receiver.
struct Round {
    index: usize,
    session: u32,
    plan: Arc<Plan>,
    input: PlanInput,
    ann: Announcement,
}

/// What the rounds sent, summed for the report.
#[derive(Default)]
struct Totals {
    payload_bytes: u64,
    udp_bytes: u64,
    packets: u64,
    repair_rounds: u32,
    repair_bytes: u64,
    repair_packets: u64,
    /// The slowest rate (bytes/s) a repair round was held to.
    repair_limit: Option<u64>,
    uncoded_bytes: u64,
    pass_secs: f64,
    /// Requested-file bytes of the contents delivered, summed over receivers.
    delivered_bytes: u64,
    /// The worst packet loss a receiver measured (`None`: none measured any).
    worst_loss: Option<f64>,
    gso: String,
    /// Most groups a round used.
    groups: usize,
    /// Pulses of the first passes.
    pulses: u64,
}

impl Totals {
    fn saw_loss(&mut self, loss: Option<f64>) {
        if let Some(l) = loss {
            self.worst_loss = Some(self.worst_loss.map_or(l, |w| w.max(l)));
        }
    }
}

/// Announces `round` to its receivers, multicasts it and runs repair rounds until every
/// one of them verified, failed or was lost; receivers of the session that reconnect
/// meanwhile rejoin. Returns the receivers still connected.
#[allow(clippy::too_many_arguments)] // The session's state, threaded through one round.
async fn deliver(
    cfg: &ServeConfig,
    round: &Round,
    part: Vec<Admitted>,
    shared: &Arc<Shared>,
    roster: &BTreeMap<u32, Member>,
    tx: TxConfig,
    key: Option<PacketKey>,
    rejoins: &mut tokio::sync::mpsc::Receiver<Rejoin>,
    outcomes: &mut [ReceiverOutcome],
    totals: &mut Totals,
) -> Result<Vec<Admitted>, SessionError> {
    let (r, live) = (round.index, &shared.live);
    let slots: Vec<u32> = part.iter().map(|a| a.slot).collect();
    // Receivers done with this round, kept alive until it ends.
    let mut done = Holder::new(live);
    // Those that are listening, kept alive while the others get ready.
    let mut listening = Holder::new(live);
    let mut tasks = tokio::task::JoinSet::new();
    for a in part {
        live.content(a.id, &a.contents[r].path, a.contents[r].size);
        let (shared, input, session, ann) = (
            shared.clone(),
            round.input.clone(),
            round.session,
            round.ann.clone(),
        );
        tasks.spawn(async move { announce(a, r, input, session, &shared, ann).await });
    }
    while let Some(t) = tasks.join_next().await {
        match t.map_err(|e| SessionError::Protocol(format!("receiver task: {e}")))? {
            Ok(a) => listening.hold(a),
            Err((a, e)) => {
                let outcome = format!("failed before the multicast: {e}");
                live.outcome(a.id, &outcome);
                outcomes[a.rows[r]].outcome = outcome;
                done.hold(a);
            }
        }
    }
    let ready = listening.release().await;
    tracing::info!(round = r, receivers = ready.len(), "receivers listening");
    totals.uncoded_bytes += uncoded_bytes(&round.plan, &slots);

    let routing = Routing::new(&round.plan, round.ann.group, round.ann.subset_groups)?;
    tracing::info!(
        round = round.index,
        groups = routing.groups(),
        "multicast groups"
    );
    totals.groups = totals.groups.max(routing.groups());
    let passes = PassThread::spawn(
        round.plan.clone(),
        routing,
        shared.files.clone(),
        round.ann.fec,
        round.session,
        tx,
        key,
        live,
    );
    live.set_phase(SessionPhase::Multicast);
    for a in &ready {
        live.receiver_state(a.id, "receiving");
    }
    let pass_started = Instant::now();
    let (back, pass) = with_heartbeats(ready, passes.run(PassCmd::First), live).await;
    let pass = pass?.0;
    live.pass_done(false, &pass);
    let pass_secs = pass_started.elapsed().as_secs_f64();
    tracing::info!(
        round = r,
        packets = pass.packets,
        pass_secs,
        "first pass sent"
    );
    totals.payload_bytes += pass.payload_bytes;
    totals.udp_bytes += pass.udp_bytes;
    totals.packets += pass.packets;
    totals.pulses += pass.pulses;
    totals.pass_secs += pass_secs;
    totals.gso = format!("{:?}", pass.send.gso);

    // Rounds: every receiver still in reports Done or the blocks it lacks; the lacking
    // blocks get more parity, once for all who miss them.
    let mut active = back;
    // Rounds go on while they help: a round that leaves more shards missing than the best
    // so far counts against a small budget of stalls.
    let (mut best, mut stalls) = (u64::MAX, 0);
    let mut asked_before: BTreeMap<(u32, u32), u16> = BTreeMap::new();
    let mut grace = true;
    // Repair passes slow down, once, when a receiver lost far more of the first pass than a
    // link loses: it could not keep up (measured at MTU 9000, K=1: 25 % lost at 5 Gbit/s,
    // and repair at the same rate lost as much again).
    let first_rate = pass.udp_bytes as f64 / pass_secs.max(1e-3);
    let mut repair_rate: Option<u64> = None;
    for repair in 0..=MAX_REPAIR_ROUNDS {
        // Receivers that reconnected take their place again (their old connection is dead).
        while let Ok(j) = rejoins.try_recv() {
            let (back, joined) = with_heartbeats(
                std::mem::take(&mut active),
                rejoin(j, round, roster, shared),
                live,
            )
            .await;
            active = back;
            if let Some(a) = joined {
                active.retain(|o| o.id != a.id);
                outcomes[a.rows[r]].outcome = "rejoined".into();
                active.push(a);
            }
        }
        let mut waits = Vec::new();
        for mut a in active.drain(..) {
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
                                Ok(ToServer::Done { ok: true, loss, .. }) => {
                                    break Verdict::Verified(loss);
                                }
                                Ok(ToServer::Done { ok: false, detail, loss, .. }) => {
                                    break Verdict::Failed(detail, loss);
                                }
                                Ok(ToServer::Nack { blocks, loss, writer }) => {
                                    break Verdict::Nack(blocks, loss, writer);
                                }
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
                (a, verdict, pass_started.elapsed().as_secs_f64())
            }));
        }
        let mut requests: BTreeMap<(u32, u32), u16> = BTreeMap::new();
        let mut lost_any = false;
        let mut overrun = 0.0f64;
        // (bytes asked for, writer's pace) of receivers that waited on their disk.
        let mut paced: Vec<(u64, WriterPace)> = Vec::new();
        for w in waits {
            let (a, verdict, t) = w
                .await
                .map_err(|e| SessionError::Protocol(format!("receiver task: {e}")))?;
            let i = a.rows[r];
            outcomes[i].seconds = Some(t - pass_secs);
            match verdict {
                Verdict::Verified(loss) => {
                    totals.saw_loss(loss);
                    outcomes[i].outcome = "verified".into();
                    totals.delivered_bytes += a.contents[r].size;
                }
                Verdict::Failed(d, loss) => {
                    totals.saw_loss(loss);
                    outcomes[i].outcome = format!("failed: {d}");
                }
                Verdict::Lost(e) => {
                    lost_any = true;
                    outcomes[i].outcome = format!("lost: {e}");
                    live.outcome(a.id, &outcomes[i].outcome);
                    continue;
                }
                Verdict::Nack(blocks, loss, writer) => {
                    // Loss from waiting on a disk is the writer's pace, not the link's or
                    // an overrun socket's: it sets the round's rate on its own.
                    match writer {
                        Some(pace) => {
                            let shards: u64 = blocks.iter().map(|b| u64::from(b[2])).sum();
                            paced.push((shards * round.ann.fec.symbol_size as u64, pace));
                        }
                        None => overrun = overrun.max(loss.unwrap_or(0.0)),
                    }
                    live.receiver_state(a.id, format!("repairing (round {repair})"));
                    for [m, b, n] in blocks {
                        let e = requests.entry((m, b)).or_insert(0);
                        *e = (*e).max(n.min(u32::from(u16::MAX)) as u16);
                    }
                    outcomes[i].outcome = format!("incomplete after {repair} repair rounds");
                    active.push(a);
                    continue;
                }
            }
            live.outcome(a.id, &outcomes[i].outcome);
            done.hold(a);
        }
        if active.is_empty() && lost_any && grace {
            // A receiver that dropped out may be restarting: give it a moment to rejoin
            // before the round ends.
            grace = false;
            if let Ok(Some(j)) = tokio::time::timeout(REJOIN_GRACE, rejoins.recv()).await
                && let Some(a) = rejoin(j, round, roster, shared).await
            {
                outcomes[a.rows[r]].outcome = "rejoined".into();
                active.push(a);
                continue;
            }
        }
        let asked: u64 = requests.values().map(|&n| u64::from(n)).sum();
        // Progress: fewer shards asked for, or blocks asked for last time now complete (a
        // receiver missing much lists only the first MAX_NACK_BLOCKS each time).
        let completed = asked_before.keys().any(|b| !requests.contains_key(b));
        if asked < best || completed {
            best = best.min(asked);
        } else {
            stalls += 1;
        }
        asked_before.clone_from(&requests);
        if active.is_empty() || repair == MAX_REPAIR_ROUNDS || stalls > MAX_REPAIR_STALLS {
            break;
        }
        if requests.is_empty() {
            // Only rejoined receivers, which have not said what they lack yet.
            continue;
        }
        if repair_rate.is_none() {
            repair_rate = overrun_rate(first_rate, overrun);
            if let Some(r) = repair_rate {
                eprintln!(
                    "light: a receiver lost {:.1}% of the pass: repair runs at {:.0} Mbit/s",
                    overrun * 100.0,
                    r as f64 * 8.0 / 1e6
                );
            }
        }
        let sent = asked * round.ann.fec.symbol_size as u64;
        let disk_rate = paced
            .iter()
            .filter_map(|&(wanted, pace)| writer_rate(sent, wanted, pace))
            .min();
        if let Some(d) = disk_rate
            && repair_rate.is_none_or(|r| d < r)
        {
            eprintln!(
                "light: a receiver waits on its disk: repair round {} runs at {:.0} Mbit/s",
                repair + 1,
                d as f64 * 8.0 / 1e6
            );
        }
        let rate = repair_rate.into_iter().chain(disk_rate).min();
        totals.repair_limit = totals.repair_limit.into_iter().chain(rate).min();
        let blocks = requests.len();
        live.set_phase(SessionPhase::Repair(repair + 1));
        let (back, repaired) =
            with_heartbeats(active, passes.run(PassCmd::Repair(requests, rate)), live).await;
        active = back;
        let (stats, exhausted) = repaired?;
        live.pass_done(true, &stats);
        tracing::info!(
            round = repair + 1,
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
        totals.repair_rounds += 1;
        totals.repair_bytes += stats.udp_bytes;
        totals.repair_packets += stats.packets;
    }
    // Receivers still short when repair gives up are told so, not left waiting.
    for a in &mut active {
        live.outcome(a.id, &outcomes[a.rows[r]].outcome);
        let reason = format!("the server gave up: {}", outcomes[a.rows[r]].outcome);
        let _ = a.chan.send(&ToReceiver::Refused { reason }).await;
    }
    let mut finished = done.release().await;
    finished.extend(active);
    Ok(latest_per_receiver(finished))
}

/// Keeps one connection per receiver: the last one (a rejoin replaces a dead one).
fn latest_per_receiver(all: Vec<Admitted>) -> Vec<Admitted> {
    let mut by_id: BTreeMap<u32, Admitted> = BTreeMap::new();
    for a in all {
        by_id.insert(a.id, a);
    }
    by_id.into_values().collect()
}

/// Sessions whose measured loss sizes the next first pass's parity.
const RECENT_SESSIONS: u32 = 5;
/// Most loss the first pass's parity is adapted to (beyond, repair rounds take over).
const MAX_ADAPTED_LOSS: f64 = 0.2;

/// How long a round that lost a receiver waits for it to reconnect before it ends.
const REJOIN_GRACE: Duration = Duration::from_secs(5);

/// Takes a reconnected receiver back into `round`: its cache (normally kept), the
/// announcement, and its Ready. `None` (with the reason sent) when it cannot rejoin.
async fn rejoin(
    j: Rejoin,
    round: &Round,
    roster: &BTreeMap<u32, Member>,
    shared: &Arc<Shared>,
) -> Option<Admitted> {
    let Rejoin {
        receiver,
        have,
        mut chan,
        asked,
    } = j;
    let r = round.index;
    let refusal = match (roster.get(&receiver), asked) {
        (_, Err(reason)) => Err(reason),
        (Some(m), Ok(ids)) if ids != m.contents.iter().map(|c| c.id).collect::<Vec<_>>() => {
            Err("it rejoins asking for other contents than it did".to_owned())
        }
        (Some(m), Ok(_)) if m.contents.len() > r => Ok(m),
        _ => Err("this receiver has no content left in the running session".to_owned()),
    };
    let m = match refusal {
        Ok(m) => m,
        Err(reason) => {
            eprintln!("light: receiver {receiver} cannot rejoin: {reason}");
            let _ = chan.send(&ToReceiver::Refused { reason }).await;
            return None;
        }
    };
    let accepted = ToReceiver::Accepted {
        session: shared.session,
        contents: m.contents[r..].iter().map(|c| c.path.clone()).collect(),
        data: Some(shared.data_plane()),
    };
    if chan.send(&accepted).await.is_err() {
        return None;
    }
    eprintln!("light: receiver {receiver} rejoins the session");
    match shared
        .place(&mut chan, receiver, m.slot, have.as_ref())
        .await
    {
        Ok(placed) => shared.live.placed(receiver, placed),
        Err(e) => {
            eprintln!("light: receiver {receiver} could not rejoin: {e}");
            return None;
        }
    }
    let a = Admitted {
        id: receiver,
        contents: m.contents.clone(),
        rows: m.rows.clone(),
        chan,
        slot: m.slot,
        have,
        pending: None,
    };
    match announce(
        a,
        r,
        round.input.clone(),
        round.session,
        shared,
        round.ann.clone(),
    )
    .await
    {
        Ok(a) => Some(a),
        Err((_, e)) => {
            eprintln!("light: receiver {receiver} could not rejoin: {e}");
            None
        }
    }
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
        Result<Vec<ContentInfo>, String>,
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
                    let (receiver, content, more, token, have_cache) = match chan.recv().await {
                        Ok(ToServer::Hello { receiver, content, token, have_cache, more }) => {
                            (receiver, content, more, token, have_cache)
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
                            .and_then(|c| resolve_all(&c, &shared.known, &content, &more))
                    };
                    let _ = tx.send((receiver, content, have_cache, chan, resolved)).await;
                });
            }
            Some((id, content, have, mut chan, r)) = rx.recv() => {
                // A receiver restarted while the server gathers takes its own place again;
                // another one with a live connection under the same id is refused.
                if r.is_ok()
                    && let Some(old) = admitted.get_mut(&id)
                    && connection_is_dead(old).await
                {
                    admitted.remove(&id);
                    if let Ok(mut s) = shared.in_session.lock() {
                        s.retain(|&r| r != id);
                    }
                    eprintln!("light: receiver {id} reconnected; its old connection is closed");
                }
                let r = r.and_then(|infos| {
                    if admitted.contains_key(&id) {
                        return Err(format!("receiver id {id} is already in this session"));
                    }
                    let slot = shared.slot_of(id)?;
                    if let Ok(mut s) = shared.in_session.lock() {
                        s.push(id);
                    }
                    Ok((infos, slot))
                });
                match r {
                    Ok((infos, slot)) => {
                        let paths: Vec<String> = infos.iter().map(|c| c.path.clone()).collect();
                        if let Err(e) = chan.send(&ToReceiver::Accepted { session: shared.session, contents: paths.clone(), data: Some(shared.data_plane()) }).await {
                            // Gone between its hello and the answer: the session goes on.
                            eprintln!("light: receiver {id} left before it was admitted: {e}");
                            if let Ok(mut s) = shared.in_session.lock() {
                                s.retain(|&r| r != id);
                            }
                            continue;
                        }
                        eprintln!("light: receiver {id} wants {} (slot {slot}; {} of {})", paths.join(", "), admitted.len() + 1, cfg.receivers);
                        shared.live.admitted(id, &infos[0].path, infos[0].size);
                        admitted.insert(id, Admitted { id, contents: infos, rows: Vec::new(), chan, slot, have, pending: None });
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

/// Whether an admitted receiver's connection is closed (it says nothing while it waits,
/// so a read that ends at once means the peer is gone).
async fn connection_is_dead(a: &mut Admitted) -> bool {
    match tokio::time::timeout(Duration::from_millis(50), a.chan.recv()).await {
        Err(_) => false,
        Ok(Err(_)) => true,
        Ok(Ok(msg)) => {
            a.pending = Some(Ok(msg));
            false
        }
    }
}

/// The contents a hello asks for, directories expanded, each once, in the order asked;
/// only as `known` (packed when the server started) holds them.
fn resolve_all(
    catalog: &Catalog,
    known: &BTreeMap<u32, ContentInfo>,
    first: &str,
    more: &[String],
) -> Result<Vec<ContentInfo>, String> {
    let mut out: Vec<ContentInfo> = Vec::new();
    for name in std::iter::once(first).chain(more.iter().map(String::as_str)) {
        for c in catalog.resolve_many(name).map_err(|e| e.to_string())? {
            let Some(k) = known.get(&c.id).filter(|k| k.version == c.version) else {
                return Err(format!(
                    "{} was packed after this server started; restart the server to serve it",
                    c.path
                ));
            };
            if out.iter().all(|o| o.id != k.id) {
                out.push(k.clone());
            }
        }
    }
    if out.len() > super::messages::MAX_CONTENTS {
        return Err(format!(
            "{} contents asked for, more than the {} a session delivers to one receiver",
            out.len(),
            super::messages::MAX_CONTENTS
        ));
    }
    Ok(out)
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

/// Announces round `r` (its plan, this receiver's content) and waits until the receiver
/// listens.
async fn announce(
    mut a: Admitted,
    r: usize,
    input: PlanInput,
    session: u32,
    shared: &Shared,
    ann: Announcement,
) -> Result<Admitted, (Admitted, SessionError)> {
    let manifest = match shared
        .catalog
        .lock()
        .map_err(|_| SessionError::Protocol("catalog lock poisoned".into()))
        .and_then(|c| Ok(c.manifest_version(a.contents[r].id, a.contents[r].version)?))
    {
        Ok(m) => m,
        Err(e) => return Err((a, e)),
    };
    let announce = ToReceiver::Announce {
        session,
        group: ann.group.to_string(),
        port: ann.port,
        plan: serde_json::to_value(PlanAnnouncement {
            input,
            slot: a.slot,
            key: ann.key,
            manifest_signature: ann.signer.sign(&manifest),
            subset_groups: ann.subset_groups,
        })
        .unwrap_or_default(),
        manifest: serde_json::to_value(&manifest).unwrap_or_default(),
        fec: serde_json::to_value(ann.fec).unwrap_or_default(),
    };
    a.chan.set_timeout(Duration::from_secs(60));
    if let Err(e) = a.chan.send(&announce).await {
        return Err((a, SessionError::control("announce")(e)));
    }
    loop {
        match a.next_message().await {
            Ok(ToServer::Ready) => return Ok(a),
            Ok(ToServer::Done {
                ok: false, detail, ..
            }) => return Err((a, SessionError::Incomplete(detail))),
            Ok(_) => continue,
            Err(e) => return Err((a, SessionError::control("wait for ready")(e))),
        }
    }
}

/// Loss above which a receiver counts as overrun rather than on a lossy link.
const OVERRUN_LOSS: f64 = 0.05;
/// Slowest repair rate chosen for an overrun receiver, bytes/s (10 Mbit/s).
const MIN_REPAIR_RATE: f64 = 1.25e6;

/// The rate (bytes/s) for repair passes when the worst receiver lost `loss` of a pass sent
/// at `pass_rate`: a little under what it took in. `None` when the loss looks like the link's.
fn overrun_rate(pass_rate: f64, loss: f64) -> Option<u64> {
    if loss.is_nan() || loss <= OVERRUN_LOSS || !pass_rate.is_finite() {
        return None;
    }
    let kept = (1.0 - loss.min(1.0)) * 0.8;
    Some((pass_rate * kept).max(MIN_REPAIR_RATE) as u64)
}

/// The repair rate (bytes/s), a tenth under the fastest, at which a receiver that waits on
/// its disk takes in the `wanted` bytes it asked for, out of `sent` in the round, without
/// pausing again: what it can still hold plus what its writer drains meanwhile. `None` when
/// it can hold them all.
fn writer_rate(sent: u64, wanted: u64, pace: WriterPace) -> Option<u64> {
    let over = wanted.checked_sub(pace.room).filter(|&o| o > 0)?;
    // The round lasts sent/rate seconds, in which the writer drains drain_rate × that.
    let rate = sent as f64 * pace.drain_rate / over as f64 * 0.9;
    Some(rate.max(MIN_REPAIR_RATE) as u64)
}

/// Repair rounds after the first pass before giving up on a receiver.
const MAX_REPAIR_ROUNDS: u32 = 64;
/// Rounds that fail to reduce the missing shards before giving up.
const MAX_REPAIR_STALLS: u32 = 4;

/// What a receiver said at the end of a round.
enum Verdict {
    Verified(Option<f64>),
    Failed(String, Option<f64>),
    Lost(String),
    Nack(Vec<[u32; 3]>, Option<f64>, Option<WriterPace>),
}

/// A pass to run.
enum PassCmd {
    First,
    /// Parity for `(message, block) → shards needed`, at most at the rate given (bytes/s).
    Repair(BTreeMap<(u32, u32), u16>, Option<u64>),
}

type PassReply = tokio::sync::oneshot::Sender<Result<(PassStats, usize), TxError>>;

/// The thread that owns the [`Multicaster`] (it borrows the plan and the mapped files).
struct PassThread {
    cmds: std::sync::mpsc::Sender<(PassCmd, PassReply)>,
}

impl PassThread {
    #[allow(clippy::too_many_arguments)] // What the pass thread owns, moved in once.
    fn spawn(
        plan: Arc<Plan>,
        routing: Routing,
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
            if let Ok(m) = &mut m {
                m.set_routing(&routing);
            }
            for (cmd, reply) in rx {
                let r = match (&mut m, cmd) {
                    (Err(e), _) => Err(TxError::Config(e.to_string())),
                    (Ok(m), PassCmd::First) => m.first_pass(&progress).map(|s| (s, 0)),
                    (Ok(m), PassCmd::Repair(req, rate)) => m.repair(&req, rate, &progress),
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
    group: IpAddr,
    port: u16,
    subset_groups: u16,
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

/// Receivers kept alive (heartbeats sent, progress read) while the session attends to
/// others; anything but progress they send is kept for whoever reads them next.
struct Holder {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Admitted>>,
    live: Arc<Live>,
}

impl Holder {
    fn new(live: &Arc<Live>) -> Self {
        Self {
            stop: tokio::sync::watch::channel(false).0,
            tasks: Vec::new(),
            live: live.clone(),
        }
    }

    fn hold(&mut self, mut a: Admitted) {
        let (mut stop, live) = (self.stop.subscribe(), self.live.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut beat = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
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
            a
        }));
    }

    /// Stops holding and gives the receivers back, one per receiver id.
    async fn release(self) -> Vec<Admitted> {
        let _ = self.stop.send(true);
        let mut back = Vec::new();
        for t in self.tasks {
            if let Ok(a) = t.await {
                back.push(a);
            }
        }
        latest_per_receiver(back)
    }
}

/// Runs `work` while the receivers are held alive; gives them back with the work's result.
/// A receiver whose channel fails is returned all the same: the next read reports it lost.
async fn with_heartbeats<T>(
    receivers: Vec<Admitted>,
    work: impl std::future::Future<Output = T>,
    live: &Arc<Live>,
) -> (Vec<Admitted>, T) {
    let mut held = Holder::new(live);
    for a in receivers {
        held.hold(a);
    }
    let out = work.await;
    (held.release().await, out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_waiting_on_its_disk_sets_the_repair_rate_only_past_its_room() {
        let pace = |drain_rate, room| WriterPace { drain_rate, room };
        // It can hold all it asked for: the round goes at full speed, however slow its disk
        // was while eight writers shared it.
        assert_eq!(
            writer_rate(900 << 20, 184 << 20, pace(75e6, 256 << 20)),
            None
        );
        assert_eq!(
            writer_rate(900 << 20, 256 << 20, pace(75e6, 256 << 20)),
            None
        );
        // Alone and far behind (24 MB asked, 4 MB of room, an 8 MB/s disk): a little under
        // what lets the writer keep up, 24 / 20 × 8 MB/s.
        let r = writer_rate(24_000_000, 24_000_000, pace(8e6, 4_000_000)).unwrap() as f64;
        assert!(r < 9.6e6 && r > 8e6, "{r}");
        // Its share of a round that also carries others' repair lets the round go faster.
        let shared = writer_rate(96_000_000, 24_000_000, pace(8e6, 4_000_000)).unwrap();
        assert!(shared as f64 > 4.0 * r * 0.99, "{shared}");
        // Never below the floor.
        assert_eq!(
            writer_rate(1 << 20, 1 << 30, pace(1.0, 0)),
            Some(MIN_REPAIR_RATE as u64)
        );
    }

    proptest::proptest! {
        /// At the rate chosen, what the receiver takes in minus what its writer drains in
        /// the round fits in its room.
        #[test]
        fn the_writer_rate_keeps_reception_within_the_room(
            wanted in 1u64..1 << 34,
            extra in 0u64..1 << 34,
            room in 0u64..1 << 30,
            drain in 1e5f64..1e10,
        ) {
            let sent = wanted + extra;
            let pace = WriterPace { drain_rate: drain, room };
            match writer_rate(sent, wanted, pace) {
                None => proptest::prop_assert!(wanted <= room),
                Some(r) if r > MIN_REPAIR_RATE as u64 => {
                    let held = wanted as f64 - drain * sent as f64 / r as f64;
                    proptest::prop_assert!(held <= room as f64 + 1.0, "{} > {}", held, room);
                }
                Some(r) => proptest::prop_assert_eq!(r, MIN_REPAIR_RATE as u64),
            }
        }
    }

    #[test]
    fn repair_slows_down_only_for_an_overrun_receiver() {
        // 1% lost: the link's doing, the parity covers it; repair keeps the pass rate.
        assert_eq!(overrun_rate(600e6, 0.01), None);
        assert_eq!(overrun_rate(600e6, OVERRUN_LOSS), None);
        assert_eq!(overrun_rate(600e6, f64::NAN), None);
        // 25% lost at 600 MB/s: it took in about 450 MB/s; repair goes a little under.
        let r = overrun_rate(600e6, 0.25).unwrap() as f64;
        assert!(r < 450e6 && r > 300e6, "{r}");
        // Never slower than the floor, even if nothing arrived.
        assert_eq!(overrun_rate(600e6, 1.0), Some(MIN_REPAIR_RATE as u64));
    }
}
