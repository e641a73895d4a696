//! Light's XDP program.
//!
//! Parses Ethernet (with at most one 802.1Q/802.1ad tag), IPv4 or IPv6, and UDP. A frame
//! whose destination is multicast and whose UDP destination port is in `LIGHT_PORTS` is
//! redirected to the AF_XDP socket registered for its rx queue in `LIGHT_XSKS`; every
//! other frame, and a matched frame with no socket, goes to the normal stack (`XDP_PASS`).
//! While the message filter is on (`LIGHT_FILTER`), source and parity shards of the filtered
//! session whose message is not in `LIGHT_WANT` are dropped (`XDP_DROP`): coded caching
//! multicasts every message to every receiver, and most are for others. The socket receive
//! path attaches `light_sock`, the same filter as a socket filter on its UDP socket.
//! `light_xdp_frags` is `light_xdp` for links whose frames span several buffers (jumbo MTUs).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_get_buff_len,
    macros::{map, socket_filter, xdp},
    maps::{Array, PerCpuArray, XskMap},
    programs::{SkBuffContext, XdpContext},
};
use light_common::{
    MAGIC, PacketKind,
    maps::{
        COUNTER_COUNT, Counter, FILTER_ON, FILTER_SESSION, MAX_QUEUES, PORT_WORDS, WANT_WORDS,
        XSK_RX_FRAME_MAX, XSK_SG_FRAME_MAX, bit_of,
    },
};

#[map(name = "LIGHT_XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

#[map(name = "LIGHT_PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

#[map(name = "LIGHT_FILTER")]
static FILTER: Array<u32> = Array::with_max_entries(2, 0);

#[map(name = "LIGHT_WANT")]
static WANT: Array<u64> = Array::with_max_entries(WANT_WORDS, 0);

#[map(name = "LIGHT_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;

/// Whether bit `index` of a bitmap is set; a bit past its end is clear.
#[inline(always)]
fn bit_set(map: &Array<u64>, index: u32) -> bool {
    let (word, mask) = bit_of(index);
    map.get(word).is_some_and(|w| w & mask != 0)
}

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Returns a pointer to `len` bytes at `off` if they lie inside the frame.
#[inline(always)]
fn ptr_at(ctx: &XdpContext, off: usize, len: usize) -> Option<*const u8> {
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const u8)
}

/// Reads byte `i` of a region that `ptr_at` already bounds-checked.
#[inline(always)]
fn at(p: *const u8, i: usize) -> u8 {
    // SAFETY: callers pass an index inside the region checked by ptr_at, or inside a
    // local array of the length they read.
    unsafe { *p.add(i) }
}

#[inline(always)]
fn be16_at(p: *const u8, i: usize) -> u16 {
    u16::from_be_bytes([at(p, i), at(p, i + 1)])
}

#[inline(always)]
fn le32_at(p: *const u8, i: usize) -> u32 {
    u32::from_le_bytes([at(p, i), at(p, i + 1), at(p, i + 2), at(p, i + 3)])
}

/// What the parser concluded about a frame.
enum Verdict {
    /// Not ours: hand to the stack.
    Pass,
    /// Claims headers it does not have.
    Malformed,
    /// Multicast UDP to a Light port; its UDP header starts at this offset.
    Light(usize),
}

// Each header is bounds-checked once as a whole and then read at constant offsets from
// that one pointer: the verifier tracks the checked range per pointer, and per-field
// checks at variable offsets get merged by LLVM into forms the verifier rejects.
#[inline(always)]
fn classify(ctx: &XdpContext, frame_len: usize) -> Verdict {
    let Some(eth) = ptr_at(ctx, 0, ETH_HLEN) else {
        return Verdict::Malformed;
    };
    let mut ethertype = be16_at(eth, 12);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = ptr_at(ctx, ETH_HLEN, VLAN_HLEN) else {
            return Verdict::Malformed;
        };
        ethertype = be16_at(tag, 2);
        l3 += VLAN_HLEN;
    }
    let l4 = match ethertype {
        ETH_P_IP => {
            let Some(ip) = ptr_at(ctx, l3, IPV4_MIN_HLEN) else {
                return Verdict::Malformed;
            };
            let vihl = at(ip, 0);
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
                return Verdict::Malformed;
            }
            // Only unfragmented datagrams carry a UDP header we can trust; Light never fragments.
            if at(ip, 9) != IPPROTO_UDP || at(ip, 16) & 0xf0 != 0xe0 || be16_at(ip, 6) & 0x3fff != 0
            {
                return Verdict::Pass;
            }
            l3 + ihl
        }
        ETH_P_IPV6 => {
            let Some(ip) = ptr_at(ctx, l3, IPV6_HLEN) else {
                return Verdict::Malformed;
            };
            // Light sends no extension headers; anything else is not ours.
            if at(ip, 6) != IPPROTO_UDP || at(ip, 24) != 0xff {
                return Verdict::Pass;
            }
            l3 + IPV6_HLEN
        }
        _ => return Verdict::Pass,
    };
    let Some(udp) = ptr_at(ctx, l4, UDP_HLEN) else {
        return Verdict::Malformed;
    };
    let dport = be16_at(udp, 2);
    if !bit_set(&PORTS, u32::from(dport)) {
        return Verdict::Pass;
    }
    let ulen = be16_at(udp, 4) as usize;
    if ulen < UDP_HLEN || l4 + ulen > frame_len {
        return Verdict::Malformed;
    }
    Verdict::Light(l4)
}

