//! Sans-IO parsing of raw Ethernet frames (as found in the AF_XDP UMEM) down to the UDP payload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a raw frame yielded no UDP payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ends before a header it claims.
    #[error("frame truncated")]
    Truncated,
    /// Not IPv4/IPv6 UDP (the XDP program should not have redirected it).
    #[error("not an IP/UDP frame")]
    NotUdp,
    /// Header fields disagree with each other or with the frame length.
    #[error("inconsistent IP/UDP lengths")]
    BadLength,
}

/// The parts of a UDP datagram the receiver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (the multicast group).
    pub dst: IpAddr,
    /// UDP destination port.
    pub dst_port: u16,
    /// UDP payload.
    pub payload: &'a [u8],
}

fn be16(b: &[u8], off: usize) -> Result<u16, FrameError> {
    b.get(off..off + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or(FrameError::Truncated)
}

/// Parses Ethernet (optionally one 802.1Q/802.1ad tag), IPv4 or IPv6, and UDP.
pub fn parse_udp(frame: &[u8]) -> Result<Datagram<'_>, FrameError> {
    let mut ethertype = be16(frame, 12)?;
    let mut l3 = 14;
    if ethertype == 0x8100 || ethertype == 0x88A8 {
        ethertype = be16(frame, 16)?;
        l3 += 4;
    }
    let (src, dst, l4, ip_end) = match ethertype {
        0x0800 => {
            let ip = frame.get(l3..l3 + 20).ok_or(FrameError::Truncated)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 {
                return Err(FrameError::NotUdp);
            }
            let total = usize::from(be16(frame, l3 + 2)?);
            if total < ihl + 8 || l3 + total > frame.len() {
                return Err(FrameError::BadLength);
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), l3 + ihl, l3 + total)
        }
        0x86DD => {
            let ip = frame.get(l3..l3 + 40).ok_or(FrameError::Truncated)?;
            if ip[6] != 17 {
                return Err(FrameError::NotUdp);
            }
            let plen = usize::from(be16(frame, l3 + 4)?);
            if plen < 8 || l3 + 40 + plen > frame.len() {
                return Err(FrameError::BadLength);
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                l3 + 40,
                l3 + 40 + plen,
            )
        }
        _ => return Err(FrameError::NotUdp),
    };
    let dst_port = be16(frame, l4 + 2)?;
    let ulen = usize::from(be16(frame, l4 + 4)?);
    if ulen < 8 || l4 + ulen > ip_end {
        return Err(FrameError::BadLength);
    }
    Ok(Datagram {
        src,
        dst,
        dst_port,
        payload: &frame[l4 + 8..l4 + ulen],
    })
}

/// Reassembles frames that arrive in several pieces (AF_XDP multi-buffer: one descriptor
/// per chunk, each but the last flagged "continues"). Sans-IO: takes the pieces in ring
/// order, returns whole frames.
#[derive(Debug)]
pub struct Gather {
    buf: Vec<u8>,
    max: usize,
    /// The last piece said the frame goes on.
    continuing: bool,
    /// The frame being gathered had a piece that was unreadable or made it too long.
    bad: bool,
}

/// What one piece completes.
#[derive(Debug, PartialEq, Eq)]
pub enum Gathered<'a> {
    /// The frame is not complete yet.
    Pending,
    /// A whole frame (`None`: one that was unreadable or longer than allowed, to be counted
    /// and dropped). Frames of several pieces are only returned when their IP/UDP lengths
    /// account for every byte: a lost last piece would otherwise glue two frames together.
    Frame(Option<&'a [u8]>),
}

