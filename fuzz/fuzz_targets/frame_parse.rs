//! `parse_udp` on arbitrary Ethernet frames: never panics, and an accepted datagram's
//! payload is a subslice of the frame that lies inside the frame's IP packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use light::transport::rx::frame::parse_udp;

fuzz_target!(|data: &[u8]| {
    let Ok(dg) = parse_udp(data) else {
        return;
    };
    let base = data.as_ptr() as usize;
    let start = dg.payload.as_ptr() as usize;
    assert!(start >= base, "payload starts before the frame");
    let off = start - base;
    let end = off + dg.payload.len();
    assert!(end <= data.len(), "payload ends past the frame");
    // Ethernet (14) + IPv4 (20) + UDP (8) is the smallest possible prefix.
    assert!(
        off >= 14 + 20 + 8,
        "payload offset {off} is inside the headers"
    );
    assert_eq!(dg.src.is_ipv4(), dg.dst.is_ipv4(), "mixed address families");
    // The UDP length field covers exactly the header and the payload.
    let udp = off - 8;
    let ulen = usize::from(u16::from_be_bytes([data[udp + 4], data[udp + 5]]));
    assert_eq!(ulen, dg.payload.len() + 8);
    assert_eq!(
        dg.dst_port,
        u16::from_be_bytes([data[udp + 2], data[udp + 3]])
    );
});
