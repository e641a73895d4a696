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

/// The per-packet MAC on full-size packets at MTU 1500 and 9000: Light's own (POLYVAL with
/// sixteen blocks per reduction, then AES), the same construction through the `polyval`
/// crate it replaced, and the keyed BLAKE3 MAC before that (same coverage: the packet with
/// the MAC field left out), in the same run.
fn mac(c: &mut Criterion) {
    use aes::cipher::{BlockCipherEncrypt, KeyInit};
    use polyval::universal_hash::UniversalHash;
    let mut g = c.benchmark_group("mac");
    for payload in [1408, 8800] {
        g.throughput(Throughput::Bytes((HEADER_LEN + payload) as u64));
        let mut pkt = vec![0x5au8; HEADER_LEN + payload];
        let key = PacketKey::random();
        key.sign(&mut pkt);
        g.bench_function(format!("polyval_aes_verify/{payload}"), |b| {
            b.iter(|| key.verify(black_box(&pkt)))
        });
        g.bench_function(format!("polyval_aes_sign/{payload}"), |b| {
            b.iter(|| key.sign(black_box(&mut pkt)))
        });
        let (hash, prf) = (
            polyval::Polyval::new(&[3u8; 16].into()),
            aes::Aes128::new(&[4u8; 16].into()),
        );
        g.bench_function(format!("polyval_crate_baseline/{payload}"), |b| {
            b.iter(|| {
                let p = black_box(&pkt);
                let mut h = hash.clone();
                h.update_padded(&p[..MAC_OFFSET]);
                h.update_padded(&p[HEADER_LEN..]);
                let mut len = [0u8; 16];
                len[..8].copy_from_slice(&(p.len() as u64).to_le_bytes());
                h.update(&[len.into()]);
                let mut tag = h.finalize();
                prf.encrypt_block(&mut tag);
                tag[0]
            })
        });
        let raw = [7u8; 32];
        g.bench_function(format!("blake3_keyed_baseline/{payload}"), |b| {
            b.iter(|| {
                let p = black_box(&pkt);
                let mut h = blake3::Hasher::new_keyed(&raw);
                h.update(&p[..MAC_OFFSET]);
                h.update(&[0u8; MAC_LEN]);
                h.update(&p[HEADER_LEN..]);
                h.finalize().as_bytes()[0]
            })
        });
    }
    g.finish();
}

criterion_group!(benches, header, mac);
criterion_main!(benches);
