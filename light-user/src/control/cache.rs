//! The receiver's persistent cache: the bytes its placement slot caches, kept in its cache
//! directory across runs with a record of what they are, checked by hash before use,
//! filled ahead of a session by `light cache fill` or during one.
//!
//! Hashing a cache of gigabytes at every start costs seconds, so the record also keeps the
//! file's identity and times as they were when it last hashed right: while they are
//! unchanged (any write changes the ctime) the cache is trusted without a new hash. Every
//! file decoded with it is verified chunk by chunk anyway, and a chunk that fails clears
//! that trust ([`CacheStore::distrust`]), so damage that left the times alone is caught on
//! the next start.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    BlobReceiver, CacheTag, ControlError, ReceiverChannel, ToReceiver, ToServer,
    session::SessionError,
};

/// What a cache file holds, stored beside it once it is complete and verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    tag: CacheTag,
    len: u64,
    blake3: String,
    /// The file as it was when it last hashed right (absent: hash it before use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stamp: Option<Stamp>,
}

/// A file's identity, length and times: any write to it changes the ctime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Self {
            len: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// One receiver's cache files in a cache directory.
#[derive(Clone, Debug)]
pub struct CacheStore {
    dir: PathBuf,
    receiver: u32,
}

impl CacheStore {
    /// The cache of `receiver` under `dir` (created when first written).
    pub fn new(dir: &Path, receiver: u32) -> Self {
        Self {
            dir: dir.to_path_buf(),
            receiver,
        }
    }

    /// The cache bytes.
    pub fn data_path(&self) -> PathBuf {
        self.dir.join(format!("receiver-{}.cache", self.receiver))
    }

    fn record_path(&self) -> PathBuf {
        self.dir
            .join(format!("receiver-{}.cache.json", self.receiver))
    }

    /// The complete cache on disk, if its record is readable and its bytes still hash to
    /// what the record says. A cache that fails the check is deleted (it will be refilled)
    /// and the reason returned second.
    pub fn valid(&self) -> (Option<(CacheTag, u64)>, Option<String>) {
        let Ok(text) = std::fs::read_to_string(self.record_path()) else {
            return (None, None);
        };
        let data = self.data_path();
        let why = match serde_json::from_str::<Record>(&text) {
            Err(e) => format!("its record is unreadable ({e})"),
            Ok(rec) if rec.stamp.is_some() && rec.stamp == Stamp::of(&data) => {
                return (Some((rec.tag, rec.len)), None);
            }
            Ok(rec) => match hash_file(&data, rec.len) {
                Ok(h) if h == rec.blake3 => {
                    // Trusted until the file changes; a record that cannot be written
                    // only means hashing again next time.
                    let stamp = Stamp::of(&data);
                    let _ = self.record(&Record {
                        stamp,
                        ..rec.clone()
                    });
                    return (Some((rec.tag, rec.len)), None);
                }
                Ok(_) => "its bytes no longer match their hash".to_owned(),
                Err(e) => e,
            },
        };
        self.forget();
        let _ = std::fs::remove_file(self.data_path());
        (None, Some(why))
    }

