//! The batched UDP send socket: `sendmmsg` from caller buffers, with UDP GSO where the
//! kernel accepts it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::error::TxError;

/// Most segments the kernel accepts in one GSO send (`UDP_MAX_SEGMENTS` is 64 on older
/// kernels, 128 on newer ones).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send: a UDP datagram over IPv4 carries at most this much.
const GSO_MAX_BYTES: usize = 65_507;
/// Consecutive EAGAIN/ENOBUFS retries before the sender reports a stall.
const MAX_CONSECUTIVE_RETRIES: u32 = 10_000;
/// How long to wait for the socket to become writable after EAGAIN, in milliseconds.
const POLL_MS: libc::c_int = 10;
/// First and last back-off after ENOBUFS (the qdisc or device queue is full).
const ENOBUFS_BACKOFF: (Duration, Duration) = (Duration::from_micros(20), Duration::from_millis(2));
/// `SO_SNDBUFFORCE` (not exported by libc for every Linux target); lifts the
/// `wmem_max` cap for privileged processes.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "x86",
    target_arch = "arm",
    target_arch = "riscv64"
))]
const SO_SNDBUFFORCE: libc::c_int = 32;
/// Room for one control message holding the `u16` GSO segment size.
// SAFETY: CMSG_SPACE is pure arithmetic on its argument.
const CMSG_BUF: usize = unsafe { libc::CMSG_SPACE(2) } as usize;

/// Which interface multicast leaves through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulticastIf {
    /// By interface index (IPv4 or IPv6).
    Index(u32),
    /// By a local IPv4 address of the interface.
    V4(Ipv4Addr),
}

/// How the send socket is set up.
#[derive(Clone, Debug)]
pub struct SocketConfig {
    /// Destination: the multicast group and port (a unicast address also works).
    pub dest: SocketAddr,
    /// Local address to bind, if not the kernel's choice.
    pub bind: Option<SocketAddr>,
    /// Outgoing interface for multicast.
    pub interface: Option<MulticastIf>,
    /// Multicast TTL (IPv4) or hop limit (IPv6); 1 keeps it on the LAN.
    pub hops: u32,
    /// Whether multicast is looped back to local listeners.
    pub multicast_loop: bool,
    /// Requested `SO_SNDBUF` in bytes.
    pub send_buffer: usize,
    /// Try UDP GSO.
    pub gso: bool,
}

impl SocketConfig {
    /// Defaults for `dest`: TTL 1, no loop, 4 MiB send buffer, GSO on.
    pub fn new(dest: SocketAddr) -> Self {
        Self {
            dest,
            bind: None,
            interface: None,
            hops: 1,
            multicast_loop: false,
            send_buffer: 4 << 20,
            gso: true,
        }
    }
}

/// Whether UDP GSO is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoStatus {
    /// Turned off in the configuration.
    Disabled,
    /// The kernel refused the `UDP_SEGMENT` option.
    Unsupported,
    /// Supported, but no multi-packet message was sent yet.
    Untried,
    /// GSO sends succeed.
    Active,
    /// A GSO send failed with this errno (EIO: no checksum offload; EMSGSIZE, or EINVAL
    /// on older kernels: segment larger than the MTU); plain `sendmmsg` from then on.
    FellBack(i32),
}

impl GsoStatus {
    fn usable(self) -> bool {
        matches!(self, Self::Untried | Self::Active)
    }
}

/// Running totals of a [`Sender`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendCounters {
    /// Datagrams sent.
    pub packets: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// `sendmmsg` calls that sent something.
    pub syscalls: u64,
    /// Messages sent with GSO (each carrying several datagrams).
    pub gso_messages: u64,
    /// Retries after EAGAIN (socket buffer full).
    pub eagain_retries: u64,
    /// Retries after ENOBUFS (qdisc or device queue full).
    pub enobufs_retries: u64,
}

/// Datagrams `first..first + count` of a batch go out as one message; `seg > 0` means a
/// GSO message cut into `seg`-byte datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Group {
    first: usize,
    count: usize,
    seg: usize,
}

