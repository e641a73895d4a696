//! TODO(module owner): fec.