    /// [`CacheStore::valid`] off the async threads (hashing a large cache takes a while).
    pub async fn check(&self) -> Result<(Option<(CacheTag, u64)>, Option<String>), SessionError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.valid())
            .await
            .map_err(|e| SessionError::Protocol(format!("cache check task: {e}")))
    }

    /// Makes the next start hash the cache in full (a file decoded with it failed a chunk).
    pub fn distrust(&self) {
        let Some(rec) = std::fs::read_to_string(self.record_path())
            .ok()
            .and_then(|t| serde_json::from_str::<Record>(&t).ok())
        else {
            return;
        };
        if self.record(&Record { stamp: None, ..rec }).is_err() {
            self.forget();
        }
    }

    /// Drops the record: the bytes on disk are no longer known to be a complete cache.
    fn forget(&self) {
        let _ = std::fs::remove_file(self.record_path());
    }

    /// Records the cache on disk as complete (written after the bytes are synced).
    fn record(&self, rec: &Record) -> Result<(), SessionError> {
        let path = self.record_path();
        let tmp = path.with_extension("json.tmp");
        let io = |op| {
            let path = path.clone();
            move |source| SessionError::Io { op, path, source }
        };
        std::fs::write(&tmp, serde_json::to_vec(rec).unwrap_or_default()).map_err(io("write"))?;
        std::fs::rename(&tmp, &path).map_err(io("rename"))
    }

    /// After `Accepted`: takes the server's `CacheKept` (when `have` is the right cache) or
    /// downloads the offered cache, resuming from what a broken transfer left, and
    /// confirms it. Returns the cache length and the bytes downloaded.
    pub async fn obtain(
        &self,
        chan: &mut ReceiverChannel,
        have: Option<&(CacheTag, u64)>,
    ) -> Result<(u64, u64), SessionError> {
        match chan
            .recv()
            .await
            .map_err(SessionError::control("wait for the cache"))?
        {
            ToReceiver::CacheKept { tag } => match have {
                Some((t, len)) if *t == tag => Ok((*len, 0)),
                _ => Err(SessionError::Protocol(
                    "the server says the cache is kept, but this receiver holds another".into(),
                )),
            },
            ToReceiver::CacheBegin { len, blake3, tag } => {
                self.download(chan, len, &blake3, &tag).await
            }
            ToReceiver::Refused { reason } => Err(SessionError::Refused(reason)),
            other => Err(SessionError::Protocol(format!(
                "expected the cache, got {other:?}"
            ))),
        }
    }

    async fn download(
        &self,
        chan: &mut ReceiverChannel,
        len: u64,
        blake3: &str,
        tag: &CacheTag,
    ) -> Result<(u64, u64), SessionError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| SessionError::Io {
            op: "create",
            path: self.dir.clone(),
            source,
        })?;
        self.forget();
        let path = self.data_path();
        let io = |op| {
            let path = path.clone();
            move |source| SessionError::Io { op, path, source }
        };
        let (mut state, kept) = resume(&path, len, blake3)?;
        if kept > 0 {
            tracing::info!(kept, len, "resuming the cache transfer");
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open"))?;
        file.set_len(kept).map_err(io("truncate"))?;
        let mut file = tokio::fs::File::from_std(file);
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(kept))
            .await
            .map_err(io("seek"))?;
        chan.set_timeout(Duration::from_secs(120));
        if let Err(e) = chan.recv_blob(&mut state, &mut file).await {
            if kept > 0 && matches!(e, ControlError::BlobHash { .. }) {
                // The kept prefix may be what failed verification: start clean next time.
                // A transfer that broke off keeps what it has, to resume by offset.
                let _ = std::fs::remove_file(&path);
            }
            return Err(SessionError::control("receive the cache")(e));
        }
        file.sync_all().await.map_err(io("sync"))?;
        drop(file);
        // The transfer checked the BLAKE3 of the whole: trusted as it is now.
        self.record(&Record {
            tag: tag.clone(),
            len,
            blake3: blake3.to_owned(),
            stamp: Stamp::of(&path),
        })?;
        chan.send(&ToServer::CacheStored)
            .await
            .map_err(SessionError::control("confirm the cache"))?;
        Ok((len, len - kept))
    }
}

/// BLAKE3 of the first `len` bytes of the file at `path` (which must be exactly `len`).
fn hash_file(path: &Path, len: u64) -> Result<String, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("its file cannot be read ({e})"))?;
    let have = f.metadata().map(|m| m.len()).unwrap_or(0);
    if have != len {
        return Err(format!("its file holds {have} bytes, not {len}"));
    }
    let mut h = blake3::Hasher::new();
    h.update_reader(f)
        .map_err(|e| format!("its file cannot be read ({e})"))?;
    Ok(h.finalize().to_hex().to_string())
}

/// Picks up a partial cache on disk: bytes that are a prefix of the announced cache are
/// kept (the BLAKE3 of the whole, checked at the end of the transfer, vouches for them),
/// so a restarted receiver only downloads what it lacks. Returns the transfer state and
/// how many bytes were kept.
fn resume(path: &Path, len: u64, blake3_hex: &str) -> Result<(BlobReceiver, u64), SessionError> {
    let fresh =
        || BlobReceiver::new(len, blake3_hex).map_err(SessionError::control("cache header"));
    let Ok(mut f) = std::fs::File::open(path) else {
        return Ok((fresh()?, 0));
    };
    let have = f.metadata().map(|m| m.len()).unwrap_or(0);
    if have == 0 || have > len {
        return Ok((fresh()?, 0));
    }
    let mut state = fresh()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < have {
        let n = match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min((have - offset) as usize),
        };
        if state.accept(offset, &buf[..n]).is_err() {
            return Ok((fresh()?, 0));
        }
        offset += n as u64;
    }
    // A complete file that does not hash right is stale or damaged: download it again.
    if offset == len && state.finish().is_err() {
        return Ok((fresh()?, 0));
    }
    Ok((state, offset))
}

