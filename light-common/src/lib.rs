//! Wire types shared by Light's XDP program (`light-ebpf`) and userspace (`light-user`).
//!
//! Everything here is `no_std`, fixed-layout and little-endian on the wire, so the
//! eBPF program and userspace agree on every byte without a serialization library.
#![no_std]

pub mod header;
pub mod maps;

pub use header::{
    DataHeader, HEADER_LEN, HeaderError, MAC_LEN, MAC_OFFSET, MAGIC, PacketKind, VERSION,
};
pub use maps::{COUNTER_COUNT, Counter};
