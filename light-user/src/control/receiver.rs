//! `light receive`: asks the server for one content, stores its cache, receives the
//! coded multicast (AF_XDP or socket), decodes, verifies every chunk and saves the file.

use light_common::{DataHeader, PacketKind};
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::TryRecvError,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    Message, ReceiverChannel, ToReceiver, ToServer, WriterPace,
    cache::{CacheStore, connect},
    live::SharedDrops,
    server::{HEARTBEAT, SILENCE},
    session::{MappedFile, PlanAnnouncement, SessionError, field},
};
use crate::{
    catalog::{CatalogError, Manifest, OutputFile, verify_manifest},
    coding::{CachedPart, Decoder, Routing, plan},
    fec::{Assembler, BlockDecoder, Event, FecParams, Restore},
    transport::{
        mac::PacketKey,
        rx::{Receiver, RxConfig, RxPath},
    },
};

/// Everything `light receive` needs.
#[derive(Clone, Debug)]
pub struct ReceiveConfig {
    /// This receiver's id.
    pub receiver: u32,
    /// Contents to receive, in order: ids, library-relative paths or directories.
    pub contents: Vec<String>,
    /// Server control address.
    pub server: SocketAddr,
    /// Where the file is written (under its library path).
    pub out: PathBuf,
    /// Where the cache is kept.
    pub cache_dir: PathBuf,
    /// Interface facing the server (default: the one routing to it).
    pub iface: Option<String>,
    /// Receive path choice.
    pub path: RxPath,
    /// How long to keep retrying the first connection.
    pub connect_timeout: Duration,
    /// Give up after this long without a data packet.
    pub idle_timeout: Duration,
    /// Secret to present to the server.
    pub token: Option<String>,
    /// The server's pinned ed25519 public key (hex): manifests it did not sign are refused.
    pub server_key: Option<String>,
    /// Write whole pages past the page cache (`O_DIRECT`) instead of through it.
    pub direct_io: bool,
    /// Most received bytes held in memory for the writer; beyond it reception pauses.
    pub write_buffer: u64,
}

/// One-line outcome of a reception.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiveSummary {
    /// Receiver id.
    pub receiver: u32,
    /// Library path of the content.
    pub content: String,
    /// Where the verified file was written.
    pub path: String,
    /// File size.
    pub bytes: u64,
    /// Every chunk and the root hash verified.
    pub verified: bool,
    /// Cache bytes received over unicast.
    pub cache_bytes: u64,
    /// File bytes taken straight from the cache.
    pub from_cache_bytes: u64,
    /// File bytes decoded from the multicast.
    pub decoded_bytes: u64,
    /// Seconds from connect to verified file.
    pub seconds: f64,
    /// Seconds from the first data packet to the file complete.
    pub multicast_seconds: f64,
    /// File bytes per second of multicast reception, in Gbit/s.
    pub goodput_gbps: f64,
    /// Receive path used.
    pub rx_path: String,
    /// Light packets received.
    pub packets: u64,
    /// Packets dropped as malformed, foreign, duplicate or late.
    pub dropped: u64,
    /// FEC blocks that needed Reed–Solomon decoding.
    pub fec_decoded_blocks: u64,
    /// Packets dropped because their MAC did not verify (forged or corrupted).
    pub auth_failed: u64,
    /// Shards that arrived twice (replays or network duplicates), dropped.
    pub duplicates: u64,
    /// Packet loss measured on the way from the server (0–1), from sequence numbers.
    pub loss: f64,
    /// File bytes written past the page cache (`--direct-io`).
    pub direct_io_bytes: u64,
    /// Most received bytes that waited for the writer at once.
    pub write_backlog_peak: u64,
    /// Seconds reception paused because the writer held `--write-buffer` bytes.
    pub disk_wait_seconds: f64,
}

