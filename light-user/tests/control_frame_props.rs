//! Property tests of the control framing: arbitrary input never panics, and any split of
//! a valid stream decodes to the same frames.

use light::control::{
    DropCounts, Frame, FrameDecoder, ToServer, decode_message, encode_data, encode_message,
};
use proptest::prelude::*;

/// A decoded frame: a parsed message (None if it did not parse) or a data chunk.
type Decoded = (Option<ToServer>, Option<(u64, Vec<u8>)>);

/// Drains every frame; JSON bodies go through the message parser too.
fn drain(dec: &mut FrameDecoder, out: &mut Vec<Decoded>) -> bool {
    loop {
        match dec.pop() {
            Ok(Some(Frame::Json(body))) => out.push((decode_message::<ToServer>(body).ok(), None)),
            Ok(Some(Frame::Data { offset, bytes })) => {
                out.push((None, Some((offset, bytes.to_vec()))))
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fn arb_msg() -> impl Strategy<Value = ToServer> {
    prop_oneof![
        (
            any::<u32>(),
            "[a-z0-9\\-\u{e9}\"\\\\]{1,20}",
            proptest::option::of(".{0,8}")
        )
            .prop_map(|(r, c, t)| {
                ToServer::Hello {
                    receiver: r,
                    content: c,
                    token: t,
                    have_cache: None,
                    more: Vec::new(),
                }
            }),
        any::<u64>().prop_map(|offset| ToServer::CacheResume { offset }),
        (any::<u64>(), any::<[u64; 5]>()).prop_map(|(bytes, d)| ToServer::Progress {
            bytes,
            drops: DropCounts {
                malformed: d[0],
                foreign_session: d[1],
                duplicate: d[2],
                late: d[3],
                auth_failed: d[4],
            },
        }),
        ".{0,20}".prop_map(|t| ToServer::Status {
            token: (!t.is_empty()).then_some(t)
        }),
        (
            any::<bool>(),
            ".{0,30}",
            any::<u64>(),
            prop::option::of(0.0f64..=1.0)
        )
            .prop_map(|(ok, detail, b, loss)| ToServer::Done {
                ok,
                detail,
                bytes_received: b,
                loss,
            }),
        Just(ToServer::Heartbeat),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_never_panic(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
        small_lens in any::<bool>(),
    ) {
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        for mut c in chunks {
            // Half the cases start with small plausible lengths so bodies reach the parser.
            if small_lens && c.len() >= 5 {
                c[0] %= 40;
                c[1] = 0; c[2] = 0; c[3] = 0;
                c[4] = 1 + c[4] % 2;
            }
            dec.push(&c);
            if !drain(&mut dec, &mut out) {
                // Once poisoned, it stays refused.
                prop_assert!(dec.pop().is_err());
                break;
            }
        }
    }

    #[test]
    fn any_split_decodes_the_same(
        msgs in proptest::collection::vec((arb_msg(), proptest::option::of((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)))), 1..12),
        cuts in proptest::collection::vec(1usize..50, 1..40),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (m, data) in &msgs {
            encode_message(m, &mut wire).unwrap();
            want.push((Some(m.clone()), None));
            if let Some((off, bytes)) = data {
                encode_data(*off, bytes, &mut wire).unwrap();
                want.push((None, Some((*off, bytes.clone()))));
            }
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            if at >= wire.len() { break; }
            let end = (at + cut).min(wire.len());
            dec.push(&wire[at..end]);
            at = end;
            prop_assert!(drain(&mut dec, &mut got));
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(dec.buffered(), 0);
    }
}
