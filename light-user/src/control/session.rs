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
