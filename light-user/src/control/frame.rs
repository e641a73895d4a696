//! Sans-IO framing of the control stream.
//!
//! A frame is `len: u32 LE` followed by `len` bytes of body; the body starts with a tag
//! byte: [`TAG_JSON`] then a JSON message, or [`TAG_DATA`] then `offset: u64 LE` and a
//! chunk of a cache blob. Limits are checked as soon as the 5-byte head is buffered, so
//! a peer cannot make the decoder buffer more than one bounded frame.

use serde::Serialize;
use simd_json::prelude::*;

use super::error::ControlError;
use super::messages::{Message, PROTOCOL_VERSION};

/// Body tag of a JSON message frame.
pub const TAG_JSON: u8 = 1;
/// Body tag of a cache data chunk frame.
pub const TAG_DATA: u8 = 2;
/// Largest JSON body accepted. Generous because `Announce` carries the content manifest.
pub const MAX_JSON_LEN: usize = 1 << 20;
/// Largest data chunk (bytes after the offset) accepted.
pub const MAX_DATA_CHUNK: usize = 1 << 20;
/// Bytes before a frame's payload: length, tag.
const HEAD_LEN: usize = 5;
/// Bytes of the offset at the start of a data body.
const OFFSET_LEN: usize = 8;

/// One decoded frame, borrowing the decoder's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A JSON message body, mutable because simd-json parses in place.
    Json(&'a mut [u8]),
    /// A chunk of a cache blob.
    Data {
        /// Byte offset of `bytes` within the blob.
        offset: u64,
        /// The chunk.
        bytes: &'a [u8],
    },
}

/// Push bytes in, pop frames out; handles frames split across reads and several frames
/// per read. After a framing error it refuses everything (the stream is out of sync).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    poisoned: bool,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// A writable region of at least `at_least` bytes after the buffered data, to read
    /// into directly; follow with [`FrameDecoder::commit`].
    pub fn spare(&mut self, at_least: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end < at_least && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < at_least {
            self.buf.resize(self.end + at_least, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the last [`FrameDecoder::spare`] region as filled.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Whether a complete frame is buffered; checks the head so bad frames fail early.
    pub fn has_frame(&mut self) -> Result<bool, ControlError> {
        Ok(self
            .check_head()?
            .is_some_and(|total| self.buffered() >= total))
    }

    /// Pops the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn pop(&mut self) -> Result<Option<Frame<'_>>, ControlError> {
        let Some(total) = self.check_head()? else {
            return Ok(None);
        };
        if self.buffered() < total {
            return Ok(None);
        }
        let frame = &mut self.buf[self.start..self.start + total];
        self.start += total;
        let (head, body) = frame.split_at_mut(HEAD_LEN);
        if head[4] == TAG_JSON {
            return Ok(Some(Frame::Json(body)));
        }
        let (offset, bytes) = body.split_at(OFFSET_LEN);
        let mut le = [0u8; OFFSET_LEN];
        le.copy_from_slice(offset);
        Ok(Some(Frame::Data {
            offset: u64::from_le_bytes(le),
            bytes,
        }))
    }

    /// Validates the buffered frame head; returns the whole frame's size once known.
    fn check_head(&mut self) -> Result<Option<usize>, ControlError> {
        if self.poisoned {
            return Err(ControlError::Poisoned);
        }
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u64::from(u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]));
        let verdict = if len == 0 {
            Err(ControlError::EmptyFrame)
        } else if avail.len() < HEAD_LEN {
            // Reject lengths no frame kind allows before waiting for the tag.
            if len > (1 + OFFSET_LEN + MAX_DATA_CHUNK.max(MAX_JSON_LEN)) as u64 {
                Err(ControlError::Oversized {
                    kind: "any",
                    len: len - 1,
                    max: OFFSET_LEN + MAX_DATA_CHUNK.max(MAX_JSON_LEN),
                })
            } else {
                return Ok(None);
            }
        } else {
            let body = len - 1;
            match avail[4] {
                TAG_JSON if body > MAX_JSON_LEN as u64 => Err(ControlError::Oversized {
                    kind: "JSON",
                    len: body,
                    max: MAX_JSON_LEN,
                }),
                TAG_DATA if body < OFFSET_LEN as u64 => Err(ControlError::ShortData(body)),
                TAG_DATA if body - OFFSET_LEN as u64 > MAX_DATA_CHUNK as u64 => {
                    Err(ControlError::Oversized {
                        kind: "data",
                        len: body - OFFSET_LEN as u64,
                        max: MAX_DATA_CHUNK,
                    })
                }
                TAG_JSON | TAG_DATA => Ok(4 + len as usize),
                tag => Err(ControlError::UnknownTag(tag)),
            }
        };
        verdict.map(Some).inspect_err(|_| {
            self.poisoned = true;
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        })
    }
}

#[derive(Serialize)]
struct Envelope<'a, M> {
    v: u32,
    #[serde(flatten)]
    msg: &'a M,
}

