//! Kernel-bypass receive path: Light's XDP program steers matching frames into one AF_XDP
//! socket per rx queue (via `xdpilone`), whose UMEM this module drains and refills.

use std::{
    net::IpAddr, num::NonZeroU32, os::fd::BorrowedFd, ptr::NonNull, sync::Mutex,
    thread::JoinHandle, time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, XskMap},
    programs::{Xdp, XdpMode},
};
use light_common::maps::{Counter, PORT_MAP, XSK_MAP, XSK_SG_FRAME_MAX};
use socket2::Socket as StdSocket;
use xdpilone::{
    DeviceQueue, IfInfo, RingRx, Socket, SocketConfig, Umem, UmemConfig, User, xdp::XdpDesc,
};

use super::{
    RxError, RxStats,
    filter::{self, MessageFilter, bitmap_words},
    frame::{Gather, Gathered, parse_udp},
    read_or_wait,
    socket::{Memberships, ifindex, joined_socket, poll_fds},
};

/// The compiled XDP program, built by `light-user/build.rs` from `light-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LIGHT_EBPF_OBJ"));

/// The eBPF object being loaded ahead ([`preload_object`]), for the next [`load_object`].
static PRELOADED: Mutex<Option<JoinHandle<Result<Ebpf, RxError>>>> = Mutex::new(None);

/// Starts loading the eBPF object (both receive paths need it) on a background thread, so
/// that it overlaps the control handshake. Loading took 50-110 ms per receiver at K=4 on 2
/// cores, after admission and on the way to the first packet: aya's `EbpfLoader::new()`
/// parses the kernel's 5 MB BTF although Light relocates nothing with it. (Populating the
/// UMEM ahead as well only moved its cost: the handshake slowed down as much.)
pub fn preload_object() {
    if let Ok(mut slot) = PRELOADED.lock()
        && slot.is_none()
    {
        *slot = std::thread::Builder::new()
            .name("light-preload".into())
            .spawn(load_fresh)
            .ok();
    }
}

/// The eBPF object: the preloaded one if there is one, else loaded now.
pub(super) fn load_object() -> Result<Ebpf, RxError> {
    let pending = PRELOADED.lock().ok().and_then(|mut slot| slot.take());
    match pending {
        Some(handle) => handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        None => load_fresh(),
    }
}

/// Loads the eBPF object (its programs need no CO-RE relocation: no BTF is passed on).
fn load_fresh() -> Result<Ebpf, RxError> {
    EbpfLoader::new()
        .btf(None)
        .load(EBPF_OBJECT)
        .map_err(|e| RxError::Load(Box::new(e)))
}

/// UMEM frame size: one page, room for a jumbo-less frame with headroom (jumbo frames
/// span several, see [`MAX_XDP_SG_MTU`]).
const FRAME_SIZE: u32 = light_common::maps::XSK_CHUNK_SIZE;
/// Frames (and fill/rx ring slots) per rx queue: 64 MiB, about 0.4 s of a Gbit/s stream,
/// so a receiver that is off the CPU for a while (measured: 4 receivers and the sender on
/// 2 cores dropped ~7% with 8192) catches up instead of losing packets.
const FRAMES: u32 = 16384;
/// Descriptors read per ring pass.
const RX_BATCH: u32 = 256;
/// Bind flag `XDP_USE_SG` (Linux 6.6): a frame may span several chunks.
const XDP_USE_SG: u16 = 1 << 4;
/// Descriptor option `XDP_PKT_CONTD`: the frame goes on in the next descriptor.
const XDP_PKT_CONTD: u32 = 1;

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Driver (native) mode, falling back to skb (generic) mode.
    #[default]
    Auto,
    /// Native XDP in the driver only.
    Driver,
    /// Generic XDP in the kernel stack only.
    Skb,
}

impl AttachMode {
    fn attempts(self) -> &'static [XdpMode] {
        match self {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Driver => &[XdpMode::Driver],
            AttachMode::Skb => &[XdpMode::Skb],
        }
    }
}

/// The loaded and attached program with its maps. Dropping it detaches the program.
pub struct XdpProgram {
    ebpf: Ebpf,
    mode: XdpMode,
    filter: MessageFilter,
}

