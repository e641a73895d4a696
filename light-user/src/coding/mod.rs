//! Coded caching: placement, delivery planning and the XOR codec (sans-IO).
//!
//! [`plan`] turns a [`PlanInput`] (sent over the control channel) into a [`Plan`]
//! deterministically, so the server and every receiver hold the same plan: which bytes
//! each receiver caches, and which XOR-coded messages the server multicasts.
//! [`encode_message`] builds a message from the library; a per-receiver [`Decoder`]
//! turns received messages plus the receiver's cache into pieces of its demanded file.
//!
//! Schemes: centralized Maddah-Ali–Niesen placement with memory sharing for non-integer
//! `t`, Yu–Maddah-Ali–Avestimehr delivery (leaders per distinct demand; skipped messages
//! are rebuilt by receivers), user grouping against subpacketization, and decentralized
//! random placement with keyed-hash membership.

mod codec;
mod plan;
mod routing;

pub use codec::{Decoder, Recovered, encode_message, encode_range, uncoded_bytes, xor_into};
pub use plan::{Plan, plan};
pub use routing::{MAX_GROUPS, MAX_JOINS, Routing, nth_group};

use serde::{Deserialize, Serialize};

/// Errors of planning and coding.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodingError {
    /// The plan input is unusable (reason given).
    #[error("invalid plan input: {0}")]
    InvalidInput(String),
    /// The scheme would need more subfiles or messages than the planner allows.
    #[error("plan too large: {0}")]
    TooLarge(String),
    /// A receiver index outside `0..K`.
    #[error("receiver {receiver} is not in the plan (K = {receivers})")]
    UnknownReceiver {
        /// Requested receiver.
        receiver: u32,
        /// Receivers in the plan.
        receivers: u32,
    },
    /// A message index outside the plan.
    #[error("message {0} is not in the plan")]
    UnknownMessage(u32),
    /// A buffer's length disagrees with what the plan says.
    #[error("{what}: got {got} bytes, expected {expected}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Bytes given.
        got: u64,
        /// Bytes the plan expects.
        expected: u64,
    },
    /// A segment refers to bytes outside the given files.
    #[error("segment of file {file} at {offset}+{len} is outside the library")]
    OutOfLibrary {
        /// File index.
        file: u32,
        /// Offset in the file.
        offset: u64,
        /// Segment length.
        len: u64,
    },
    /// The plan gives a receiver a message it cannot decode (a planner bug).
    #[error("plan inconsistent for receiver {receiver}, message {message}: {reason}")]
    Inconsistent {
        /// Receiver.
        receiver: u32,
        /// Message (index in sent messages, or derived index with the high bit set).
        message: u32,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A contiguous byte range of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Segment {
    /// File index.
    pub file: u32,
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One XOR operand of a message: the concatenation of its segments, zero-padded to the
/// message length (centralized terms are one segment; decentralized ones gather the
/// packets of a file cached by exactly one subset of receivers).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Term {
    /// Segments, concatenated in order.
    pub parts: Vec<Segment>,
}

impl Term {
    /// Bytes in the term before padding.
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|s| s.len).sum()
    }

    /// True when the term has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A coded message the server multicasts: the XOR of its terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSpec {
    /// Length: the longest term.
    pub len: u64,
    /// XOR operands, each zero-padded to `len`.
    pub terms: Vec<Term>,
    /// Receivers that decode a piece of their file from it (sorted); receivers that only
    /// need it to rebuild a skipped YMA message are listed in [`DerivedSpec`] instead.
    pub receivers: Vec<u32>,
}

/// A YMA message that is not sent: receivers rebuild it as the XOR of sent messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedSpec {
    /// The message as if it were sent (`receivers` = who decodes from it).
    pub spec: MessageSpec,
    /// Indices of the sent messages whose XOR (each zero-padded) equals it.
    pub sources: Vec<u32>,
}

/// How much each receiver may cache.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum CacheBudget {
    /// Bytes per receiver.
    Bytes(u64),
    /// Fraction (0..=1) of the whole library per receiver.
    Fraction(f64),
}

