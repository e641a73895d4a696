//! Typed control messages and the per-connection ordering rules.
//!
//! Every JSON message is an object `{"v": PROTOCOL_VERSION, "type": "<snake_case name>", ...}`.
//! The `plan`, `manifest` and `fec` fields of [`ToReceiver::Announce`] stay opaque
//! [`serde_json::Value`]s so this module does not depend on the coding or catalog types.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::ControlError;

/// Version carried as `"v"` in every control message. 3: receivers join up to
/// [`crate::coding::MAX_JOINS`] groups, so both ends must route alike.
pub const PROTOCOL_VERSION: u32 = 3;

/// Most contents one receiver may ask for in a session (bounds the rounds it adds).
pub const MAX_CONTENTS: usize = 256;

/// Most blocks one `Nack` may list (bounds the server's repair work per message).
pub const MAX_NACK_BLOCKS: usize = 16_384;

/// Identifies a receiver cache: the library it was placed from and the placement.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheTag {
    /// Version string of the library (catalog) the cache was filled from.
    pub library: String,
    /// Hash of the placement (which parts of which files this receiver caches).
    pub placement: String,
}

/// How a receiver's writer keeps up with its disk, reported with a [`ToServer::Nack`] by a
/// receiver whose reception paused for it: it sets how fast the repair it asks for may come.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriterPace {
    /// Bytes/s the writer drained while reception waited for it.
    pub drain_rate: f64,
    /// Bytes the receiver can still take in before reception pauses again.
    pub room: u64,
}

/// Packets a receiver dropped so far, by reason (reported with [`ToServer::Progress`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DropCounts {
    /// Rejected by header parsing (truncated, bad magic, version, kind or length).
    pub malformed: u64,
    /// Packets of another session.
    pub foreign_session: u64,
    /// Shards already held.
    pub duplicate: u64,
    /// Shards of blocks or messages already complete.
    pub late: u64,
    /// Packets whose MAC did not verify (forged or corrupted).
    pub auth_failed: u64,
}

impl DropCounts {
    /// Each counter with its reason's name.
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("malformed", self.malformed),
            ("foreign_session", self.foreign_session),
            ("duplicate", self.duplicate),
            ("late", self.late),
            ("auth_failed", self.auth_failed),
        ]
    }
}

/// Messages a receiver sends to the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToServer {
    /// First message on a connection: who the receiver is and what it wants.
    Hello {
        /// Receiver id (`light receive <RECEIVER_ID>`).
        receiver: u32,
        /// Requested content id.
        content: String,
        /// Optional shared-secret token.
        token: Option<String>,
        /// The complete cache the receiver already holds, if any.
        have_cache: Option<CacheTag>,
        /// Further contents wanted in the same session (ids, paths or directories).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        more: Vec<String>,
    },
    /// First message of `light cache fill`: place this receiver's cache now, outside any
    /// session (no content is asked for).
    Fill {
        /// Receiver id.
        receiver: u32,
        /// Optional shared-secret token.
        token: Option<String>,
        /// The complete cache the receiver already holds, if any.
        have_cache: Option<CacheTag>,
    },
    /// The cache just transferred is on disk and hashed right (the server records it).
    CacheStored,
    /// Answer to `CacheBegin`: send the cache from this byte offset (0 for a fresh start).
    CacheResume {
        /// Bytes of the announced blob the receiver already holds and verified in order.
        offset: u64,
    },
    /// The receiver has its cache and plan and is listening on the group: send data.
    Ready,
    /// The multicast round ended with these FEC blocks still short of shards.
    Nack {
        /// `[message, block, shards needed]` per incomplete block.
        blocks: Vec<[u32; 3]>,
        /// Packet loss the receiver measured so far (0-1; absent from older receivers):
        /// far above the link's, it says the receiver could not keep up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
        /// How its writer keeps up, from a receiver that paused for its disk (absent
        /// otherwise, and from older receivers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        writer: Option<WriterPace>,
    },
    /// Delivery progress.
    Progress {
        /// Bytes of the requested content decoded so far.
        bytes: u64,
        /// Packets dropped so far, by reason (absent from older receivers).
        #[serde(default)]
        drops: DropCounts,
    },
    /// The receiver finished (successfully or not).
    Done {
        /// Whether the content was decoded and verified.
        ok: bool,
        /// Human-readable detail (error reason or summary).
        detail: String,
        /// Multicast payload bytes received.
        bytes_received: u64,
        /// Packet loss the receiver measured on the way from the server (0–1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss: Option<f64>,
    },
    /// Keep-alive.
    Heartbeat,
    /// First message of a status query (instead of `Hello`): the server answers with
    /// [`ToReceiver::Status`] (or `Refused`) and closes.
    Status {
        /// Optional shared-secret token (required when the server has one).
        token: Option<String>,
    },
}