/// Connects to the server's control port, retrying until `patience` runs out.
pub async fn connect(
    server: SocketAddr,
    patience: Duration,
) -> Result<ReceiverChannel, SessionError> {
    let deadline = Instant::now() + patience;
    // Receivers usually start with their server: retry soon (5 ms, doubling up to 50 ms).
    // A fixed 50 ms made a receiver that lost the race to the server's bind wait 50 ms, and
    // the whole session with it.
    let mut pause = Duration::from_millis(5);
    loop {
        match ReceiverChannel::connect(server).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(SessionError::control(format!("connect to {server}"))(e));
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// What `light cache fill` needs for one receiver.
#[derive(Clone, Debug)]
pub struct FillConfig {
    /// Receiver id.
    pub receiver: u32,
    /// Server control address.
    pub server: SocketAddr,
    /// Where the cache is kept.
    pub cache_dir: PathBuf,
    /// Secret to present to the server.
    pub token: Option<String>,
    /// How long to keep retrying the connection.
    pub connect_timeout: Duration,
}

/// What a fill did.
#[derive(Clone, Debug, Serialize)]
pub struct FillSummary {
    /// Receiver id.
    pub receiver: u32,
    /// Cache length in bytes.
    pub cache_bytes: u64,
    /// Bytes downloaded (0 when the cache on disk was already the right one).
    pub downloaded_bytes: u64,
    /// Why the cache on disk was discarded, if it was.
    pub discarded: Option<String>,
    /// Seconds the fill took.
    pub seconds: f64,
}

/// Fills one receiver's cache from the server ahead of a session.
pub async fn fill(cfg: FillConfig) -> Result<FillSummary, SessionError> {
    let started = Instant::now();
    let store = CacheStore::new(&cfg.cache_dir, cfg.receiver);
    let (have, discarded) = store.check().await?;
    let mut chan = connect(cfg.server, cfg.connect_timeout).await?;
    chan.send(&ToServer::Fill {
        receiver: cfg.receiver,
        token: cfg.token.clone(),
        have_cache: have.as_ref().map(|(t, _)| t.clone()),
    })
    .await
    .map_err(SessionError::control("send fill"))?;
    chan.set_timeout(Duration::from_secs(120));
    match chan
        .recv()
        .await
        .map_err(SessionError::control("wait for the server"))?
    {
        ToReceiver::Accepted { .. } => {}
        ToReceiver::Refused { reason } => return Err(SessionError::Refused(reason)),
        other => return Err(SessionError::Protocol(format!("unexpected {other:?}"))),
    }
    let (len, downloaded) = store.obtain(&mut chan, have.as_ref()).await?;
    Ok(FillSummary {
        receiver: cfg.receiver,
        cache_bytes: len,
        downloaded_bytes: downloaded,
        discarded,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> CacheTag {
        CacheTag {
            library: "lib".into(),
            placement: "p".into(),
        }
    }

    #[test]
    fn an_unchanged_cache_is_trusted_and_a_changed_or_distrusted_one_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = CacheStore::new(dir.path(), 3);
        let bytes = vec![7u8; 4096];
        std::fs::write(store.data_path(), &bytes).unwrap();
        let good = blake3::hash(&bytes).to_hex().to_string();
        // Recorded without a stamp (an older record): hashed, found right, stamped.
        let rec = Record {
            tag: tag(),
            len: 4096,
            blake3: good.clone(),
            stamp: None,
        };
        store.record(&rec).unwrap();
        assert_eq!(store.valid(), (Some((tag(), 4096)), None));
        // A stamped record is believed without hashing: a wrong hash goes unnoticed...
        let stamp = Stamp::of(&store.data_path());
        assert!(stamp.is_some());
        store
            .record(&Record {
                blake3: "00".repeat(32),
                stamp,
                ..rec.clone()
            })
            .unwrap();
        assert_eq!(store.valid(), (Some((tag(), 4096)), None));
        // ...until the record is distrusted: then the hash decides (and the cache goes).
        store.distrust();
        let (held, why) = store.valid();
        assert!(held.is_none());
        assert!(why.unwrap().contains("no longer match"));
        assert!(!store.data_path().exists());

        // A write to a trusted cache changes its ctime: hashed again, damage found.
        std::fs::write(store.data_path(), &bytes).unwrap();
        store.record(&Record { stamp: None, ..rec }).unwrap();
        assert_eq!(store.valid(), (Some((tag(), 4096)), None));
        let mut damaged = bytes.clone();
        damaged[100] ^= 1;
        // Past the file system's timestamp granularity (a clock tick where times are coarse).
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(store.data_path(), &damaged).unwrap();
        let (held, why) = store.valid();
        assert!(held.is_none() && why.unwrap().contains("no longer match"));
    }
}