impl Gather {
    /// A gatherer of frames up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::with_capacity(max),
            max,
            continuing: false,
            bad: false,
        }
    }

    /// Takes the next piece (`None`: its descriptor pointed outside the buffer) and whether
    /// the frame continues in the next one. A frame in one piece is passed through uncopied.
    pub fn push<'a>(&'a mut self, piece: Option<&'a [u8]>, more: bool) -> Gathered<'a> {
        let first = !self.continuing;
        self.continuing = more;
        if first && !more {
            return Gathered::Frame(piece);
        }
        if first {
            self.buf.clear();
            self.bad = false;
        }
        match piece {
            Some(p) if self.buf.len() + p.len() <= self.max => self.buf.extend_from_slice(p),
            _ => self.bad = true,
        }
        if more {
            Gathered::Pending
        } else if self.bad || !udp_fills(&self.buf) {
            Gathered::Frame(None)
        } else {
            Gathered::Frame(Some(&self.buf))
        }
    }
}

/// Whether `frame` is a UDP datagram whose payload ends exactly where the frame does.
fn udp_fills(frame: &[u8]) -> bool {
    parse_udp(frame).is_ok_and(|dg| {
        dg.payload.as_ptr() as usize + dg.payload.len() == frame.as_ptr() as usize + frame.len()
    })
}

/// Builds an Ethernet/IP/UDP frame around `payload` (tests and the loopback benchmark).
pub fn build_udp_frame(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0x01, 0x00, 0x5e, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + udp_len) as u16;
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0x40, 0, 1, 17, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            let sum = ipv4_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&sum.to_be_bytes());
        }
        (s, d) => {
            let to6 = |a: IpAddr| match a {
                IpAddr::V4(v) => v.to_ipv6_mapped(),
                IpAddr::V6(v) => v,
            };
            f.extend_from_slice(&0x86DDu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(udp_len as u16).to_be_bytes());
            f.extend_from_slice(&[17, 1]);
            f.extend_from_slice(&to6(s).octets());
            f.extend_from_slice(&to6(d).octets());
        }
    }
    f.extend_from_slice(&udp);
    f
}

