//! Criterion benches for Light's hot paths live in `benches/`; this library is empty.
