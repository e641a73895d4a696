//! The fixed session both assembler targets use, and the checks they share.

use std::collections::BTreeMap;

use light::fec::{Assembler, Event, FecParams};

/// Session id of every packet.
pub const SESSION: u32 = 9;
/// Message index → length: two blocks (4 + 3 symbols), one one-symbol block, one full block.
pub const MESSAGES: [(u32, u64); 3] = [(0, 100), (1, 16), (7, 64)];

/// 16-byte symbols, 4 sources, 2 first-pass parity and 4 parity at most per block.
pub fn params() -> FecParams {
    FecParams::new(16, 4, 2, 4).expect("valid parameters")
}

/// Checks an event and records it in `emitted`.
pub fn record(event: Option<Event>, emitted: &mut BTreeMap<u32, Vec<u8>>) {
    let Some(Event::MessageComplete { message, bytes }) = event else {
        return;
    };
    let (_, len) = MESSAGES
        .iter()
        .find(|(m, _)| *m == message)
        .expect("completed an unexpected message");
    assert_eq!(bytes.len() as u64, *len, "message {message}: wrong length");
    assert!(
        emitted.insert(message, bytes).is_none(),
        "message {message} completed twice"
    );
}

/// Counter and completion consistency after any input.
pub fn check_consistency(asm: &Assembler, emitted: &BTreeMap<u32, Vec<u8>>) {
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
    assert_eq!(s.packets, outcomes, "not one outcome per packet: {s:?}");
    assert_eq!(s.messages_complete, emitted.len() as u64);
    assert_eq!(asm.is_complete(), emitted.len() == MESSAGES.len());
    for m in asm.missing() {
        assert!(
            !emitted.contains_key(&m.message),
            "{m:?} of a complete message"
        );
        assert!(MESSAGES.iter().any(|(i, _)| *i == m.message), "{m:?}");
        assert!((1..=4).contains(&m.needed), "{m:?}");
    }
}
