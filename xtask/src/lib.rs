//! Support code shared by `cargo xtask` and Light's integration tests: the set-up of build
//! tools and the network-namespace testbed (test hosts on a bridge).
//!
//! This crate must not depend on `light-user`: `cargo xtask setup` has to build before the
//! eBPF toolchain that `light-user` needs exists.

pub mod bench;
pub mod compare;
pub mod demo;
pub mod fuzz;
pub mod netns;
pub mod setup;
