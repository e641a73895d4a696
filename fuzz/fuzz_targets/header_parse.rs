//! `DataHeader::parse` on arbitrary bytes: never panics, and whatever it accepts survives
//! `write_to` + `parse` unchanged (the wire format has exactly one encoding per header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use light_common::{DataHeader, HEADER_LEN, PacketKind};

fuzz_target!(|data: &[u8]| {
    let Ok((h, payload)) = DataHeader::parse(data) else {
        return;
    };
    assert_eq!(
        payload,
        &data[HEADER_LEN..],
        "payload is everything after the header"
    );
    assert_eq!(usize::from(h.payload_len), payload.len());
    let kind = h.packet_kind().expect("parse accepted an unknown kind");
    if matches!(kind, PacketKind::Source | PacketKind::Parity) {
        assert!(h.source_shards > 0);
        assert_eq!(kind == PacketKind::Source, h.shard < h.source_shards);
    }

    let mut again = vec![0u8; HEADER_LEN];
    h.write_to(&mut again)
        .expect("a HEADER_LEN buffer fits the header");
    // Every header byte is a field, so re-encoding must reproduce the input exactly.
    assert_eq!(&again[..], &data[..HEADER_LEN]);
    again.extend_from_slice(payload);
    let (h2, payload2) = DataHeader::parse(&again).expect("a re-encoded header parses");
    assert_eq!(h2, h);
    assert_eq!(payload2, payload);
});
