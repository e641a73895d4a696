//! Names and layouts of the BPF maps shared by the XDP program and its loader.

/// Name of the XSKMAP: rx queue index → AF_XDP socket.
pub const XSK_MAP: &str = "LIGHT_XSKS";
/// Name of the bitmap of UDP destination ports Light listens on: a `u64` array, one bit per
/// port (host order), placed by [`bit_of`].
pub const PORT_MAP: &str = "LIGHT_PORTS";
/// Name of the per-CPU counter array, indexed by [`Counter`].
pub const COUNTER_MAP: &str = "LIGHT_COUNTERS";
/// Name of the message filter's two-word array map: [`FILTER_ON`] is 1 while the filter
/// is on, [`FILTER_SESSION`] the session it applies to.
pub const FILTER_MAP: &str = "LIGHT_FILTER";
/// Index of the filter's on/off word.
pub const FILTER_ON: u32 = 0;
/// Index of the filtered session's id.
pub const FILTER_SESSION: u32 = 1;
/// Name of the bitmap of the message indices this receiver wants (a `u64` array, one bit per
/// message, placed by [`bit_of`]) while the filter is on; shards of the filtered session's
/// other messages are dropped.
pub const WANT_MAP: &str = "LIGHT_WANT";
/// Words of the wanted-message bitmap: it holds messages `0..64 * WANT_WORDS`. A receiver
/// wanting a higher one runs without the filter, so while it is on, any message past the
/// bitmap is unwanted.
pub const WANT_WORDS: u32 = 16384;
/// Words of the port bitmap: one bit for each of the 65 536 ports.
pub const PORT_WORDS: u32 = 65536 / 64;

/// Where bit `index` of a `u64`-array bitmap lives: the word's index and the bit's mask.
/// Bitmaps rather than hash maps because an array lookup is a bounds check and an add in
/// the XDP program, which runs once per frame per receiver.
#[inline(always)]
pub const fn bit_of(index: u32) -> (u32, u64) {
    (index / 64, 1 << (index % 64))
}

/// Capacity of the XSKMAP (rx queues).
pub const MAX_QUEUES: u32 = 64;
/// Bytes of one AF_XDP UMEM chunk: one frame each.
pub const XSK_CHUNK_SIZE: u32 = 4096;
/// Longest frame an AF_XDP socket in copy mode takes into one chunk: the kernel keeps its
/// XDP headroom (256 bytes) at the start of every chunk.
pub const XSK_RX_FRAME_MAX: usize = XSK_CHUNK_SIZE as usize - 256;
/// Longest frame the multi-buffer program (`light_xdp_frags`, for jumbo-frame links)
/// redirects: three chunks' worth, room for a 9216-byte MTU with a VLAN tag.
pub const XSK_SG_FRAME_MAX: usize = 3 * XSK_RX_FRAME_MAX;

/// Per-CPU counters kept by the XDP program.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every frame the program saw.
    Seen = 0,
    /// Frames to a multicast destination on a Light port.
    Matched = 1,
    /// Matched frames successfully redirected to an AF_XDP socket.
    Redirected = 2,
    /// Matched frames whose redirect failed (no socket on that queue): passed to the stack.
    RedirectFailed = 3,
    /// Frames too short or inconsistent for the headers they claim.
    Malformed = 4,
    /// Shards of the filtered session for messages this receiver does not want: dropped
    /// before they are copied to the AF_XDP ring.
    Unwanted = 5,
    /// Light frames longer than the program redirects ([`XSK_RX_FRAME_MAX`], or
    /// [`XSK_SG_FRAME_MAX`] for the multi-buffer program): UDP GSO batches nothing segmented
    /// on the way, seen in skb mode. They go to the stack.
    Oversize = 6,
}

/// Number of counters in [`Counter`].
pub const COUNTER_COUNT: u32 = 7;

impl Counter {
    /// All counters, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Seen,
        Counter::Matched,
        Counter::Redirected,
        Counter::RedirectFailed,
        Counter::Malformed,
        Counter::Unwanted,
        Counter::Oversize,
    ];

    /// Short lowercase name, for reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Matched => "matched",
            Counter::Redirected => "redirected",
            Counter::RedirectFailed => "redirect_failed",
            Counter::Malformed => "malformed",
            Counter::Unwanted => "unwanted",
            Counter::Oversize => "oversize",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_fill_each_word_from_its_low_end() {
        assert_eq!(bit_of(0), (0, 1));
        assert_eq!(bit_of(63), (0, 1 << 63));
        assert_eq!(bit_of(64), (1, 1));
        assert_eq!(bit_of(65535), (PORT_WORDS - 1, 1 << 63));
        assert_eq!(bit_of(64 * WANT_WORDS).0, WANT_WORDS);
    }
}