impl XdpProgram {
    /// Loads the program, registers `ports`, and attaches it to `iface`; `frags` picks the
    /// multi-buffer variant, which links with frames longer than a page need.
    pub fn attach(
        iface: &str,
        ports: &[u16],
        mode: AttachMode,
        frags: bool,
    ) -> Result<Self, RxError> {
        let ifindex = ifindex(iface)?;
        let mut ebpf = load_object()?;
        {
            let map = ebpf
                .map_mut(PORT_MAP)
                .ok_or(RxError::MissingMap(PORT_MAP))?;
            let mut ports_map: Array<_, u64> =
                Array::try_from(map).map_err(|e| RxError::Map(PORT_MAP, e))?;
            for (word, bits) in bitmap_words(ports.iter().map(|&p| u32::from(p))) {
                ports_map
                    .set(word, bits, 0)
                    .map_err(|e| RxError::Map(PORT_MAP, e))?;
            }
        }
        let name = if frags {
            "light_xdp_frags"
        } else {
            "light_xdp"
        };
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(RxError::MissingMap(name))?
            .try_into()
            .map_err(|e| RxError::Program(Box::new(e)))?;
        prog.load().map_err(|e| RxError::Program(Box::new(e)))?;
        let mut last = None;
        for &m in mode.attempts() {
            match prog.attach_to_if_index(ifindex, m) {
                Ok(_) => {
                    return Ok(Self {
                        ebpf,
                        mode: m,
                        filter: MessageFilter::default(),
                    });
                }
                Err(e) => {
                    tracing::debug!(iface, mode = ?m, error = %e, "XDP attach refused");
                    last = Some(e);
                }
            }
        }
        Err(RxError::Attach {
            iface: iface.to_owned(),
            source: Box::new(last.expect("at least one attach mode is tried")),
        })
    }

    /// Whether the program runs in the driver (true) or in generic skb mode.
    pub fn is_driver_mode(&self) -> bool {
        self.mode == XdpMode::Driver
    }

    /// Registers an AF_XDP socket for `queue`.
    fn register(&mut self, queue: u32, fd: libc::c_int) -> Result<(), RxError> {
        let map = self
            .ebpf
            .map_mut(XSK_MAP)
            .ok_or(RxError::MissingMap(XSK_MAP))?;
        let mut xsks = XskMap::try_from(map).map_err(|e| RxError::Map(XSK_MAP, e))?;
        // SAFETY: `fd` is the live AF_XDP socket owned by the queue that calls this.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        xsks.set(queue, fd, 0).map_err(|e| RxError::Map(XSK_MAP, e))
    }

    /// Drops, in the kernel, the shards of `session` whose message is not in `wanted`, so
    /// they cost neither the copy into the ring nor a look in user space. Returns false
    /// (filter left off) when `wanted` does not fit the map.
    pub fn filter_messages(&mut self, session: u32, wanted: &[u32]) -> Result<bool, RxError> {
        self.filter.set(&mut self.ebpf, session, wanted)
    }

    /// Turns the message filter off: every Light frame goes to the ring again.
    pub fn unfilter(&mut self) -> Result<(), RxError> {
        self.filter.clear(&mut self.ebpf)
    }

    /// One of the program's per-CPU counters, summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64, RxError> {
        filter::counter(&self.ebpf, c)
    }

    /// Shards the message filter dropped so far.
    pub fn filtered(&self) -> Result<u64, RxError> {
        filter::filtered(&self.ebpf)
    }

    /// The program's per-CPU counters summed over CPUs, indexed by [`Counter`].
    pub fn counters(&self) -> Result<[u64; Counter::ALL.len()], RxError> {
        let mut out = [0u64; Counter::ALL.len()];
        for c in Counter::ALL {
            out[c as usize] = self.counter(c)?;
        }
        Ok(out)
    }
}

/// Page-aligned anonymous memory backing one UMEM.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: an Area owns its mapping alone (no aliases outlive it); moving it to another thread
// moves that ownership.
unsafe impl Send for Area {}

/// Bytes of one UMEM.
const UMEM_BYTES: usize = (FRAMES as usize) * (FRAME_SIZE as usize);

impl Area {
    fn new(len: usize) -> Result<Self, RxError> {
        // SAFETY: anonymous private mapping; no file or address constraints.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(RxError::Socket {
                op: "mmap UMEM",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"),
            len,
        })
    }

    fn as_slice_ptr(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }

    /// The `len` bytes at `addr`, if inside the area.
    fn bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let end = addr.checked_add(u64::from(len))?;
        if end > self.len as u64 {
            return None;
        }
        // SAFETY: in bounds (checked above); the kernel wrote this frame and handed it to us
        // through the rx ring, and will not touch it until we return it on the fill ring.
        Some(unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(addr as usize), len as usize)
        })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, after the rings using it dropped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One AF_XDP socket on one rx queue with its own UMEM.
