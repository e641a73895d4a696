//! Light: deliver large files from one server to many receivers on a LAN with coded
//! caching over multicast, Reed–Solomon repair and an XDP/AF_XDP receive path.
//!
//! Protocol logic ([`coding`], [`fec`], [`control`] messages) is sans-IO; the I/O layers
//! ([`transport`], the control channel's tokio glue, [`catalog`] storage) stay thin.

pub mod catalog;
pub mod cli;
pub mod coding;
pub mod control;
pub mod fec;
pub mod transport;
