//! Receive path: XDP + AF_XDP (kernel bypass) with a `recvmmsg` socket fallback.
//!
//! Both paths deliver the same UDP payloads to the same consumer callback, in batches.

pub mod filter;
pub mod frame;
pub mod socket;
pub mod xdp;

use std::{net::IpAddr, time::Duration};

pub use socket::SocketRx;
pub use xdp::{AttachMode, XdpRx};

/// Errors of the receive path, each with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RxError {
    /// The link's frames are longer than the AF_XDP path takes, even in several chunks.
    #[error(
        "AF_XDP receive takes an MTU of at most {max} on `{iface}` (it is {mtu}); such frames use the socket path"
    )]
    MtuTooLarge {
        /// Interface name.
        iface: String,
        /// Its MTU.
        mtu: u32,
        /// The largest supported.
        max: u32,
    },
    /// Jumbo frames on a link without zero-copy AF_XDP: the socket path is faster there.
    #[error(
        "`{iface}` has no zero-copy AF_XDP mode, and each of its MTU {mtu} frames would be copied twice into several AF_XDP chunks, where the socket path copies it once (--require-xdp uses AF_XDP anyway)"
    )]
    CopiedJumboFrames {
        /// Interface name.
        iface: String,
        /// Its MTU.
        mtu: u32,
    },
    /// No interface of that name.
    #[error("network interface `{0}` not found")]
    InterfaceNotFound(String),
    /// The embedded eBPF object could not be loaded (usually a privilege problem).
    #[error("loading the XDP program failed (needs root, or CAP_BPF and CAP_NET_ADMIN): {0}")]
    Load(Box<aya::EbpfError>),
    /// The program was refused by the verifier or the kernel.
    #[error("the kernel refused the XDP program: {0}")]
    Program(Box<aya::programs::ProgramError>),
    /// No attach mode was accepted by the interface.
    #[error("cannot attach XDP to `{iface}` (driver and skb mode refused): {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// The last refusal.
        source: Box<aya::programs::ProgramError>,
    },
    /// The eBPF object lacks a map or program this build expects.
    #[error("the XDP object has no `{0}`")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("XDP map `{0}`: {1}")]
    Map(&'static str, aya::maps::MapError),
    /// An AF_XDP socket step failed.
    #[error("AF_XDP on rx queue {queue}: {op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Xsk {
        /// Rx queue index.
        queue: u32,
        /// The step that failed.
        op: &'static str,
        /// errno.
        errno: i32,
    },
    /// The number of CPUs (for per-CPU maps) could not be read.
    #[error("counting the possible CPUs: {0}")]
    Cpus(std::io::Error),
    /// A socket call failed.
    #[error("{op}: {source}")]
    Socket {
        /// The call that failed.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Receive counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Light payloads handed to the consumer.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames dropped because they did not parse (or were truncated).
    pub malformed: u64,
    /// Non-empty batches read.
    pub batches: u64,
}

/// How long a receive loop lets an empty ring or socket fill before it sleeps on it. A
/// receiver asleep in `poll` is woken every few packets, each wake-up an inter-processor
/// interrupt charged to the CPU that delivers the packets; a 1 ms nap gathers ~100 packets
/// at 1 Gbit/s (the AF_XDP rings hold 16 384, the socket buffer 32 MiB). Measured at K=4,
/// MTU 1500, 256 MiB (`xtask bench e2e`, 8 runs each): wake-ups 6 100 -> 2 700 per
/// receiver, system time of the server 1.79 -> 1.61 s and of each receiver 0.16 -> 0.13 s.
const NAP: Duration = Duration::from_millis(1);

/// Reads with `read`; if nothing is there, naps ([`NAP`]) and reads again, and only then
/// sleeps in `wait` (true: readable) for the rest of `timeout`.
fn read_or_wait(
    timeout: Duration,
    read: &mut dyn FnMut() -> Result<usize, RxError>,
    wait: &dyn Fn(Duration) -> Result<bool, RxError>,
) -> Result<usize, RxError> {
    let n = read()?;
    if n > 0 || timeout.is_zero() {
        return Ok(n);
    }
    let nap = NAP.min(timeout);
    std::thread::sleep(nap);
    let n = read()?;
    let rest = timeout.saturating_sub(nap);
    if n > 0 || rest.is_zero() || !wait(rest)? {
        return Ok(n);
    }
    read()
}

/// Which receive path to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxPath {
    /// XDP + AF_XDP; falls back to the socket unless `insist` is set.
    Xdp {
        /// How to attach the program.
        mode: AttachMode,
        /// Fail instead of falling back to the socket path.
        insist: bool,
    },
    /// Plain UDP socket with `recvmmsg`.
    Socket,
}

/// Where and how to receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxConfig {
    /// Interface facing the sender.
    pub iface: String,
    /// Multicast group.
    pub group: IpAddr,
    /// UDP port.
    pub port: u16,
    /// Path choice.
    pub path: RxPath,
    /// Largest datagram expected (sizes the socket path's buffers).
    pub max_datagram: usize,
}

