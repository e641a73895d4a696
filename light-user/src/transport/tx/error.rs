//! The send path's error type.

use std::io;

/// Failures of the multicast send path, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The configuration cannot work (reason given).
    #[error("invalid send configuration: {0}")]
    Config(String),
    /// Creating or configuring the UDP socket failed.
    #[error("send socket setup failed while {context}: {source}")]
    Setup {
        /// The step that failed.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `sendmmsg` failed with an error that retrying does not fix.
    #[error("sendmmsg failed after {sent} of {total} packets of the batch: {source}")]
    Send {
        /// Packets of the batch already sent.
        sent: usize,
        /// Packets in the batch.
        total: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket stayed unwritable (EAGAIN/ENOBUFS) for too many consecutive retries.
    #[error("send stalled: {retries} consecutive EAGAIN/ENOBUFS retries")]
    Stalled {
        /// Consecutive retries before giving up.
        retries: u32,
    },
    /// A batch already holds its maximum number of packets.
    #[error("batch is full ({0} packets)")]
    BatchFull(usize),
    /// The sender thread has stopped (join it for its error).
    #[error("the sender thread has stopped")]
    Stopped,
    /// Building a coded message failed.
    #[error("encoding message {message}: {source}")]
    Encode {
        /// Message index in the plan.
        message: u32,
        /// The coding error.
        #[source]
        source: crate::coding::CodingError,
    },
    /// Cutting a message into FEC packets failed.
    #[error("packetizing message {message}: {source}")]
    Packetize {
        /// Message index in the plan.
        message: u32,
        /// The FEC error.
        #[source]
        source: crate::fec::FecError,
    },
}