/// The IPv4 header checksum of `header` (with its checksum field zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4() -> (IpAddr, IpAddr) {
        (
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(239, 1, 2, 3)),
        )
    }

    #[test]
    fn ipv4_roundtrip() {
        let (s, d) = v4();
        let f = build_udp_frame(s, d, 1000, 7000, b"hello");
        let dg = parse_udp(&f).unwrap();
        assert_eq!(
            (dg.src, dg.dst, dg.dst_port, dg.payload),
            (s, d, 7000, &b"hello"[..])
        );
    }

    #[test]
    fn ipv4_checksum_verifies() {
        let (s, d) = v4();
        let f = build_udp_frame(s, d, 1000, 7000, b"hello");
        // A header including its checksum sums to 0xffff, so the checksum of it is zero.
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
    }

    #[test]
    fn ipv6_roundtrip() {
        let s: IpAddr = "fd00::1".parse().unwrap();
        let d: IpAddr = "ff02::1:2".parse().unwrap();
        let f = build_udp_frame(s, d, 1, 2, b"x");
        let dg = parse_udp(&f).unwrap();
        assert_eq!((dg.dst, dg.payload), (d, &b"x"[..]));
    }

    #[test]
    fn vlan_tag_is_skipped() {
        let (s, d) = v4();
        let mut f = build_udp_frame(s, d, 1, 9, b"tagged");
        f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        assert_eq!(parse_udp(&f).unwrap().payload, b"tagged");
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        let (s, d) = v4();
        let mut f = build_udp_frame(s, d, 1, 9, b"ab");
        f.resize(60, 0);
        assert_eq!(parse_udp(&f).unwrap().payload, b"ab");
    }

    /// A frame cut into pieces of `sizes` (the last takes the rest), flagged as a ring
    /// would flag them.
    fn pieces<'a>(f: &'a [u8], sizes: &[usize]) -> Vec<(&'a [u8], bool)> {
        let mut out = Vec::new();
        let mut rest = f;
        for &n in sizes {
            let (a, b) = rest.split_at(n.min(rest.len()));
            out.push((a, true));
            rest = b;
        }
        out.push((rest, false));
        out
    }

    fn frame(n: usize, byte: u8) -> Vec<u8> {
        let (s, d) = v4();
        build_udp_frame(s, d, 1, 9, &vec![byte; n])
    }

    #[test]
    fn gather_passes_single_pieces_through_and_joins_split_ones() {
        let mut g = Gather::new(12_000);
        let small = frame(100, 1);
        assert_eq!(
            g.push(Some(&small), false),
            Gathered::Frame(Some(&small[..]))
        );
        let big = frame(9000, 2);
        let ps = pieces(&big, &[3840, 3840]);
        assert_eq!(g.push(Some(ps[0].0), ps[0].1), Gathered::Pending);
        assert_eq!(g.push(Some(ps[1].0), ps[1].1), Gathered::Pending);
        assert_eq!(
            g.push(Some(ps[2].0), ps[2].1),
            Gathered::Frame(Some(&big[..]))
        );
        // The next frame starts afresh.
        assert_eq!(
            g.push(Some(&small), false),
            Gathered::Frame(Some(&small[..]))
        );
    }

    #[test]
    fn gather_takes_an_empty_first_piece() {
        let mut g = Gather::new(12_000);
        let big = frame(5000, 3);
        assert_eq!(g.push(Some(&[]), true), Gathered::Pending);
        assert_eq!(g.push(Some(&big), false), Gathered::Frame(Some(&big[..])));
    }

    #[test]
    fn gather_drops_bad_and_oversized_frames_whole() {
        let mut g = Gather::new(6000);
        let big = frame(9000, 4);
        let ps = pieces(&big, &[3840, 3840]);
        assert_eq!(g.push(Some(ps[0].0), true), Gathered::Pending);
        assert_eq!(g.push(Some(ps[1].0), true), Gathered::Pending);
        assert_eq!(g.push(Some(ps[2].0), false), Gathered::Frame(None));
        let ok = frame(5000, 5);
        let ps = pieces(&ok, &[3840]);
        assert_eq!(g.push(None, true), Gathered::Pending);
        assert_eq!(g.push(Some(ps[1].0), false), Gathered::Frame(None));
        assert_eq!(g.push(Some(ps[0].0), true), Gathered::Pending);
        assert_eq!(g.push(Some(ps[1].0), false), Gathered::Frame(Some(&ok[..])));
    }

    #[test]
    fn gather_refuses_two_frames_glued_by_a_lost_last_piece() {
        let mut g = Gather::new(20_000);
        let (a, b) = (frame(5000, 6), frame(5000, 7));
        let (pa, pb) = (pieces(&a, &[3840]), pieces(&b, &[3840]));
        // `a`'s last piece never came: `b`'s pieces follow its first.
        assert_eq!(g.push(Some(pa[0].0), true), Gathered::Pending);
        assert_eq!(g.push(Some(pb[0].0), true), Gathered::Pending);
        assert_eq!(g.push(Some(pb[1].0), false), Gathered::Frame(None));
    }

    proptest! {
        #[test]
        fn gather_rebuilds_any_split(n in 0usize..9000, cuts in proptest::collection::vec(0usize..4000, 0..4)) {
            let f = frame(n, 9);
            let mut g = Gather::new(16_000);
            let ps = pieces(&f, &cuts);
            let last = ps.len() - 1;
            for (i, (p, more)) in ps.into_iter().enumerate() {
                let got = g.push(Some(p), more);
                if i < last {
                    prop_assert_eq!(got, Gathered::Pending);
                } else {
                    prop_assert_eq!(got, Gathered::Frame(Some(&f[..])));
                }
            }
        }

        #[test]
        fn truncated_frames_are_errors(cut in 0usize..60, payload in proptest::collection::vec(any::<u8>(), 0..30)) {
            let (s, d) = v4();
            let f = build_udp_frame(s, d, 1, 9, &payload);
            prop_assume!(cut < f.len());
            prop_assert!(parse_udp(&f[..cut]).is_err());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse_udp(&bytes);
        }
    }
}