struct XskQueue {
    // Field order is drop order: rings and sockets go before the memory they point into.
    rx: RingRx,
    fill: DeviceQueue,
    _user: User,
    _umem: Umem,
    area: Area,
    /// Frames owned by userspace, waiting to go back on the fill ring.
    free: Vec<u64>,
    zero_copy: bool,
    /// Bound with `XDP_USE_SG`: frames may span several descriptors.
    sg: bool,
    /// Joins the chunks of frames that span several (the parser and the MAC want one piece).
    gather: Gather,
}

impl XskQueue {
    /// Opens the socket on `area`, or on a fresh UMEM area if none is given; `sg` lets
    /// frames span several chunks.
    fn open(
        ifname: &std::ffi::CStr,
        queue: u32,
        zero_copy: bool,
        sg: bool,
        area: Option<Area>,
    ) -> Result<Self, RxError> {
        let err = |op: &'static str| {
            move |e: xdpilone::Errno| RxError::Xsk {
                queue,
                op,
                errno: e.get_raw().abs(),
            }
        };
        let area = match area {
            Some(a) => a,
            None => Area::new(UMEM_BYTES)?,
        };
        let cfg = UmemConfig {
            fill_size: FRAMES,
            complete_size: 64,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        // SAFETY: `area` is a live, page-aligned mapping that outlives the Umem (field order).
        let umem = unsafe { Umem::new(cfg, area.as_slice_ptr()) }.map_err(err("UMEM register"))?;
        let mut info = IfInfo::invalid();
        info.from_name(ifname).map_err(err("interface lookup"))?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem).map_err(err("socket"))?;
        let fill = umem.fq_cq(&sock).map_err(err("fill/completion rings"))?;
        let mode = if zero_copy {
            SocketConfig::XDP_BIND_ZEROCOPY
        } else {
            SocketConfig::XDP_BIND_COPY
        };
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: NonZeroU32::new(FRAMES),
                    tx_size: None,
                    bind_flags: mode
                        | SocketConfig::XDP_BIND_NEED_WAKEUP
                        | if sg { XDP_USE_SG } else { 0 },
                },
            )
            .map_err(err("rx ring"))?;
        let rx = user.map_rx().map_err(err("map rx ring"))?;
        umem.bind(&user).map_err(err(match (zero_copy, sg) {
            (true, false) => "bind (zero-copy)",
            (false, false) => "bind (copy)",
            (true, true) => "bind (zero-copy, multi-buffer: Linux 6.6 or later)",
            (false, true) => "bind (copy, multi-buffer: Linux 6.6 or later)",
        }))?;
        let mut q = Self {
            rx,
            fill,
            _user: user,
            _umem: umem,
            area,
            free: (0..FRAMES).map(|i| u64::from(i * FRAME_SIZE)).collect(),
            zero_copy,
            sg,
            gather: Gather::new(if sg { XSK_SG_FRAME_MAX } else { 0 }),
        };
        q.refill();
        Ok(q)
    }

    fn refill(&mut self) {
        if self.free.is_empty() {
            return;
        }
        let n = {
            let mut w = self.fill.fill(self.free.len() as u32);
            let n = w.insert(self.free.iter().rev().copied()) as usize;
            w.commit();
            n
        };
        self.free.truncate(self.free.len() - n);
        if self.fill.needs_wakeup() {
            self.fill.wake();
        }
    }

    fn drain(&mut self, port: u16, stats: &mut RxStats, sink: &mut dyn FnMut(&[u8])) -> usize {
        let mut descs = [XdpDesc::default(); RX_BATCH as usize];
        let n = {
            let mut r = self.rx.receive(RX_BATCH);
            let mut n = 0;
            while let Some(d) = r.read() {
                descs[n] = d;
                n += 1;
            }
            r.release();
            n
        };
        let batch = &descs[..n];
        for (i, desc) in batch.iter().enumerate() {
            // The kernel wrote the next frame from another CPU's softirq: fetch it while
            // this one is checked and copied (measured: the MAC over such cold frames took
            // twice its time over the socket path's freshly copied ones).
            if let Some(b) = batch
                .get(i + 1)
                .and_then(|next| self.area.bytes(next.addr, next.len))
            {
                prefetch(b);
            }
            let more = desc.options & XDP_PKT_CONTD != 0;
            if let Gathered::Frame(frame) =
                self.gather.push(self.area.bytes(desc.addr, desc.len), more)
            {
                deliver(frame, port, stats, sink);
            }
            // Any address inside the chunk identifies it for the fill ring; keep the base.
            self.free
                .push(desc.addr - desc.addr % u64::from(FRAME_SIZE));
        }
        if n > 0 {
            stats.batches += 1;
        }
        self.refill();
        n
    }
}

