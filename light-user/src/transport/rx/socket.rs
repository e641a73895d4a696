//! Fallback receive path: a UDP socket joined to the group, read with `recvmmsg` batches.

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use super::{RxError, RxStats, filter::SocketMessageFilter, read_or_wait};

/// Datagrams read per `recvmmsg` call.
pub const BATCH: usize = 64;
/// Receive buffer requested from the kernel; large so a burst survives a scheduling hiccup.
const RCVBUF: usize = 32 << 20;

/// Resolves an interface name to its index.
pub fn ifindex(iface: &str) -> Result<u32, RxError> {
    let name =
        std::ffi::CString::new(iface).map_err(|_| RxError::InterfaceNotFound(iface.to_owned()))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        Err(RxError::InterfaceNotFound(iface.to_owned()))
    } else {
        Ok(idx)
    }
}

/// Opens a UDP socket bound to `port` (0 for any) and joined to `group` on interface `ifindex`.
/// It takes the datagrams of the groups joined on it alone (not those other sockets of the
/// host joined), so [`Memberships`] can add the session's further groups beside it.
///
/// Joining makes the host send IGMP/MLD reports, so switches with snooping deliver the group.
pub fn joined_socket(group: IpAddr, port: u16, ifindex: u32) -> Result<Socket, RxError> {
    let sock = bound_socket(group, port)?;
    join(&sock, group, ifindex, true)?;
    Ok(sock)
}

/// A UDP socket of `group`'s family bound to the wildcard address and `port`, taking
/// multicast only for the groups joined on it.
fn bound_socket(group: IpAddr, port: u16) -> Result<Socket, RxError> {
    let domain = if group.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(ctx("socket"))?;
    sock.set_reuse_address(true).map_err(ctx("SO_REUSEADDR"))?;
    sock.set_reuse_port(true).map_err(ctx("SO_REUSEPORT"))?;
    // Bound to the wildcard address, since the session's other groups arrive here too;
    // without IP_MULTICAST_ALL, multicast to this port on groups other sockets joined
    // stays out.
    match group {
        IpAddr::V4(_) => sock.set_multicast_all_v4(false),
        IpAddr::V6(_) => sock.set_multicast_all_v6(false),
    }
    .map_err(ctx("IP_MULTICAST_ALL"))?;
    let bind = SocketAddr::new(unspecified(group), port);
    sock.bind(&bind.into()).map_err(ctx("bind"))?;
    Ok(sock)
}

fn ctx(op: &'static str) -> impl Fn(io::Error) -> RxError {
    move |source| RxError::Socket { op, source }
}

/// Joins (`on`) or leaves `group` on interface `ifindex` with `sock`.
fn join(sock: &Socket, group: IpAddr, ifindex: u32, on: bool) -> Result<(), RxError> {
    let index = socket2::InterfaceIndexOrAddress::Index(ifindex);
    match (group, on) {
        (IpAddr::V4(g), true) => sock
            .join_multicast_v4_n(&g, &index)
            .map_err(ctx("IP_ADD_MEMBERSHIP")),
        (IpAddr::V4(g), false) => sock
            .leave_multicast_v4_n(&g, &index)
            .map_err(ctx("IP_DROP_MEMBERSHIP")),
        (IpAddr::V6(g), true) => sock
            .join_multicast_v6(&g, ifindex)
            .map_err(ctx("IPV6_JOIN_GROUP")),
        (IpAddr::V6(g), false) => sock
            .leave_multicast_v6(&g, ifindex)
            .map_err(ctx("IPV6_LEAVE_GROUP")),
    }
}

/// Groups one socket joins: Linux allows 20 IPv4 memberships per socket by default
/// (`net.ipv4.igmp_max_memberships`).
const JOINS_PER_SOCKET: usize = 16;

/// The session's further groups, kept equal to what the current session's routing asks of
/// this receiver ([`crate::coding::Routing::joins`]). They are joined on sockets of their
/// own, [`JOINS_PER_SOCKET`] at most on each, so a receiver may join more groups than one
/// socket can hold.
#[derive(Debug)]
pub struct Memberships {
    ifindex: u32,
    /// Port the sockets bind: the data port where they receive the data, 0 where they only
    /// hold memberships (AF_XDP takes the data).
    port: u16,
    holders: Vec<Holder>,
}

