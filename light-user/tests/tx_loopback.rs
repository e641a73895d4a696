//! The send path over real loopback sockets: every datagram arrives with identical bytes,
//! with and without UDP GSO, by unicast (IPv4, IPv6) and by IPv4 multicast on `lo`.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use light::transport::tx::{GsoStatus, MulticastIf, Sender, SocketConfig, TxConfig, spawn_sender};
use socket2::{Domain, Protocol, Socket, Type};

/// A receive buffer large enough that a test burst is never dropped by the receiver.
const RCVBUF: usize = 64 << 20;

fn receiver(bind: SocketAddr) -> UdpSocket {
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    force_rcvbuf(&s);
    s.bind(&bind.into()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.into()
}

/// SO_RCVBUFFORCE (root) lifts the rmem_max cap; fall back to the capped request.
fn force_rcvbuf(s: &Socket) {
    let v = RCVBUF as libc::c_int;
    // SAFETY: pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        s.set_recv_buffer_size(RCVBUF).unwrap();
    }
}

/// Collects `n` datagrams (or stops after a quiet timeout).
fn collect(sock: UdpSocket, n: usize) -> thread::JoinHandle<Vec<Vec<u8>>> {
    thread::spawn(move || {
        let mut got = Vec::with_capacity(n);
        let mut buf = vec![0u8; 65_536];
        while got.len() < n {
            match sock.recv(&mut buf) {
                Ok(len) => got.push(buf[..len].to_vec()),
                Err(_) => break,
            }
        }
        got
    })
}

/// A deterministic mix: runs of equal sizes (GSO candidates), shorter run tails, random
/// sizes and a few empty datagrams; each tagged with its index.
fn packets(n: usize, max: usize) -> Vec<Vec<u8>> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let run = 1 + (next() % 80) as usize;
        let size = match next() % 10 {
            0 => 0,
            1..=3 => max,
            _ => 4 + (next() as usize) % (max - 3),
        };
        for k in 0..run.min(n - out.len()) {
            let len = if k + 1 == run && size > 8 {
                size - 1 - (next() as usize) % (size / 2)
            } else {
                size
            };
            let idx = out.len() as u32;
            let mut p: Vec<u8> = (0..len)
                .map(|i| (i as u32).wrapping_mul(31).wrapping_add(idx) as u8)
                .collect();
            if len >= 4 {
                p[..4].copy_from_slice(&idx.to_le_bytes());
            }
            out.push(p);
        }
    }
    out
}

fn send_through_pipeline(
    dest: SocketAddr,
    gso: bool,
    pkts: &[Vec<u8>],
) -> light::transport::tx::SendStats {
    let mut cfg = TxConfig::new(dest);
    cfg.socket.gso = gso;
    cfg.batch_packets = 48;
    cfg.pool_batches = 4;
    let (handle, thread) = spawn_sender(cfg).unwrap();
    let mut seen_buffers = HashSet::new();
    let mut it = pkts.iter().enumerate().peekable();
    while it.peek().is_some() {
        let mut batch = handle.batch().unwrap();
        assert!(batch.is_empty(), "recycled batches come back empty");
        // Vary batch fill so partially filled batches are sent too.
        let fill = 1 + it.peek().map_or(0, |(i, _)| i % batch.capacity());
        for (_, p) in it.by_ref().take(fill) {
            let buf = batch.next_packet().unwrap();
            buf.extend_from_slice(p);
            seen_buffers.insert(buf.as_ptr() as usize);
        }
        handle.submit(batch).unwrap();
    }
    drop(handle);
    let stats = thread.join().unwrap().unwrap();
    // Buffers are recycled: never more distinct (non-empty) allocations than the pool holds.
    assert!(
        seen_buffers.len() <= 4 * 48 + 1,
        "{} buffers",
        seen_buffers.len()
    );
    stats
}