/// Messages the server sends to a receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToReceiver {
    /// The server will not serve this receiver; the connection closes.
    Refused {
        /// Why.
        reason: String,
    },
    /// The receiver is part of a session.
    Accepted {
        /// Session id.
        session: u32,
        /// Library paths of the contents this session delivers to the receiver, in order
        /// (directories expanded; on a rejoin, only those not yet delivered).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        contents: Vec<String>,
        /// Multicast group and UDP port of the data plane, told ahead of the announcements
        /// so the receiver can open its receive path while its cache and the others come.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<(String, u16)>,
    },
    /// A cache blob follows as data chunks once the receiver answers with `CacheResume`.
    CacheBegin {
        /// Blob length in bytes.
        len: u64,
        /// BLAKE3 of the whole blob, 64 hex digits.
        blake3: String,
        /// What the cache is.
        tag: CacheTag,
    },
    /// All data chunks of the blob were sent.
    CacheEnd,
    /// The cache the receiver holds is the one its slot needs: nothing is transferred.
    CacheKept {
        /// What the cache is.
        tag: CacheTag,
    },
    /// Where and how the coded multicast will be sent.
    Announce {
        /// Session id.
        session: u32,
        /// Multicast group address (IPv4 or IPv6).
        group: String,
        /// UDP port.
        port: u16,
        /// The coding plan input (opaque here).
        plan: serde_json::Value,
        /// The content manifest (opaque here).
        manifest: serde_json::Value,
        /// FEC parameters (opaque here).
        fec: serde_json::Value,
    },
    /// Free-form session summary.
    Report {
        /// Summary fields (planned vs measured rate, ...).
        summary: serde_json::Value,
    },
    /// Keep-alive.
    Heartbeat,
    /// Answer to [`ToServer::Status`]: the library, known receivers and the live session.
    Status {
        /// The status document (opaque here).
        status: serde_json::Value,
    },
}

/// A control message type of one direction.
pub trait Message: Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static {
    /// The `"type"` names of this direction.
    const TYPES: &'static [&'static str];
    /// This message's `"type"` name.
    fn type_name(&self) -> &'static str;
    /// Checks field values serde cannot (address syntax, hash length); `Err` gives the reason.
    fn validate(&self) -> Result<(), String>;
}

impl Message for ToServer {
    const TYPES: &'static [&'static str] = &[
        "hello",
        "fill",
        "cache_stored",
        "cache_resume",
        "ready",
        "nack",
        "progress",
        "done",
        "heartbeat",
        "status",
    ];

    fn type_name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Fill { .. } => "fill",
            Self::CacheStored => "cache_stored",
            Self::CacheResume { .. } => "cache_resume",
            Self::Ready => "ready",
            Self::Nack { .. } => "nack",
            Self::Progress { .. } => "progress",
            Self::Done { .. } => "done",
            Self::Heartbeat => "heartbeat",
            Self::Status { .. } => "status",
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::Nack { blocks, .. } if blocks.len() > MAX_NACK_BLOCKS => Err(format!(
                "nack lists {} blocks, more than the {MAX_NACK_BLOCKS} allowed",
                blocks.len()
            )),
            Self::Nack {
                writer: Some(w), ..
            } if !(w.drain_rate.is_finite() && w.drain_rate > 0.0) => Err(format!(
                "nack's writer drain rate {} is not a positive number of bytes/s",
                w.drain_rate
            )),
            Self::Hello { content, more, .. }
                if content.is_empty() || more.iter().any(String::is_empty) =>
            {
                Err("content id is empty".to_owned())
            }
            Self::Hello { more, .. } if more.len() >= MAX_CONTENTS => Err(format!(
                "hello asks for {} contents, more than the {MAX_CONTENTS} allowed",
                more.len() + 1
            )),
            Self::Hello {
                have_cache: Some(tag),
                ..
            }
            | Self::Fill {
                have_cache: Some(tag),
                ..
            } => validate_tag(tag),
            _ => Ok(()),
        }
    }
}

