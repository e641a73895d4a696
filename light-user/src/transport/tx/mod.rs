//! Send path.
