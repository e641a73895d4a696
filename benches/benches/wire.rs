//! Header encode/parse and raw-frame parse throughput.

use std::{hint::black_box, net::IpAddr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use light::transport::rx::frame::{build_udp_frame, parse_udp};
use light_common::{DataHeader, HEADER_LEN, PacketKind};

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

criterion_group!(benches, header);
criterion_main!(benches);
