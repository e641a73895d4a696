//! Header encode/parse and raw-frame parse throughput.

use std::{hint::black_box, net::IpAddr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use light::transport::{
    mac::PacketKey,
    rx::frame::{build_udp_frame, parse_udp},
};
use light_common::{DataHeader, HEADER_LEN, MAC_LEN, MAC_OFFSET, PacketKind};

fn header(c: &mut Criterion) {
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Elements(1));
    let mut h = DataHeader::new(PacketKind::Source, 9);
    h.source_shards = 64;
    h.parity_shards = 8;
    h.payload_len = 1400;
    let mut pkt = vec![0u8; HEADER_LEN + 1400];
    g.bench_function("encode", |b| {
        b.iter(|| black_box(&h).write_to(black_box(&mut pkt)).unwrap())
    });
    h.write_to(&mut pkt).unwrap();
    g.bench_function("parse", |b| {
        b.iter(|| DataHeader::parse(black_box(&pkt)).unwrap().0.seq)
    });
    let frame = build_udp_frame(
        IpAddr::from([10, 0, 0, 1]),
        IpAddr::from([239, 1, 1, 1]),
        1,
        7700,
        &pkt,
    );
    g.bench_function("frame_to_header", |b| {
        b.iter(|| {
            DataHeader::parse(parse_udp(black_box(&frame)).unwrap().payload)
                .unwrap()
                .0
                .seq
        })
    });
    g.finish();
}

/// The per-packet MAC on a full-size packet, against the keyed BLAKE3 MAC it replaced
/// (same coverage: the packet with the MAC field left out), in the same run.
fn mac(c: &mut Criterion) {
    let mut g = c.benchmark_group("mac");
    g.throughput(Throughput::Bytes((HEADER_LEN + 1408) as u64));
    let mut pkt = vec![0x5au8; HEADER_LEN + 1408];
    let key = PacketKey::random();
    key.sign(&mut pkt);
    g.bench_function("polyval_aes_verify", |b| {
        b.iter(|| key.verify(black_box(&pkt)))
    });
    g.bench_function("polyval_aes_sign", |b| {
        b.iter(|| key.sign(black_box(&mut pkt)))
    });
    let raw = [7u8; 32];
    g.bench_function("blake3_keyed_baseline", |b| {
        b.iter(|| {
            let p = black_box(&pkt);
            let mut h = blake3::Hasher::new_keyed(&raw);
            h.update(&p[..MAC_OFFSET]);
            h.update(&[0u8; MAC_LEN]);
            h.update(&p[HEADER_LEN..]);
            h.finalize().as_bytes()[0]
        })
    });
    g.finish();
}

criterion_group!(benches, header, mac);
criterion_main!(benches);
