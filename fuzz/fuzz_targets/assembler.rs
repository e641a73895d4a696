//! `fec::Assembler::on_packet` on an arbitrary packet sequence for a fixed session: never
//! panics, every packet is counted under exactly one outcome, and completions are
//! consistent (each expected message at most once, with its exact length, and
//! `is_complete`/`missing` agree with what was emitted).
//!
//! Input: packets, each preceded by its length as one byte (see fuzz/seeds.py).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use light::fec::{Assembler, Event, FecParams};

/// Session 9, 16-byte symbols, 4 sources and 2 (at most 4) parity per block.
const SESSION: u32 = 9;
/// Message index → length: two blocks (4 + 3 symbols), one one-symbol block, one full block.
const MESSAGES: [(u32, u64); 3] = [(0, 100), (1, 16), (7, 64)];

fuzz_target!(|data: &[u8]| {
    let params = FecParams::new(16, 4, 2, 4).expect("valid parameters");
    let mut asm = Assembler::new(params, SESSION, MESSAGES).expect("valid messages");
    let expected: BTreeMap<u32, u64> = MESSAGES.into_iter().collect();
    let mut emitted = BTreeMap::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (packet, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        if let Some(Event::MessageComplete { message, bytes }) = asm.on_packet(packet) {
            let want = expected
                .get(&message)
                .expect("completed an unexpected message");
            assert_eq!(
                bytes.len() as u64,
                *want,
                "message {message} has the wrong length"
            );
            assert!(
                emitted.insert(message, bytes).is_none(),
                "message {message} twice"
            );
        }
    }

    let s = asm.stats();
    let outcomes = s.malformed
        + s.other_kind
        + s.foreign_session
        + s.unexpected_message
        + s.bad_index
        + s.duplicate
        + s.late
        + s.source
        + s.parity;
    assert_eq!(
        s.packets, outcomes,
        "every packet has exactly one outcome: {s:?}"
    );
    assert_eq!(s.messages_complete, emitted.len() as u64);
    assert_eq!(asm.is_complete(), emitted.len() == expected.len());
    for m in asm.missing() {
        assert!(
            !emitted.contains_key(&m.message),
            "missing blocks of a complete message"
        );
        assert!(expected.contains_key(&m.message));
        assert!((1..=4).contains(&m.needed), "{m:?}");
    }
});
