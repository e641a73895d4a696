//! The content catalog: what the server can send, and how a receiver checks what it got.
//!
//! - [`pack`] walks a library directory and records, per regular file, a stable content id,
//!   its relative path and a chunked BLAKE3 [`Manifest`] (the prototype's "descrifier").
//! - [`Catalog`] is the embedded SQLite database at `DIR/.light/catalog.sqlite` holding
//!   contents, their manifest versions, receivers and session records.
//! - [`OutputFile`] is the receiver side: it writes bytes in any order against a manifest,
//!   verifies every chunk as soon as it is complete, survives interruption, and only moves a
//!   fully verified file into place.

mod db;
mod manifest;
mod output;
mod pack;
mod signing;

use std::io;
use std::path::{Path, PathBuf};

pub use db::{
    CATALOG_DIR, CATALOG_FILE, Catalog, ContentInfo, PlacementId, ReceiverRecord, SessionId,
    SessionOutcome, SessionRecord,
};
pub use manifest::{DEFAULT_CHUNK_SIZE, Digest, MAX_CHUNK_SIZE, Manifest};
pub use output::{DROP_BEHIND, OutputFile, PARTIAL_SUFFIX, Resumed, STATE_SUFFIX};
pub use pack::{PackOptions, PackReport, pack};
pub use signing::{KEY_FILE, ServerKey, is_public_key, verify_manifest};

/// Everything that can go wrong in the catalog, with the path or item concerned.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "reading".
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A database operation failed.
    #[error("catalog database, {context}: {source}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer Light with a schema this build does not know.
    #[error("catalog schema version {found} is newer than this build supports ({supported})")]
    SchemaTooNew {
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest version this build can migrate to.
        supported: i64,
    },
    /// A row in the database does not hold what the schema promises.
    #[error("catalog database is corrupt: {0}")]
    Corrupt(String),
    /// The library is not a directory.
    #[error("library {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A file or directory name in the library is not valid UTF-8.
    #[error("file name is not valid UTF-8 (rename it or move it out of the library): {}", .0.display())]
    NonUtf8Name(PathBuf),
    /// A file changed while it was being hashed; pack again once it is stable.
    #[error("{} changed while it was being hashed", .0.display())]
    ChangedDuringPack(PathBuf),
    /// Another process is packing the same library.
    #[error("another pack of {} is running", .0.display())]
    PackInProgress(PathBuf),
    /// No content with this id or relative path.
    #[error("unknown content {0:?} (expected a content id or a relative path in the catalog)")]
    UnknownContent(String),
    /// The content exists in the catalog but was removed from the library.
    #[error("content {0:?} was removed from the library")]
    ContentRemoved(String),
    /// No session with this id, or it was already ended.
    #[error("unknown or already ended session {0}")]
    UnknownSession(SessionId),
    /// A chunk size outside `1..=MAX_CHUNK_SIZE`.
    #[error("invalid chunk size {0} (must be 1..={MAX_CHUNK_SIZE})")]
    InvalidChunkSize(u32),
    /// A content path that could escape the output directory.
    #[error("unsafe path {0:?}: must be relative, with no empty, '.' or '..' components")]
    UnsafePath(String),
    /// A manifest whose fields contradict each other.
    #[error("manifest is inconsistent: {0}")]
    InvalidManifest(String),
    /// A write beyond the end of the file.
    #[error("write of {len} bytes at offset {offset} is outside {path:?} (size {size})")]
    OutOfBounds {
        /// The content path.
        path: String,
        /// Start of the write.
        offset: u64,
        /// Length of the write.
        len: u64,
        /// The file size from the manifest.
        size: u64,
    },
    /// A completed chunk does not hash to the manifest's value.
    #[error("chunk {index} of {path:?} failed verification")]
    ChunkMismatch {
        /// The content path.
        path: String,
        /// The chunk index.
        index: u64,
    },
    /// `finish` was called before every chunk was verified.
    #[error("{path:?} is incomplete: {missing} chunk(s) not verified, the first is {first}")]
    Incomplete {
        /// The content path.
        path: String,
        /// How many chunks are missing.
        missing: u64,
        /// The lowest missing chunk index.
        first: u64,
    },
    /// The manifest's root does not match its chunk hashes and size.
    #[error("root hash of {0:?} does not match its chunk hashes")]
    RootMismatch(String),
    /// Another `OutputFile` (maybe in another process) is writing the same file.
    #[error("{} is being written by someone else", .0.display())]
    OutputBusy(PathBuf),
    /// A session plan could not be serialized to JSON.
    #[error("serializing the session plan: {0}")]
    Plan(#[source] serde_json::Error),
}

/// Shorthand for results in this module.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Wraps an I/O error with what was done and where.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CatalogError + 'a {
    move |source| CatalogError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Wraps a database error with what was done.
fn db_err(context: &'static str) -> impl FnOnce(rusqlite::Error) -> CatalogError {
    move |source| CatalogError::Db { context, source }
}