impl Message for ToReceiver {
    const TYPES: &'static [&'static str] = &[
        "refused",
        "accepted",
        "cache_begin",
        "cache_end",
        "cache_kept",
        "announce",
        "report",
        "heartbeat",
        "status",
    ];

    fn type_name(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::Accepted { .. } => "accepted",
            Self::CacheBegin { .. } => "cache_begin",
            Self::CacheEnd => "cache_end",
            Self::CacheKept { .. } => "cache_kept",
            Self::Announce { .. } => "announce",
            Self::Report { .. } => "report",
            Self::Heartbeat => "heartbeat",
            Self::Status { .. } => "status",
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            Self::CacheBegin { blake3, tag, .. } => {
                blake3::Hash::from_hex(blake3)
                    .map_err(|e| format!("blake3 {blake3:?} is not a hex BLAKE3 hash: {e}"))?;
                validate_tag(tag)
            }
            Self::Announce { group, port, .. } => {
                let ip: std::net::IpAddr = group
                    .parse()
                    .map_err(|_| format!("group {group:?} is not an IP address"))?;
                if *port == 0 {
                    return Err("port 0".to_owned());
                }
                if ip.is_unspecified() {
                    return Err(format!("group {ip} is unspecified"));
                }
                Ok(())
            }
            Self::CacheKept { tag } => validate_tag(tag),
            _ => Ok(()),
        }
    }
}

fn validate_tag(tag: &CacheTag) -> Result<(), String> {
    if tag.library.is_empty() || tag.placement.is_empty() {
        return Err("cache tag has an empty library or placement".to_owned());
    }
    Ok(())
}

/// Where a connection stands in the protocol (the same phases on both ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing exchanged yet: only `Hello` may come first.
    AwaitHello,
    /// `Hello` seen, the server has not answered.
    Greeted,
    /// Accepted; no cache transfer in progress.
    Ready,
    /// `CacheBegin` sent, waiting for `CacheResume`.
    CacheOffered,
    /// Data chunks flow until `CacheEnd`.
    CacheSending,
    /// `Announce` sent: multicast delivery under way.
    Announced,
    /// The receiver reported `Done`.
    Finished,
    /// Refused: nothing more may be exchanged.
    Closed,
    /// A status query was made; only the answer (or a refusal) may follow.
    StatusAsked,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Self::AwaitHello => "before hello",
            Self::Greeted => "before the server accepted or refused",
            Self::Ready => "outside a cache transfer and before announce",
            Self::CacheOffered => "between cache_begin and cache_resume",
            Self::CacheSending => "during the cache transfer",
            Self::Announced => "during delivery",
            Self::Finished => "after done",
            Self::Closed => "after refused",
            Self::StatusAsked => "after a status query",
        }
    }

    fn refuse(self, what: &'static str) -> ControlError {
        ControlError::OutOfOrder {
            what,
            phase: self.describe(),
        }
    }

    /// Applies a receiver→server message; both ends use this rule.
    fn on_to_server(self, msg: &ToServer) -> Result<Self, ControlError> {
        use Phase::*;
        let next = match (self, msg) {
            (AwaitHello, ToServer::Hello { .. } | ToServer::Fill { .. }) => Greeted,
            (AwaitHello, ToServer::Status { .. }) => StatusAsked,
            (Ready, ToServer::CacheStored) => Ready,
            (CacheOffered, ToServer::CacheResume { .. }) => CacheSending,
            (Announced, ToServer::Ready | ToServer::Nack { .. } | ToServer::Progress { .. }) => {
                Announced
            }
            (Announced, ToServer::Done { .. }) => Finished,
            // A receiver may give up at any point after introducing itself.
            (Greeted | Ready | CacheOffered | CacheSending, ToServer::Done { ok: false, .. }) => {
                Finished
            }
            (AwaitHello | Closed, ToServer::Heartbeat) => return Err(self.refuse("heartbeat")),
            (p, ToServer::Heartbeat) => p,
            (p, m) => return Err(p.refuse(m.type_name())),
        };
        Ok(next)
    }

    /// Applies a server→receiver message; both ends use this rule.
    fn on_to_receiver(self, msg: &ToReceiver) -> Result<Self, ControlError> {
        use Phase::*;
        let next = match (self, msg) {
            (Closed, m) => return Err(Closed.refuse(m.type_name())),
            (_, ToReceiver::Refused { .. }) => Closed,
            (Greeted, ToReceiver::Accepted { .. }) => Ready,
            (StatusAsked, ToReceiver::Status { .. }) => Closed,
            (Ready, ToReceiver::CacheBegin { .. }) => CacheOffered,
            (CacheSending, ToReceiver::CacheEnd) => Ready,
            (Ready, ToReceiver::CacheKept { .. }) => Ready,
            // A receiver that asked for several contents gets one announcement each.
            (Ready | Finished, ToReceiver::Announce { .. }) => Announced,
            (Announced | Finished, ToReceiver::Report { .. }) => self,
            (AwaitHello, ToReceiver::Heartbeat) => return Err(self.refuse("heartbeat")),
            (p, ToReceiver::Heartbeat) => p,
            (p, m) => return Err(p.refuse(m.type_name())),
        };
        Ok(next)
    }
}

