//! The receive path on real network namespaces: XDP + AF_XDP and the socket fallback must
//! deliver the same Light packets byte for byte, other traffic must still reach the stack,
//! and no XDP program may remain after the receiver exits. Needs root (CI runs as root).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use light::transport::rx::{
    AttachMode, Receiver, RxConfig, RxError, RxPath, frame::build_udp_frame, xdp::copy_only_driver,
};
use light_common::{Counter, DataHeader, HEADER_LEN, PacketKind, maps::WANT_WORDS};
use xtask::netns::{Host, Testbed, enter, in_ns, require_root};

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 77, 1, 1);
const GROUP6: &str = "ff05::77:1";
const PORT: u16 = 7711;
const PACKETS: u32 = 4000;
/// Largest Light payload in one 1500-byte IPv6 frame (IPv4 allows 20 bytes more; Light
/// never sends fragments, and the XDP program passes them to the stack).
const MAX_PAYLOAD: usize = 1500 - 40 - 8 - HEADER_LEN;
/// Largest Light payload in one 9000-byte IPv4 frame.
const JUMBO_PAYLOAD: usize = 9000 - 20 - 8 - HEADER_LEN;

fn packet(seq: u32) -> Vec<u8> {
    packet_sized(seq, &[0, 1, 63, 512, 1000, MAX_PAYLOAD])
}

/// Test packet `seq`, its payload length taken in turn from `sizes`.
fn packet_sized(seq: u32, sizes: &[usize]) -> Vec<u8> {
    let len = sizes[seq as usize % sizes.len()];
    let mut h = DataHeader::new(PacketKind::Probe, 42);
    h.seq = seq;
    h.payload_len = len as u16;
    let mut p = vec![0u8; HEADER_LEN + len];
    h.write_to(&mut p).unwrap();
    for (i, b) in p[HEADER_LEN..].iter_mut().enumerate() {
        *b = (seq as usize * 31 + i * 7) as u8;
    }
    p
}

/// Sends `packets` to `group` from the server namespace; paced gently so the socket path
/// (the slower one) sees no kernel-side drops either.
fn send_packets(bed: &Testbed, group: IpAddr, packets: Vec<Vec<u8>>) {
    let server = bed.server.clone();
    thread::scope(|s| {
        s.spawn(move || {
            enter(&server.ns).unwrap();
            let sock = sender_socket(&server, group);
            let dst = SocketAddr::new(group, PORT);
            for (seq, p) in packets.iter().enumerate() {
                sock.send_to(p, dst).unwrap();
                if seq % 32 == 31 {
                    thread::sleep(Duration::from_micros(500));
                }
            }
        });
    });
}

/// A UDP socket of `server` (in its namespace) that multicasts to `group` on its link.
fn sender_socket(server: &Host, group: IpAddr) -> UdpSocket {
    if group.is_ipv4() {
        let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V4(server.addr), 0)).unwrap();
        socket2::SockRef::from(&sock)
            .set_multicast_if_v4(&server.addr)
            .unwrap();
        sock
    } else {
        let sock = UdpSocket::bind("[::]:0").unwrap();
        let idx = light::transport::rx::socket::ifindex(&server.iface).unwrap();
        socket2::SockRef::from(&sock)
            .set_multicast_if_v6(idx)
            .unwrap();
        sock
    }
}

/// Opens `path` on `iface` for `group` and the test port (in the caller's namespace).
fn open_rx(iface: &str, group: IpAddr, path: RxPath) -> (Receiver, Option<RxError>) {
    let cfg = RxConfig {
        iface: iface.to_owned(),
        group,
        port: PORT,
        path,
        max_datagram: 9216,
    };
    Receiver::open(&cfg).expect("open receive path")
}

/// Opens `path` in the first receiver's namespace, collects `PACKETS` packets (or gives up
/// after a bounded wait), and returns them with the XDP counters if XDP was used.
fn receive(
    bed: &Testbed,
    path: RxPath,
    group: IpAddr,
) -> (Vec<Vec<u8>>, Option<[u64; Counter::ALL.len()]>, String) {
    receive_set(bed, path, group, (0..PACKETS).map(packet).collect())
}

