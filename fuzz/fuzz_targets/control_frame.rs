//! The control stream decoder on an arbitrary byte stream delivered in arbitrary pieces:
//! never panics, the frames it returns re-encode to exactly the bytes it consumed, a
//! framing error poisons it for good, and any JSON body that decodes as a message of
//! either direction survives `encode_message` + decode unchanged.
//!
//! Input: one byte giving the size of each `push` (0 means 256), then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use light::control::frame::encode_raw_json;
use light::control::{
    ControlError, Frame, FrameDecoder, Message, ToReceiver, ToServer, decode_message, encode_data,
    encode_message,
};

/// Decodes `body` as an `M`; if that works, the message must survive a round trip.
fn round_trip<M: Message + PartialEq>(body: &[u8]) {
    let Ok(msg) = decode_message::<M>(&mut body.to_vec()) else {
        return;
    };
    let mut wire = Vec::new();
    encode_message(&msg, &mut wire).expect("a decoded message encodes");
    let mut dec = FrameDecoder::new();
    dec.push(&wire);
    let Ok(Some(Frame::Json(json))) = dec.pop() else {
        panic!("an encoded message is not one JSON frame: {wire:?}");
    };
    let again = decode_message::<M>(json).expect("an encoded message decodes");
    assert_eq!(again, msg);
    assert_eq!(dec.buffered(), 0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = if step == 0 { 256 } else { usize::from(step) };
    let mut dec = FrameDecoder::new();
    let mut reencoded = Vec::new();
    let mut pushed = 0;
    for piece in stream.chunks(step) {
        dec.push(piece);
        pushed += piece.len();
        loop {
            let ready = dec.has_frame();
            match dec.pop() {
                Ok(Some(Frame::Json(body))) => {
                    assert!(matches!(ready, Ok(true)));
                    encode_raw_json(body, &mut reencoded);
                    let body = body.to_vec();
                    round_trip::<ToServer>(&body);
                    round_trip::<ToReceiver>(&body);
                }
                Ok(Some(Frame::Data { offset, bytes })) => {
                    assert!(matches!(ready, Ok(true)));
                    encode_data(offset, bytes, &mut reencoded).expect("a decoded chunk fits");
                }
                Ok(None) => {
                    assert!(matches!(ready, Ok(false)));
                    break;
                }
                Err(e) => {
                    assert!(ready.is_err(), "has_frame missed {e}");
                    assert!(matches!(dec.pop(), Err(ControlError::Poisoned)));
                    dec.push(b"\x01\x00\x00\x00\x01");
                    assert!(matches!(dec.pop(), Err(ControlError::Poisoned)));
                    return;
                }
            }
        }
    }
    let consumed = pushed - dec.buffered();
    assert_eq!(
        reencoded,
        stream[..consumed],
        "frames do not re-encode to their bytes"
    );
});
