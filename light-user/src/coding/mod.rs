//! TODO(module owner): coding.