/// Groups runs of equal-sized datagrams (the last of a run may be shorter, as GSO allows)
/// into GSO messages within the kernel's limits; everything else goes alone.
fn plan_groups<B: AsRef<[u8]>>(packets: &[B], gso: bool, groups: &mut Vec<Group>) {
    groups.clear();
    let mut i = 0;
    while i < packets.len() {
        let seg = packets[i].as_ref().len();
        let mut count = 1;
        let mut total = seg;
        if gso && seg > 0 {
            while let Some(next) = packets.get(i + count) {
                let len = next.as_ref().len();
                if count == GSO_MAX_SEGMENTS || len == 0 || len > seg || total + len > GSO_MAX_BYTES
                {
                    break;
                }
                total += len;
                count += 1;
                if len < seg {
                    break;
                }
            }
        }
        let seg = if count > 1 { seg } else { 0 };
        groups.push(Group {
            first: i,
            count,
            seg,
        });
        i += count;
    }
}

/// One control-message buffer, aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF]);

/// Reusable `sendmmsg` argument arrays. The raw pointers inside are rebuilt by
/// [`Scratch::build`] before every use and point only into the batch being sent and into
/// `iovs`/`cmsgs`, which are not resized while a build is in use.
struct Scratch {
    groups: Vec<Group>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<CmsgBuf>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iovs`/`msgs` are only dereferenced by the kernel during a
// `sendmmsg` call made by the thread that owns the `Sender`, right after `build` wrote
// them; moving the scratch to another thread between calls never uses stale pointers.
unsafe impl Send for Scratch {}

impl Scratch {
    fn new() -> Self {
        Self {
            groups: Vec::new(),
            iovs: Vec::new(),
            cmsgs: Vec::new(),
            msgs: Vec::new(),
        }
    }

    /// Fills `msgs` for `packets` according to `groups`, addressed to `to` (`None`: the
    /// connected destination).
    fn build<B: AsRef<[u8]>>(&mut self, packets: &[B], to: Option<&socket2::SockAddr>) {
        self.iovs.clear();
        self.iovs.extend(packets.iter().map(|p| {
            let p = p.as_ref();
            libc::iovec {
                // The kernel only reads through this pointer (sendmmsg).
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            }
        }));
        self.cmsgs.clear();
        self.cmsgs.resize(self.groups.len(), CmsgBuf([0; CMSG_BUF]));
        self.msgs.clear();
        let iovs = self.iovs.as_mut_ptr();
        for (g, cmsg) in self.groups.iter().zip(self.cmsgs.iter_mut()) {
            // SAFETY: msghdr is plain data for which all-zero (null pointers, zero
            // lengths) is a valid value.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            // SAFETY: `g.first < iovs.len()` by construction of the groups.
            hdr.msg_iov = unsafe { iovs.add(g.first) };
            hdr.msg_iovlen = g.count as _;
            if let Some(to) = to {
                // The kernel only reads the address (sendmmsg).
                hdr.msg_name = to.as_ptr().cast_mut().cast();
                hdr.msg_namelen = to.len();
            }
            if g.seg > 0 {
                hdr.msg_control = cmsg.0.as_mut_ptr().cast();
                hdr.msg_controllen = CMSG_BUF as _;
                // SAFETY: msg_control points to CMSG_BUF = CMSG_SPACE(2) aligned bytes, so
                // the first header and its 2-byte payload fit; the payload may be
                // unaligned, hence write_unaligned.
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    libc::CMSG_DATA(c)
                        .cast::<u16>()
                        .write_unaligned(g.seg as u16);
                }
            }
            self.msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
    }
}

/// A UDP socket connected to the destination that sends batches with `sendmmsg`.
pub struct Sender {
    socket: Socket,
    gso: GsoStatus,
    scratch: Scratch,
    counters: SendCounters,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("socket", &self.socket)
            .field("gso", &self.gso)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn setup(context: &'static str) -> impl FnOnce(io::Error) -> TxError {
    move |source| TxError::Setup { context, source }
}

fn set_int_opt(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Sender {
    /// Creates, configures and connects the socket, and probes GSO support.
    pub fn new(cfg: &SocketConfig) -> Result<Self, TxError> {
        let socket = Socket::new(
            Domain::for_address(cfg.dest),
            Type::DGRAM,
            Some(Protocol::UDP),
        )
        .map_err(setup("creating the UDP socket"))?;
        if let Some(bind) = cfg.bind {
            socket
                .bind(&bind.into())
                .map_err(setup("binding the local address"))?;
        }
        match cfg.dest.ip() {
            IpAddr::V4(ip) if ip.is_multicast() => {
                socket
                    .set_multicast_ttl_v4(cfg.hops)
                    .map_err(setup("setting IP_MULTICAST_TTL"))?;
                socket
                    .set_multicast_loop_v4(cfg.multicast_loop)
                    .map_err(setup("setting IP_MULTICAST_LOOP"))?;
                match cfg.interface {
                    Some(MulticastIf::V4(addr)) => socket
                        .set_multicast_if_v4(&addr)
                        .map_err(setup("setting IP_MULTICAST_IF"))?,
                    Some(MulticastIf::Index(index)) => set_multicast_if_index_v4(&socket, index)
                        .map_err(setup("setting IP_MULTICAST_IF by index"))?,
                    None => {}
                }
            }
            IpAddr::V6(ip) if ip.is_multicast() => {
                socket
                    .set_multicast_hops_v6(cfg.hops)
                    .map_err(setup("setting IPV6_MULTICAST_HOPS"))?;
                socket
                    .set_multicast_loop_v6(cfg.multicast_loop)
                    .map_err(setup("setting IPV6_MULTICAST_LOOP"))?;
                match cfg.interface {
                    Some(MulticastIf::Index(index)) => socket
                        .set_multicast_if_v6(index)
                        .map_err(setup("setting IPV6_MULTICAST_IF"))?,
                    Some(MulticastIf::V4(addr)) => {
                        return Err(TxError::Config(format!(
                            "IPv6 group {ip} needs an interface index, not the IPv4 address {addr}"
                        )));
                    }
                    None => {}
                }
            }
            _ => {}
        }
        Self::size_send_buffer(&socket, cfg.send_buffer)?;
        // Without IP_RECVERR the kernel drops a datagram silently when the qdisc is full
        // (UDP "SndbufErrors"); with it, sendmmsg reports ENOBUFS and the batch is retried.
        let (level, name) = match cfg.dest {
            SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_RECVERR),
            SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
        };
        set_int_opt(&socket, level, name, 1).map_err(setup("enabling IP_RECVERR"))?;
        socket
            .connect(&cfg.dest.into())
            .map_err(setup("connecting to the destination"))?;
        socket
            .set_nonblocking(true)
            .map_err(setup("making the socket non-blocking"))?;
        let gso = if !cfg.gso {
            GsoStatus::Disabled
        } else if set_int_opt(&socket, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok() {
            // Whether the route's device can segment shows only on the first GSO send.
            GsoStatus::Untried
        } else {
            GsoStatus::Unsupported
        };
        Ok(Self {
            socket,
            gso,
            scratch: Scratch::new(),
            counters: SendCounters::default(),
        })
    }

    fn size_send_buffer(socket: &Socket, bytes: usize) -> Result<(), TxError> {
        let want = libc::c_int::try_from(bytes)
            .map_err(|_| TxError::Config(format!("send buffer of {bytes} bytes is too large")))?;
        #[cfg(any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "x86",
            target_arch = "arm",
            target_arch = "riscv64"
        ))]
        if set_int_opt(socket, libc::SOL_SOCKET, SO_SNDBUFFORCE, want).is_ok() {
            return Ok(());
        }
        // Unprivileged: the kernel caps the request at net.core.wmem_max.
        socket
            .set_send_buffer_size(want as usize)
            .map_err(setup("setting SO_SNDBUF"))
    }

    /// The GSO state: whether sends are segmented by the kernel.
    pub fn gso(&self) -> GsoStatus {
        self.gso
    }

    /// Totals so far.
    pub fn counters(&self) -> SendCounters {
        self.counters
    }

    /// The kernel's effective `SO_SNDBUF`.
    pub fn send_buffer(&self) -> io::Result<usize> {
        self.socket.send_buffer_size()
    }

    /// The bound local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Sends every datagram of `packets`, in order, retrying through full buffers and
    /// falling back from GSO if the kernel refuses it.
    pub fn send<B: AsRef<[u8]>>(&mut self, packets: &[B]) -> Result<(), TxError> {
        self.send_to(packets, None)
    }

    /// [`Sender::send`] to `to` instead of the connected destination (`None`: that one),
    /// e.g. another group of the session.
    pub fn send_to<B: AsRef<[u8]>>(
        &mut self,
        packets: &[B],
        to: Option<SocketAddr>,
    ) -> Result<(), TxError> {
        let to = to.map(socket2::SockAddr::from);
        let mut done = 0;
        let mut retries = 0u32;
        let mut backoff = ENOBUFS_BACKOFF.0;
        while done < packets.len() {
            let rest = &packets[done..];
            plan_groups(rest, self.gso.usable(), &mut self.scratch.groups);
            self.scratch.build(rest, to.as_ref());
            let mut msg = 0;
            while msg < self.scratch.msgs.len() {
                let pending = &mut self.scratch.msgs[msg..];
                // SAFETY: `pending` holds valid mmsghdrs built just above, pointing into
                // `rest` (borrowed for this whole call) and into the scratch arrays,
                // which are not touched until the next build.
                let rc = unsafe {
                    libc::sendmmsg(
                        self.socket.as_raw_fd(),
                        pending.as_mut_ptr(),
                        pending.len() as libc::c_uint,
                        0,
                    )
                };
                if rc > 0 {
                    let sent = rc as usize;
                    for (g, m) in self.scratch.groups[msg..msg + sent]
                        .iter()
                        .zip(&self.scratch.msgs[msg..])
                    {
                        self.counters.packets += g.count as u64;
                        self.counters.bytes += u64::from(m.msg_len);
                        if g.seg > 0 {
                            self.counters.gso_messages += 1;
                            self.gso = GsoStatus::Active;
                        }
                        done += g.count;
                    }
                    self.counters.syscalls += 1;
                    msg += sent;
                    retries = 0;
                    backoff = ENOBUFS_BACKOFF.0;
                    continue;
                }
                let err = io::Error::last_os_error();
                match (rc, err.raw_os_error()) {
                    // Nothing sent and no error: treat like a full buffer.
                    (0, _) => {
                        self.counters.eagain_retries += 1;
                        self.wait_writable();
                    }
                    (_, Some(libc::EINTR)) => continue,
                    (_, Some(libc::EAGAIN)) => {
                        self.counters.eagain_retries += 1;
                        self.wait_writable();
                    }
                    (_, Some(libc::ENOBUFS)) => {
                        self.counters.enobufs_retries += 1;
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(ENOBUFS_BACKOFF.1);
                    }
                    (_, Some(e @ (libc::EIO | libc::EINVAL | libc::EMSGSIZE)))
                        if self.scratch.groups[msg].seg > 0 =>
                    {
                        tracing::info!(
                            errno = e,
                            "UDP GSO refused by the kernel, sending without it"
                        );
                        self.gso = GsoStatus::FellBack(e);
                        // Re-plan what is left without GSO.
                        break;
                    }
                    _ => {
                        return Err(TxError::Send {
                            sent: done,
                            total: packets.len(),
                            source: err,
                        });
                    }
                }
                retries += 1;
                if retries > MAX_CONSECUTIVE_RETRIES {
                    return Err(TxError::Stalled { retries });
                }
            }
        }
        Ok(())
    }

    fn wait_writable(&self) {
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the result only decides when to retry, which the
        // caller does either way.
        unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
    }
}

fn set_multicast_if_index_v4(socket: &Socket, index: u32) -> io::Result<()> {
    let mreqn = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: libc::c_int::try_from(index)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
    };
    // SAFETY: passes a pointer to a live ip_mreqn and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&raw const mreqn).cast(),
            std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups_for(lens: &[usize], gso: bool) -> Vec<(usize, usize, usize)> {
        let packets: Vec<Vec<u8>> = lens.iter().map(|&n| vec![0; n]).collect();
        let mut g = Vec::new();
        plan_groups(&packets, gso, &mut g);
        g.iter().map(|g| (g.first, g.count, g.seg)).collect()
    }

    #[test]
    fn equal_runs_group_and_a_shorter_tail_closes_them() {
        assert_eq!(
            groups_for(&[100, 100, 100, 40, 100, 7, 0, 0, 5, 5], true),
            vec![(0, 4, 100), (4, 2, 100), (6, 1, 0), (7, 1, 0), (8, 2, 5)]
        );
        // A longer packet cannot join a run.
        assert_eq!(groups_for(&[10, 20], true), vec![(0, 1, 0), (1, 1, 0)]);
        // Without GSO every packet is its own message.
        assert_eq!(
            groups_for(&[8, 8, 8], false),
            vec![(0, 1, 0), (1, 1, 0), (2, 1, 0)]
        );
    }

    #[test]
    fn groups_respect_kernel_limits() {
        let g = groups_for(&[1; 150], true);
        assert_eq!(g, vec![(0, 64, 1), (64, 64, 1), (128, 22, 1)]);
        let g = groups_for(&[1472; 100], true);
        // 44 * 1472 = 64768 <= 65507 < 45 * 1472.
        assert_eq!(g[0], (0, 44, 1472));
        assert!(g.iter().all(|&(_, c, s)| c * s.max(1) <= GSO_MAX_BYTES));
        assert_eq!(g.iter().map(|x| x.1).sum::<usize>(), 100);
    }
}