/// Appends one JSON message frame (with `"v"`) to `out`.
pub fn encode_message<M: Message>(msg: &M, out: &mut Vec<u8>) -> Result<(), ControlError> {
    let head_at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, TAG_JSON]);
    let envelope = Envelope {
        v: PROTOCOL_VERSION,
        msg,
    };
    if let Err(e) = serde_json::to_writer(&mut *out, &envelope) {
        out.truncate(head_at);
        return Err(ControlError::Encode(e.to_string()));
    }
    let body = out.len() - head_at - HEAD_LEN;
    if body > MAX_JSON_LEN {
        out.truncate(head_at);
        return Err(ControlError::Encode(format!(
            "{} message of {body} bytes exceeds the {MAX_JSON_LEN}-byte JSON limit",
            msg.type_name()
        )));
    }
    let len = u32::try_from(body + 1).map_err(|e| ControlError::Encode(e.to_string()))?;
    out[head_at..head_at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Appends one data chunk frame to `out`.
pub fn encode_data(offset: u64, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), ControlError> {
    if bytes.len() > MAX_DATA_CHUNK {
        return Err(ControlError::Oversized {
            kind: "data",
            len: bytes.len() as u64,
            max: MAX_DATA_CHUNK,
        });
    }
    // Fits in u32: bounded by MAX_DATA_CHUNK above.
    let len = (1 + OFFSET_LEN + bytes.len()) as u32;
    out.reserve(4 + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(TAG_DATA);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Parses a JSON body (in place, with simd-json) into a typed message, checking the
/// version, the type name and field values.
pub fn decode_message<M: Message>(json: &mut [u8]) -> Result<M, ControlError> {
    let value = simd_json::to_borrowed_value(json)
        .map_err(|e| ControlError::MalformedJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ControlError::MalformedJson(format!(
            "expected an object, got {:?}",
            value.value_type()
        )));
    }
    let v = value.get("v").ok_or(ControlError::MissingVersion)?;
    if v.as_u64() != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(ControlError::UnsupportedVersion {
            got: v.encode(),
            supported: PROTOCOL_VERSION,
        });
    }
    let ty = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(ControlError::MissingType)?
        .to_owned();
    if !M::TYPES.contains(&ty.as_str()) {
        return Err(ControlError::UnknownType(ty));
    }
    let msg: M =
        simd_json::serde::from_borrowed_value(value).map_err(|e| ControlError::InvalidMessage {
            ty: ty.clone(),
            reason: e.to_string(),
        })?;
    msg.validate()
        .map_err(|reason| ControlError::InvalidMessage { ty, reason })?;
    Ok(msg)
}

/// Wire-format helper for tests and tools: a JSON frame around arbitrary bytes.
pub fn encode_raw_json(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    out.push(TAG_JSON);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::messages::{CacheTag, ToReceiver, ToServer};

    #[derive(serde::Deserialize)]
    struct Probe {
        v: u32,
    }

    fn all_to_server() -> Vec<ToServer> {
        vec![
            ToServer::Hello {
                receiver: 7,
                content: "disk.img".into(),
                token: Some("s3cret".into()),
                have_cache: Some(CacheTag {
                    library: "2026-11".into(),
                    placement: "ff00".into(),
                }),
                more: vec!["films/".into(), "42".into()],
            },
            ToServer::Hello {
                receiver: 0,
                content: "x".into(),
                token: None,
                have_cache: None,
                more: Vec::new(),
            },
            ToServer::CacheResume { offset: u64::MAX },
            ToServer::Progress {
                bytes: 12345,
                drops: super::super::messages::DropCounts {
                    late: 3,
                    auth_failed: u64::MAX,
                    ..Default::default()
                },
            },
            ToServer::Done {
                ok: false,
                detail: "bad \"quote\" \u{1F600}".into(),
                bytes_received: 1 << 40,
                loss: None,
            },
            ToServer::Heartbeat,
        ]
    }

    fn all_to_receiver() -> Vec<ToReceiver> {
        vec![
            ToReceiver::Refused {
                reason: "session full".into(),
            },
            ToReceiver::Accepted {
                session: 42,
                contents: Vec::new(),
                data: Some(("ff05::4c".into(), 7701)),
            },
            ToReceiver::CacheBegin {
                len: 1 << 33,
                blake3: blake3::hash(b"abc").to_hex().to_string(),
                tag: CacheTag {
                    library: "v1".into(),
                    placement: "0123".into(),
                },
            },
            ToReceiver::CacheEnd,
            ToReceiver::Announce {
                session: 42,
                group: "ff15::1234".into(),
                port: 7400,
                plan: serde_json::json!({"scheme": "yma", "k": 4, "t": 2, "demands": [0, 1, 1, 3]}),
                manifest: serde_json::json!([{"name": "a", "len": 18446744073709551615u64}]),
                fec: serde_json::json!({"k": 32, "m": 8, "ratio": 0.25}),
            },
            ToReceiver::Report {
                summary: serde_json::json!({"planned": 1.5, "measured": 1.52, "note": null}),
            },
            ToReceiver::Heartbeat,
        ]
    }

    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msgs: &[M]) {
        let mut wire = Vec::new();
        for m in msgs {
            encode_message(m, &mut wire).unwrap();
        }
        // Feed the whole stream one byte at a time: every split point is exercised.
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &wire {
            dec.push(std::slice::from_ref(b));
            while let Some(frame) = dec.pop().unwrap() {
                let Frame::Json(body) = frame else {
                    panic!("data frame")
                };
                let mut probe = body.to_vec();
                assert_eq!(
                    simd_json::serde::from_slice::<Probe>(&mut probe).unwrap().v,
                    PROTOCOL_VERSION
                );
                got.push(decode_message::<M>(body).unwrap());
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(&all_to_server());
        round_trip(&all_to_receiver());
    }

    #[test]
    fn coalesced_json_and_data_frames() {
        let mut wire = Vec::new();
        encode_data(0, b"hello", &mut wire).unwrap();
        encode_message(&ToServer::Heartbeat, &mut wire).unwrap();
        encode_data(5, b"", &mut wire).unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&wire);
        assert_eq!(
            dec.pop().unwrap(),
            Some(Frame::Data {
                offset: 0,
                bytes: b"hello"
            })
        );
        assert!(matches!(dec.pop().unwrap(), Some(Frame::Json(_))));
        assert_eq!(
            dec.pop().unwrap(),
            Some(Frame::Data {
                offset: 5,
                bytes: b""
            })
        );
        assert_eq!(dec.pop().unwrap(), None);
    }

    fn decode_raw<M: Message>(body: &str) -> ControlError {
        let mut b = body.as_bytes().to_vec();
        decode_message::<M>(&mut b).unwrap_err()
    }

    #[test]
    fn bad_json_is_refused_with_reason() {
        assert!(matches!(
            decode_raw::<ToServer>(r#"{"v":3,"type":"hello""#),
            ControlError::MalformedJson(_)
        ));
        assert!(matches!(
            decode_raw::<ToServer>("[1,2]"),
            ControlError::MalformedJson(_)
        ));
        assert!(matches!(
            decode_raw::<ToServer>(r#"{"type":"heartbeat"}"#),
            ControlError::MissingVersion
        ));
        let e = decode_raw::<ToServer>(r#"{"v":2,"type":"heartbeat"}"#);
        assert_eq!(
            e.to_string(),
            "unsupported protocol version 2 (this build speaks 3)"
        );
        assert!(matches!(
            decode_raw::<ToServer>(r#"{"v":"1","type":"heartbeat"}"#),
            ControlError::UnsupportedVersion { .. }
        ));
        assert!(matches!(
            decode_raw::<ToServer>(r#"{"v":3}"#),
            ControlError::MissingType
        ));
        // A server→receiver type is unknown in the other direction.
        assert!(matches!(
            decode_raw::<ToServer>(r#"{"v":3,"type":"accepted","session":1}"#),
            ControlError::UnknownType(t) if t == "accepted"
        ));
        let e = decode_raw::<ToServer>(r#"{"v":3,"type":"progress","bytes":-1}"#);
        assert!(
            matches!(&e, ControlError::InvalidMessage { ty, .. } if ty == "progress"),
            "{e}"
        );
        assert!(matches!(
            decode_raw::<ToServer>(r#"{"v":3,"type":"cache_resume"}"#),
            ControlError::InvalidMessage { .. }
        ));
        assert!(matches!(
            decode_raw::<ToReceiver>(
                r#"{"v":3,"type":"cache_begin","len":1,"blake3":"00","tag":{"library":"a","placement":"b"}}"#
            ),
            ControlError::InvalidMessage { .. }
        ));
    }

    #[test]
    fn oversized_and_unknown_frames_poison_the_decoder() {
        let mut dec = FrameDecoder::new();
        dec.push(&((MAX_JSON_LEN as u32 + 2).to_le_bytes()));
        assert_eq!(dec.pop().unwrap(), None, "needs the tag to know the limit");
        dec.push(&[TAG_JSON]);
        let e = dec.pop().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "JSON frame of {} bytes exceeds the {MAX_JSON_LEN}-byte limit",
                MAX_JSON_LEN + 1
            )
        );
        assert!(matches!(dec.pop(), Err(ControlError::Poisoned)));

        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_le_bytes());
        assert!(matches!(dec.pop(), Err(ControlError::Oversized { .. })));

        let mut dec = FrameDecoder::new();
        dec.push(&[1, 0, 0, 0, 9]);
        assert!(matches!(dec.pop(), Err(ControlError::UnknownTag(9))));

        let mut dec = FrameDecoder::new();
        dec.push(&[4, 0, 0, 0, TAG_DATA, 1, 2, 3]);
        assert!(matches!(dec.pop(), Err(ControlError::ShortData(3))));

        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 0]);
        assert!(matches!(dec.pop(), Err(ControlError::EmptyFrame)));

        let mut out = Vec::new();
        assert!(encode_data(0, &vec![0; MAX_DATA_CHUNK + 1], &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let big = ToReceiver::Report {
            summary: serde_json::Value::String("x".repeat(MAX_JSON_LEN)),
        };
        let mut out = vec![9];
        assert!(matches!(
            encode_message(&big, &mut out),
            Err(ControlError::Encode(_))
        ));
        assert_eq!(out, [9]);
    }
}