/// One end's ordering rules: what it may send and what it accepts, in which phase.
pub trait Endpoint: Default + Send {
    /// Messages this end sends.
    type Out: Message;
    /// Messages this end receives.
    type In: Message;
    /// Checks and records an outgoing message; `Err` means it must not be sent now.
    fn sent(&mut self, msg: &Self::Out) -> Result<(), ControlError>;
    /// Checks and records an incoming message; `Err` gives the reason to refuse it.
    fn received(&mut self, msg: &Self::In) -> Result<(), ControlError>;
    /// Whether cache data chunks may flow now.
    fn data_allowed(&self) -> Result<(), ControlError>;
    /// The current phase.
    fn phase(&self) -> Phase;
}

/// The server's view of one receiver connection.
#[derive(Clone, Debug)]
pub struct ServerExpect {
    phase: Phase,
}

/// The receiver's view of its connection to the server.
#[derive(Clone, Debug)]
pub struct ClientExpect {
    phase: Phase,
}

impl Default for ServerExpect {
    fn default() -> Self {
        Self {
            phase: Phase::AwaitHello,
        }
    }
}

impl Default for ClientExpect {
    fn default() -> Self {
        Self {
            phase: Phase::AwaitHello,
        }
    }
}

fn data_in(phase: Phase) -> Result<(), ControlError> {
    if phase == Phase::CacheSending {
        Ok(())
    } else {
        Err(phase.refuse("data chunk"))
    }
}

impl Endpoint for ServerExpect {
    type Out = ToReceiver;
    type In = ToServer;

    fn sent(&mut self, msg: &ToReceiver) -> Result<(), ControlError> {
        self.phase = self.phase.on_to_receiver(msg)?;
        Ok(())
    }

    fn received(&mut self, msg: &ToServer) -> Result<(), ControlError> {
        self.phase = self.phase.on_to_server(msg)?;
        Ok(())
    }

    fn data_allowed(&self) -> Result<(), ControlError> {
        data_in(self.phase)
    }

    fn phase(&self) -> Phase {
        self.phase
    }
}

impl Endpoint for ClientExpect {
    type Out = ToServer;
    type In = ToReceiver;

    fn sent(&mut self, msg: &ToServer) -> Result<(), ControlError> {
        self.phase = self.phase.on_to_server(msg)?;
        Ok(())
    }

    fn received(&mut self, msg: &ToReceiver) -> Result<(), ControlError> {
        self.phase = self.phase.on_to_receiver(msg)?;
        Ok(())
    }

    fn data_allowed(&self) -> Result<(), ControlError> {
        data_in(self.phase)
    }

