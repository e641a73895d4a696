//! Coding-core hot paths: XOR, message encoding, Reed–Solomon encode/decode at several
//! loss rates, packetizing into send batches, and planning time for K = 16.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use light::coding::{CacheBudget, PlanInput, SchemeChoice, encode_message, plan, xor_into};
use light::fec::{Assembler, FecEncoder, FecParams, Packetizer};
use light::transport::tx::Batch;
use light_common::{DataHeader, HEADER_LEN};
use std::hint::black_box;

/// Payload per packet: 1500-byte MTU minus IPv4, UDP and Light headers, rounded to even.
const SYMBOL: usize = 1400;

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn xor(c: &mut Criterion) {
    let mut g = c.benchmark_group("xor");
    let src = bytes(64 << 10, 1);
    let mut dst = bytes(64 << 10, 2);
    g.throughput(Throughput::Bytes(src.len() as u64));
    g.bench_function("xor_into_64KiB", |b| {
        b.iter(|| xor_into(black_box(&mut dst), black_box(&src)))
    });
    // A MAN message with t + 1 = 4 terms of 64 KiB.
    let files: Vec<Vec<u8>> = (0..4).map(|i| bytes(4 * (64 << 10), i)).collect();
    let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let input = PlanInput {
        receivers: 4,
        file_lens: vec![4 * (64 << 10); 4],
        budget: CacheBudget::Fraction(0.75),
        scheme: SchemeChoice::Centralized,
        demands: vec![0, 1, 2, 3],
        seed: 0,
        min_subfile_bytes: 0,
        packet_bytes: 1,
    };
    let p = plan(&input).unwrap();
    let spec = &p.messages()[0];
    let mut out = vec![0u8; spec.len as usize];
    g.throughput(Throughput::Bytes(spec.len * spec.terms.len() as u64));
    g.bench_function("encode_message_4x64KiB", |b| {
        b.iter(|| encode_message(spec, &refs, &mut out).unwrap())
    });
    g.finish();
}

fn packets(params: FecParams, enc: &mut FecEncoder, msg: &[u8]) -> Vec<Vec<u8>> {
    let mut p = Packetizer::first_pass(enc, 1, 0, msg, 0).unwrap();
    let mut buf = vec![0u8; HEADER_LEN + params.symbol_size];
    let mut out = Vec::new();
    while let Some(n) = p.next_into(&mut buf).unwrap() {
        out.push(buf[..n].to_vec());
    }
    out
}

/// Writes every first-pass packet of `msg` into `buf`, one after the other.
fn first_pass(enc: &mut FecEncoder, msg: &[u8], buf: &mut [u8]) {
    let mut p = Packetizer::first_pass(enc, 1, 0, msg, 0).unwrap();
    while let Some(n) = p.next_into(buf).unwrap() {
        black_box(&buf[..n]);
    }
}

/// Assembles (and decodes) one whole message of `len` bytes from `packets`.
fn assemble(params: FecParams, len: usize, packets: &[Vec<u8>]) {
    let mut asm = Assembler::new(params, 1, [(0u32, len as u64)]).unwrap();
    let done = packets.iter().filter_map(|p| asm.on_packet(p)).count();
    assert_eq!(done, 1);
}

/// Packetizes `msg` into recycled 64-packet send batches, as the server's first pass does;
/// `sized` takes each buffer at full length as is, otherwise it is emptied and zero-filled.
fn fill_batches(enc: &mut FecEncoder, msg: &[u8], batch: &mut Batch, need: usize, sized: bool) {
    let mut p = Packetizer::first_pass(enc, 1, 0, msg, 0).unwrap();
    while p.remaining() > 0 {
        batch.clear();
        while p.remaining() > 0 {
            let v = if sized {
                batch.next_packet_sized(need)
            } else {
                batch.next_packet()
            };
            let Some(v) = v else { break };
            if !sized {
                v.resize(need, 0);
            }
            let n = p.next_into(v).unwrap().unwrap();
            v.truncate(n);
        }
        black_box(batch.packets());
    }
}

fn batch_fill(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_fill");
    for symbol in [SYMBOL, 8800] {
        let params = FecParams::for_loss(0.01, symbol).unwrap();
        let msg = bytes(8 * usize::from(params.source_per_block) * symbol, 5);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        let need = HEADER_LEN + symbol;
        let mut enc = FecEncoder::new(params).unwrap();
        let mut batch = Batch::new(64, need);
        for (name, sized) in [("zero_filled", false), ("sized", true)] {
            g.bench_function(BenchmarkId::new(name, symbol), |b| {
                b.iter(|| fill_batches(&mut enc, &msg, &mut batch, need, sized))
            });
        }
    }
}