/// Hands the Light payload of `frame` to `sink`, or counts it as malformed.
fn deliver(frame: Option<&[u8]>, port: u16, stats: &mut RxStats, sink: &mut dyn FnMut(&[u8])) {
    match frame.map(parse_udp) {
        Some(Ok(dg)) if dg.dst_port == port => {
            stats.packets += 1;
            stats.bytes += dg.payload.len() as u64;
            sink(dg.payload);
        }
        _ => stats.malformed += 1,
    }
}

/// Receives Light datagrams through XDP + AF_XDP on every rx queue of an interface.
pub struct XdpRx {
    queues: Vec<XskQueue>,
    /// The queues' rx ring descriptors, to poll on when they are all empty.
    ring_fds: Vec<libc::c_int>,
    program: XdpProgram,
    /// Holds the group memberships (IGMP/MLD reports); the data goes to AF_XDP.
    membership: StdSocket,
    /// The session's further groups, on sockets that only hold them too.
    extra: Memberships,
    port: u16,
    stats: RxStats,
}

impl XdpRx {
    /// Attaches the program to `iface`, opens a socket per rx queue (zero-copy first, copy
    /// mode as fallback) and joins `group` so switches forward it.
    pub fn open(iface: &str, group: IpAddr, port: u16, mode: AttachMode) -> Result<Self, RxError> {
        let idx = ifindex(iface)?;
        // Frames longer than a chunk (jumbo MTUs) span several: AF_XDP multi-buffer.
        let mtu = mtu(iface)?;
        if mtu > MAX_XDP_SG_MTU {
            return Err(RxError::MtuTooLarge {
                iface: iface.to_owned(),
                mtu,
                max: MAX_XDP_SG_MTU,
            });
        }
        let sg = mtu > MAX_XDP_MTU;
        let name =
            std::ffi::CString::new(iface).map_err(|_| RxError::InterfaceNotFound(iface.into()))?;
        let n = rx_queue_count(iface);
        // Populating the UMEMs (64 MiB each) overlaps attaching XDP, which mostly waits on
        // the kernel.
        let (program, areas) = std::thread::scope(|s| {
            let areas = s.spawn(move || (0..n).map(|_| Area::new(UMEM_BYTES)).collect());
            let program = XdpProgram::attach(iface, &[port], mode, sg);
            let areas: Result<Vec<Area>, RxError> = areas
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (program, areas)
        });
        let (mut program, areas) = (program?, areas?);
        // A doomed zero-copy attempt registers a whole UMEM first: 60-90 ms per receiver.
        let try_zero_copy = program.is_driver_mode() && !copy_only_driver(iface);
        let mut queues = Vec::new();
        for (q, area) in (0..n).zip(areas) {
            let mut area = Some(area);
            let zc = if try_zero_copy {
                XskQueue::open(&name, q, true, sg, area.take())
            } else {
                Err(RxError::Xsk {
                    queue: q,
                    op: "zero-copy (not offered by the driver)",
                    errno: libc::EOPNOTSUPP,
                })
            };
            let xsk = match zc {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(queue = q, error = %e, "zero-copy AF_XDP refused, using copy mode");
                    XskQueue::open(&name, q, false, sg, area.take())?
                }
            };
            program.register(q, xsk.rx.as_raw_fd())?;
            queues.push(xsk);
        }
        // Bound to an ephemeral port: it only holds the membership, the data goes to AF_XDP.
        let membership = joined_socket(group, 0, idx)?;
        Ok(Self {
            ring_fds: queues.iter().map(|q| q.rx.as_raw_fd()).collect(),
            queues,
            program,
            membership,
            extra: Memberships::new(idx, 0),
            port,
            stats: RxStats::default(),
        })
    }

    /// Releases the path with its parts closed side by side: the kernel waits out an RCU
    /// grace period for each (about 10 ms apiece alone, 35-100 ms in a row at K=4).
    pub fn close(self) {
        let Self {
            queues,
            program,
            membership,
            extra,
            ..
        } = self;
        std::thread::scope(|s| {
            s.spawn(move || drop(program));
            s.spawn(move || drop((membership, extra)));
            // The sockets stay on this thread (xdpilone's UMEM is not Send).
            drop(queues);
        });
    }

    /// Listens to exactly these groups besides the session's.
    pub fn set_groups(&mut self, groups: &[IpAddr]) -> Result<(), RxError> {
        self.extra.set(groups, &mut |_| Ok(()))
    }

    /// Human-readable description of the path in use.
    pub fn describe(&self) -> String {
        let zc = self.queues.iter().all(|q| q.zero_copy);
        let sg = self.queues.iter().any(|q| q.sg);
        format!(
            "AF_XDP ({} mode{}, XDP in {} mode, {} rx queue{})",
            if zc { "zero-copy" } else { "copy" },
            if sg { ", multi-buffer" } else { "" },
            if self.program.is_driver_mode() {
                "driver"
            } else {
                "skb"
            },
            self.queues.len(),
            if self.queues.len() == 1 { "" } else { "s" }
        )
    }

    /// Whether every queue bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.queues.iter().all(|q| q.zero_copy)
    }

    /// The attached program (for its counters).
    pub fn program(&self) -> &XdpProgram {
        &self.program
    }

    /// The attached program, to set its message filter.
    pub fn program_mut(&mut self) -> &mut XdpProgram {
        &mut self.program
    }

    /// Counters so far.
    pub fn stats(&self) -> RxStats {
        self.stats
    }

    /// Drains every queue; if all were empty, naps 1 ms, then waits up to `timeout` in poll.
    pub fn recv_batch(
        &mut self,
        timeout: Duration,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RxError> {
        let Self {
            queues,
            ring_fds,
            port,
            stats,
            ..
        } = self;
        let mut drain_all = || Ok(queues.iter_mut().map(|q| q.drain(*port, stats, sink)).sum());
        let wait = |t: Duration| {
            let mut polled: Vec<libc::pollfd> = ring_fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            poll_fds(&mut polled, t)
        };
        read_or_wait(timeout, &mut drain_all, &wait)
    }
}

