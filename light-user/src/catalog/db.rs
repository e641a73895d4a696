//! The catalog database: SQLite at `DIR/.light/catalog.sqlite`, next to the library.
//!
//! WAL journaling lets readers (a running session resolving contents) proceed while a
//! writer (a pack, a session record) commits; a busy timeout makes concurrent writers wait
//! for each other instead of failing at once. The schema is versioned with
//! `PRAGMA user_version` and upgraded by [`MIGRATIONS`], each step in its own transaction.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde::Serialize;

use super::manifest::Manifest;
use super::{CatalogError, Digest, Result, db_err, io_err};

/// Name of the hidden folder, inside the library, that holds the catalog.
pub const CATALOG_DIR: &str = ".light";
/// File name of the catalog database inside [`CATALOG_DIR`].
pub const CATALOG_FILE: &str = "catalog.sqlite";

/// How long a writer waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema steps; step `i` upgrades `user_version` from `i` to `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    // v1: contents and their manifest versions; receivers and sessions for the server.
    // `manifests.mtime_ns` is NULL when the stamp cannot be trusted to detect the next
    // change (see pack), which forces a re-hash.
    "CREATE TABLE contents (
         id INTEGER PRIMARY KEY,
         path TEXT NOT NULL UNIQUE,
         current_version INTEGER NOT NULL,
         removed INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE manifests (
         content_id INTEGER NOT NULL REFERENCES contents(id),
         version INTEGER NOT NULL,
         size INTEGER NOT NULL,
         chunk_size INTEGER NOT NULL,
         chunk_hashes BLOB NOT NULL,
         root BLOB NOT NULL,
         mtime_ns INTEGER,
         PRIMARY KEY (content_id, version)
     ) WITHOUT ROWID;
     CREATE TABLE receivers (
         id TEXT PRIMARY KEY,
         last_seen_ms INTEGER NOT NULL,
         cache_tag TEXT
     );
     CREATE TABLE sessions (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         started_ms INTEGER NOT NULL,
         ended_ms INTEGER,
         outcome TEXT,
         plan_json TEXT NOT NULL,
         bytes_multicast INTEGER,
         bytes_placed INTEGER
     );",
    // v2: persistent cache placements (one per library version and population) and which
    // receiver holds which slot of each, so caches filled ahead survive server restarts.
    "CREATE TABLE placements (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         key TEXT NOT NULL UNIQUE,
         input_json TEXT NOT NULL,
         created_ms INTEGER NOT NULL
     );
     CREATE TABLE placement_slots (
         placement INTEGER NOT NULL REFERENCES placements(id),
         slot INTEGER NOT NULL,
         receiver TEXT NOT NULL,
         PRIMARY KEY (placement, slot),
         UNIQUE (placement, receiver)
     ) WITHOUT ROWID;",
    // v3: the worst packet loss a receiver measured in each session, so the next session's
    // first pass carries enough parity without waiting for repair rounds.
    "ALTER TABLE sessions ADD COLUMN observed_loss REAL;",
];

/// Id of a recorded placement.
pub type PlacementId = i64;

/// A handle on a library's catalog.
pub struct Catalog {
    conn: Connection,
    library: PathBuf,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

/// One content as listed by [`Catalog::contents`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentInfo {
    /// Content id, stable for this path across packs.
    pub id: u32,
    /// Relative path inside the library, forward slashes.
    pub path: String,
    /// Current version (1 for the first).
    pub version: u32,
    /// Size of the current version.
    pub size: u64,
    /// Root hash of the current version.
    pub root: Digest,
    /// True if the file is no longer in the library.
    pub removed: bool,
}

/// Id of a recorded session.
pub type SessionId = i64;

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Every receiver got and verified its file.
    Completed,
    /// Some receivers did not complete.
    Partial,
    /// The session failed.
    Failed,
    /// The operator stopped it.
    Aborted,
}

impl SessionOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }
}