/// [`receive`] for any `packets` (at most `PACKETS`, sent in order).
fn receive_set(
    bed: &Testbed,
    path: RxPath,
    group: IpAddr,
    packets: Vec<Vec<u8>>,
) -> (Vec<Vec<u8>>, Option<[u64; Counter::ALL.len()]>, String) {
    let count = packets.len();
    let host = bed.receivers[0].clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        enter(&host.ns).unwrap();
        let (mut rx, fallback) = open_rx(&host.iface, group, path);
        assert!(fallback.is_none(), "unexpected fallback: {fallback:?}");
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < count && Instant::now() < deadline {
            rx.recv_batch(Duration::from_millis(50), &mut |p| got.push(p.to_vec()))
                .unwrap();
        }
        let counters = match &rx {
            Receiver::Xdp(x) => Some(x.program().counters().unwrap()),
            Receiver::Socket(_) => None,
        };
        (got, counters, rx.describe())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("receiver ready");
    // Let the IGMP join settle on the bridge.
    thread::sleep(Duration::from_millis(200));
    send_packets(bed, group, packets);
    handle.join().unwrap()
}

fn assert_all_identical(got: &[Vec<u8>]) {
    assert_eq!(got.len(), PACKETS as usize, "every packet must arrive");
    let mut seen = vec![false; PACKETS as usize];
    for p in got {
        let (h, _) = DataHeader::parse(p).expect("valid Light packet");
        assert_eq!(p, &packet(h.seq), "bytes differ for seq {}", h.seq);
        assert!(
            !std::mem::replace(&mut seen[h.seq as usize], true),
            "duplicate {}",
            h.seq
        );
    }
}

/// Jumbo frames span several UMEM chunks: the multi-buffer program and `XDP_USE_SG` sockets
/// gather them, byte for byte what the socket path delivers. The sizes put payloads on both
/// sides of the chunk boundaries.
#[test]
fn jumbo_frames_arrive_whole_over_multi_buffer_af_xdp() {
    require_root().unwrap();
    let bed = Testbed::new(1, 9000).unwrap();
    // Frames of exactly one and two chunks (3840 bytes each in copy mode), and a byte
    // either side.
    let (one, two) = (3840 - 42 - HEADER_LEN, 7680 - 42 - HEADER_LEN);
    let sizes = [
        0,
        1,
        3000,
        one - 1,
        one,
        one + 1,
        two - 1,
        two,
        two + 1,
        8000,
        JUMBO_PAYLOAD,
    ];
    let packets: Vec<Vec<u8>> = (0..PACKETS).map(|s| packet_sized(s, &sizes)).collect();
    let check = |got: &[Vec<u8>]| {
        assert_eq!(got.len(), packets.len(), "every packet must arrive");
        let mut seen = vec![false; packets.len()];
        for p in got {
            let (h, _) = DataHeader::parse(p).expect("valid Light packet");
            assert_eq!(
                p, &packets[h.seq as usize],
                "bytes differ for seq {}",
                h.seq
            );
            assert!(!std::mem::replace(&mut seen[h.seq as usize], true));
        }
    };
    let xdp_path = RxPath::Xdp {
        mode: AttachMode::Auto,
        insist: true,
    };
    let (xdp, counters, desc) = receive_set(&bed, xdp_path, IpAddr::V4(GROUP), packets.clone());
    eprintln!("XDP path: {desc}");
    assert!(desc.contains("multi-buffer"), "{desc}");
    check(&xdp);
    let c = counters.unwrap();
    assert!(
        c[Counter::Redirected as usize] >= u64::from(PACKETS),
        "counters {c:?}"
    );
    assert_eq!(c[Counter::Oversize as usize], 0, "counters {c:?}");
    assert_eq!(c[Counter::Malformed as usize], 0, "counters {c:?}");

    let (sock, _, desc) = receive_set(&bed, RxPath::Socket, IpAddr::V4(GROUP), packets.clone());
    assert!(desc.contains("socket"), "{desc}");
    check(&sock);
}

