//! End to end through the sans-IO pipeline: plan → encode → packetize → lossy, shuffled,
//! duplicated delivery → assembler → decoder with the receiver's cache → the exact file.

use light::coding::{CacheBudget, Decoder, Plan, PlanInput, SchemeChoice, encode_message, plan};
use light::fec::{Assembler, Event, FecEncoder, FecParams, Packetizer};
use light_common::{DataHeader, HEADER_LEN};
use proptest::prelude::*;
use std::collections::HashMap;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 29
    }
}

fn cache_of(plan: &Plan, r: u32, files: &[Vec<u8>]) -> Vec<u8> {
    let mut c = Vec::new();
    for s in plan.cache_segments(r) {
        c.extend_from_slice(
            &files[s.file as usize][s.offset as usize..(s.offset + s.len) as usize],
        );
    }
    c
}

/// Runs the whole pipeline and checks every receiver's file bit-exactly.
fn run(
    input: &PlanInput,
    files: &[Vec<u8>],
    params: FecParams,
    rng: &mut Rng,
) -> Result<(), TestCaseError> {
    let plan = plan(input).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        &light::coding::plan(input).unwrap(),
        &plan,
        "plan is deterministic"
    );
    let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let session = 77;
    let mut enc = FecEncoder::new(params).unwrap();
    let mut packets = Vec::new();
    let mut buf = vec![0u8; HEADER_LEN + params.symbol_size];
    for (i, spec) in plan.messages().iter().enumerate() {
        prop_assert!(spec.len > 0);
        let mut msg = vec![0xAA; spec.len as usize];
        encode_message(spec, &refs, &mut msg).unwrap();
        let mut p = Packetizer::first_pass(&mut enc, session, i as u32, &msg, 0).unwrap();
        let mut dropped: HashMap<u32, u16> = HashMap::new();
        while let Some(n) = p.next_into(&mut buf).unwrap() {
            let (h, _) = DataHeader::parse(&buf[..n]).unwrap();
            let d = dropped.entry(h.block).or_default();
            if *d < params.parity_per_block && rng.next().is_multiple_of(3) {
                *d += 1;
                continue;
            }
            packets.push(buf[..n].to_vec());
            if rng.next().is_multiple_of(8) {
                packets.push(buf[..n].to_vec());
            }
        }
    }
    for i in (1..packets.len()).rev() {
        packets.swap(i, rng.next() as usize % (i + 1));
    }
    for r in 0..input.receivers {
        let demand = input.demands[r as usize] as usize;
        let cache = cache_of(&plan, r, files);
        prop_assert_eq!(cache.len() as u64, plan.cache_len(r));
        let mut dec = Decoder::new(&plan, r).unwrap();
        let wanted: Vec<(u32, u64)> = dec
            .wanted_messages()
            .iter()
            .map(|&m| (m, plan.messages()[m as usize].len))
            .collect();
        let mut asm = Assembler::new(params, session, wanted).unwrap();
        let mut out = vec![0u8; files[demand].len()];
        let mut covered = vec![false; out.len()];
        let mut write = |offset: u64, data: &[u8]| {
            let o = offset as usize;
            out[o..o + data.len()].copy_from_slice(data);
            covered[o..o + data.len()]
                .iter_mut()
                .for_each(|c| *c = true);
        };
        for part in plan.cached_parts_of_demand(r) {
            let c = part.cache_offset as usize;
            write(part.file_offset, &cache[c..c + part.len as usize]);
        }
        for p in &packets {
            if let Some(Event::MessageComplete { message, bytes }) = asm.on_packet(p) {
                for rec in dec.on_message(message, &bytes, &cache).unwrap() {
                    write(rec.offset, &rec.data);
                }
            }
        }
        prop_assert!(
            asm.is_complete(),
            "receiver {} assembler incomplete: {:?}",
            r,
            asm.missing()
        );
        prop_assert!(dec.is_complete(), "receiver {} decoder incomplete", r);
        prop_assert!(covered.iter().all(|&c| c), "receiver {} has gaps", r);
        prop_assert_eq!(
            blake3::hash(&out),
            blake3::hash(&files[demand]),
            "receiver {} file differs",
            r
        );
    }
    Ok(())
}

fn demands_strategy(k: u32, n: u32) -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        (0..n).prop_map(move |f| vec![f; k as usize]),
        Just((0..k).map(|r| r % n).collect::<Vec<u32>>()),
        proptest::collection::vec(0..n, k as usize),
    ]
}