/// Why the socket path beats AF_XDP on `iface`, if it does: its frames span several
/// AF_XDP chunks and its driver has no zero-copy mode, so each frame is copied twice on
/// the way in (veth copies the frame it was handed for XDP, AF_XDP copies it again into
/// the chunks), and gathered once more in user space, against one copy for a socket.
/// Measured on veth at MTU 9000, K=8, 1 GiB, 3 reps in the same run: the socket path took
/// 8.27 s against 11.07 s (same file) and 8.67 s against 10.83 s (1 % loss), with the
/// sender's CPU 3.3 against 6.1 s.
fn copied_jumbo_frames(iface: &str) -> Option<RxError> {
    let mtu = xdp::mtu(iface).ok()?;
    (mtu > xdp::MAX_XDP_MTU && xdp::copy_only_driver(iface)).then(|| RxError::CopiedJumboFrames {
        iface: iface.to_owned(),
        mtu,
    })
}

/// An open receive path.
pub enum Receiver {
    /// Kernel bypass.
    Xdp(Box<XdpRx>),
    /// Socket fallback.
    Socket(Box<SocketRx>),
}

impl Receiver {
    /// Opens the configured path. Returns the receiver and, if it fell back to the socket
    /// path, the reason XDP was not used.
    pub fn open(cfg: &RxConfig) -> Result<(Self, Option<RxError>), RxError> {
        let socket =
            || SocketRx::open(&cfg.iface, cfg.group, cfg.port, cfg.max_datagram).map(Box::new);
        if let RxPath::Xdp { insist: false, .. } = cfg.path
            && let Some(why) = copied_jumbo_frames(&cfg.iface)
        {
            tracing::info!(reason = %why, "using the socket receive path");
            return Ok((Receiver::Socket(socket()?), Some(why)));
        }
        match cfg.path {
            RxPath::Socket => Ok((Receiver::Socket(socket()?), None)),
            RxPath::Xdp { mode, insist } => {
                match XdpRx::open(&cfg.iface, cfg.group, cfg.port, mode) {
                    Ok(x) => Ok((Receiver::Xdp(Box::new(x)), None)),
                    Err(e) if insist => Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "XDP unavailable, using the socket receive path");
                        Ok((Receiver::Socket(socket()?), Some(e)))
                    }
                }
            }
        }
    }

    /// Releases the path (detaches XDP, leaves the group) as fast as the kernel allows.
    pub fn close(self) {
        match self {
            Receiver::Xdp(x) => x.close(),
            Receiver::Socket(s) => drop(s),
        }
    }

    /// Waits up to `timeout` for a batch and hands each Light payload to `sink`.
    pub fn recv_batch(
        &mut self,
        timeout: Duration,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RxError> {
        match self {
            Receiver::Xdp(x) => x.recv_batch(timeout, sink),
            Receiver::Socket(s) => s.recv_batch(timeout, sink),
        }
    }

    /// Asks the kernel to drop `session`'s shards of messages not in `wanted`; returns
    /// whether it does (without the privilege to load a filter, user space drops them).
    pub fn filter_messages(&mut self, session: u32, wanted: &[u32]) -> Result<bool, RxError> {
        match self {
            Receiver::Xdp(x) => x.program_mut().filter_messages(session, wanted),
            Receiver::Socket(s) => s.filter_messages(session, wanted),
        }
    }

    /// Listens to exactly these multicast groups besides the session's own (the session's
    /// [`crate::coding::Routing`] for this receiver); they go out of use at the next call.
    pub fn set_groups(&mut self, groups: &[IpAddr]) -> Result<(), RxError> {
        match self {
            Receiver::Xdp(x) => x.set_groups(groups),
            Receiver::Socket(s) => s.set_groups(groups),
        }
    }

    /// Turns the message filter off.
    pub fn unfilter(&mut self) -> Result<(), RxError> {
        match self {
            Receiver::Xdp(x) => x.program_mut().unfilter(),
            Receiver::Socket(s) => s.unfilter(),
        }
    }

    /// Shards the message filter has dropped since the path opened.
    pub fn filtered(&self) -> Result<u64, RxError> {
        match self {
            Receiver::Xdp(x) => x.program().filtered(),
            Receiver::Socket(s) => s.filtered(),
        }
    }

    /// Light frames longer than the AF_XDP socket takes that the XDP program passed to the stack
    /// (see [`Counter::Oversize`](light_common::Counter::Oversize)); 0 on the socket path.
    pub fn oversize(&self) -> Result<u64, RxError> {
        match self {
            Receiver::Xdp(x) => x.program().counter(light_common::Counter::Oversize),
            Receiver::Socket(_) => Ok(0),
        }
    }

    /// What to tell the user when `n` [`Receiver::oversize`] frames were seen (None if none).
    pub fn oversize_note(n: u64) -> Option<String> {
        (n > 0).then(|| {
            format!(
                "{n} Light frames arrived too long for AF_XDP (UDP GSO batches that nothing \
             segmented on the way); this path loses them: use --xdp-mode driver or --no-xdp"
            )
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> RxStats {
        match self {
            Receiver::Xdp(x) => x.stats(),
            Receiver::Socket(s) => s.stats(),
        }
    }

    /// Human-readable description of the path in use.
    pub fn describe(&self) -> String {
        match self {
            Receiver::Xdp(x) => x.describe(),
            Receiver::Socket(_) => "UDP socket (recvmmsg)".to_owned(),
        }
    }
}
