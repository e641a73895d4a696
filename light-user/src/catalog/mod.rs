//! TODO(module owner): catalog.