/// Which placement/delivery family to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemeChoice {
    /// The one with the lower theoretical rate (centralized on ties).
    Auto,
    /// MAN placement, YMA delivery, memory sharing and grouping as needed.
    Centralized,
    /// Decentralized random placement (Maddah-Ali–Niesen 2015).
    Decentralized,
}

/// Everything the planner needs; every party recomputes the same [`Plan`] from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    /// Number of receivers K.
    pub receivers: u32,
    /// Byte length of each file (index = file index).
    pub file_lens: Vec<u64>,
    /// Cache size per receiver.
    pub budget: CacheBudget,
    /// Scheme family.
    pub scheme: SchemeChoice,
    /// Demanded file per receiver.
    pub demands: Vec<u32>,
    /// Seed of the decentralized placement hash.
    pub seed: u64,
    /// Smallest subfile worth sending (e.g. a few FEC symbols); drives user grouping.
    pub min_subfile_bytes: u64,
    /// Packet size of decentralized placement (the caching granule), > 0.
    pub packet_bytes: u64,
}

/// The scheme a plan uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Scheme {
    /// MAN placement in groups of `group_size` receivers (`groups` groups, the last may be
    /// partial), memory sharing between `t_low` and `t_high` (`low_share` of each file is
    /// placed at `t_low`), YMA delivery when `yma` (some messages are rebuilt, not sent).
    Centralized {
        /// Receivers per group.
        group_size: u32,
        /// Number of groups.
        groups: u32,
        /// Lower integer caching parameter.
        t_low: u32,
        /// Upper integer caching parameter (equal to `t_low` when `t` is an integer).
        t_high: u32,
        /// Fraction of each file placed with `t_low`.
        low_share: f64,
        /// Whether YMA skips any message.
        yma: bool,
    },
    /// Each packet of `packet_bytes` is cached by each receiver with probability `q`.
    Decentralized {
        /// Caching probability M/N.
        q: f64,
        /// Placement granule.
        packet_bytes: u64,
    },
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Centralized {
                group_size,
                groups,
                t_low,
                t_high,
                low_share,
                yma,
            } => {
                f.write_str(if *yma {
                    "centralized MAN placement, YMA delivery"
                } else {
                    "centralized MAN"
                })?;
                if t_low == t_high {
                    write!(f, ", t={t_low}")?;
                } else {
                    write!(
                        f,
                        ", memory sharing t={t_low} ({:.3}) / t={t_high} ({:.3})",
                        low_share,
                        1.0 - low_share
                    )?;
                }
                if *groups > 1 {
                    write!(f, ", {groups} groups of {group_size}")?;
                }
                Ok(())
            }
            Self::Decentralized { q, packet_bytes } => {
                write!(f, "decentralized, q={q:.4}, {packet_bytes}-byte packets")
            }
        }
    }
}

/// Where a cached piece of a receiver's own demanded file sits in its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedPart {
    /// Offset in the demanded file.
    pub file_offset: u64,
    /// Offset in the receiver's cache (concatenation of its segments).
    pub cache_offset: u64,
    /// Length.
    pub len: u64,
}

impl CachedPart {
    /// The same bytes in consecutive pieces of at most `max` bytes (`max` of 0 counts as 1).
    pub fn split(self, max: u64) -> impl Iterator<Item = CachedPart> {
        let max = max.max(1);
        (0..self.len.div_ceil(max)).map(move |i| {
            let at = i * max;
            CachedPart {
                file_offset: self.file_offset + at,
                cache_offset: self.cache_offset + at,
                len: max.min(self.len - at),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CachedPart;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_covers_the_part_in_order(
            file_offset in 0u64..1 << 40,
            cache_offset in 0u64..1 << 40,
            len in 0u64..1 << 20,
            max in 0u64..1 << 16,
        ) {
            let part = CachedPart { file_offset, cache_offset, len };
            let (mut f, mut c) = (file_offset, cache_offset);
            for piece in part.split(max) {
                prop_assert!(piece.len >= 1 && piece.len <= max.max(1));
                prop_assert_eq!((piece.file_offset, piece.cache_offset), (f, c));
                f += piece.len;
                c += piece.len;
            }
            prop_assert_eq!((f - file_offset, c - cache_offset), (len, len));
        }
    }
}
