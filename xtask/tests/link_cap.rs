//! The bench's link cap (`--link-mbit`) really holds the server to that rate: UDP blasted
//! from the server as fast as a blocking socket takes it arrives at a receiver no faster
//! than the token bucket lets it, and lifting the cap removes it. Needs root (network
//! namespaces); CI runs as root.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use xtask::netns::{Testbed, enter, require_root};

const MBIT: u32 = 20;
const DATAGRAM: usize = 1400;
const DATAGRAMS: usize = 2000;
const PORT: u16 = 9411;

#[test]
fn capped_server_link_paces_what_arrives() {
    require_root().unwrap();
    let bed = Testbed::new(1, 1500).unwrap();
    bed.cap_server_link(MBIT).unwrap();

    let rx_ns = bed.receivers[0].ns.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        enter(&rx_ns).unwrap();
        let sock = UdpSocket::bind(("0.0.0.0", PORT)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let (mut first, mut last, mut got) = (None, None, 0usize);
        // Bounded: each wait ends after 2 s of silence, and at most every datagram arrives.
        while got < DATAGRAMS {
            match sock.recv(&mut buf) {
                Ok(_) => {
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = Some(now);
                    got += 1;
                }
                Err(_) => break,
            }
        }
        (got, first.zip(last).map(|(f, l)| l - f))
    });
    ready_rx.recv().unwrap();

    let to = SocketAddr::from((bed.receivers[0].addr, PORT));
    let server_ns = bed.server.ns.clone();
    let sender = std::thread::spawn(move || {
        enter(&server_ns).unwrap();
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let payload = [7u8; DATAGRAM];
        for _ in 0..DATAGRAMS {
            // A full queue may refuse a datagram (ENOBUFS); the count below allows for that.
            let _ = sock.send_to(&payload, to);
        }
    });
    sender.join().unwrap();
    let (got, span) = receiver.join().unwrap();
    let span = span.expect("nothing arrived through the capped link");

    // Wire bytes per datagram: payload + UDP/IP/Ethernet headers. The first 256 KiB may pass
    // at once (the bucket), the rest at the rate.
    let wire = (got * (DATAGRAM + 8 + 20 + 14)) as f64;
    let floor_s = (wire - 256.0 * 1024.0).max(0.0) * 8.0 / (f64::from(MBIT) * 1e6);
    assert!(
        got > DATAGRAMS / 2,
        "only {got} of {DATAGRAMS} datagrams arrived"
    );
    assert!(
        span.as_secs_f64() >= 0.9 * floor_s,
        "{got} datagrams arrived in {span:?}, faster than {MBIT} Mbit/s allows ({floor_s:.2} s)"
    );

    // The bench lifts the cap for the untimed cache fill: nothing of it may stay behind.
    bed.uncap_server_link().unwrap();
    let out = std::process::Command::new("tc")
        .args([
            "-n",
            &bed.server.ns,
            "qdisc",
            "show",
            "dev",
            &bed.server.iface,
        ])
        .output()
        .unwrap();
    let qdiscs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !qdiscs.contains("tbf"), "{qdiscs}");
}