/// Light header bytes the filter reads: magic, version, kind, flags, session, seq, message.
const FILTER_HLEN: usize = 20;

/// True if the filter is on and this is a shard of the filtered session for a message not
/// wanted here (its sequence number then widens the dropped range). Anything it cannot read
/// as such goes on to user space, which decides.
#[inline(always)]
fn unwanted(ctx: &XdpContext, l4: usize) -> bool {
    if !filter_on() {
        return false;
    }
    let Some(h) = ptr_at(ctx, l4 + UDP_HLEN, FILTER_HLEN) else {
        return false;
    };
    unwanted_header(h)
}

#[inline(always)]
fn filter_on() -> bool {
    FILTER.get(FILTER_ON).copied().unwrap_or(0) != 0
}

/// The filter's verdict on the first [`FILTER_HLEN`] bytes of a Light header.
#[inline(always)]
fn unwanted_header(h: *const u8) -> bool {
    let kind = at(h, 5);
    if le32_at(h, 0) != MAGIC
        || (kind != PacketKind::Source as u8 && kind != PacketKind::Parity as u8)
        || Some(&le32_at(h, 8)) != FILTER.get(FILTER_SESSION)
    {
        return false;
    }
    !bit_set(&WANT, le32_at(h, 16))
}

/// Socket filter for the socket receive path: the kernel drops unwanted shards before they
/// are queued on the socket (the data starts at the UDP header). Returns the bytes to keep.
#[socket_filter]
pub fn light_sock(ctx: SkBuffContext) -> i64 {
    if filter_on()
        && let Ok(h) = ctx.load::<[u8; FILTER_HLEN]>(UDP_HLEN)
        && unwanted_header(h.as_ptr())
    {
        bump(Counter::Unwanted);
        return 0;
    }
    i64::from(ctx.len())
}

/// Entry point: steer Light multicast into AF_XDP, pass everything else.
#[xdp]
pub fn light_xdp(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    steer(&ctx, len, XSK_RX_FRAME_MAX)
}

/// The same for links whose frames span several buffers (jumbo MTUs): the headers are read
/// from the first buffer, the length is the whole frame's, and the AF_XDP socket takes the
/// frame in up to three chunks (`XDP_USE_SG`).
#[xdp(frags)]
pub fn light_xdp_frags(ctx: XdpContext) -> u32 {
    // SAFETY: the helper only reads the context the kernel passed to this program.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    steer(&ctx, len, XSK_SG_FRAME_MAX)
}

/// Classifies a frame of `len` bytes and redirects it if it is Light's and at most `max`.
#[inline(always)]
fn steer(ctx: &XdpContext, len: usize, max: usize) -> u32 {
    bump(Counter::Seen);
    match classify(ctx, len) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Malformed => {
            bump(Counter::Malformed);
            xdp_action::XDP_PASS
        }
        Verdict::Light(l4) => {
            bump(Counter::Matched);
            if unwanted(ctx, l4) {
                bump(Counter::Unwanted);
                return xdp_action::XDP_DROP;
            }
            // The redirect would succeed here and the copy into the ring fail later, unseen.
            if len > max {
                bump(Counter::Oversize);
                return xdp_action::XDP_PASS;
            }
            // The low bits of the flags are the action when no socket sits on this queue.
            match XSKS.redirect(ctx.rx_queue_index(), xdp_action::XDP_PASS as u64) {
                Ok(action) if action == xdp_action::XDP_REDIRECT => {
                    bump(Counter::Redirected);
                    action
                }
                Ok(action) | Err(action) => {
                    bump(Counter::RedirectFailed);
                    action
                }
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