/// Largest MTU whose frames fit one UMEM chunk after the kernel's XDP headroom, with an
/// Ethernet header, one VLAN tag and the kernel's tailroom (`skb_shared_info`, 320 bytes).
pub const MAX_XDP_MTU: u32 = light_common::maps::XSK_RX_FRAME_MAX as u32 - 14 - 4 - 320;

/// Largest MTU the multi-buffer path takes (frames of up to three chunks, one VLAN tag).
pub const MAX_XDP_SG_MTU: u32 = XSK_SG_FRAME_MAX as u32 - 14 - 4;

/// The MTU of `iface` (asked through a socket, so it works inside any network namespace).
pub fn mtu(iface: &str) -> Result<u32, RxError> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).map_err(
        |source| RxError::Socket {
            op: "socket",
            source,
        },
    )?;
    // SAFETY: an all-zero ifreq is valid; the name is copied in below within bounds.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(RxError::InterfaceNotFound(iface.to_owned()));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the name and writes ifru_mtu of the live `req`.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCGIFMTU,
            &mut req,
        )
    };
    if rc != 0 {
        return Err(RxError::InterfaceNotFound(iface.to_owned()));
    }
    // SAFETY: the kernel filled the MTU member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// Drivers known to have no AF_XDP zero-copy mode.
const COPY_ONLY_DRIVERS: &[&str] = &["veth", "bridge", "tun", "dummy"];

/// Whether `iface`'s driver (asked through ethtool, which works in any network namespace)
/// is one without zero-copy support. Unknown drivers are tried.
pub fn copy_only_driver(iface: &str) -> bool {
    /// `struct ethtool_drvinfo` of `<linux/ethtool.h>`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    use std::os::fd::AsRawFd;
    let Ok(sock) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None) else {
        return false;
    };
    // SAFETY: all-zero bytes are a valid value of this plain C struct.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: all-zero bytes are a valid `ifreq`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return false;
    }
    for (d, &c) in req.ifr_name.iter_mut().zip(name) {
        *d = c as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes at most one `ethtool_drvinfo` into
    // `info`, which outlives the call; `req` is a valid, NUL-terminated `ifreq`.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
    if r != 0 {
        return false;
    }
    let end = info.driver.iter().position(|&c| c == 0).unwrap_or(32);
    COPY_ONLY_DRIVERS.contains(&std::str::from_utf8(&info.driver[..end]).unwrap_or(""))
}

/// Number of rx queues of `iface` (at least 1), from sysfs.
pub fn rx_queue_count(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// Asks the CPU to load `bytes` into its caches ahead of use.
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: prefetching is a hint that never faults; the address is inside `bytes`.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}
