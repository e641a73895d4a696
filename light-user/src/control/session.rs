//! What server and receivers agree on for one session, and the session layer's error type.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ControlError;
use crate::{
    catalog::CatalogError,
    coding::{CodingError, PlanInput},
    fec::FecError,
    transport::{rx::RxError, tx::TxError},
};

/// The `plan` field of `Announce`: the planner input every party recomputes the plan
/// from, and which of its K receiver slots this receiver is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanAnnouncement {
    /// Planner input.
    pub input: PlanInput,
    /// This receiver's index in the plan.
    pub slot: u32,
    /// Hex key of the per-packet MAC, if the session authenticates packets.
    pub key: Option<String>,
    /// The server's ed25519 signature of the announced manifest, in hex.
    pub manifest_signature: String,
    /// Group budget of the session's [`crate::coding::Routing`] (0: one group).
    #[serde(default)]
    pub subset_groups: u16,
}

/// Errors of running a session, server or receiver side, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Control channel failure.
    #[error("control channel ({context}): {source}")]
    Control {
        /// What was being done.
        context: String,
        /// The channel error.
        #[source]
        source: ControlError,
    },
    /// The server refused this receiver.
    #[error("the server refused the request: {0}")]
    Refused(String),
    /// Library or output-file failure.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Planning failure.
    #[error("planning: {0}")]
    Coding(#[from] CodingError),
    /// FEC parameters unusable.
    #[error("FEC: {0}")]
    Fec(#[from] FecError),
    /// Send path failure.
    #[error("multicast send: {0}")]
    Tx(#[from] TxError),
    /// Receive path failure.
    #[error("receive path: {0}")]
    Rx(#[from] RxError),
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something that does not fit the session (reason given).
    #[error("protocol: {0}")]
    Protocol(String),
    /// Not enough receivers showed up before the deadline.
    #[error("only {got} of the required {need} receivers connected before the deadline")]
    TooFewReceivers {
        /// Receivers accepted.
        got: usize,
        /// Receivers required.
        need: usize,
    },
    /// The server went away mid-session (partial state is kept for a resume).
    #[error("lost the server: {0}")]
    ServerLost(String),
    /// The multicast ended and the file is still incomplete.
    #[error("delivery incomplete: {0}")]
    Incomplete(String),
}

impl SessionError {
    /// Wraps a control-channel error with what was being done.
    pub fn control(context: impl Into<String>) -> impl FnOnce(ControlError) -> Self {
        let context = context.into();
        move |source| Self::Control { context, source }
    }
}

/// Parses an opaque `Announce` field.
pub fn field<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    what: &str,
) -> Result<T, SessionError> {
    serde_json::from_value(value)
        .map_err(|e| SessionError::Protocol(format!("announce {what}: {e}")))
}

/// A file's bytes, mapped read-only (an empty file cannot be mapped).
pub enum MappedFile {
    /// A zero-length file.
    Empty,
    /// A read-only mapping.
    Mapped(memmap2::Mmap),
}

impl MappedFile {
    /// Maps `path`, which must hold exactly `expect` bytes.
    pub fn open(path: &std::path::Path, expect: u64) -> Result<Self, SessionError> {
        let io = |op| {
            move |source| SessionError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let f = std::fs::File::open(path).map_err(io("open"))?;
        let len = f.metadata().map_err(io("stat"))?.len();
        if len != expect {
            return Err(SessionError::Protocol(format!(
                "{} holds {len} bytes, expected {expect} (changed since it was written?)",
                path.display()
            )));
        }
        if len == 0 {
            return Ok(Self::Empty);
        }
        // SAFETY: read-only shared mapping of a file Light owns for the session (a library
        // file or the receiver's own cache); nothing truncates it while it is mapped.
        Ok(Self::Mapped(
            unsafe { memmap2::Mmap::map(&f) }.map_err(io("map"))?,
        ))
    }
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Empty => &[],
            Self::Mapped(m) => m,
        }
    }
}