    fn phase(&self) -> Phase {
        self.phase
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> CacheTag {
        CacheTag {
            library: "lib-1".into(),
            placement: "abcd".into(),
        }
    }

    fn hello() -> ToServer {
        ToServer::Hello {
            receiver: 3,
            content: "movie".into(),
            token: None,
            have_cache: None,
            more: Vec::new(),
        }
    }

    #[test]
    fn cache_resume_before_hello_is_refused_with_reason() {
        let mut s = ServerExpect::default();
        let err = s
            .received(&ToServer::CacheResume { offset: 0 })
            .unwrap_err();
        assert_eq!(err.to_string(), "cache_resume is not allowed before hello");
        assert_eq!(s.phase(), Phase::AwaitHello);
    }

    #[test]
    fn full_flow_is_accepted_on_both_ends() {
        let mut s = ServerExpect::default();
        let mut c = ClientExpect::default();
        let up = |m: ToServer, s: &mut ServerExpect, c: &mut ClientExpect| {
            c.sent(&m).unwrap();
            s.received(&m).unwrap();
        };
        let down = |m: ToReceiver, s: &mut ServerExpect, c: &mut ClientExpect| {
            s.sent(&m).unwrap();
            c.received(&m).unwrap();
        };
        up(hello(), &mut s, &mut c);
        up(ToServer::Heartbeat, &mut s, &mut c);
        down(
            ToReceiver::Accepted {
                session: 1,
                contents: Vec::new(),
                data: Some(("239.1.2.3".into(), 7701)),
            },
            &mut s,
            &mut c,
        );
        let begin = ToReceiver::CacheBegin {
            len: 10,
            blake3: blake3::hash(b"x").to_hex().to_string(),
            tag: tag(),
        };
        down(begin, &mut s, &mut c);
        assert!(s.data_allowed().is_err());
        up(ToServer::CacheResume { offset: 0 }, &mut s, &mut c);
        assert!(s.data_allowed().is_ok() && c.data_allowed().is_ok());
        down(ToReceiver::CacheEnd, &mut s, &mut c);
        assert!(c.data_allowed().is_err());
        let announce = ToReceiver::Announce {
            session: 1,
            group: "239.1.2.3".into(),
            port: 5000,
            plan: serde_json::json!({}),
            manifest: serde_json::json!([]),
            fec: serde_json::json!(null),
        };
        down(announce, &mut s, &mut c);
        up(
            ToServer::Progress {
                bytes: 5,
                drops: DropCounts::default(),
            },
            &mut s,
            &mut c,
        );
        up(
            ToServer::Done {
                ok: true,
                detail: String::new(),
                bytes_received: 9,
                loss: None,
            },
            &mut s,
            &mut c,
        );
        down(
            ToReceiver::Report {
                summary: serde_json::json!({"rate": 1.5}),
            },
            &mut s,
            &mut c,
        );
        assert_eq!(s.phase(), Phase::Finished);
    }

    #[test]
    fn fill_flows_are_accepted_and_kept_caches_skip_the_transfer() {
        let mut s = ServerExpect::default();
        let mut c = ClientExpect::default();
        let fill = ToServer::Fill {
            receiver: 2,
            token: None,
            have_cache: Some(tag()),
        };
        c.sent(&fill).unwrap();
        s.received(&fill).unwrap();
        for m in [
            ToReceiver::Accepted {
                session: 1,
                contents: Vec::new(),
                data: None,
            },
            ToReceiver::CacheKept { tag: tag() },
        ] {
            s.sent(&m).unwrap();
            c.received(&m).unwrap();
        }
        assert_eq!(s.phase(), Phase::Ready);
        // A cache that was not offered cannot be resumed; a stored one can be confirmed.
        assert!(c.sent(&ToServer::CacheResume { offset: 0 }).is_err());
        c.sent(&ToServer::CacheStored).unwrap();
        // Kept caches need a valid tag; fills name no content.
        let bad = ToReceiver::CacheKept {
            tag: CacheTag {
                library: String::new(),
                placement: "p".into(),
            },
        };
        assert!(bad.validate().is_err());
        let mut fresh = ServerExpect::default();
        assert!(fresh.received(&ToServer::CacheStored).is_err());
    }

    #[test]
    fn several_contents_get_one_announcement_each_and_are_bounded() {
        let mut c = ClientExpect::default();
        c.sent(&hello()).unwrap();
        let announce = ToReceiver::Announce {
            session: 1,
            group: "239.1.2.3".into(),
            port: 5000,
            plan: serde_json::Value::Null,
            manifest: serde_json::Value::Null,
            fec: serde_json::Value::Null,
        };
        c.received(&ToReceiver::Accepted {
            session: 1,
            contents: vec!["a".into(), "b".into()],
            data: None,
        })
        .unwrap();
        for _ in 0..2 {
            c.received(&announce).unwrap();
            c.sent(&ToServer::Ready).unwrap();
            c.sent(&ToServer::Done {
                ok: true,
                detail: String::new(),
                bytes_received: 1,
                loss: None,
            })
            .unwrap();
        }
        let many = ToServer::Hello {
            receiver: 1,
            content: "a".into(),
            token: None,
            have_cache: None,
            more: vec!["b".into(); MAX_CONTENTS],
        };
        assert!(many.validate().unwrap_err().contains("contents"));
        let empty = ToServer::Hello {
            receiver: 1,
            content: "a".into(),
            token: None,
            have_cache: None,
            more: vec![String::new()],
        };
        assert!(empty.validate().is_err());
    }

    #[test]
    fn out_of_order_messages_are_refused() {
        let mut c = ClientExpect::default();
        assert!(c.sent(&ToServer::Heartbeat).is_err());
        c.sent(&hello()).unwrap();
        // CacheEnd without a transfer, Announce before Accepted.
        assert!(c.received(&ToReceiver::CacheEnd).is_err());
        let err = c
            .received(&ToReceiver::Announce {
                session: 1,
                group: "239.0.0.1".into(),
                port: 1,
                plan: serde_json::Value::Null,
                manifest: serde_json::Value::Null,
                fec: serde_json::Value::Null,
            })
            .unwrap_err();
        assert!(err.to_string().contains("announce"), "{err}");
        // A successful Done needs a delivery; a failed one is always possible.
        let done = |ok| ToServer::Done {
            ok,
            detail: String::new(),
            bytes_received: 0,
            loss: None,
        };
        assert!(c.sent(&done(true)).is_err());
        c.sent(&done(false)).unwrap();
        assert!(c.sent(&hello()).is_err());
    }

    #[test]
    fn refused_closes_the_connection() {
        let mut c = ClientExpect::default();
        c.sent(&hello()).unwrap();
        c.received(&ToReceiver::Refused {
            reason: "full".into(),
        })
        .unwrap();
        assert_eq!(c.phase(), Phase::Closed);
        assert!(c.received(&ToReceiver::Heartbeat).is_err());
    }

    #[test]
    fn status_query_gets_one_answer_then_closes() {
        let mut s = ServerExpect::default();
        let mut c = ClientExpect::default();
        let ask = ToServer::Status { token: None };
        c.sent(&ask).unwrap();
        s.received(&ask).unwrap();
        // A status connection never joins a session.
        assert!(
            s.sent(&ToReceiver::Accepted {
                session: 1,
                contents: Vec::new(),
                data: None,
            })
            .is_err()
        );
        let answer = ToReceiver::Status {
            status: serde_json::json!({"phase": "gathering"}),
        };
        s.sent(&answer).unwrap();
        c.received(&answer).unwrap();
        assert_eq!(c.phase(), Phase::Closed);
        assert!(c.sent(&ToServer::Ready).is_err());
        // Not after a hello either.
        let mut late = ClientExpect::default();
        late.sent(&hello()).unwrap();
        assert!(late.sent(&ToServer::Status { token: None }).is_err());
    }

    #[test]
    fn progress_without_drop_counts_still_decodes() {
        // Through the wire decoder, as an older receiver would send it.
        let mut wire = br#"{"v":3,"type":"progress","bytes":7}"#.to_vec();
        let old: ToServer = super::super::frame::decode_message(&mut wire).unwrap();
        assert_eq!(
            old,
            ToServer::Progress {
                bytes: 7,
                drops: DropCounts::default()
            }
        );
        let partial: ToServer =
            serde_json::from_str(r#"{"type":"progress","bytes":7,"drops":{"late":3}}"#).unwrap();
        let ToServer::Progress { drops, .. } = partial else {
            panic!("{partial:?}")
        };
        assert_eq!((drops.late, drops.malformed), (3, 0));
    }

    #[test]
    fn validate_rejects_bad_fields() {
        let bad_hash = ToReceiver::CacheBegin {
            len: 1,
            blake3: "zz".into(),
            tag: tag(),
        };
        assert!(bad_hash.validate().is_err());
        let bad_group = ToReceiver::Announce {
            session: 1,
            group: "not-an-ip".into(),
            port: 9,
            plan: serde_json::Value::Null,
            manifest: serde_json::Value::Null,
            fec: serde_json::Value::Null,
        };
        assert!(bad_group.validate().is_err());
        assert!(hello().validate().is_ok());
    }

    #[test]
    fn nack_with_and_without_a_writer_pace() {
        // An older receiver's nack, through the wire decoder, has no pace.
        let mut wire = br#"{"v":3,"type":"nack","blocks":[[1,2,3]],"loss":0.5}"#.to_vec();
        let old: ToServer = super::super::frame::decode_message(&mut wire).unwrap();
        let ToServer::Nack { writer, loss, .. } = old else {
            panic!("{old:?}")
        };
        assert_eq!((writer, loss), (None, Some(0.5)));
        let nack = |drain_rate: f64| ToServer::Nack {
            blocks: vec![[0, 0, 1]],
            loss: None,
            writer: Some(WriterPace {
                drain_rate,
                room: 4096,
            }),
        };
        let good = nack(8e6);
        assert!(good.validate().is_ok());
        let json = serde_json::to_string(&good).unwrap();
        assert_eq!(serde_json::from_str::<ToServer>(&json).unwrap(), good);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = nack(bad).validate().unwrap_err();
            assert!(err.contains("drain rate"), "{err}");
        }
    }
}