/// Live progress for a progress bar: `(content, file bytes done, file size)`.
pub type ProgressFn = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Runs one reception to the end: every content asked for, in the order the server
/// delivers them. `stop` aborts it cleanly (Ctrl-C).
pub async fn receive(
    cfg: ReceiveConfig,
    stop: Arc<AtomicBool>,
    progress: ProgressFn,
) -> Result<Vec<ReceiveSummary>, SessionError> {
    let (first, more) = cfg
        .contents
        .split_first()
        .ok_or_else(|| SessionError::Protocol("no content asked for".into()))?;
    let started = Instant::now();
    // Both receive paths load the eBPF object (XDP program or socket filter): that starts
    // now and overlaps the handshake below.
    crate::transport::rx::xdp::preload_object();
    // A cache kept from an earlier run is offered only if it still hashes right.
    let store = CacheStore::new(&cfg.cache_dir, cfg.receiver);
    let (have, discarded) = store.check().await?;
    if let Some(why) = discarded {
        eprintln!(
            "light: discarded the cache in {}: {why}",
            cfg.cache_dir.display()
        );
    }
    let mut chan = connect(cfg.server, cfg.connect_timeout).await?;
    chan.send(&ToServer::Hello {
        receiver: cfg.receiver,
        content: first.clone(),
        token: cfg.token.clone(),
        have_cache: have.as_ref().map(|(t, _)| t.clone()),
        more: more.to_vec(),
    })
    .await
    .map_err(SessionError::control("send hello"))?;
    // A server that is waiting for receivers answers as soon as it admits this one, but
    // sends the cache only once every expected receiver is in: wait as long as it does.
    chan.set_timeout(Duration::from_secs(3600));
    let (contents, data_plane) = match chan
        .recv()
        .await
        .map_err(SessionError::control("wait for the session"))?
    {
        ToReceiver::Accepted { contents, data, .. } => (contents, data),
        ToReceiver::Refused { reason } => return Err(SessionError::Refused(reason)),
        other => return Err(SessionError::Protocol(format!("unexpected {other:?}"))),
    };
    tracing::info!("admitted");
    let data = DataThread::spawn()?;
    // Attaching XDP takes 0.1-0.3 s: done while the cache and the other receivers come.
    if let Some((group, port)) = data_plane
        && let Ok(group) = group.parse()
        && let Ok(rx) = rx_config(&cfg, group, port)
    {
        data.open(rx);
    }
    let cache_path = store.data_path();
    let (cache_len, cache_downloaded) = store.obtain(&mut chan, have.as_ref()).await?;
    // Older servers name no contents: the one asked for.
    let contents = if contents.is_empty() {
        vec![first.clone()]
    } else {
        contents
    };
    let cache = (cache_path, cache_len);
    let mut summaries = Vec::new();
    // One announcement per content (a server that names none delivers one).
    let rounds = contents.len().max(1);
    for round in 1..=rounds {
        let announce = next_announcement(&mut chan).await?;
        let mut summary = receive_content(
            &cfg,
            &mut chan,
            announce,
            &cache,
            &data,
            stop.clone(),
            &progress,
        )
        .await
        .inspect_err(|e| {
            // A damaged cache that kept its file times decodes wrong chunks: hash it in full
            // before it is used again.
            if matches!(e, SessionError::Catalog(CatalogError::ChunkMismatch { .. })) {
                store.distrust();
            }
        })?;
        summary.seconds = started.elapsed().as_secs_f64();
        summary.cache_bytes = cache_downloaded;
        summary.receiver = cfg.receiver;
        eprintln!("light: verified {}", summary.path);
        summaries.push(summary);
        if round == rounds {
            // Detaching XDP and leaving the group took the kernel 35-100 ms per receiver at
            // K=4 (measured), once at exit; now it overlaps the wait for the server's report.
            data.close();
        }
    }
    // The report is a courtesy; do not fail verified files for it.
    chan.set_timeout(Duration::from_secs(5));
    while let Ok(ToReceiver::Heartbeat) = chan.recv().await {}
    tracing::info!("report received");
    Ok(summaries)
}

/// Waits for the server to announce the next content (it keeps the connection alive with
/// heartbeats while other receivers' rounds run).
async fn next_announcement(chan: &mut ReceiverChannel) -> Result<ToReceiver, SessionError> {
    // The server heartbeats this receiver while other receivers' rounds run.
    chan.set_timeout(SILENCE);
    loop {
        match chan.recv().await {
            Ok(ToReceiver::Heartbeat) => continue,
            Ok(a @ ToReceiver::Announce { .. }) => return Ok(a),
            Ok(ToReceiver::Refused { reason }) => return Err(SessionError::Refused(reason)),
            Ok(other) => {
                return Err(SessionError::Incomplete(format!(
                    "the session ended before every content was delivered ({})",
                    other.type_name()
                )));
            }
            Err(e) => return Err(SessionError::ServerLost(e.to_string())),
        }
    }
}