impl fmt::Display for SessionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionOutcome {
    type Err = CatalogError;
    fn from_str(s: &str) -> Result<Self> {
        [Self::Completed, Self::Partial, Self::Failed, Self::Aborted]
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| CatalogError::Corrupt(format!("unknown session outcome {s:?}")))
    }
}

/// A session row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session id.
    pub id: SessionId,
    /// Start time.
    pub started: SystemTime,
    /// End time, if ended.
    pub ended: Option<SystemTime>,
    /// Outcome, if ended.
    pub outcome: Option<SessionOutcome>,
    /// The plan as JSON.
    pub plan_json: String,
    /// Bytes sent on the multicast, if ended.
    pub bytes_multicast: Option<u64>,
    /// Bytes placed into receiver caches, if ended.
    pub bytes_placed: Option<u64>,
}

/// A receiver row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverRecord {
    /// Receiver id as it announced itself.
    pub id: String,
    /// When it was last seen.
    pub last_seen: SystemTime,
    /// Which cache it holds (opaque to the catalog).
    pub cache_tag: Option<String>,
}

/// The current state of one content, as pack needs it.
#[derive(Clone, Debug)]
pub(crate) struct Current {
    pub(crate) id: u32,
    pub(crate) version: u32,
    pub(crate) removed: bool,
    pub(crate) size: u64,
    pub(crate) chunk_size: u32,
    pub(crate) root: Digest,
    pub(crate) mtime_ns: Option<i64>,
}

/// A freshly hashed file, ready to be recorded.
pub(crate) struct NewManifest<'a> {
    pub(crate) size: u64,
    pub(crate) chunk_size: u32,
    pub(crate) chunks: &'a [Digest],
    pub(crate) root: Digest,
    pub(crate) mtime_ns: Option<i64>,
}

const MANIFEST_COLUMNS: &str = "c.id, c.path, m.version, m.size, m.chunk_size, m.chunk_hashes, \
                                m.root, c.removed";

impl Catalog {
    /// Opens (creating if needed) the catalog of the library at `library_dir`, upgrading its
    /// schema.
    pub fn open(library_dir: impl AsRef<Path>) -> Result<Self> {
        let library = library_dir.as_ref().to_path_buf();
        let meta = std::fs::metadata(&library).map_err(io_err("opening library", &library))?;
        if !meta.is_dir() {
            return Err(CatalogError::NotADirectory(library));
        }
        let dir = library.join(CATALOG_DIR);
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let conn =
            Connection::open(dir.join(CATALOG_FILE)).map_err(db_err("opening the database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(db_err("setting the busy timeout"))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db_err("enabling WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CatalogError::Corrupt(format!(
                "journal mode is {mode:?}, WAL could not be enabled"
            )));
        }
        // NORMAL is durable across application crashes in WAL mode and skips an fsync per
        // commit; a power cut can lose the last commits but never corrupts the file.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(db_err("setting pragmas"))?;
        migrate(&conn)?;
        Ok(Self { conn, library })
    }

