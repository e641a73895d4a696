//! GSO refusal and fallback, in a private network namespace whose loopback has a
//! 1500-byte MTU: a GSO segment that does not fit the MTU makes the kernel refuse the send,
//! the sender falls back to plain sendmmsg, and every datagram still arrives intact.
//!
//! Needs CAP_SYS_ADMIN for `unshare(CLONE_NEWNET)` (the sessions and CI run as root). The
//! namespace belongs to the test's own thread only; the host's interfaces are untouched.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use light::transport::tx::{GsoStatus, Sender, SocketConfig};

fn ifreq_lo() -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    ifr
}

/// Moves this thread into a fresh network namespace and brings its `lo` up at `mtu`.
fn private_loopback(mtu: i32) {
    // SAFETY: plain syscalls on owned values; unshare affects only the calling thread.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNET),
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0);
        let mut ifr = ifreq_lo();
        ifr.ifr_ifru.ifru_mtu = mtu;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFMTU as _, &ifr),
            0,
            "SIOCSIFMTU"
        );
        let mut ifr = ifreq_lo();
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr),
            0,
            "SIOCGIFFLAGS"
        );
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr),
            0,
            "SIOCSIFFLAGS"
        );
        libc::close(fd);
    }
}

fn run(size: usize) -> (GsoStatus, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let dest: SocketAddr = rx.local_addr().unwrap();
    let pkts: Vec<Vec<u8>> = (0..40u32)
        .map(|i| {
            (0..size)
                .map(|j| (j as u32 ^ i.wrapping_mul(2_654_435_761)) as u8)
                .collect()
        })
        .collect();
    let mut sender = Sender::new(&SocketConfig::new(dest)).unwrap();
    assert_eq!(sender.gso(), GsoStatus::Untried);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    // Send a few at a time so the receive buffer never overflows.
    for chunk in pkts.chunks(10) {
        sender.send(chunk).unwrap();
        for _ in chunk {
            let n = rx.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
    }
    (sender.gso(), pkts, got)
}

#[test]
fn gso_beyond_the_mtu_falls_back_and_delivers_the_same_bytes() {
    std::thread::spawn(|| {
        private_loopback(1500);
        // 1472 + 28 header bytes fit 1500: GSO works.
        let (gso, sent, got) = run(1472);
        assert_eq!(gso, GsoStatus::Active);
        assert!(got == sent);
        // 1480 + 28 > 1500: the kernel refuses the GSO message; plain sends
        // are fragmented by IP and reassembled, so the bytes still match.
        let (gso, sent, got) = run(1480);
        // Kernel 6.x says EMSGSIZE, older ones EINVAL.
        assert!(
            matches!(gso, GsoStatus::FellBack(libc::EMSGSIZE | libc::EINVAL)),
            "{gso:?}"
        );
        assert!(got == sent);
    })
    .join()
    .unwrap();
}
