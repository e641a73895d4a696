//! `fec::Assembler::on_packet` on honest packets of a fixed session (fec_session.rs): all
//! sources and all four parity symbols of every block, from the real `Packetizer`. Each
//! input byte picks one, so the input is an arbitrary order with loss and duplicates.
//! Every emitted message must be the original bytes, no decode may fail, and a message
//! must be complete once each of its blocks got any `k` distinct shards (Reed–Solomon is
//! MDS: any `k` of the `k + 4` shards decode).
//!
//! A separate target from `assembler` because nearly every input here decodes, and a
//! decode under coverage instrumentation costs milliseconds (reed-solomon-simd evaluates
//! a polynomial over all of GF(2^16)), which would starve the cheap paths there.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use light::fec::{Assembler, FecEncoder, Packetizer};
use light_common::{DataHeader, HEADER_LEN};

#[path = "fec_session.rs"]
mod fec_session;
use fec_session::{MESSAGES, SESSION, check_consistency, params, record};

/// The content of message `m` (the same bytes fuzz/seeds.py uses).
fn content(m: u32, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + u64::from(m) * 7 + 1) as u8)
        .collect()
}

/// One honest packet and the block it belongs to.
struct Honest {
    message: u32,
    block: u32,
    shard: u16,
    /// Source shards of the block.
    k: u16,
    bytes: Vec<u8>,
}

/// Every source and every parity packet (first pass and repair) of every message.
fn honest() -> &'static [Honest] {
    static PACKETS: OnceLock<Vec<Honest>> = OnceLock::new();
    PACKETS.get_or_init(|| {
        let p = params();
        let mut enc = FecEncoder::new(p).expect("encoder");
        let mut out = Vec::new();
        let mut buf = vec![0u8; HEADER_LEN + p.symbol_size];
        for (m, len) in MESSAGES {
            let data = content(m, len);
            let mut first =
                Packetizer::first_pass(&mut enc, SESSION, m, &data, 0).expect("first pass");
            while let Some(n) = first.next_into(&mut buf).expect("packet") {
                out.push(to_honest(&buf[..n]));
            }
            let (from, count) = (
                p.parity_per_block,
                p.max_parity_per_block - p.parity_per_block,
            );
            for block in 0..p.layout(len).expect("layout").blocks {
                let mut repair =
                    Packetizer::repair(&mut enc, SESSION, m, &data, block, from, count, 0)
                        .expect("repair");
                while let Some(n) = repair.next_into(&mut buf).expect("repair packet") {
                    out.push(to_honest(&buf[..n]));
                }
            }
        }
        out
    })
}

fn to_honest(packet: &[u8]) -> Honest {
    let (h, _) = DataHeader::parse(packet).expect("the packetizer writes valid headers");
    Honest {
        message: h.message,
        block: h.block,
        shard: h.shard,
        k: h.source_shards,
        bytes: packet.to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut asm = Assembler::new(params(), SESSION, MESSAGES).expect("valid messages");
    let mut emitted = BTreeMap::new();
    let packets = honest();
    // (message, block) → (k, distinct shards delivered).
    let mut got: BTreeMap<(u32, u32), (u16, BTreeSet<u16>)> = BTreeMap::new();
    for &pick in data {
        let p = &packets[usize::from(pick) % packets.len()];
        got.entry((p.message, p.block))
            .or_insert_with(|| (p.k, BTreeSet::new()))
            .1
            .insert(p.shard);
        record(asm.on_packet(&p.bytes), &mut emitted);
    }
    check_consistency(&asm, &emitted);
    assert_eq!(
        asm.stats().decode_errors,
        0,
        "honest shards failed to decode"
    );
    for (m, len) in MESSAGES {
        if let Some(bytes) = emitted.get(&m) {
            assert!(
                *bytes == content(m, len),
                "message {m} decoded to wrong bytes"
            );
            continue;
        }
        let blocks = params().layout(len).expect("layout").blocks;
        let decodable = (0..blocks).all(|b| {
            got.get(&(m, b))
                .is_some_and(|(k, shards)| shards.len() >= usize::from(*k))
        });
        assert!(
            !decodable,
            "message {m}: every block had k shards but it is not complete"
        );
    }
});