fn input_strategy() -> impl Strategy<Value = (PlanInput, Vec<Vec<u8>>)> {
    (1u32..=8, 1u32..=5)
        .prop_flat_map(|(k, n)| {
            (
                Just(k),
                proptest::collection::vec(prop_oneof![Just(0u64), 1u64..2500], n as usize),
                demands_strategy(k, n),
                prop_oneof![
                    (0.0f64..=1.0).prop_map(CacheBudget::Fraction),
                    Just(CacheBudget::Fraction(0.0)),
                    Just(CacheBudget::Fraction(1.0)),
                    (0u64..6000).prop_map(CacheBudget::Bytes),
                ],
                prop_oneof![
                    Just(SchemeChoice::Centralized),
                    Just(SchemeChoice::Decentralized),
                    Just(SchemeChoice::Auto)
                ],
                any::<u64>(),
                prop_oneof![Just(0u64), 1u64..300],
                1u64..300,
            )
        })
        .prop_map(
            |(
                receivers,
                file_lens,
                demands,
                budget,
                scheme,
                seed,
                min_subfile_bytes,
                packet_bytes,
            )| {
                let mut rng = Rng(seed);
                let files = file_lens
                    .iter()
                    .map(|&l| (0..l).map(|_| rng.next() as u8).collect())
                    .collect();
                (
                    PlanInput {
                        receivers,
                        file_lens,
                        budget,
                        scheme,
                        demands,
                        seed,
                        min_subfile_bytes,
                        packet_bytes,
                    },
                    files,
                )
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_receiver_reconstructs_its_file(
        (input, files) in input_strategy(),
        symbol in 1usize..48, k in 1u16..10, r in 0u16..4, seed: u64,
    ) {
        let params = FecParams::new(symbol * 2, k, r, r.max(1) + 1).unwrap();
        run(&input, &files, params, &mut Rng(seed))?;
    }

    /// Caches are filled before demands are known and kept across sessions: the
    /// placement (every receiver's cache, the scheme) must not depend on the demands.
    #[test]
    fn placement_does_not_depend_on_demands(
        (input, _files) in input_strategy(), other_seed: u64,
    ) {
        let n = input.file_lens.len() as u32;
        let mut rng = Rng(other_seed);
        let mut other = input.clone();
        other.demands = (0..input.receivers).map(|_| (rng.next() % u64::from(n)) as u32).collect();
        let (a, b) = (plan(&input).unwrap(), plan(&other).unwrap());
        prop_assert_eq!((a.t(), a.subpacketization()), (b.t(), b.subpacketization()));
        for r in 0..input.receivers {
            prop_assert_eq!(a.cache_segments(r), b.cache_segments(r));
        }
    }
}

#[test]
fn plan_input_survives_json() {
    let input = PlanInput {
        receivers: 3,
        file_lens: vec![10, 0, 7],
        budget: CacheBudget::Fraction(0.25),
        scheme: SchemeChoice::Auto,
        demands: vec![0, 2, 0],
        seed: 5,
        min_subfile_bytes: 1,
        packet_bytes: 4,
    };
    let json = serde_json::to_string(&input).unwrap();
    let back: PlanInput = serde_json::from_str(&json).unwrap();
    assert_eq!(back, input);
    assert_eq!(plan(&back).unwrap(), plan(&input).unwrap());
}

/// Grouping with a partial last group, memory sharing and YMA rebuilds all at once.
#[test]
fn grouped_memory_sharing_yma_roundtrip() {
    use light::coding::Scheme;
    let input = PlanInput {
        receivers: 7,
        file_lens: vec![3000, 2999, 1, 0, 2500],
        budget: CacheBudget::Fraction(0.7),
        scheme: SchemeChoice::Centralized,
        // The first group all wants file 0: five non-leaders, so YMA rebuilds a message.
        demands: vec![0, 0, 0, 0, 0, 0, 4],
        seed: 0,
        // Mean file 1700 bytes: groups of 7 would need subfiles under 50 bytes; the
        // planner settles on groups of 6 (t = 4.2, 2 groups, the second partial).
        min_subfile_bytes: 50,
        packet_bytes: 1,
    };
    let p = plan(&input).unwrap();
    let Scheme::Centralized {
        group_size,
        groups,
        t_low,
        t_high,
        yma,
        ..
    } = p.scheme().clone()
    else {
        panic!("expected a centralized plan, got {}", p.scheme());
    };
    assert_eq!((group_size, groups), (6, 2), "{}", p.scheme());
    assert!(t_low < t_high && yma, "{}", p.scheme());
    assert!(!p.derived().is_empty());
    let files: Vec<Vec<u8>> = input
        .file_lens
        .iter()
        .map(|&l| (0..l).map(|i| (i * 131 % 251) as u8).collect())
        .collect();
    for seed in 0..4 {
        run(
            &input,
            &files,
            FecParams::new(64, 8, 2, 4).unwrap(),
            &mut Rng(seed),
        )
        .unwrap();
    }
}
