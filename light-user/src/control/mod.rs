//! The TCP control channel between the server and each receiver.
//!
//! Layers, bottom up: [`frame`] (sans-IO length-prefixed frames carrying JSON messages or
//! cache data chunks), [`messages`] (typed messages and the per-end ordering rules),
//! [`blob`] (sans-IO state of a resumable, BLAKE3-verified cache download) and
//! [`channel`] (the thin tokio layer with timeouts). [`live`] holds what a running server
//! is doing, for [`metrics`] (Prometheus over HTTP) and status queries.

pub mod blob;
pub mod cache;
pub mod channel;
pub mod error;
pub mod frame;
pub mod live;
pub mod messages;
pub mod metrics;
pub mod placement;
pub mod receiver;
pub mod server;
pub mod session;

pub use blob::BlobReceiver;
pub use channel::{BLOB_CHUNK, Channel, DEFAULT_TIMEOUT, ReceiverChannel, ServerChannel};
pub use error::ControlError;
pub use frame::{
    Frame, FrameDecoder, MAX_DATA_CHUNK, MAX_JSON_LEN, decode_message, encode_data, encode_message,
};
pub use messages::{
    CacheTag, ClientExpect, DropCounts, Endpoint, Message, PROTOCOL_VERSION, Phase, ServerExpect,
    ToReceiver, ToServer, WriterPace,
};