#[test]
fn unicast_batches_arrive_identical_with_and_without_gso() {
    let pkts = packets(3000, 1472);
    let total: u64 = pkts.iter().map(|p| p.len() as u64).sum();
    let mut received = Vec::new();
    for gso in [true, false] {
        let sock = receiver("127.0.0.1:0".parse().unwrap());
        let dest = sock.local_addr().unwrap();
        let rx = collect(sock, pkts.len());
        let stats = send_through_pipeline(dest, gso, &pkts);
        let got = rx.join().unwrap();
        assert_eq!(got.len(), pkts.len(), "gso={gso}: lost datagrams");
        assert!(got == pkts, "gso={gso}: bytes or order differ");
        assert_eq!(stats.packets, pkts.len() as u64);
        assert_eq!(stats.bytes, total);
        if gso {
            // Loopback offers checksum offload and software segmentation.
            assert_eq!(stats.gso, GsoStatus::Active);
            assert!(stats.gso_messages > 0 && stats.syscalls < stats.packets);
        } else {
            assert_eq!(stats.gso, GsoStatus::Disabled);
            assert_eq!(stats.gso_messages, 0);
        }
        eprintln!("gso={gso}: {stats:?}");
        received.push(got);
    }
    assert!(received[0] == received[1]);
}

#[test]
fn ipv6_unicast_through_sender() {
    let sock = receiver("[::1]:0".parse().unwrap());
    let dest = sock.local_addr().unwrap();
    let pkts = packets(500, 1400);
    let rx = collect(sock, pkts.len());
    let mut sender = Sender::new(&SocketConfig::new(dest)).unwrap();
    for chunk in pkts.chunks(100) {
        sender.send(chunk).unwrap();
    }
    assert!(rx.join().unwrap() == pkts);
    assert_eq!(sender.gso(), GsoStatus::Active);
    assert_eq!(sender.counters().packets, 500);
}

#[test]
fn ipv4_multicast_on_loopback() {
    let group = Ipv4Addr::new(239, 255, 77, 19);
    let sock = receiver(SocketAddr::new(group.into(), 0));
    sock.join_multicast_v4(&group, &Ipv4Addr::LOCALHOST)
        .unwrap();
    let dest = sock.local_addr().unwrap();
    let pkts = packets(1000, 1472);
    let rx = collect(sock, pkts.len());
    let mut cfg = SocketConfig::new(dest);
    cfg.interface = Some(MulticastIf::V4(Ipv4Addr::LOCALHOST));
    cfg.multicast_loop = true;
    let mut sender = Sender::new(&cfg).unwrap();
    for chunk in pkts.chunks(64) {
        sender.send(chunk).unwrap();
    }
    let got = rx.join().unwrap();
    assert_eq!(got.len(), pkts.len());
    assert!(got == pkts);
    assert_eq!(sender.gso(), GsoStatus::Active);
}

#[test]
fn ipv4_group_needs_no_v6_interface_and_v6_rejects_v4_interface() {
    let mut cfg = SocketConfig::new("[ff12::4242]:9000".parse().unwrap());
    cfg.interface = Some(MulticastIf::V4(Ipv4Addr::LOCALHOST));
    assert!(matches!(
        Sender::new(&cfg),
        Err(light::transport::tx::TxError::Config(_))
    ));
    // By index works for IPv4 too (lo is index 1 in every namespace).
    let mut cfg = SocketConfig::new("239.255.77.20:9000".parse().unwrap());
    cfg.interface = Some(MulticastIf::Index(1));
    Sender::new(&cfg).unwrap();
}

#[test]
fn sending_after_the_thread_stopped_reports_stopped() {
    // A datagram over the UDP limit makes the sender thread fail; the producer learns it.
    let sock = receiver("127.0.0.1:0".parse().unwrap());
    let mut cfg = TxConfig::new(sock.local_addr().unwrap());
    cfg.pool_batches = 1;
    let (handle, thread) = spawn_sender(cfg).unwrap();
    let mut batch = handle.batch().unwrap();
    batch.push(&vec![0u8; 70_000]).unwrap();
    handle.submit(batch).unwrap();
    let err = thread.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("sendmmsg failed"), "{err}");
    assert!(handle.batch().is_err());
}
