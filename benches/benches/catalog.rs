//! Receiver output: writing decoded blocks into the partial file while verifying chunks.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use light::catalog::{DEFAULT_CHUNK_SIZE, Manifest, OutputFile};

/// File written per iteration.
const FILE: usize = 64 << 20;
/// One Reed–Solomon block of 448 symbols of 8800 bytes (MTU 9000): what the receiver's
/// writer gets at a time; not a multiple of the 1 MiB chunk, so both the whole-chunk and
/// the in-order paths run.
const PIECE: usize = 448 * 8800;

fn output_write(c: &mut Criterion) {
    let data: Vec<u8> = (0..FILE as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    let manifest =
        Manifest::from_data(1, 1, "bench.bin".into(), DEFAULT_CHUNK_SIZE, &data).unwrap();
    // tmpfs: the page-cache copy and hashing without the disk's noise.
    let dir = std::path::Path::new("/dev/shm").join(format!("light-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut g = c.benchmark_group("output_write");
    g.throughput(Throughput::Bytes(FILE as u64));
    g.sample_size(20);
    g.bench_function("64MiB_in_rs_blocks", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let mut out = OutputFile::create(&dir, manifest.clone()).unwrap();
                let start = Instant::now();
                for (i, piece) in data.chunks(PIECE).enumerate() {
                    out.write_at((i * PIECE) as u64, piece).unwrap();
                }
                spent += start.elapsed();
                assert!(out.is_complete());
                drop(out);
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
            }
            spent
        });
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, output_write);
criterion_main!(benches);