/// Receives one announced content: listens, decodes, verifies, asks for repair, and tells
/// the server how it went.
async fn receive_content(
    cfg: &ReceiveConfig,
    chan: &mut ReceiverChannel,
    announce: ToReceiver,
    (cache_path, cache_len): &(PathBuf, u64),
    data: &DataThread,
    stop: Arc<AtomicBool>,
    progress: &ProgressFn,
) -> Result<ReceiveSummary, SessionError> {
    let (session, group, port, announced, manifest, fec) = match announce {
        ToReceiver::Announce {
            session,
            group,
            port,
            plan,
            manifest,
            fec,
        } => {
            let group: IpAddr = group
                .parse()
                .map_err(|_| SessionError::Protocol(format!("bad group {group}")))?;
            let announced: PlanAnnouncement = field(plan, "plan")?;
            let manifest: Manifest = field(manifest, "manifest")?;
            if !manifest.verify_root() {
                return Err(SessionError::Protocol(
                    "the announced manifest's root does not match its chunk hashes".into(),
                ));
            }
            if let Some(pk) = &cfg.server_key
                && !verify_manifest(pk, &manifest, &announced.manifest_signature)
            {
                return Err(SessionError::Refused(format!(
                    "the manifest of {} is not signed by the pinned server key {pk}",
                    manifest.path()
                )));
            }
            let fec: FecParams = field(fec, "fec")?;
            (session, group, port, announced, manifest, fec)
        }
        other => {
            return Err(SessionError::Protocol(format!(
                "expected the announcement, got {other:?}"
            )));
        }
    };
    let rx = rx_config(cfg, group, port)?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let (nack_tx, mut nack_rx) = tokio::sync::mpsc::unbounded_channel();
    let abort = data.fresh_abort();
    // What the control loop reports to the server every PROGRESS interval.
    let (done_bytes, drops) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(SharedDrops::default()),
    );
    let progress: ProgressFn = {
        let (done_bytes, progress) = (done_bytes.clone(), progress.clone());
        Arc::new(move |content, done, size| {
            done_bytes.store(done, Ordering::Relaxed);
            progress(content, done, size)
        })
    };
    let job = DataJob {
        announced,
        manifest,
        fec,
        session,
        cache_path: cache_path.clone(),
        cache_len: *cache_len,
        out: cfg.out.clone(),
        direct_io: cfg.direct_io,
        write_buffer: cfg.write_buffer,
        rx,
        idle: cfg.idle_timeout,
        stop,
        abort: abort.clone(),
        nacks: nack_tx,
        progress,
        drops: drops.clone(),
    };
    data.run(job, ready_tx, done_tx)?;
    if let Ok(Ok(path_desc)) = ready_rx.await {
        chan.send(&ToServer::Ready)
            .await
            .map_err(SessionError::control("send ready"))?;
        tracing::info!(path = %path_desc, "listening");
    }
    // Forward repair requests until the data thread is done (it reports set-up failures
    // through `done` too); a server that ends the session stops the wait for repair.
    chan.set_timeout(Duration::from_secs(24 * 3600));
    let mut control_open = true;
    let mut lost: Option<String> = None;
    let mut beat = tokio::time::interval(HEARTBEAT);
    let mut report = tokio::time::interval(PROGRESS);
    let mut heard = Instant::now();
    let progress_now = || ToServer::Progress {
        bytes: done_bytes.load(Ordering::Relaxed),
        drops: drops.snapshot(),
    };
    let result = loop {
        tokio::select! {
            r = &mut done_rx => {
                break r.map_err(|_| SessionError::Protocol("receive thread died".into()))?;
            }
            Some((blocks, writer)) = nack_rx.recv() => {
                if control_open {
                    chan.send(&ToServer::Nack { blocks, loss: drops.loss(), writer })
                        .await
                        .map_err(SessionError::control("send nack"))?;
                }
            }
            _ = report.tick(), if control_open => {
                if let Err(e) = chan.send(&progress_now()).await {
                    lost = Some(e.to_string());
                    control_open = false;
                    abort.store(true, Ordering::Relaxed);
                }
            }
            _ = beat.tick(), if control_open => {
                if heard.elapsed() > SILENCE {
                    lost = Some(format!("the server has been silent for {} s", SILENCE.as_secs()));
                } else if let Err(e) = chan.send(&ToServer::Heartbeat).await {
                    lost = Some(e.to_string());
                }
                if lost.is_some() {
                    control_open = false;
                    abort.store(true, Ordering::Relaxed);
                }
            }
            msg = chan.recv(), if control_open => {
                heard = Instant::now();
                match msg {
                    Ok(ToReceiver::Heartbeat) => {}
                    Ok(other) => {
                        tracing::info!(?other, "server ended the session");
                        abort.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        lost = Some(e.to_string());
                        control_open = false;
                        abort.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    // A delivery cut short by a vanished server says so, rather than only what it lacks.
    let result = match (result, lost) {
        (Err(e), Some(why)) => Err(SessionError::ServerLost(format!("{why}; {e}"))),
        (r, _) => r,
    };
    let (ok, detail, bytes) = match &result {
        Ok(s) => (true, format!("verified {}", s.path), s.bytes),
        Err(e) => (false, e.to_string(), 0),
    };
    if control_open {
        // The final counts, for the server's status and metrics.
        let _ = chan.send(&progress_now()).await;
    }
    let _ = chan
        .send(&ToServer::Done {
            ok,
            detail,
            bytes_received: bytes,
            // Failed deliveries report their loss too: they are the lossiest.
            loss: drops.loss(),
        })
        .await;
    result
}

/// Where and how to receive from `group:port`, on the interface facing the server.
fn rx_config(cfg: &ReceiveConfig, group: IpAddr, port: u16) -> Result<RxConfig, SessionError> {
    let iface = cfg
        .iface
        .clone()
        .or_else(|| crate::transport::iface::towards(cfg.server.ip()))
        .ok_or_else(|| {
            SessionError::Protocol(
                "cannot tell which interface faces the server; pass --iface".into(),
            )
        })?;
    Ok(RxConfig {
        iface,
        group,
        port,
        path: cfg.path,
        max_datagram: 9216,
    })
}

/// Tells the receive thread a content is ready to be listened for (the path it uses).
type ReadyTx = tokio::sync::oneshot::Sender<Result<String, ()>>;
/// Carries a content's outcome back from the receive thread.
type DoneTx = tokio::sync::oneshot::Sender<Result<ReceiveSummary, SessionError>>;

/// What the receive thread is asked to do.
enum Work {
    /// Open the receive path before the first announcement.
    Open(RxConfig),
    /// Release the receive path: no content is left to receive.
    Close,
    /// Receive one content.
    Job(Box<DataJob>, ReadyTx, DoneTx),
}

/// The receive path and the configuration it was opened for.
struct OpenPath {
    cfg: RxConfig,
    rx: Receiver,
    /// Why XDP was not used, when it was asked for: the summary's `rx_path` says so too.
    fallback: Option<String>,
}

impl OpenPath {
    fn open(cfg: RxConfig) -> Result<Self, SessionError> {
        let (rx, fallback) = Receiver::open(&cfg)?;
        let fallback = fallback.map(|why| why.to_string());
        if let Some(why) = &fallback {
            eprintln!("light: not using XDP: {why}; using the socket receive path");
        }
        Ok(Self { cfg, rx, fallback })
    }

    /// The path in use, and why it is not XDP if XDP was asked for.
    fn describe(&self) -> String {
        match &self.fallback {
            Some(why) => format!("{}; not using XDP: {why}", self.rx.describe()),
            None => self.rx.describe(),
        }
    }
}

/// The thread the data path lives on (an AF_XDP socket stays on the thread that made it):
/// it opens the receive path once, as early as the group is known, and keeps it for every
/// content of the session. Dropping it stops a running reception and detaches XDP.
struct DataThread {
    work: Option<std::sync::mpsc::Sender<Work>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The running content's abort flag.
    abort: std::sync::Mutex<Arc<AtomicBool>>,
}

impl DataThread {
    fn spawn() -> Result<Self, SessionError> {
        let (work, jobs) = std::sync::mpsc::channel::<Work>();
        let thread = std::thread::Builder::new()
            .name("light-rx".into())
            .spawn(move || {
                let mut open: Option<OpenPath> = None;
                for w in jobs {
                    match w {
                        // A failure here is reported by the content that needs the path.
                        Work::Open(cfg) => {
                            open = OpenPath::open(cfg)
                                .inspect_err(|e| {
                                    tracing::warn!(error = %e, "opening the receive path ahead failed; trying again at the announcement");
                                })
                                .ok();
                        }
                        Work::Close => {
                            if let Some(o) = open.take() {
                                o.rx.close();
                            }
                        }
                        Work::Job(job, ready, done) => {
                            let _ = done.send(job.run(&mut open, ready));
                        }
                    }
                }
            })
            .map_err(|source| SessionError::Io {
                op: "spawn receive thread",
                path: "light-rx".into(),
                source,
            })?;
        Ok(Self {
            work: Some(work),
            thread: Some(thread),
            abort: std::sync::Mutex::new(Arc::new(AtomicBool::new(false))),
        })
    }

    fn send(&self, w: Work) -> Result<(), SessionError> {
        self.work
            .as_ref()
            .and_then(|t| t.send(w).ok())
            .ok_or_else(|| SessionError::Protocol("receive thread died".into()))
    }

    /// Opens the receive path ahead of the announcement.
    fn open(&self, cfg: RxConfig) {
        let _ = self.send(Work::Open(cfg));
    }

    /// Releases the receive path (detaches XDP): the last content is in.
    fn close(&self) {
        let _ = self.send(Work::Close);
    }

    /// A new content's abort flag (set when the server ends its round, or on drop).
    fn fresh_abort(&self) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut a) = self.abort.lock() {
            *a = flag.clone();
        }
        flag
    }

    /// Receives one content on the thread.
    fn run(&self, job: DataJob, ready: ReadyTx, done: DoneTx) -> Result<(), SessionError> {
        self.send(Work::Job(Box::new(job), ready, done))
    }
}

impl Drop for DataThread {
    fn drop(&mut self) {
        if let Ok(a) = self.abort.lock() {
            a.store(true, Ordering::Relaxed);
        }
        self.work = None;
        // Waits (at most a second: a reception checks its abort flag every 100 ms, but its
        // writer finishes what it was given) so XDP is detached before the receiver returns.
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// The data thread's inputs.
struct DataJob {
    announced: PlanAnnouncement,
    manifest: Manifest,
    fec: FecParams,
    session: u32,
    cache_path: PathBuf,
    cache_len: u64,
    out: PathBuf,
    direct_io: bool,
    write_buffer: u64,
    rx: RxConfig,
    idle: Duration,
    stop: Arc<AtomicBool>,
    /// Set when the server ends the session: stop waiting for repair.
    abort: Arc<AtomicBool>,
    /// Repair requests for the control channel, with the writer's pace once it held
    /// reception back.
    nacks: tokio::sync::mpsc::UnboundedSender<(Vec<[u32; 3]>, Option<WriterPace>)>,
    progress: ProgressFn,
    /// Drop counters for the control loop's progress reports.
    drops: Arc<SharedDrops>,
}

/// How often a receiver reports its progress to the server during delivery.
pub const PROGRESS: Duration = Duration::from_secs(1);

/// Silence after an End marker before the receiver reports what it lacks. Packets arrive
/// in order on a LAN, so once the marker is read the pass is over; this only lets the
/// later copies of the marker pass (they are 2 ms apart). Was 300 ms per repair round.
const NACK_QUIET: Duration = Duration::from_millis(50);
/// How often the receive loop reads how many frames the kernel's message filter dropped.
const FILTER_POLL: Duration = Duration::from_millis(10);
/// Silence after which the receiver reports what it lacks even without an End marker.
const NACK_IDLE: Duration = Duration::from_secs(2);
/// Largest piece of the cache the writer copies between two looks at its message queue.
const CACHE_COPY_SLICE: u64 = 4 << 20;

impl DataJob {
    fn run(
        self,
        open: &mut Option<OpenPath>,
        ready: ReadyTx,
    ) -> Result<ReceiveSummary, SessionError> {
        let plan = plan(&self.announced.input)?;
        let slot = self.announced.slot;
        let cache = Arc::new(MappedFile::open(&self.cache_path, self.cache_len)?);
        if cache.as_ref().as_ref().len() as u64 != plan.cache_len(slot) {
            return Err(SessionError::Protocol(format!(
                "cache holds {} bytes, the plan places {}",
                self.cache_len,
                plan.cache_len(slot)
            )));
        }
        let size = self.manifest.size();
        let content = self.manifest.path().to_owned();
        let (mut out, _resumed) = OutputFile::open_or_resume(&self.out, self.manifest)?;
        if self.direct_io && !out.set_direct_io(true) {
            tracing::warn!(
                "the output's file system refuses O_DIRECT; writing through the page cache"
            );
        }
        let cached_parts = plan.cached_parts_of_demand(slot);
        let from_cache = cached_parts.iter().map(|p| p.len).sum();
        let mut decoder = Decoder::new(&plan, slot)?;
        let wanted = decoder.wanted_messages().to_vec();
        let lens = plan.messages();
        let mut assembler = Assembler::new(
            self.fec,
            self.session,
            decoder
                .wanted_messages()
                .iter()
                .map(|&m| (m, lens[m as usize].len)),
        )?;
        // Messages that map straight onto the file are written block by block as they
        // arrive, not in one go at their end (measured: 2-5 s after a 256 MiB pass at K=4).
        for &m in decoder.wanted_messages() {
            if decoder.streams(m) {
                assembler.stream(m);
            }
        }

        (self.progress)(&content, 0, size);

        // XOR decoding and writing run on their own thread, so a completed message (up to a
        // subfile long) never stalls the ring the packets arrive on.
        let decoded = Arc::new(AtomicU64::new(0));
        // Streamed bytes handed on and not yet written: the receive loop pauses while they
        // exceed `write_buffer`, so a disk slower than the network cannot fill the memory.
        let backlog = Arc::new(AtomicU64::new(0));
        let (msg_tx, msg_rx) = std::sync::mpsc::channel::<Event>();
        // Written block buffers go back to the assembler for later blocks.
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        // Cached bytes the writer has copied into the output so far.
        let copied = Arc::new(AtomicU64::new(0));
        let writer = {
            let (cache, decoded, backlog, copied) = (
                cache.clone(),
                decoded.clone(),
                backlog.clone(),
                copied.clone(),
            );
            let copy_below = self.write_buffer / 4;
            std::thread::Builder::new()
                .name("light-write".into())
                .spawn(move || -> Result<(OutputFile, Decoder), SessionError> {
                    let cache = cache.as_ref().as_ref();
                    // The demand's cached parts are copied here, while packets arrive (before
                    // the receiver said ready, they held it back 0.15 s per 64 MiB, measured),
                    // a slice at a time: ahead of message pieces while few of those wait (a
                    // disk is idle at the start of a pass), behind them once they pile up.
                    // Copied first whatever the backlog, they let it reach `write_buffer`
                    // and reception pause (K=4, t=2, MTU 9000 on tmpfs: 17-23 % of the pass
                    // lost, then a repair round); copied only in the gaps between pieces, they
                    // ran after the pass on a busy disk (K=8, t=2, MTU 1500: +1.1 s).
                    let mut copies = cached_parts
                        .into_iter()
                        .flat_map(|p| p.split(CACHE_COPY_SLICE));
                    let copy = |part: CachedPart, out: &mut OutputFile| {
                        let (c, l) = (part.cache_offset as usize, part.len as usize);
                        out.write_at(part.file_offset, &cache[c..c + l])?;
                        copied.fetch_add(part.len, Ordering::Relaxed);
                        Ok::<_, SessionError>(())
                    };
                    loop {
                        let ahead = backlog.load(Ordering::Relaxed) < copy_below;
                        let next = if ahead {
                            Err(TryRecvError::Empty)
                        } else {
                            msg_rx.try_recv()
                        };
                        let event = match next {
                            Ok(event) => event,
                            Err(TryRecvError::Disconnected) => break,
                            Err(TryRecvError::Empty) => {
                                if let Some(part) = copies.next() {
                                    copy(part, &mut out)?;
                                    continue;
                                }
                                match msg_rx.recv() {
                                    Ok(event) => event,
                                    Err(_) => break,
                                }
                            }
                        };
                        let (message, offset, bytes, last) = match event {
                            Event::MessageComplete { message, bytes } => {
                                // Whole messages are not kept: they can be a file long.
                                for r in decoder.take_message(message, bytes, cache)? {
                                    out.write_at(r.offset, &r.data)?;
                                    decoded.fetch_add(r.data.len() as u64, Ordering::Relaxed);
                                }
                                continue;
                            }
                            Event::Piece {
                                message,
                                offset,
                                bytes,
                                last,
                            } => (message, offset, bytes, last),
                            Event::Restore(r) => {
                                return Err(SessionError::Protocol(format!(
                                    "block at {} of message {} reached the writer undecoded",
                                    r.offset, r.message
                                )));
                            }
                        };
                        let held = bytes.len() as u64;
                        for r in decoder.take_piece(message, offset, bytes, cache)? {
                            out.write_at(r.offset, &r.data)?;
                            decoded.fetch_add(r.data.len() as u64, Ordering::Relaxed);
                            let _ = spare_tx.send(r.data);
                        }
                        backlog.fetch_sub(held, Ordering::Relaxed);
                        if last {
                            decoder.streamed(message)?;
                        }
                    }
                    for part in copies {
                        copy(part, &mut out)?;
                    }
                    Ok((out, decoder))
                })
                .map_err(|source| SessionError::Io {
                    op: "spawn writer thread",
                    path: "light-write".into(),
                    source,
                })?
        };
        // Parity decodes (milliseconds per block) get a thread of their own: inline they let
        // the socket overflow behind the receive loop, and on the writer's thread they queue
        // behind its hashing and writing.
        let (restore_tx, restore_rx) = std::sync::mpsc::channel::<Restore>();
        let restorer = {
            let msg_tx = msg_tx.clone();
            std::thread::Builder::new()
                .name("light-decode".into())
                .spawn(move || -> Result<(), SessionError> {
                    let mut rs = BlockDecoder::default();
                    for r in restore_rx {
                        let (message, offset, last) = (r.message, r.offset, r.last);
                        let bytes = r.run(&mut rs)?;
                        // The writer only stops early on an error, which join() reports.
                        let _ = msg_tx.send(Event::Piece {
                            message,
                            offset,
                            bytes,
                            last,
                        });
                    }
                    Ok(())
                })
                .map_err(|source| SessionError::Io {
                    op: "spawn decode thread",
                    path: "light-decode".into(),
                    source,
                })?
        };

        // The path opened ahead (or for the last content) serves if it listens to the same
        // group and port.
        if open.as_ref().is_none_or(|o| o.cfg != self.rx) {
            *open = None;
            match OpenPath::open(self.rx.clone()) {
                Ok(o) => *open = Some(o),
                Err(e) => {
                    let _ = ready.send(Err(()));
                    return Err(e);
                }
            }
        }
        let Some(path) = open.as_mut() else {
            return Err(SessionError::Protocol("receive path not open".into()));
        };
        let rx_path = path.describe();
        let rx = &mut path.rx;
        // Other receivers' messages (most of a coded pass) are dropped in the kernel (XDP
        // program or socket filter) before they are copied; what it counts feeds the loss
        // estimate.
        // The messages this receiver needs come on the session's group and the groups of
        // their audiences (as the server routes them), each group counting its own
        // sequence numbers.
        let routing = Routing::new(&plan, self.rx.group, self.announced.subset_groups)?;
        for &m in &wanted {
            assembler.route(m, routing.group_of(m));
        }
        if let Err(e) = rx.set_groups(&routing.joins(slot)) {
            let _ = ready.send(Err(()));
            return Err(e.into());
        }
        let filtered_base = rx.filtered().unwrap_or(0);
        let filtering = match rx.filter_messages(self.session, &wanted) {
            Ok(on) => on,
            Err(e) => {
                tracing::warn!(error = %e, "no kernel message filter: other receivers' messages reach user space");
                false
            }
        };
        let mut filtered_noted = 0;
        let mut note_filtered = |rx: &Receiver, assembler: &mut Assembler| {
            if let Ok(f) = rx.filtered() {
                let n = f.saturating_sub(filtered_base);
                assembler.note_filtered(n.saturating_sub(filtered_noted));
                filtered_noted = filtered_noted.max(n);
            }
        };
        let mut noted_at = Instant::now();
        let _ = ready.send(Ok(rx_path.clone()));

        let mut first: Option<Instant> = None;
        let mut idle_nacked = false;
        let mut oversize_told = false;
        let (mut last_end, mut nacked_at): (Option<u32>, Option<u32>) = (None, None);
        let mut last_packet = Instant::now();
        // Last authenticated packet (a used shard or End marker): unauthenticated traffic
        // must not hold back the repair request after a pass.
        let mut last_trusted = Instant::now();
        let session = self.session;
        let key =
            match &self.announced.key {
                Some(hex) => Some(PacketKey::from_hex(hex).ok_or_else(|| {
                    SessionError::Protocol("announced packet key is not hex".into())
                })?),
                None => None,
            };
        let mut auth_failed = 0u64;
        let (mut backlog_peak, mut disk_wait) = (0u64, Duration::ZERO);
        // Bytes the writer drained while reception waited for it: over `disk_wait`, the
        // rate it keeps up with, which the repair request reports.
        let mut drained_in_wait = 0u64;
        while !assembler.is_complete() && !self.stop.load(Ordering::Relaxed) {
            let before = assembler.stats().in_session;
            let mut trusted = false;
            let mut pulsed = false;
            rx.recv_batch(Duration::from_millis(100), &mut |p| {
                let header = DataHeader::parse(p)
                    .ok()
                    .filter(|(h, _)| h.session == session);
                let kind = header.as_ref().and_then(|(h, _)| h.packet_kind());
                // A Pulse only says the pass goes on (its messages on other groups than
                // this receiver's): it keeps the quiet from passing for the end of it.
                if kind == Some(PacketKind::Pulse) {
                    pulsed |= key.as_ref().is_none_or(|k| k.verify(p));
                    return;
                }
                let end = header.filter(|_| kind == Some(PacketKind::End));
                // Every group's End markers bound its loss span (the assembler's); those of
                // the session's group (message field 0) alone, one sequence, mark the passes.
                let pass_end = end.filter(|(h, _)| h.message == 0);
                // Only packets that change something pay for their MAC: the End marker and
                // shards the assembler will use. The rest (other receivers' messages,
                // duplicates, late repair) only count as arrivals, whoever sent them: a
                // forger can make loss look lower that way, never stretch the loss span,
                // hold back a repair request or change the data.
                if end.is_some() || assembler.wants(p) {
                    if let Some(k) = &key
                        && !k.verify(p)
                    {
                        auth_failed += 1;
                        return;
                    }
                    // A replayed End marker authenticates but is no news.
                    trusted |= match (end, pass_end) {
                        (None, _) => true,
                        (Some(_), Some((h, _))) => last_end.is_none_or(|l| h.seq > l),
                        (Some(_), None) => false,
                    };
                }
                if let Some((h, _)) = pass_end {
                    last_end = Some(last_end.map_or(h.seq, |l: u32| l.max(h.seq)));
                }
                // The decoder and writer only stop early on an error, which join() reports
                // below.
                let event = assembler.on_packet(p);
                let held = match &event {
                    Some(Event::Restore(r)) => r.piece_len() as u64,
                    Some(Event::Piece { bytes, .. }) => bytes.len() as u64,
                    _ => 0,
                };
                if held > 0 {
                    let now_held = backlog.fetch_add(held, Ordering::Relaxed) + held;
                    backlog_peak = backlog_peak.max(now_held);
                }
                match event {
                    Some(Event::Restore(r)) => {
                        let _ = restore_tx.send(r);
                    }
                    Some(event) => {
                        let _ = msg_tx.send(event);
                    }
                    None => {}
                }
            })?;
            if backlog.load(Ordering::Relaxed) > self.write_buffer {
                if disk_wait.is_zero() {
                    eprintln!(
                        "light: the disk is slower than the network: reception pauses while \
                         {} MiB wait to be written (--write-buffer); what it misses comes back \
                         in repair rounds",
                        self.write_buffer >> 20
                    );
                }
                let (paused, held) = (Instant::now(), backlog.load(Ordering::Relaxed));
                // Down to half, so reading resumes for a stretch rather than per batch. The
                // writer and decoder only stop early on an error, which join() reports below,
                // so then reception ends.
                while backlog.load(Ordering::Relaxed) > self.write_buffer / 2
                    && !writer.is_finished()
                    && !restorer.is_finished()
                    && !self.stop.load(Ordering::Relaxed)
                    && !self.abort.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                disk_wait += paused.elapsed();
                drained_in_wait += held.saturating_sub(backlog.load(Ordering::Relaxed));
                if writer.is_finished() || restorer.is_finished() {
                    break;
                }
                // The pause was ours, not a quiet network: no repair request or idle timeout
                // for it.
                last_packet = Instant::now();
            }
            // Filtered frames count as arrivals: they keep a receiver whose messages come
            // late in the pass from taking the quiet for the end of it.
            if filtering && noted_at.elapsed() >= FILTER_POLL {
                note_filtered(rx, &mut assembler);
                noted_at = Instant::now();
            }
            self.drops.record(&assembler.stats(), auth_failed);
            for buf in spare_rx.try_iter() {
                assembler.recycle(buf);
            }
            let now = Instant::now();
            if trusted {
                last_trusted = now;
            }
            if pulsed {
                last_packet = now;
            }
            // Only this round's packets count: a path kept open since an earlier content
            // (or opened early) may still hold packets of other rounds.
            if assembler.stats().in_session > before {
                if first.is_none() {
                    tracing::info!("first data packet");
                }
                first.get_or_insert(now);
                last_packet = now;
                idle_nacked = false;
                (self.progress)(
                    &content,
                    copied.load(Ordering::Relaxed) + decoded.load(Ordering::Relaxed),
                    size,
                );
            }
            let quiet = now - last_packet;
            // A pass ended (a newer End marker than the last one answered), or everything
            // went quiet with no End marker seen (all of them lost), and blocks are still
            // short: ask for repair parity.
            let pass_ended = last_end != nacked_at && now - last_trusted > NACK_QUIET;
            let went_quiet = quiet > NACK_IDLE && !idle_nacked;
            if (pass_ended || went_quiet) && !assembler.is_complete() {
                nacked_at = last_end;
                idle_nacked = true;
                // Otherwise such a loss has no visible cause: XDP saw the frames, the ring
                // never got them.
                if !oversize_told
                    && let Some(note) = rx.oversize().ok().and_then(Receiver::oversize_note)
                {
                    oversize_told = true;
                    eprintln!("light: {note}");
                }
                let blocks: Vec<[u32; 3]> = assembler
                    .missing()
                    .into_iter()
                    .take(crate::control::messages::MAX_NACK_BLOCKS)
                    .map(|m| [m.message, m.block, u32::from(m.needed)])
                    .collect();
                tracing::info!(
                    end = ?last_end,
                    blocks = blocks.len(),
                    shards = blocks.iter().map(|b| u64::from(b[2])).sum::<u64>(),
                    first = ?blocks.first(),
                    "asking for repair"
                );
                // A receiver that lost packets while it waited for its disk says how fast its
                // writer drains and how much it can still hold: the repair round comes no
                // faster than lets it keep up, rather than at the overrun rule's rate.
                let pace = (drained_in_wait > 0).then(|| WriterPace {
                    drain_rate: drained_in_wait as f64 / disk_wait.as_secs_f64().max(1e-6),
                    room: self
                        .write_buffer
                        .saturating_sub(backlog.load(Ordering::Relaxed)),
                });
                if self.nacks.send((blocks, pace)).is_err() {
                    break;
                }
            }
            if quiet > self.idle || self.abort.load(Ordering::Relaxed) {
                break;
            }
        }
        if filtering {
            note_filtered(rx, &mut assembler);
            if let Err(e) = rx.unfilter() {
                tracing::warn!(error = %e, "turning the message filter off failed");
            }
        }
        tracing::info!(
            complete = assembler.is_complete(),
            packets = assembler.stats().packets,
            filtered = filtered_noted,
            "reception ended"
        );
        // Buffers the writer still returns are freed, not kept for a loop that has ended.
        drop(spare_rx);
        drop(restore_tx);
        let restored = restorer
            .join()
            .map_err(|_| SessionError::Protocol("decode thread panicked".into()))?;
        drop(msg_tx);
        let written = writer
            .join()
            .map_err(|_| SessionError::Protocol("writer thread panicked".into()))?;
        restored?;
        let (out, decoder) = written?;
        tracing::info!("decoded and written");
        (self.progress)(
            &content,
            copied.load(Ordering::Relaxed) + decoded.load(Ordering::Relaxed),
            size,
        );
        let multicast_seconds = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
        let stats = assembler.stats();
        if self.stop.load(Ordering::Relaxed) {
            return Err(SessionError::Incomplete("interrupted".into()));
        }
        if !decoder.is_complete() {
            let missing = assembler.missing();
            return Err(SessionError::Incomplete(format!(
                "{} FEC blocks short of shards after the multicast ended ({} shards missing; \
                 packets: {} source, {} parity, {} duplicate, {} late, {} bad index, {} decode \
                 errors); partial state kept for a resume",
                missing.len(),
                missing.iter().map(|m| u64::from(m.needed)).sum::<u64>(),
                stats.source,
                stats.parity,
                stats.duplicate,
                stats.late,
                stats.bad_index,
                stats.decode_errors,
            )));
        }
        let direct_io_bytes = out.direct_bytes();
        let path = out.finish()?;
        tracing::info!(direct_io_bytes, "file synced and renamed");
        let decoded = decoded.load(Ordering::Relaxed);
        Ok(ReceiveSummary {
            receiver: 0,
            content,
            path: path.display().to_string(),
            bytes: size,
            verified: true,
            cache_bytes: 0,
            from_cache_bytes: from_cache,
            decoded_bytes: decoded,
            seconds: 0.0,
            multicast_seconds,
            goodput_gbps: size as f64 * 8.0 / multicast_seconds.max(1e-9) / 1e9,
            rx_path,
            packets: stats.packets,
            dropped: stats.malformed
                + stats.foreign_session
                + stats.unexpected_message
                + stats.bad_index
                + stats.duplicate
                + stats.late,
            duplicates: stats.duplicate,
            fec_decoded_blocks: stats.blocks_decoded,
            auth_failed,
            loss: stats.loss(),
            direct_io_bytes,
            write_backlog_peak: backlog_peak,
            disk_wait_seconds: disk_wait.as_secs_f64(),
        })
    }
}