    /// The library directory this catalog describes.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        user_version(&self.conn)
    }

    /// All contents ever packed, removed ones included, by id.
    pub fn contents(&self) -> Result<Vec<ContentInfo>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.id, c.path, c.current_version, m.size, m.root, c.removed
                 FROM contents c JOIN manifests m
                   ON m.content_id = c.id AND m.version = c.current_version
                 ORDER BY c.id",
            )
            .map_err(db_err("listing contents"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, u64>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                    r.get::<_, bool>(5)?,
                ))
            })
            .map_err(db_err("listing contents"))?;
        rows.map(|row| {
            let (id, path, version, size, root, removed) =
                row.map_err(db_err("listing contents"))?;
            Ok(ContentInfo {
                id,
                path,
                version,
                size,
                root: digest_from_blob(&root)?,
                removed,
            })
        })
        .collect()
    }

    /// The current manifest of content `id`.
    pub fn manifest(&self, id: u32) -> Result<Manifest> {
        self.current_manifest("c.id = ?1", &id, || id.to_string())
    }

    /// The current manifest of the content at relative `path`.
    pub fn manifest_by_path(&self, path: &str) -> Result<Manifest> {
        self.current_manifest("c.path = ?1", &path, || path.to_owned())
    }

    /// The manifest of an older (or the current) `version` of content `id`, even if removed.
    pub fn manifest_version(&self, id: u32, version: u32) -> Result<Manifest> {
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM contents c JOIN manifests m ON m.content_id = c.id
             WHERE c.id = ?1 AND m.version = ?2"
        );
        let row = self
            .conn
            .query_row(&sql, params![id, version], manifest_row)
            .optional()
            .map_err(db_err("reading a manifest"))?;
        let (m, _) = row.ok_or_else(|| CatalogError::UnknownContent(format!("{id} v{version}")))?;
        m.into_manifest()
    }

    /// Finds a content by numeric id or by relative path (a leading `./` forces a path).
    ///
    /// An id wins over a file at the library root literally named like that number; removed
    /// contents are an error, since they cannot be sent.
    pub fn resolve(&self, name: &str) -> Result<ContentInfo> {
        let by_id = name
            .parse::<u32>()
            .ok()
            // Only the canonical spelling is an id: "+7" or "007" are paths.
            .filter(|id| id.to_string() == name)
            .map(|id| self.content_where("c.id = ?1", &id))
            .transpose()?
            .flatten();
        let found = match by_id {
            Some(c) => Some(c),
            None => {
                let path = name.strip_prefix("./").unwrap_or(name);
                self.content_where("c.path = ?1", &path)?
            }
        };
        match found {
            Some(c) if c.removed => Err(CatalogError::ContentRemoved(c.path)),
            Some(c) => Ok(c),
            None => Err(CatalogError::UnknownContent(name.to_owned())),
        }
    }

    /// Resolves `name` like [`Catalog::resolve`], or, when it names a directory of the
    /// library (`films` or `films/`), to every current content under it, by path.
    pub fn resolve_many(&self, name: &str) -> Result<Vec<ContentInfo>> {
        let err = match self.resolve(name) {
            Ok(c) => return Ok(vec![c]),
            Err(e @ CatalogError::UnknownContent(_)) => e,
            Err(e) => return Err(e),
        };
        // "." (or "./") is the whole library.
        let dir = name
            .strip_prefix("./")
            .unwrap_or(name)
            .trim_end_matches('/');
        let dir = if dir == "." { "" } else { dir };
        if dir.is_empty() && !name.starts_with('.') {
            return Err(err);
        }
        let mut under: Vec<ContentInfo> = self
            .contents()?
            .into_iter()
            .filter(|c| {
                !c.removed
                    && (dir.is_empty()
                        || c.path
                            .strip_prefix(dir)
                            .is_some_and(|rest| rest.starts_with('/')))
            })
            .collect();
        if under.is_empty() {
            return Err(err);
        }
        under.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(under)
    }

    /// Records the start of a session with its plan; returns the new session id.
    pub fn record_session_start(&self, plan: &impl Serialize) -> Result<SessionId> {
        let plan_json = serde_json::to_string(plan).map_err(CatalogError::Plan)?;
        self.conn
            .execute(
                "INSERT INTO sessions (started_ms, plan_json) VALUES (?1, ?2)",
                params![now_ms(), plan_json],
            )
            .map_err(db_err("recording a session start"))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records how session `id` ended and how many bytes it moved.
    pub fn record_session_end(
        &self,
        id: SessionId,
        outcome: SessionOutcome,
        bytes_multicast: u64,
        bytes_placed: u64,
    ) -> Result<()> {
        let n = self
            .conn
            .execute(
                "UPDATE sessions
                 SET ended_ms = ?2, outcome = ?3, bytes_multicast = ?4, bytes_placed = ?5
                 WHERE id = ?1 AND ended_ms IS NULL",
                params![
                    id,
                    now_ms(),
                    outcome.as_str(),
                    bytes_multicast,
                    bytes_placed
                ],
            )
            .map_err(db_err("recording a session end"))?;
        if n == 0 {
            return Err(CatalogError::UnknownSession(id));
        }
        Ok(())
    }

    /// Records the worst packet loss (0–1) a receiver of session `id` measured.
    pub fn record_observed_loss(&self, id: SessionId, loss: f64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE sessions SET observed_loss = ?2 WHERE id = ?1",
                params![id, loss.clamp(0.0, 1.0)],
            )
            .map_err(db_err("recording the observed loss"))?;
        Ok(())
    }

    /// The worst loss measured over the last `sessions` sessions that measured one.
    pub fn recent_loss(&self, sessions: u32) -> Result<Option<f64>> {
        self.conn
            .query_row(
                "SELECT MAX(observed_loss) FROM (SELECT observed_loss FROM sessions
                 WHERE observed_loss IS NOT NULL ORDER BY id DESC LIMIT ?1)",
                [sessions],
                |r| r.get(0),
            )
            .map_err(db_err("reading the observed loss"))
    }

    /// The record of session `id`.
    pub fn session(&self, id: SessionId) -> Result<SessionRecord> {
        let row = self
            .conn
            .query_row(
                "SELECT id, started_ms, ended_ms, outcome, plan_json, bytes_multicast,
                        bytes_placed
                 FROM sessions WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<u64>>(5)?,
                        r.get::<_, Option<u64>>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(db_err("reading a session"))?;
        let (id, started, ended, outcome, plan_json, bytes_multicast, bytes_placed) =
            row.ok_or(CatalogError::UnknownSession(id))?;
        Ok(SessionRecord {
            id,
            started: from_ms(started),
            ended: ended.map(from_ms),
            outcome: outcome.as_deref().map(str::parse).transpose()?,
            plan_json,
            bytes_multicast,
            bytes_placed,
        })
    }

    /// Records that receiver `id` was seen now, holding the cache named `cache_tag`.
    pub fn upsert_receiver(&self, id: &str, cache_tag: Option<&str>) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO receivers (id, last_seen_ms, cache_tag) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE
                 SET last_seen_ms = excluded.last_seen_ms, cache_tag = excluded.cache_tag",
                params![id, now_ms(), cache_tag],
            )
            .map_err(db_err("recording a receiver"))?;
        Ok(())
    }

    /// The placement recorded under `key`, recording `input_json` as its definition first
    /// if there is none: returns its id and its definition (the first one recorded wins, so
    /// a restarted server places exactly as before).
    pub fn placement(&self, key: &str, input_json: &str) -> Result<(PlacementId, String)> {
        self.conn
            .execute(
                "INSERT INTO placements (key, input_json, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO NOTHING",
                params![key, input_json, now_ms()],
            )
            .map_err(db_err("recording a placement"))?;
        self.conn
            .query_row(
                "SELECT id, input_json FROM placements WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db_err("reading a placement"))
    }

    /// The slot of `placement` that `receiver` holds, giving it the lowest free one of
    /// `slots` if it holds none. When all are taken, it takes over the slot of the holder
    /// seen longest ago that is not in `busy` (returned second; its cache record is
    /// cleared). `None` when every holder is busy.
    pub fn assign_slot(
        &self,
        placement: PlacementId,
        receiver: &str,
        slots: u32,
        busy: &[String],
    ) -> Result<Option<(u32, Option<String>)>> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(db_err("starting a slot assignment"))?;
        // Holders, the one seen longest ago (or never) first.
        let held: Vec<(u32, String)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT p.slot, p.receiver FROM placement_slots p
                     LEFT JOIN receivers r ON r.id = p.receiver
                     WHERE p.placement = ?1
                     ORDER BY COALESCE(r.last_seen_ms, 0), p.slot",
                )
                .map_err(db_err("reading placement slots"))?;
            let rows = stmt
                .query_map([placement], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err("reading placement slots"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(db_err("reading placement slots"))?
        };
        if let Some((slot, _)) = held.iter().find(|(_, r)| r == receiver) {
            return Ok(Some((*slot, None)));
        }
        let (slot, evicted) = match (0..slots).find(|s| held.iter().all(|(h, _)| h != s)) {
            Some(free) => (free, None),
            None => match held.iter().find(|(_, r)| !busy.contains(r)) {
                Some((slot, old)) => (*slot, Some(old.clone())),
                None => return Ok(None),
            },
        };
        if let Some(old) = &evicted {
            tx.execute(
                "DELETE FROM placement_slots WHERE placement = ?1 AND slot = ?2",
                params![placement, slot],
            )
            .map_err(db_err("freeing a placement slot"))?;
            tx.execute(
                "UPDATE receivers SET cache_tag = NULL WHERE id = ?1",
                params![old],
            )
            .map_err(db_err("freeing a placement slot"))?;
        }
        tx.execute(
            "INSERT INTO placement_slots (placement, slot, receiver) VALUES (?1, ?2, ?3)",
            params![placement, slot, receiver],
        )
        .map_err(db_err("assigning a placement slot"))?;
        tx.commit().map_err(db_err("assigning a placement slot"))?;
        Ok(Some((slot, evicted)))
    }

    /// The receivers holding slots of `placement`, by slot.
    pub fn slot_holders(&self, placement: PlacementId) -> Result<Vec<(u32, String)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT slot, receiver FROM placement_slots WHERE placement = ?1 ORDER BY slot",
            )
            .map_err(db_err("reading placement slots"))?;
        let rows = stmt
            .query_map([placement], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err("reading placement slots"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db_err("reading placement slots"))
    }

    /// The record of receiver `id`, if it was ever seen.
    pub fn receiver(&self, id: &str) -> Result<Option<ReceiverRecord>> {
        self.conn
            .query_row(
                "SELECT id, last_seen_ms, cache_tag FROM receivers WHERE id = ?1",
                [id],
                |r| {
                    Ok(ReceiverRecord {
                        id: r.get(0)?,
                        last_seen: from_ms(r.get(1)?),
                        cache_tag: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db_err("reading a receiver"))
    }

    /// Marks every session that never recorded its end (its server was killed) as failed;
    /// returns how many there were.
    pub fn fail_unfinished_sessions(&self) -> Result<usize> {
        self.conn
            .execute(
                "UPDATE sessions SET ended_ms = ?1, outcome = ?2 WHERE ended_ms IS NULL",
                params![now_ms(), SessionOutcome::Failed.as_str()],
            )
            .map_err(db_err("closing unfinished sessions"))
    }

    /// SQLite's `PRAGMA integrity_check`: `Ok(())` when the database is sound, else the
    /// problems it lists.
    pub fn integrity_check(&self) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(db_err("checking integrity"))?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(db_err("checking integrity"))?
            .collect::<rusqlite::Result<_>>()
            .map_err(db_err("checking integrity"))?;
        if lines.len() == 1 && lines[0] == "ok" {
            Ok(())
        } else {
            Err(CatalogError::Corrupt(lines.join("; ")))
        }
    }

    /// All known receivers, by id.
    pub fn receivers(&self) -> Result<Vec<ReceiverRecord>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, last_seen_ms, cache_tag FROM receivers ORDER BY id")
            .map_err(db_err("listing receivers"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ReceiverRecord {
                    id: r.get(0)?,
                    last_seen: from_ms(r.get(1)?),
                    cache_tag: r.get(2)?,
                })
            })
            .map_err(db_err("listing receivers"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db_err("listing receivers"))
    }

    /// Every content's current state keyed by path, for pack.
    pub(crate) fn current_states(&self) -> Result<Vec<(String, Current)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT c.path, c.id, c.current_version, c.removed, m.size, m.chunk_size,
                        m.root, m.mtime_ns
                 FROM contents c JOIN manifests m
                   ON m.content_id = c.id AND m.version = c.current_version",
            )
            .map_err(db_err("reading current contents"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, u64>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })
            .map_err(db_err("reading current contents"))?;
        rows.map(|row| {
            let (path, id, version, removed, size, chunk_size, root, mtime_ns) =
                row.map_err(db_err("reading current contents"))?;
            let cur = Current {
                id,
                version,
                removed,
                size,
                chunk_size,
                root: digest_from_blob(&root)?,
                mtime_ns,
            };
            Ok((path, cur))
        })
        .collect()
    }

    /// Starts a write transaction that takes the write lock at once, so the decisions
    /// taken inside cannot be invalidated by another writer.
    pub(crate) fn write_tx(&self) -> Result<Transaction<'_>> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(db_err("starting a write transaction"))
    }

    /// The directory holding the catalog.
    pub(crate) fn catalog_dir(&self) -> PathBuf {
        self.library.join(CATALOG_DIR)
    }

    fn current_manifest(
        &self,
        filter: &str,
        key: &dyn rusqlite::ToSql,
        name: impl FnOnce() -> String,
    ) -> Result<Manifest> {
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM contents c JOIN manifests m
               ON m.content_id = c.id AND m.version = c.current_version
             WHERE {filter}"
        );
        let row = self
            .conn
            .query_row(&sql, [key], manifest_row)
            .optional()
            .map_err(db_err("reading a manifest"))?;
        match row {
            None => Err(CatalogError::UnknownContent(name())),
            Some((m, true)) => Err(CatalogError::ContentRemoved(m.path)),
            Some((m, false)) => m.into_manifest(),
        }
    }

    fn content_where(
        &self,
        filter: &str,
        key: &dyn rusqlite::ToSql,
    ) -> Result<Option<ContentInfo>> {
        let sql = format!(
            "SELECT {MANIFEST_COLUMNS} FROM contents c JOIN manifests m
               ON m.content_id = c.id AND m.version = c.current_version
             WHERE {filter}"
        );
        let row = self
            .conn
            .query_row(&sql, [key], manifest_row)
            .optional()
            .map_err(db_err("resolving a content"))?;
        row.map(|(m, removed)| {
            Ok(ContentInfo {
                id: m.id,
                version: m.version,
                size: m.size,
                root: digest_from_blob(&m.root)?,
                path: m.path,
                removed,
            })
        })
        .transpose()
    }

    /// Opens an existing catalog read-only, without migrating: for status readers, which
    /// must never take the write lock a running session needs.
    pub fn open_read_only(library_dir: impl AsRef<Path>) -> Result<Self> {
        let library = library_dir.as_ref().to_path_buf();
        let conn = Connection::open_with_flags(
            library.join(CATALOG_DIR).join(CATALOG_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err("opening the database read-only"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(db_err("setting the busy timeout"))?;
        let (found, supported) = (user_version(&conn)?, MIGRATIONS.len() as i64);
        if found != supported {
            return Err(CatalogError::Corrupt(format!(
                "schema version {found}, this build reads {supported} (open it read-write once)"
            )));
        }
        Ok(Self { conn, library })
    }
}

/// Inserts a new content row; returns its id (sequential: SQLite picks max(id) + 1, and
/// rows are never deleted).
pub(crate) fn insert_content(tx: &Transaction<'_>, path: &str) -> Result<u32> {
    tx.execute(
        "INSERT INTO contents (path, current_version, removed) VALUES (?1, 1, 0)",
        [path],
    )
    .map_err(db_err("adding a content"))?;
    let id = tx.last_insert_rowid();
    u32::try_from(id).map_err(|_| CatalogError::Corrupt(format!("content id {id} exceeds u32")))
}

/// Records `version` of content `id` and makes it current and present.
pub(crate) fn insert_version(
    tx: &Transaction<'_>,
    id: u32,
    version: u32,
    m: &NewManifest<'_>,
) -> Result<()> {
    let blob: Vec<u8> = m.chunks.iter().flat_map(|d| d.0).collect();
    tx.execute(
        "INSERT INTO manifests (content_id, version, size, chunk_size, chunk_hashes, root,
                                mtime_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            version,
            m.size,
            m.chunk_size,
            blob,
            &m.root.0[..],
            m.mtime_ns
        ],
    )
    .map_err(db_err("adding a manifest"))?;
    tx.execute(
        "UPDATE contents SET current_version = ?2, removed = 0 WHERE id = ?1",
        params![id, version],
    )
    .map_err(db_err("updating a content"))?;
    Ok(())
}

/// Keeps the current version of content `id` but refreshes its stamp and presence.
pub(crate) fn refresh_version(
    tx: &Transaction<'_>,
    cur: &Current,
    mtime_ns: Option<i64>,
) -> Result<()> {
    tx.execute(
        "UPDATE manifests SET mtime_ns = ?3 WHERE content_id = ?1 AND version = ?2",
        params![cur.id, cur.version, mtime_ns],
    )
    .map_err(db_err("refreshing a manifest"))?;
    tx.execute("UPDATE contents SET removed = 0 WHERE id = ?1", [cur.id])
        .map_err(db_err("updating a content"))?;
    Ok(())
}

/// Marks content `id` as removed from the library.
pub(crate) fn mark_removed(tx: &Transaction<'_>, id: u32) -> Result<()> {
    tx.execute("UPDATE contents SET removed = 1 WHERE id = ?1", [id])
        .map_err(db_err("marking a content removed"))?;
    Ok(())
}

/// A manifest row before validation.
struct ManifestRow {
    id: u32,
    path: String,
    version: u32,
    size: u64,
    chunk_size: u32,
    chunks: Vec<u8>,
    root: Vec<u8>,
}

impl ManifestRow {
    fn into_manifest(self) -> Result<Manifest> {
        if !self.chunks.len().is_multiple_of(32) {
            return Err(CatalogError::Corrupt(format!(
                "chunk hashes of {:?} v{} are {} bytes, not a multiple of 32",
                self.path,
                self.version,
                self.chunks.len()
            )));
        }
        let chunks = self
            .chunks
            .chunks_exact(32)
            .map(digest_from_blob)
            .collect::<Result<Vec<_>>>()?;
        let root = digest_from_blob(&self.root)?;
        let m = Manifest::from_parts(
            self.id,
            self.version,
            self.path,
            self.size,
            self.chunk_size,
            chunks,
            root,
        )
        .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        if !m.verify_root() {
            return Err(CatalogError::Corrupt(format!(
                "root of {:?} v{} does not match its chunks",
                m.path(),
                m.version()
            )));
        }
        Ok(m)
    }
}

fn manifest_row(r: &Row<'_>) -> rusqlite::Result<(ManifestRow, bool)> {
    Ok((
        ManifestRow {
            id: r.get(0)?,
            path: r.get(1)?,
            version: r.get(2)?,
            size: r.get(3)?,
            chunk_size: r.get(4)?,
            chunks: r.get(5)?,
            root: r.get(6)?,
        },
        r.get(7)?,
    ))
}

fn digest_from_blob(b: &[u8]) -> Result<Digest> {
    <[u8; 32]>::try_from(b)
        .map(Digest)
        .map_err(|_| CatalogError::Corrupt(format!("a hash is {} bytes, not 32", b.len())))
}

fn user_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err("reading the schema version"))
}

/// Applies the missing migration steps, each in an immediate transaction that re-reads the
/// version, so two processes opening a fresh catalog at once do not both apply a step.
fn migrate(conn: &Connection) -> Result<()> {
    let supported = MIGRATIONS.len() as i64;
    loop {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
            .map_err(db_err("starting a migration"))?;
        let version = user_version(&tx)?;
        if version > supported {
            return Err(CatalogError::SchemaTooNew {
                found: version,
                supported,
            });
        }
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(());
        };
        tx.execute_batch(step)
            .map_err(db_err("applying a migration"))?;
        // PRAGMA takes no bound parameters; the value is an integer we computed.
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
            .map_err(db_err("bumping the schema version"))?;
        tx.commit().map_err(db_err("committing a migration"))?;
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
