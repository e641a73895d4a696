//! `fec::Assembler::on_packet` on arbitrary packets for a fixed session (fec_session.rs):
//! never panics, every packet is counted under exactly one outcome, and completions are
//! consistent (each expected message at most once, with its exact length; `is_complete`
//! and `missing` agree with what was emitted).
//!
//! Input: packets, each preceded by its length as one byte (see fuzz/seeds.py).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use light::fec::Assembler;

#[path = "fec_session.rs"]
mod fec_session;
use fec_session::{MESSAGES, SESSION, check_consistency, params, record};

fuzz_target!(|data: &[u8]| {
    let mut asm = Assembler::new(params(), SESSION, MESSAGES).expect("valid messages");
    let mut emitted = BTreeMap::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (packet, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        record(asm.on_packet(packet), &mut emitted);
    }
    check_consistency(&asm, &emitted);
});
