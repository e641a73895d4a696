//! The control module's error type.

use std::io;
use std::time::Duration;

/// Everything that can go wrong on the control channel, each with the reason spelled out
/// so it can be logged or sent back to the peer in a `Refused` message.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A frame announced a body larger than the limit for its kind.
    #[error("{kind} frame of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// `"JSON"` or `"data"`.
        kind: &'static str,
        /// Announced body length in bytes.
        len: u64,
        /// Limit for that kind of frame.
        max: usize,
    },
    /// A frame with length 0 has no room for its body tag.
    #[error("empty frame (no body tag)")]
    EmptyFrame,
    /// The body tag is neither JSON nor data.
    #[error("unknown frame body tag {0:#04x}")]
    UnknownTag(u8),
    /// A data frame too short to hold its 8-byte offset.
    #[error("data frame body of {0} bytes is shorter than its 8-byte offset")]
    ShortData(u64),
    /// The decoder refuses to continue after a framing error (the stream is out of sync).
    #[error("frame decoder stopped after an earlier framing error")]
    Poisoned,
    /// The JSON body does not parse.
    #[error("malformed JSON message: {0}")]
    MalformedJson(String),
    /// The JSON object has no `"v"` field.
    #[error("message has no protocol version field \"v\"")]
    MissingVersion,
    /// The `"v"` field names a version this build does not speak.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    UnsupportedVersion {
        /// The `"v"` value as received.
        got: String,
        /// [`crate::control::PROTOCOL_VERSION`].
        supported: u32,
    },
    /// The JSON object has no string `"type"` field.
    #[error("message has no string \"type\" field")]
    MissingType,
    /// The `"type"` is not a message this side accepts.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// Known type, but its fields are missing, mistyped or out of range.
    #[error("invalid {ty:?} message: {reason}")]
    InvalidMessage {
        /// The message type.
        ty: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A message could not be serialized (or is too large to send).
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A message arrived, or was about to be sent, in a phase that does not allow it.
    #[error("{what} is not allowed {phase}")]
    OutOfOrder {
        /// The message (or `"data chunk"`).
        what: &'static str,
        /// Description of the current phase ("before Hello", ...).
        phase: &'static str,
    },
    /// A data chunk does not continue the blob where the previous one ended.
    #[error("blob chunk starts at offset {got}, expected {expected}")]
    BlobGap {
        /// The next offset the receiver needs.
        expected: u64,
        /// The offset the chunk carries.
        got: u64,
    },
    /// A data chunk runs past the announced blob length.
    #[error("blob chunk ends at {end}, past the announced length {len}")]
    BlobOverrun {
        /// End offset of the chunk.
        end: u64,
        /// Announced blob length.
        len: u64,
    },
    /// The sender declared the blob finished before all bytes arrived.
    #[error("blob ended after {got} of {len} bytes")]
    BlobIncomplete {
        /// Bytes received.
        got: u64,
        /// Announced blob length.
        len: u64,
    },
    /// The received blob does not hash to the announced BLAKE3.
    #[error("blob hash mismatch: announced {expected}, received {got}")]
    BlobHash {
        /// Announced hash (hex).
        expected: String,
        /// Hash of the received bytes (hex).
        got: String,
    },
    /// A `CacheResume` offset beyond the blob.
    #[error("resume offset {offset} is past the blob length {len}")]
    BadResume {
        /// Requested offset.
        offset: u64,
        /// Blob length.
        len: u64,
    },
    /// A data chunk arrived where a JSON message was expected.
    #[error("unexpected data chunk while waiting for a message")]
    UnexpectedData,
    /// The server refused the receiver.
    #[error("server refused: {0}")]
    Refused(String),
    /// The receiver gave up (sent `Done { ok: false }`) during a transfer.
    #[error("receiver aborted: {0}")]
    Aborted(String),
    /// The peer stayed silent for longer than the channel's timeout.
    #[error("timed out after {after:?} waiting to {doing}")]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
        /// What the channel was doing.
        doing: &'static str,
    },
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// An I/O error on the underlying stream.
    #[error("control I/O error while {context}: {source}")]
    Io {
        /// What the channel was doing.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}
