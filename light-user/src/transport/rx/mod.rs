//! Receive path.