fn reed_solomon(c: &mut Criterion) {
    let mut g = c.benchmark_group("reed_solomon");
    for loss in [0.01, 0.05, 0.10] {
        let params = FecParams::for_loss(loss, SYMBOL).unwrap();
        let k = usize::from(params.source_per_block);
        let r = usize::from(params.parity_per_block);
        // 16 full blocks.
        let msg = bytes(16 * k * SYMBOL, 7);
        let label = format!("loss{:.0}%_k{k}_r{r}", loss * 100.0);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        let mut enc = FecEncoder::new(params).unwrap();
        let mut buf = vec![0u8; HEADER_LEN + SYMBOL];
        g.bench_function(BenchmarkId::new("packetize_encode", &label), |b| {
            b.iter(|| first_pass(&mut enc, &msg, &mut buf))
        });
        // Drop the expected share of each block, sources first (worst case for decoding).
        let all = packets(params, &mut enc, &msg);
        let lost_per_block = ((loss * (k + r) as f64).round() as usize).min(r);
        let kept: Vec<Vec<u8>> = all
            .into_iter()
            .filter(|p| {
                let (h, _) = DataHeader::parse(p).unwrap();
                usize::from(h.shard) >= lost_per_block
            })
            .collect();
        g.bench_function(BenchmarkId::new("assemble_decode", &label), |b| {
            b.iter(|| assemble(params, msg.len(), &kept))
        });
    }
    // The first pass encodes every block with the repair ceiling as recovery count: the
    // old ceiling k = 256 against the one `for_loss` picks, jumbo-frame symbols.
    let jumbo = 8800;
    let chosen = FecParams::for_loss(0.01, jumbo).unwrap();
    let k = usize::from(chosen.source_per_block);
    let msg = bytes(4 * k * jumbo, 11);
    g.throughput(Throughput::Bytes(msg.len() as u64));
    let old = FecParams::new(jumbo, chosen.source_per_block, chosen.parity_per_block, 256);
    for params in [old.unwrap(), chosen] {
        let label = format!("ceiling{}", params.max_parity_per_block);
        let mut enc = FecEncoder::new(params).unwrap();
        let mut buf = vec![0u8; HEADER_LEN + jumbo];
        g.bench_function(BenchmarkId::new("encode_ceiling", &label), |b| {
            b.iter(|| first_pass(&mut enc, &msg, &mut buf))
        });
    }
    // Decode cost by block size, 1 % of each block's shards lost: reed-solomon-simd
    // transforms over pow2(pow2(ceiling) + k) shards, so k = 256 and the chosen k both pay
    // for 512 shards with a ceiling of 64; k = 896 (ceiling 4·r = 80 by the same rule) pays
    // for 1024 and the error locator's fixed cost half as often per byte.
    let chosen = FecParams::for_loss(0.01, SYMBOL).unwrap();
    for symbol in [SYMBOL, 8800] {
        for (k, r, ceiling) in [
            (256, chosen.parity_per_block, chosen.max_parity_per_block),
            (
                chosen.source_per_block,
                chosen.parity_per_block,
                chosen.max_parity_per_block,
            ),
            (896, 20, 80),
        ] {
            let params = FecParams::new(symbol, k, r, ceiling).unwrap();
            let msg = bytes(4 * usize::from(k) * symbol, 13);
            g.throughput(Throughput::Bytes(msg.len() as u64));
            let mut enc = FecEncoder::new(params).unwrap();
            let lost = (0.01 * f64::from(k + r)).round() as u16;
            let kept: Vec<Vec<u8>> = packets(params, &mut enc, &msg)
                .into_iter()
                .filter(|p| DataHeader::parse(p).unwrap().0.shard >= lost)
                .collect();
            let label = format!("symbol{symbol}_k{k}_lost{lost}");
            g.bench_function(BenchmarkId::new("decode_block", &label), |b| {
                b.iter(|| assemble(params, msg.len(), &kept))
            });
        }
    }
    g.finish();
}

fn planning(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan_k16");
    g.sample_size(10);
    let base = PlanInput {
        receivers: 16,
        file_lens: vec![1 << 30; 16],
        budget: CacheBudget::Fraction(0.25),
        scheme: SchemeChoice::Centralized,
        demands: (0..16).collect(),
        seed: 9,
        min_subfile_bytes: 64 * SYMBOL as u64,
        packet_bytes: 1 << 20,
    };
    g.bench_function("man_t4_distinct", |b| {
        b.iter(|| plan(black_box(&base)).unwrap())
    });
    let yma = PlanInput {
        demands: (0..16).map(|r| r % 4).collect(),
        ..base.clone()
    };
    g.bench_function("yma_t4_ne4", |b| b.iter(|| plan(black_box(&yma)).unwrap()));
    let dec = PlanInput {
        scheme: SchemeChoice::Decentralized,
        file_lens: vec![64 << 20; 16],
        packet_bytes: 64 * SYMBOL as u64,
        ..base
    };
    g.bench_function("decentralized_64MiB_files", |b| {
        b.iter(|| plan(black_box(&dec)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, xor, reed_solomon, batch_fill, planning);
criterion_main!(benches);
