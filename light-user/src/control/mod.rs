//! TODO(module owner): control.
