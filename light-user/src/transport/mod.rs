//! Data-plane I/O: the receive path (AF_XDP or socket) and the batched send path.

pub mod iface;
pub mod mac;
pub mod rx;
pub mod tx;
