//! Pacing in virtual time: the token bucket never lets more than `burst + rate * t` bytes
//! through, and under continuous demand it lets through all of it.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use light::transport::tx::{Pacer, TokenBucket, TxConfig, spawn_sender};
use proptest::prelude::*;

const NS: u128 = 1_000_000_000;

/// Runs requests through the bucket, advancing virtual time by the arrival gaps and the
/// waits it asks for; returns (time since start in ns, bytes, had to wait) per accepted
/// request.
fn simulate(rate: u64, burst: u64, reqs: &[(u64, u64)]) -> Vec<(u128, u64, bool)> {
    let t0 = Instant::now();
    let mut t = t0;
    let mut b = TokenBucket::new(rate, burst);
    let mut out = Vec::new();
    for &(gap_ns, bytes) in reqs {
        t += Duration::from_nanos(gap_ns);
        let mut waited = false;
        loop {
            match b.take(bytes, t) {
                None => {
                    out.push(((t - t0).as_nanos(), bytes, waited));
                    break;
                }
                Some(wait) => {
                    assert!(wait > Duration::ZERO);
                    // The wait is the shortest one: a nanosecond earlier is still too early.
                    let mut early = b.clone();
                    assert!(
                        early
                            .take(bytes, t + wait - Duration::from_nanos(1))
                            .is_some()
                    );
                    t += wait;
                    waited = true;
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn never_exceeds_burst_plus_rate(
        rate in 1_000u64..10_000_000_000,
        burst in 1u64..200_000,
        reqs in proptest::collection::vec((0u64..5_000_000, 1u64..200_000), 1..200),
    ) {
        let reqs: Vec<(u64, u64)> = reqs.into_iter().map(|(g, b)| (g, b.min(burst))).collect();
        let mut sum = 0u128;
        for (t, bytes, _) in simulate(rate, burst, &reqs) {
            sum += u128::from(bytes);
            prop_assert!(sum * NS <= u128::from(burst) * NS + u128::from(rate) * t,
                "{sum} bytes by {t} ns at {rate} B/s, burst {burst}");
        }
    }

    #[test]
    fn continuous_demand_gets_the_full_rate(
        rate in 1_000u64..10_000_000_000,
        burst in 1u64..200_000,
        sizes in proptest::collection::vec(1u64..200_000, 1..200),
    ) {
        let reqs: Vec<(u64, u64)> = sizes.into_iter().map(|b| (0, b.min(burst))).collect();
        let mut sum = 0u128;
        let mut waits = 0u128;
        for (t, bytes, waited) in simulate(rate, burst, &reqs) {
            sum += u128::from(bytes);
            prop_assert!(sum * NS <= u128::from(burst) * NS + u128::from(rate) * t);
            if waited {
                waits += 1;
                // A request that had to wait emptied the bucket: exactly burst + rate * t
                // went through, less the rounding of each wait up to a whole nanosecond
                // (a full bucket drops that excess).
                let rounding = u128::from(rate) * (waits + 1);
                prop_assert!(sum * NS + rounding > u128::from(burst) * NS + u128::from(rate) * t);
            }
        }
    }

    #[test]
    fn oversized_requests_keep_the_long_run_rate(
        rate in 1_000u64..1_000_000_000,
        burst in 1u64..10_000,
        sizes in proptest::collection::vec(1u64..100_000, 1..100),
    ) {
        let reqs: Vec<(u64, u64)> = sizes.iter().map(|&b| (0, b)).collect();
        let log = simulate(rate, burst, &reqs);
        let (start_of_last, last, _) = *log.last().unwrap();
        let before: u128 = log.iter().map(|&(_, b, _)| u128::from(b)).sum::<u128>() - u128::from(last);
        // Everything before the last request fit in burst + rate * t (debt is repaid).
        prop_assert!(before * NS <= u128::from(burst) * NS + u128::from(rate) * start_of_last);
    }
}

#[test]
fn unpaced_pacer_never_waits() {
    let mut p = Pacer::new(None, 0);
    assert_eq!(p.delay(u64::MAX, Instant::now()), None);
}

#[test]
fn pacer_holds_batches_to_the_rate_in_virtual_time() {
    // 64 datagrams of 1472 bytes per batch at 10 MB/s with a one-batch bucket.
    let batch = 64 * 1472u64;
    let rate = 10_000_000u64;
    let mut p = Pacer::new(Some(rate), batch);
    let t0 = Instant::now();
    let mut t = t0;
    for _ in 0..1000 {
        while let Some(w) = p.delay(batch, t) {
            t += w;
        }
    }
    let elapsed = (t - t0).as_nanos();
    // 999 batches' worth of tokens had to accumulate after the first, full bucket.
    assert_eq!(
        elapsed,
        (999 * u128::from(batch) * NS).div_ceil(u128::from(rate))
    );
}

#[test]
fn paced_pipeline_respects_the_bucket_invariant() {
    // Nobody reads this socket: excess datagrams are dropped at the receiver, harmlessly.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = TxConfig::new(sink.local_addr().unwrap());
    let rate = 20_000_000;
    cfg.rate = Some(rate);
    cfg.burst = Some(64 * 1000);
    let (handle, thread) = spawn_sender(cfg).unwrap();
    for _ in 0..100 {
        let mut batch = handle.batch().unwrap();
        while let Some(buf) = batch.next_packet() {
            buf.resize(1000, 0xab);
        }
        handle.submit(batch).unwrap();
    }
    drop(handle);
    let stats = thread.join().unwrap().unwrap();
    assert_eq!(stats.bytes, 100 * 64 * 1000);
    // The bucket admits at most burst + rate * t bytes by time t, whatever the timing.
    let min =
        Duration::from_nanos(((stats.bytes - 64 * 1000) as u128 * NS / u128::from(rate)) as u64);
    assert!(stats.elapsed >= min, "{:?} < {min:?}", stats.elapsed);
    assert!(stats.paced_wait > Duration::ZERO);
}