/// One socket of [`Memberships`].
#[derive(Debug)]
struct Holder {
    sock: Socket,
    joined: Vec<IpAddr>,
    /// The kernel refused it a further membership.
    full: bool,
}

impl Memberships {
    /// None joined yet, on interface `ifindex`, with sockets bound to `port`.
    pub fn new(ifindex: u32, port: u16) -> Self {
        Self {
            ifindex,
            port,
            holders: Vec::new(),
        }
    }

    /// Leaves the groups not in `groups` and joins the new ones; `opened` sees each socket
    /// opened for them before it joins anything.
    pub fn set(
        &mut self,
        groups: &[IpAddr],
        opened: &mut dyn FnMut(&Socket) -> Result<(), RxError>,
    ) -> Result<(), RxError> {
        for h in &mut self.holders {
            for &g in h.joined.iter().filter(|g| !groups.contains(g)) {
                join(&h.sock, g, self.ifindex, false)?;
                h.full = false;
            }
            h.joined.retain(|g| groups.contains(g));
        }
        self.holders.retain(|h| !h.joined.is_empty());
        for &g in groups {
            if self.holders.iter().any(|h| h.joined.contains(&g)) {
                continue;
            }
            // Ends: each turn joins, fails, or marks a socket that holds groups full.
            loop {
                let free = self
                    .holders
                    .iter()
                    .position(|h| !h.full && h.joined.len() < JOINS_PER_SOCKET);
                let i = match free {
                    Some(i) => i,
                    None => {
                        let sock = bound_socket(g, self.port)?;
                        opened(&sock)?;
                        self.holders.push(Holder {
                            sock,
                            joined: Vec::new(),
                            full: false,
                        });
                        self.holders.len() - 1
                    }
                };
                let h = &mut self.holders[i];
                match join(&h.sock, g, self.ifindex, true) {
                    Ok(()) => {
                        h.joined.push(g);
                        break;
                    }
                    // The host allows fewer memberships per socket than we assumed
                    // (`net.ipv4.igmp_max_memberships`): the next socket takes the group.
                    Err(RxError::Socket { source, .. })
                        if source.raw_os_error() == Some(libc::ENOBUFS) && !h.joined.is_empty() =>
                    {
                        h.full = true;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The sockets holding the groups.
    pub fn sockets(&self) -> impl Iterator<Item = &Socket> {
        self.holders.iter().map(|h| &h.sock)
    }
}

fn unspecified(group: IpAddr) -> IpAddr {
    match group {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// A multicast UDP socket read with `recvmmsg`.
pub struct SocketRx {
    sock: Socket,
    /// The session's further groups, on sockets bound to the same port.
    extra: Memberships,
    /// The descriptors read: `sock`'s, then `extra`'s.
    fds: Vec<libc::c_int>,
    bufs: Vec<Vec<u8>>,
    stats: RxStats,
    /// The kernel-side message filter, if this process may load one.
    filter: Option<SocketMessageFilter>,
}

impl SocketRx {
    /// Joins `group` on `iface` and binds `port`; `max_datagram` sizes the receive buffers.
    pub fn open(
        iface: &str,
        group: IpAddr,
        port: u16,
        max_datagram: usize,
    ) -> Result<Self, RxError> {
        let idx = ifindex(iface)?;
        let sock = joined_socket(group, port, idx)?;
        // Root may exceed rmem_max with SO_RCVBUFFORCE; fall back to the capped request.
        if force_rcvbuf(&sock, RCVBUF).is_err() {
            let _ = sock.set_recv_buffer_size(RCVBUF);
        }
        let filter = SocketMessageFilter::attach(&sock)
            .inspect_err(|e| tracing::debug!(error = %e, "no socket message filter"))
            .ok();
        // The port asked for, or the one the kernel picked for 0.
        let port = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map_or(port, |a| a.port());
        Ok(Self {
            fds: vec![sock.as_raw_fd()],
            sock,
            extra: Memberships::new(idx, port),
            bufs: vec![vec![0u8; max_datagram]; BATCH],
            stats: RxStats::default(),
            filter,
        })
    }

    /// Has the kernel drop `session`'s shards of messages not in `wanted`; false if this
    /// socket has no filter (not allowed to load one) or they do not fit its map.
    pub fn filter_messages(&mut self, session: u32, wanted: &[u32]) -> Result<bool, RxError> {
        match &mut self.filter {
            Some(f) => f.set(session, wanted),
            None => Ok(false),
        }
    }

    /// Listens to exactly these groups besides the session's.
    pub fn set_groups(&mut self, groups: &[IpAddr]) -> Result<(), RxError> {
        let filter = &mut self.filter;
        let joined = self.extra.set(groups, &mut |sock| {
            if force_rcvbuf(sock, RCVBUF).is_err() {
                let _ = sock.set_recv_buffer_size(RCVBUF);
            }
            filter.as_mut().map_or(Ok(()), |f| f.attach_also(sock))
        });
        self.fds = std::iter::once(self.sock.as_raw_fd())
            .chain(self.extra.sockets().map(AsRawFd::as_raw_fd))
            .collect();
        joined
    }

    /// Turns the message filter off.
    pub fn unfilter(&mut self) -> Result<(), RxError> {
        self.filter
            .as_mut()
            .map_or(Ok(()), SocketMessageFilter::clear)
    }

    /// Shards the message filter dropped so far.
    pub fn filtered(&self) -> Result<u64, RxError> {
        self.filter
            .as_ref()
            .map_or(Ok(0), SocketMessageFilter::dropped)
    }

    /// Counters so far.
    pub fn stats(&self) -> RxStats {
        self.stats
    }

    /// Waits up to `timeout` for datagrams, then hands every payload of one batch to `sink`.
    pub fn recv_batch(
        &mut self,
        timeout: Duration,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RxError> {
        let fds = std::mem::take(&mut self.fds);
        let got = read_or_wait(
            timeout,
            &mut || {
                let mut n = 0;
                for &fd in &fds {
                    n += self.read_batch(fd, sink)?;
                }
                Ok(n)
            },
            &|t| poll_in(&fds, t),
        );
        self.fds = fds;
        got
    }

    /// Reads what socket `fd` holds now, up to one batch.
    fn read_batch(
        &mut self,
        fd: libc::c_int,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RxError> {
        let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        let mut hdrs: [MaybeUninit<libc::mmsghdr>; BATCH] =
            [const { MaybeUninit::uninit() }; BATCH];
        for (i, buf) in self.bufs.iter_mut().enumerate() {
            iov[i].write(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            });
            // SAFETY: an all-zero mmsghdr is a valid "no name, no control" header.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov[i].as_mut_ptr();
            h.msg_hdr.msg_iovlen = 1;
            hdrs[i].write(h);
        }
        // SAFETY: every header points at a live iovec over a live buffer of the stated length.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr().cast(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(RxError::Socket {
                    op: "recvmmsg",
                    source: e,
                }),
            };
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().take(n).enumerate() {
            // SAFETY: the kernel filled the first `n` headers.
            let h = unsafe { h.assume_init_ref() };
            let len = h.msg_len as usize;
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.malformed += 1;
                continue;
            }
            self.stats.packets += 1;
            self.stats.bytes += len as u64;
            sink(&self.bufs[i][..len]);
        }
        self.stats.batches += 1;
        Ok(n)
    }
}

fn force_rcvbuf(sock: &Socket, bytes: usize) -> io::Result<()> {
    let v = bytes as libc::c_int;
    // SAFETY: passes a pointer to a live c_int of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until any of `fds` is readable or `timeout` passes; returns whether one is.
pub fn poll_fds(fds: &mut [libc::pollfd], timeout: Duration) -> Result<bool, RxError> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a live slice of pollfd of the given length.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(RxError::Socket {
            op: "poll",
            source: e,
        });
    }
    Ok(rc > 0)
}

/// Waits until any of `fds` has datagrams or `timeout` passes.
fn poll_in(fds: &[libc::c_int], timeout: Duration) -> Result<bool, RxError> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    poll_fds(&mut polled, timeout)
}
