//! Names and layouts of the BPF maps shared by the XDP program and its loader.

/// Name of the XSKMAP: rx queue index → AF_XDP socket.
pub const XSK_MAP: &str = "LIGHT_XSKS";
/// Name of the hash map of UDP destination ports Light listens on (key: port in host order).
pub const PORT_MAP: &str = "LIGHT_PORTS";
/// Name of the per-CPU counter array, indexed by [`Counter`].
pub const COUNTER_MAP: &str = "LIGHT_COUNTERS";
/// Capacity of the port map.
pub const MAX_PORTS: u32 = 16;
/// Capacity of the XSKMAP (rx queues).
pub const MAX_QUEUES: u32 = 64;

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
}

/// Number of counters in [`Counter`].
pub const COUNTER_COUNT: u32 = 5;

impl Counter {
    /// All counters, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::Seen,
        Counter::Matched,
        Counter::Redirected,
        Counter::RedirectFailed,
        Counter::Malformed,
    ];

    /// Short lowercase name, for reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Matched => "matched",
            Counter::Redirected => "redirected",
            Counter::RedirectFailed => "redirect_failed",
            Counter::Malformed => "malformed",
        }
    }
}