fn xdp_attached(bed: &Testbed) -> bool {
    let h = &bed.receivers[0];
    let out = bed
        .command(h, "ip")
        .args(["link", "show", "dev", &h.iface])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn xdp_and_socket_paths_receive_identical_bytes() {
    require_root().unwrap();
    let bed = Testbed::new(1, 1500).unwrap();
    let (xdp, counters, desc) = receive(
        &bed,
        RxPath::Xdp {
            mode: AttachMode::Auto,
            insist: true,
        },
        IpAddr::V4(GROUP),
    );
    eprintln!("XDP path: {desc}");
    assert!(desc.contains("AF_XDP"));
    assert_all_identical(&xdp);
    let c = counters.unwrap();
    assert!(
        c[Counter::Redirected as usize] >= u64::from(PACKETS),
        "counters {c:?}"
    );
    assert!(
        !xdp_attached(&bed),
        "XDP program must be detached when the receiver is dropped"
    );

    let (sock, counters, desc) = receive(&bed, RxPath::Socket, IpAddr::V4(GROUP));
    assert!(counters.is_none() && desc.contains("socket"));
    assert_all_identical(&sock);
}

#[test]
fn skb_mode_attaches_and_receives() {
    require_root().unwrap();
    let bed = Testbed::new(1, 1500).unwrap();
    let (got, _, desc) = receive(
        &bed,
        RxPath::Xdp {
            mode: AttachMode::Skb,
            insist: true,
        },
        IpAddr::V4(GROUP),
    );
    assert!(desc.contains("skb mode"), "{desc}");
    assert_all_identical(&got);
}

/// UDP GSO batches that nothing segments on the way (veth to veth) reach skb-mode XDP whole,
/// too long for an AF_XDP chunk: counted as oversize, not lost unseen. In driver mode veth
/// turns GSO off on its peer, so the same sends arrive as single frames.
#[test]
fn unsegmented_gso_batches_are_counted_as_oversize() {
    require_root().unwrap();
    const BATCHES: usize = 5;
    const SEGMENTS: usize = 4;
    let bed = Testbed::new(1, 1500).unwrap();
    for (mode, arrive) in [
        (AttachMode::Skb, 0),
        (AttachMode::Driver, BATCHES * SEGMENTS),
    ] {
        let host = bed.receivers[0].clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = thread::spawn(move || {
            enter(&host.ns).unwrap();
            let path = RxPath::Xdp { mode, insist: true };
            let (mut rx, _) = open_rx(&host.iface, IpAddr::V4(GROUP), path);
            ready_tx.send(()).unwrap();
            let (mut got, mut oversize) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && got + oversize < BATCHES * SEGMENTS {
                rx.recv_batch(Duration::from_millis(50), &mut |_| got += 1)
                    .unwrap();
                // Each oversize frame is one whole batch.
                oversize = SEGMENTS * rx.oversize().unwrap() as usize;
            }
            (got, rx.oversize().unwrap())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("receiver ready");
        thread::sleep(Duration::from_millis(200));
        send_gso_batches(&bed, BATCHES, SEGMENTS);
        let (got, oversize) = handle.join().unwrap();
        assert_eq!(got, arrive, "{mode:?}");
        if arrive == 0 {
            assert_eq!(oversize, BATCHES as u64, "{mode:?}");
        } else {
            assert_eq!(oversize, 0, "{mode:?}");
        }
    }
}

/// `light listen` reports the oversize frames in its summary and says what to do.
#[test]
fn listen_reports_oversize_frames() {
    require_root().unwrap();
    let bed = Testbed::new(1, 1500).unwrap();
    let child = spawn_listen(&bed, &["--xdp-mode", "skb", "--json", "--seconds", "60"]);
    // The bridge snoops IGMP: send once it forwards the group to the listener.
    bed.wait_for_member(0, IpAddr::V4(GROUP), Duration::from_secs(20))
        .unwrap();
    send_gso_batches(&bed, 3, 4);
    thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child by pid; it prints its summary and exits.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["oversize_frames"], 3, "{summary}");
    assert_eq!(summary["valid"], 0, "{summary}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 Light frames arrived too long for AF_XDP"),
        "{err}"
    );
}

/// Starts `light listen --require-xdp` with `extra` arguments in the first receiver's
/// namespace and waits (up to 20 s) until its XDP program is attached.
fn spawn_listen(bed: &Testbed, extra: &[&str]) -> std::process::Child {
    let h = &bed.receivers[0];
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h.ns,
            env!("CARGO_BIN_EXE_light"),
            "listen",
        ])
        .args([
            "--iface",
            &h.iface,
            "--port",
            &PORT.to_string(),
            "--group",
            &GROUP.to_string(),
            "--require-xdp",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !xdp_attached(bed) && Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "light listen exited early"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(xdp_attached(bed), "light listen attached XDP");
    child
}

/// Sends `batches` UDP GSO sends of `segments` Light packets each from the server namespace.
fn send_gso_batches(bed: &Testbed, batches: usize, segments: usize) {
    use std::os::fd::AsRawFd;
    let server = bed.server.clone();
    thread::scope(|s| {
        s.spawn(move || {
            enter(&server.ns).unwrap();
            let sock = sender_socket(&server, IpAddr::V4(GROUP));
            let seg = packet(4).len();
            let size = libc::c_int::try_from(seg).unwrap();
            // SAFETY: UDP_SEGMENT takes an int, passed by pointer with its size.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_SEGMENT,
                    (&raw const size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
            for b in 0..batches {
                // Equal-length packets, so each GSO segment is one whole Light packet.
                let batch: Vec<u8> = (0..segments)
                    .flat_map(|i| packet((b * segments + i) as u32 * 6 + 4))
                    .collect();
                sock.send_to(&batch, SocketAddr::new(IpAddr::V4(GROUP), PORT))
                    .unwrap();
                thread::sleep(Duration::from_millis(5));
            }
        });
    });
}

#[test]
fn ipv6_multicast_on_both_paths() {
    require_root().unwrap();
    let bed = Testbed::new(1, 1500).unwrap();
    let g: IpAddr = GROUP6.parse().unwrap();
    let (xdp, counters, _) = receive(
        &bed,
        RxPath::Xdp {
            mode: AttachMode::Auto,
            insist: true,
        },
        g,
    );
    assert_all_identical(&xdp[..]);
    assert!(counters.unwrap()[Counter::Redirected as usize] >= u64::from(PACKETS));
    let (sock, _, _) = receive(&bed, RxPath::Socket, g);
    assert_all_identical(&sock);
}

/// While the program is attached, ping, unicast UDP and multicast to another port reach the
/// normal stack, and frames with lying lengths are counted as malformed, not crashed on.
#[test]
fn other_traffic_passes_and_malformed_frames_are_counted() {
    other_traffic_and_malformed_frames(1500, 64);
}

/// The same on a jumbo link, where the multi-buffer program checks UDP lengths against the
/// whole frame (8 000-byte payloads span three chunks).
#[test]
fn jumbo_malformed_frames_are_counted() {
    other_traffic_and_malformed_frames(9000, 8000);
}

/// Other traffic reaches the stack past the program on a link of `mtu`; frames to the Light
/// port whose UDP length exceeds the datagram (of `payload` bytes, cut short) are counted as
/// malformed, never redirected.
fn other_traffic_and_malformed_frames(mtu: u32, payload: usize) {
    require_root().unwrap();
    let bed = Testbed::new(1, mtu).unwrap();
    let host = bed.receivers[0].clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let rx_thread = thread::spawn(move || {
        enter(&host.ns).unwrap();
        let path = RxPath::Xdp {
            mode: AttachMode::Auto,
            insist: true,
        };
        let (mut rx, _) = open_rx(&host.iface, IpAddr::V4(GROUP), path);
        // Normal-stack listeners: unicast on another port, multicast on a non-Light port.
        let uni = UdpSocket::bind((host.addr, 9999)).unwrap();
        let other = light::transport::rx::socket::joined_socket(
            IpAddr::V4(GROUP),
            PORT + 1,
            light::transport::rx::socket::ifindex(&host.iface).unwrap(),
        )
        .unwrap();
        let other: UdpSocket = other.into();
        uni.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        other
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let n = uni.recv(&mut buf).expect("unicast UDP reaches the stack");
        assert_eq!(&buf[..n], b"unicast");
        let n = other
            .recv(&mut buf)
            .expect("multicast on another port reaches the stack");
        assert_eq!(&buf[..n], b"other-port");
        // Keep polling AF_XDP while the malformed frames arrive.
        let deadline = Instant::now() + Duration::from_secs(10);
        while done_rx.try_recv().is_err() && Instant::now() < deadline {
            rx.recv_batch(Duration::from_millis(20), &mut |_| {})
                .unwrap();
        }
        match &rx {
            Receiver::Xdp(x) => x.program().counters().unwrap(),
            Receiver::Socket(_) => unreachable!("insisted on XDP"),
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let r = bed.receivers[0].addr.to_string();
    in_ns(&bed.server.ns, &["ping", "-c", "2", "-W", "2", &r]).expect("ping passes XDP");
    let server = bed.server.clone();
    let target = bed.receivers[0].addr;
    thread::spawn(move || {
        enter(&server.ns).unwrap();
        let s = UdpSocket::bind((server.addr, 0)).unwrap();
        socket2::SockRef::from(&s)
            .set_multicast_if_v4(&server.addr)
            .unwrap();
        s.send_to(b"unicast", (target, 9999)).unwrap();
        thread::sleep(Duration::from_millis(100));
        s.send_to(b"other-port", (GROUP, PORT + 1)).unwrap();
        // Raw frames to the Light port whose UDP length exceeds the datagram. The IP total
        // length is kept truthful: a bridge with br_netfilter drops frames that lie about it.
        let raw = raw_socket(&server.iface);
        for cut in [30usize, 40, 45] {
            let f = build_udp_frame(
                IpAddr::V4(server.addr),
                IpAddr::V4(GROUP),
                1,
                PORT,
                &vec![7u8; payload],
            );
            let mut f = f[..f.len() - cut].to_vec();
            let ip_len = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&ip_len.to_be_bytes());
            f[24..26].fill(0);
            let sum = light::transport::rx::frame::ipv4_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&sum.to_be_bytes());
            send_raw(&raw, &f);
        }
    })
    .join()
    .unwrap();
    thread::sleep(Duration::from_millis(300));
    done_tx.send(()).unwrap();
    let c = rx_thread.join().unwrap();
    assert!(
        c[Counter::Malformed as usize] >= 3,
        "malformed counted: {c:?}"
    );
    assert_eq!(
        c[Counter::Redirected as usize],
        0,
        "nothing valid was sent to the Light port"
    );
}

fn raw_socket(iface: &str) -> (std::os::fd::OwnedFd, libc::sockaddr_ll) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = light::transport::rx::socket::ifindex(iface).unwrap() as i32;
    addr.sll_halen = 6;
    addr.sll_protocol = 0x0800u16.to_be();
    (fd, addr)
}

fn send_raw((fd, addr): &(std::os::fd::OwnedFd, libc::sockaddr_ll), frame: &[u8]) {
    use std::os::fd::AsRawFd;
    // SAFETY: frame and addr are live for the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        n,
        frame.len() as isize,
        "raw send: {}",
        std::io::Error::last_os_error()
    );
}

/// `light listen` in a receiver namespace, stopped by SIGINT, leaves no XDP program behind.
#[test]
fn sigint_detaches_the_program() {
    require_root().unwrap();
    let bed = Testbed::new(1, 1500).unwrap();
    let mut child = spawn_listen(&bed, &[]);
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("light listen did not stop on SIGINT");
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit on SIGINT: {status}");
    assert!(!xdp_attached(&bed), "no XDP program remains after SIGINT");
}

/// Without privilege or with a missing interface the error says why.
#[test]
fn missing_interface_is_a_clear_error() {
    let cfg = RxConfig {
        iface: "no-such-if0".into(),
        group: IpAddr::V4(GROUP),
        port: PORT,
        path: RxPath::Xdp {
            mode: AttachMode::Auto,
            insist: true,
        },
        max_datagram: 9216,
    };
    let err = Receiver::open(&cfg).err().expect("must fail").to_string();
    assert!(
        err.contains("no-such-if0") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn veth_is_known_to_have_no_zero_copy() {
    require_root().unwrap();
    let bed = Testbed::new(1, 1500).unwrap();
    let host = bed.receivers[0].clone();
    let (veth, lo) = thread::spawn(move || {
        enter(&host.ns).unwrap();
        (copy_only_driver(&host.iface), copy_only_driver("lo"))
    })
    .join()
    .unwrap();
    // veth: the doomed zero-copy bind is skipped; lo has no driver info: tried as unknown.
    assert!(veth, "veth must be recognised as copy-only");
    assert!(!lo);
}

/// A one-shard source packet of `message` in `session`.
fn shard(session: u32, seq: u32, message: u32) -> Vec<u8> {
    let mut h = DataHeader::new(PacketKind::Source, session);
    (h.seq, h.message, h.source_shards, h.payload_len) = (seq, message, 1, 100);
    let mut p = vec![seq as u8; HEADER_LEN + 100];
    h.write_to(&mut p).unwrap();
    p
}

#[test]
fn message_filter_drops_other_messages_in_the_kernel() {
    require_root().unwrap();
    message_filter_on(RxPath::Xdp {
        mode: AttachMode::Auto,
        insist: true,
    });
    message_filter_on(RxPath::Socket);
}

/// Messages of the filter test: two wanted in different bitmap words (one the last bit of
/// its word), the bit just after a wanted one, and one past the bitmap's end.
const FILTER_MESSAGES: [u32; 4] = [63, 64, 130, 64 * WANT_WORDS + 1];
const FILTER_WANTED: [u32; 2] = [63, 130];

/// On `path`: with the filter on, exactly the session's other messages are dropped, in the
/// kernel and counted; with it off, everything arrives.
fn message_filter_on(path: RxPath) {
    let bed = Testbed::new(1, 1500).unwrap();
    let host = bed.receivers[0].clone();
    // Session 42's shards of the four messages, one shard of session 43, and 42's End marker.
    let mut packets: Vec<Vec<u8>> = (0..400)
        .map(|seq| shard(42, seq, FILTER_MESSAGES[seq as usize % 4]))
        .collect();
    packets.push(shard(43, 400, 0));
    let mut end = vec![0u8; HEADER_LEN];
    DataHeader::new(PacketKind::End, 42)
        .write_to(&mut end)
        .unwrap();
    packets.push(end);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        enter(&host.ns).unwrap();
        let (mut rx, _) = open_rx(&host.iface, IpAddr::V4(GROUP), path);
        assert!(
            !rx.filter_messages(42, &[1, 64 * WANT_WORDS]).unwrap(),
            "a wanted message past the bitmap leaves the filter off"
        );
        let mut rounds = Vec::new();
        for filter in [true, false] {
            if filter {
                assert!(rx.filter_messages(42, &FILTER_WANTED).unwrap());
            } else {
                rx.unfilter().unwrap();
            }
            let before = rx.filtered().unwrap();
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            let want = if filter { 202 } else { 402 };
            let deadline = Instant::now() + Duration::from_secs(20);
            while got.len() < want && Instant::now() < deadline {
                rx.recv_batch(Duration::from_millis(50), &mut |p| got.push(p.to_vec()))
                    .unwrap();
            }
            // Anything extra would still be arriving: give it a moment to show.
            rx.recv_batch(Duration::from_millis(200), &mut |p| got.push(p.to_vec()))
                .unwrap();
            let after = rx.filtered().unwrap();
            rounds.push((got, after - before));
            if filter {
                go_rx.recv_timeout(Duration::from_secs(20)).unwrap();
            }
        }
        rounds
    });
    for round in 0..2 {
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("receiver ready");
        thread::sleep(Duration::from_millis(200));
        send_packets(&bed, IpAddr::V4(GROUP), packets.clone());
        if round == 0 {
            // Let the first round finish collecting before the filter goes off.
            thread::sleep(Duration::from_millis(500));
            go_tx.send(()).unwrap();
        }
    }
    let rounds = handle.join().unwrap();
    let (filtered_got, filtered_dropped) = &rounds[0];
    let kept = |p: &Vec<u8>| {
        let (h, _) = DataHeader::parse(p).unwrap();
        h.session != 42
            || h.packet_kind() == Some(PacketKind::End)
            || FILTER_WANTED.contains(&h.message)
    };
    assert_eq!(
        filtered_got.len(),
        202,
        "the two wanted messages, session 43, the End marker"
    );
    assert!(filtered_got.iter().all(kept));
    assert_eq!(
        *filtered_dropped, 200,
        "the other two messages dropped in the kernel"
    );
    let (all_got, none_dropped) = &rounds[1];
    assert_eq!(
        all_got.len(),
        402,
        "{path:?}: filter off, everything arrives"
    );
    assert_eq!(*none_dropped, 0);
}

/// A receiver joins more groups than one socket may (Linux: 20 IPv4 memberships): both
/// paths spread them over sockets and take every group's packets, and the socket path stops
/// taking a group the moment it leaves it.
#[test]
fn more_groups_than_one_socket_holds() {
    require_root().unwrap();
    many_groups_on(RxPath::Socket, &[40, 4], None);
    // A host that allows fewer memberships per socket than Light assumes.
    many_groups_on(RxPath::Socket, &[40], Some(5));
    // Only joining: after a leave the bridge keeps forwarding the group for a while, and
    // XDP takes whatever reaches the port.
    many_groups_on(
        RxPath::Xdp {
            mode: AttachMode::Auto,
            insist: true,
        },
        &[40],
        None,
    );
}

/// Packets sent to each of the extra groups per round.
const PER_GROUP: u32 = 10;

/// Joins the first `keep` of 40 extra groups per round on `path` (with the receiver's
/// namespace allowing `per_socket` IPv4 memberships per socket, if given); checks that
/// exactly those groups' packets arrive when all 40 are sent to.
fn many_groups_on(path: RxPath, rounds: &[usize], per_socket: Option<u32>) {
    let bed = Testbed::new(1, 1500).unwrap();
    let groups: Vec<IpAddr> = (2..42)
        .map(|i| IpAddr::V4(Ipv4Addr::new(239, 77, 1, i)))
        .collect();
    let host = bed.receivers[0].clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (joining, keeps) = (groups.clone(), rounds.to_vec());
    let handle = thread::spawn(move || {
        enter(&host.ns).unwrap();
        if let Some(n) = per_socket {
            // Per network namespace, so only the test's receiver host sees it.
            std::fs::write("/proc/sys/net/ipv4/igmp_max_memberships", n.to_string()).unwrap();
        }
        let (mut rx, _) = open_rx(&host.iface, IpAddr::V4(GROUP), path);
        let mut got_per_round = Vec::new();
        for keep in keeps {
            rx.set_groups(&joining[..keep]).unwrap();
            ready_tx.send(()).unwrap();
            let want = keep * PER_GROUP as usize;
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while got.len() < want && Instant::now() < deadline {
                rx.recv_batch(Duration::from_millis(50), &mut |p| got.push(p.to_vec()))
                    .unwrap();
            }
            // Anything extra would still be arriving: give it a moment to show.
            rx.recv_batch(Duration::from_millis(300), &mut |p| got.push(p.to_vec()))
                .unwrap();
            got_per_round.push(got);
            go_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        got_per_round
    });
    for &keep in rounds {
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("receiver ready");
        for &g in &groups[..keep] {
            bed.wait_for_member(0, g, Duration::from_secs(20)).unwrap();
        }
        for (i, &g) in groups.iter().enumerate() {
            let first = i as u32 * PER_GROUP;
            send_packets(&bed, g, (first..first + PER_GROUP).map(packet).collect());
        }
        go_tx.send(()).unwrap();
    }
    let got = handle.join().unwrap();
    for (got, &keep) in got.iter().zip(rounds) {
        let mut seqs: Vec<u32> = got
            .iter()
            .map(|p| DataHeader::parse(p).expect("valid Light packet").0.seq)
            .collect();
        seqs.sort_unstable();
        let want: Vec<u32> = (0..keep as u32 * PER_GROUP).collect();
        assert_eq!(
            seqs, want,
            "{path:?}: the packets of the {keep} groups joined, once"
        );
    }
}
