//! The batched multicast send path.
//!
//! [`Sender`] owns a UDP socket connected to the group and sends whole batches with
//! `sendmmsg`, using UDP GSO where the kernel accepts it. [`spawn_sender`] runs it on its
//! own thread behind a bounded queue of recycled [`Batch`]es, paced by a sans-IO
//! [`TokenBucket`].

pub mod error;
pub mod multicast;
pub mod pacing;
pub mod pipeline;
pub mod socket;

pub use error::TxError;
pub use pacing::TokenBucket;
pub use pipeline::{Batch, Pacer, SendHandle, SendStats, TxConfig, spawn_sender};
pub use socket::{GsoStatus, MulticastIf, SendCounters, Sender, SocketConfig};
