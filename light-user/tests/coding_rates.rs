//! Exact delivery sizes against the closed forms of DESIGN.md.

use light::coding::{CacheBudget, PlanInput, Scheme, SchemeChoice, plan};

fn binom(n: u64, k: u64) -> u64 {
    if k > n {
        return 0;
    }
    (0..k).fold(1, |r, i| r * (n - i) / (i + 1))
}

fn input(k: u32, n: usize, f: u64, fraction: f64, demands: Vec<u32>) -> PlanInput {
    PlanInput {
        receivers: k,
        file_lens: vec![f; n],
        budget: CacheBudget::Fraction(fraction),
        scheme: SchemeChoice::Centralized,
        demands,
        seed: 1,
        min_subfile_bytes: 0,
        packet_bytes: 1,
    }
}

/// MAN (N_e = K) and YMA (N_e < K) payloads equal R·F exactly for integer t.
#[test]
fn centralized_payload_is_exactly_r_times_f() {
    for k in 1u32..=8 {
        for t in 0..=k {
            for ne in 1..=k {
                let c = binom(u64::from(k), u64::from(t));
                let f = c * 6;
                let demands: Vec<u32> = (0..k).map(|r| r % ne).collect();
                let p = plan(&input(
                    k,
                    k as usize,
                    f,
                    f64::from(t) / f64::from(k),
                    demands,
                ))
                .unwrap();
                let sent = binom(u64::from(k), u64::from(t) + 1)
                    - binom(u64::from(k - ne), u64::from(t) + 1);
                let expect = sent * f / c;
                assert_eq!(
                    p.payload_bytes(),
                    expect,
                    "K={k} t={t} N_e={ne}: {}",
                    p.scheme()
                );
                let r = p.theoretical_rate();
                assert!(
                    (r * f as f64 - expect as f64).abs() < 1e-6,
                    "K={k} t={t} N_e={ne}: rate {r}"
                );
                assert_eq!(p.subpacketization(), c);
                assert_eq!(p.t(), f64::from(t));
                // Each receiver caches t/K of every file.
                assert_eq!(p.cache_len(0), k as u64 * f * u64::from(t) / u64::from(k));
                let yma = matches!(p.scheme(), Scheme::Centralized { yma: true, .. });
                assert_eq!(yma, ne + t < k, "K={k} t={t} N_e={ne}");
                if ne == k {
                    // MAN closed form (K−t)/(t+1).
                    assert!((r - f64::from(k - t) / f64::from(t + 1)).abs() < 1e-12);
                }
            }
        }
    }
}

#[test]
fn same_demand_sends_the_uncached_part_once() {
    let p = plan(&input(5, 3, 500, 0.4, vec![2; 5])).unwrap();
    // t = 2: every receiver lacks 3/5 of the file.
    assert_eq!(p.payload_bytes(), 300);
}

#[test]
fn no_cache_multicasts_each_distinct_file_once() {
    let p = plan(&input(6, 4, 1000, 0.0, vec![0, 1, 1, 3, 0, 1])).unwrap();
    assert_eq!(p.payload_bytes(), 3000);
    assert_eq!(p.placement_bytes(), 0);
    assert_eq!(p.messages().len(), 3);
}

#[test]
fn memory_sharing_mixes_neighbouring_points() {
    // K = 4, t = 1.5: half of each file at t = 1, half at t = 2.
    let f = 2 * 4 * 6 * 10;
    let p = plan(&input(4, 4, f, 1.5 / 4.0, vec![0, 1, 2, 3])).unwrap();
    let half = f / 2;
    let expect = half * 6 / 4 + half * 4 / 6;
    assert_eq!(p.payload_bytes(), expect);
    assert!((p.theoretical_rate() * f as f64 - expect as f64).abs() < 1e-6);
    assert_eq!(p.subpacketization(), 4 + 6);
    assert_eq!(p.cache_len(0), 4 * (half / 4 + half * 3 / 6));
}

#[test]
fn decentralized_rate_matches_closed_form() {
    let (k, q, packets, pb) = (4u32, 0.25, 20_000u64, 8u64);
    let f = packets * pb;
    let p = plan(&PlanInput {
        receivers: k,
        file_lens: vec![f; 4],
        budget: CacheBudget::Fraction(q),
        scheme: SchemeChoice::Decentralized,
        demands: vec![0, 1, 2, 3],
        seed: 42,
        min_subfile_bytes: 0,
        packet_bytes: pb,
    })
    .unwrap();
    let closed = (1.0 - q) / q * (1.0 - (1.0f64 - q).powi(k as i32));
    assert!((p.theoretical_rate() - closed).abs() < 1e-12);
    let measured = p.payload_bytes() as f64 / f as f64;
    assert!(
        (measured / closed - 1.0).abs() < 0.05,
        "measured {measured}, closed form {closed}"
    );
    let cached = p.placement_bytes() as f64 / (f64::from(k) * 4.0 * f as f64);
    assert!((cached - q).abs() < 0.01, "cached fraction {cached}");
}

#[test]
fn grouping_keeps_subfiles_large_enough() {
    let mut i = input(8, 8, 1000, 0.5, (0..8).collect());
    i.min_subfile_bytes = 100;
    let p = plan(&i).unwrap();
    // g = 8..5 give subfiles of 14..50 bytes; g = 4 (t = 2, C(4,2) = 6) gives 166.
    assert!(
        matches!(
            p.scheme(),
            Scheme::Centralized {
                group_size: 4,
                groups: 2,
                t_low: 2,
                t_high: 2,
                ..
            }
        ),
        "{}",
        p.scheme()
    );
    assert_eq!(p.subpacketization(), 6);
    // Two independent groups of MAN with K = 4, t = 2: rate 2 · (2/3).
    assert!((p.theoretical_rate() - 4.0 / 3.0).abs() < 1e-12);
    assert!(p.scheme().to_string().contains("2 groups of 4"));
}
