//! The control channel over real loopback TCP sockets.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use light::control::frame::encode_raw_json;
use light::control::{
    BLOB_CHUNK, BlobReceiver, CacheTag, ControlError, DropCounts, MAX_JSON_LEN, Phase,
    ReceiverChannel, ServerChannel, ToReceiver, ToServer, encode_message,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (ServerChannel, ReceiverChannel) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(
        ReceiverChannel::connect(addr),
        ServerChannel::accept(&listener)
    );
    (accepted.unwrap().0, client.unwrap())
}

/// A raw client socket and the server channel on the other end.
async fn raw_pair() -> (ServerChannel, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (ServerChannel::new(accepted.unwrap().0), client.unwrap())
}

fn hello(receiver: u32) -> ToServer {
    ToServer::Hello {
        receiver,
        content: "movie-7".into(),
        token: Some("t".into()),
        have_cache: None,
        more: Vec::new(),
    }
}

fn tag() -> CacheTag {
    CacheTag {
        library: "lib-2026.11".into(),
        placement: "9f86d081884c7d65".into(),
    }
}

#[tokio::test]
async fn whole_session_round_trips_every_message() {
    let (mut server, mut client) = pair().await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let hash = blake3::hash(&blob);
    let announce = ToReceiver::Announce {
        session: 9,
        group: "239.255.1.2".into(),
        port: 7400,
        plan: serde_json::json!({"scheme": "man", "k": 3, "t": 1, "demands": [0, 1, 2]}),
        manifest: serde_json::json!({"files": [{"id": "movie-7", "len": 123456789u64}]}),
        fec: serde_json::json!({"source": 32, "parity": 4}),
    };
    let report = ToReceiver::Report {
        summary: serde_json::json!({"planned_rate": 1.0, "measured_bytes": 42}),
    };
    let done = ToServer::Done {
        ok: true,
        detail: "verified".into(),
        bytes_received: 1 << 33,
        loss: None,
    };

    let server_side = {
        let (blob, announce, report, done) =
            (blob.clone(), announce.clone(), report.clone(), done.clone());
        tokio::spawn(async move {
            assert_eq!(server.recv().await.unwrap(), hello(5));
            assert_eq!(server.recv().await.unwrap(), ToServer::Heartbeat);
            server
                .send(&ToReceiver::Accepted {
                    session: 9,
                    contents: Vec::new(),
                    data: None,
                })
                .await
                .unwrap();
            // The blob goes out as uneven pieces, as the server sends file segments.
            let pieces: Vec<&[u8]> = blob.chunks(333_333).collect();
            let resumed = server.send_cache(&pieces, &hash, tag()).await.unwrap();
            assert_eq!(resumed, 0);
            server.send(&ToReceiver::Heartbeat).await.unwrap();
            server.send(&announce).await.unwrap();
            assert_eq!(
                server.recv().await.unwrap(),
                ToServer::Progress {
                    bytes: 77,
                    drops: DropCounts::default()
                }
            );
            assert_eq!(server.recv().await.unwrap(), done);
            server.send(&report).await.unwrap();
            assert_eq!(server.phase(), Phase::Finished);
        })
    };

    client.send(&hello(5)).await.unwrap();
    client.send(&ToServer::Heartbeat).await.unwrap();
    assert_eq!(
        client.recv().await.unwrap(),
        ToReceiver::Accepted {
            session: 9,
            contents: Vec::new(),
            data: None,
        }
    );
    let ToReceiver::CacheBegin {
        len,
        blake3,
        tag: got_tag,
    } = client.recv().await.unwrap()
    else {
        panic!("expected cache_begin")
    };
    assert_eq!(got_tag, tag());
    let mut state = BlobReceiver::new(len, &blake3).unwrap();
    let mut cache = Vec::new();
    client.recv_blob(&mut state, &mut cache).await.unwrap();
    assert_eq!(cache, blob);
    assert_eq!(client.recv().await.unwrap(), ToReceiver::Heartbeat);
    assert_eq!(client.recv().await.unwrap(), announce);
    client
        .send(&ToServer::Progress {
            bytes: 77,
            drops: DropCounts::default(),
        })
        .await
        .unwrap();
    client.send(&done).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), report);
    server_side.await.unwrap();
}

#[tokio::test]
async fn refused_is_delivered_and_closes() {
    let (mut server, mut client) = pair().await;
    client.send(&hello(1)).await.unwrap();
    server.recv().await.unwrap();
    server
        .send(&ToReceiver::Refused {
            reason: "unknown content".into(),
        })
        .await
        .unwrap();
    drop(server);
    assert_eq!(
        client.recv().await.unwrap(),
        ToReceiver::Refused {
            reason: "unknown content".into()
        }
    );
    assert_eq!(client.phase(), Phase::Closed);
    // Nothing may follow a refusal, and the peer is gone.
    assert!(matches!(
        client.send(&ToServer::Heartbeat).await,
        Err(ControlError::OutOfOrder { .. })
    ));
}

#[tokio::test]
async fn split_and_coalesced_frames() {
    let (mut server, mut raw) = raw_pair().await;
    let mut wire = Vec::new();
    encode_message(&hello(3), &mut wire).unwrap();
    encode_message(&ToServer::Heartbeat, &mut wire).unwrap();
    // Byte by byte, each write flushed separately with Nagle off.
    raw.set_nodelay(true).unwrap();
    let writer = tokio::spawn(async move {
        for b in wire {
            raw.write_all(&[b]).await.unwrap();
            raw.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        raw
    });
    assert_eq!(server.recv().await.unwrap(), hello(3));
    assert_eq!(server.recv().await.unwrap(), ToServer::Heartbeat);
    let mut raw = writer.await.unwrap();

    // Three frames in one write.
    let mut wire = Vec::new();
    for _ in 0..3 {
        encode_message(&ToServer::Heartbeat, &mut wire).unwrap();
    }
    raw.write_all(&wire).await.unwrap();
    for _ in 0..3 {
        assert_eq!(server.recv().await.unwrap(), ToServer::Heartbeat);
    }
}

async fn refusal_of(bytes: Vec<u8>) -> ControlError {
    let (mut server, mut raw) = raw_pair().await;
    raw.write_all(&bytes).await.unwrap();
    let err = server.recv().await.unwrap_err();
    drop(raw);
    err
}

#[tokio::test]
async fn oversized_frame_is_refused_with_reason() {
    let mut head = ((MAX_JSON_LEN + 100) as u32).to_le_bytes().to_vec();
    head.push(1);
    let err = refusal_of(head).await;
    assert!(
        matches!(err, ControlError::Oversized { kind: "JSON", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("exceeds the 1048576-byte limit"),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_version_malformed_unknown_and_out_of_order_are_refused() {
    let mut wire = Vec::new();
    encode_raw_json(
        br#"{"v":7,"type":"hello","receiver":1,"content":"x"}"#,
        &mut wire,
    );
    let err = refusal_of(wire).await;
    assert_eq!(
        err.to_string(),
        "unsupported protocol version 7 (this build speaks 3)"
    );

    let mut wire = Vec::new();
    encode_raw_json(br#"{"v":3,"type":"hello","receiver":1,"#, &mut wire);
    assert!(matches!(
        refusal_of(wire).await,
        ControlError::MalformedJson(_)
    ));

    let mut wire = Vec::new();
    encode_raw_json(br#"{"v":3,"type":"gimme"}"#, &mut wire);
    let err = refusal_of(wire).await;
    assert_eq!(err.to_string(), "unknown message type \"gimme\"");

    let mut wire = Vec::new();
    encode_raw_json(
        br#"{"v":3,"type":"hello","receiver":"one","content":"x"}"#,
        &mut wire,
    );
    assert!(matches!(
        refusal_of(wire).await,
        ControlError::InvalidMessage { .. }
    ));

    let mut wire = Vec::new();
    encode_message(&ToServer::CacheResume { offset: 0 }, &mut wire).unwrap();
    let err = refusal_of(wire).await;
    assert_eq!(err.to_string(), "cache_resume is not allowed before hello");

    // A data chunk where a message is expected.
    let mut wire = Vec::new();
    light::control::encode_data(0, b"abc", &mut wire).unwrap();
    assert!(matches!(
        refusal_of(wire).await,
        ControlError::UnexpectedData
    ));
}

#[tokio::test]
async fn silence_times_out_and_close_is_reported() {
    let (mut server, raw) = raw_pair().await;
    server.set_timeout(Duration::from_millis(50));
    assert!(matches!(
        server.recv().await,
        Err(ControlError::Timeout { .. })
    ));
    drop(raw);
    assert!(matches!(server.recv().await, Err(ControlError::Closed)));

    let (mut server, mut raw) = raw_pair().await;
    raw.write_all(&[10, 0, 0, 0, 1, b'{']).await.unwrap();
    drop(raw);
    assert!(matches!(
        server.recv().await,
        Err(ControlError::Truncated(6))
    ));
}

/// A stream that fails every write once `budget` bytes went through (after writing the
/// part that fits), like a connection that drops mid-transfer.
struct CutAfter {
    inner: TcpStream,
    budget: usize,
}

impl AsyncRead for CutAfter {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CutAfter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.budget == 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(self.budget);
        let r = Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let Poll::Ready(Ok(w)) = r {
            self.budget -= w;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one connection: hello, accepted, then the cache; returns the resume offset.
async fn serve_cache<S>(
    mut ch: ServerChannel<S>,
    blob: &[u8],
    hash: blake3::Hash,
) -> Result<u64, ControlError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    assert!(matches!(ch.recv().await?, ToServer::Hello { .. }));
    ch.send(&ToReceiver::Accepted {
        session: 1,
        contents: Vec::new(),
        data: None,
    })
    .await?;
    let pieces: Vec<&[u8]> = blob.chunks(77_777).collect();
    ch.send_cache(&pieces, &hash, tag()).await
}

/// Connects, says hello and answers the cache offer, resuming `state` when it matches.
async fn fetch_cache(
    addr: std::net::SocketAddr,
    state: &mut Option<BlobReceiver>,
    out: &mut Vec<u8>,
) -> Result<(), ControlError> {
    let mut ch = ReceiverChannel::connect(addr).await?;
    ch.send(&hello(2)).await?;
    assert_eq!(
        ch.recv().await?,
        ToReceiver::Accepted {
            session: 1,
            contents: Vec::new(),
            data: None,
        }
    );
    let ToReceiver::CacheBegin { len, blake3, .. } = ch.recv().await? else {
        panic!("expected cache_begin")
    };
    if !state.as_ref().is_some_and(|s| s.matches(len, &blake3)) {
        *state = Some(BlobReceiver::new(len, &blake3)?);
        out.clear();
    }
    let st = state.as_mut().expect("set above");
    ch.recv_blob(st, out).await
}

#[tokio::test]
async fn interrupted_blob_resumes_by_offset_and_verifies() {
    let blob: Vec<u8> = {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..5 * 1024 * 1024 + 123)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let hash = blake3::hash(&blob);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = 2 * 1024 * 1024 + 777; // mid-frame
    let server = {
        let blob = blob.clone();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let first = ServerChannel::new(CutAfter {
                inner: s,
                budget: cut,
            });
            let err = serve_cache(first, &blob, hash).await.unwrap_err();
            assert!(matches!(err, ControlError::Io { .. }), "{err}");
            let (s, _) = listener.accept().await.unwrap();
            serve_cache(ServerChannel::new(s), &blob, hash)
                .await
                .unwrap()
        })
    };

    let mut state = None;
    let mut cache = Vec::new();
    let err = fetch_cache(addr, &mut state, &mut cache).await.unwrap_err();
    assert!(matches!(err, ControlError::Truncated(_)), "{err}");
    let got = state.as_ref().unwrap().offset();
    assert!(got > 0 && got < blob.len() as u64, "{got}");
    assert_eq!(got % BLOB_CHUNK as u64, 0, "only whole chunks count");
    assert_eq!(cache.len() as u64, got);

    fetch_cache(addr, &mut state, &mut cache).await.unwrap();
    assert_eq!(
        server.await.unwrap(),
        got,
        "server resumed where the receiver stopped"
    );
    assert!(cache == blob, "resumed cache differs");
}

#[tokio::test]
async fn corrupted_blob_fails_verification() {
    let blob = vec![7u8; 700_000];
    let wrong = blake3::hash(b"something else");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        serve_cache(ServerChannel::new(s), &blob, wrong).await
    });
    let mut state = None;
    let mut cache = Vec::new();
    let err = fetch_cache(addr, &mut state, &mut cache).await.unwrap_err();
    assert!(matches!(err, ControlError::BlobHash { .. }), "{err}");
    assert_eq!(server.await.unwrap().unwrap(), 0);
}

#[tokio::test]
async fn resume_offset_past_the_end_is_refused() {
    let (mut server, mut client) = pair().await;
    let srv = tokio::spawn(async move {
        server.recv().await.unwrap();
        server
            .send(&ToReceiver::Accepted {
                session: 1,
                contents: Vec::new(),
                data: None,
            })
            .await
            .unwrap();
        let blob = [1u8; 10];
        server
            .send_cache(&[&blob], &blake3::hash(&blob), tag())
            .await
    });
    client.send(&hello(4)).await.unwrap();
    client.recv().await.unwrap();
    client.recv().await.unwrap();
    client
        .send(&ToServer::CacheResume { offset: 11 })
        .await
        .unwrap();
    let err = srv.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ControlError::BadResume {
                offset: 11,
                len: 10
            }
        ),
        "{err}"
    );
    assert!(
        matches!(client.recv().await.unwrap(), ToReceiver::Refused { reason } if reason.contains("past the blob length"))
    );
}

#[tokio::test]
async fn recv_is_cancel_safe_against_a_heartbeat_timer() {
    let (mut server, mut raw) = raw_pair().await;
    raw.set_nodelay(true).unwrap();
    let mut wire = Vec::new();
    encode_message(&hello(8), &mut wire).unwrap();
    encode_message(&ToServer::Heartbeat, &mut wire).unwrap();
    // Dribble the frames so many timer ticks cancel a recv mid-frame.
    let writer = tokio::spawn(async move {
        for piece in wire.chunks(3) {
            raw.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        raw
    });
    let mut got = Vec::new();
    let mut ticks = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while got.len() < 2 {
        tokio::select! {
            m = server.recv() => got.push(m.unwrap()),
            _ = tick.tick() => {
                ticks += 1;
                if !got.is_empty() {
                    server.send(&ToReceiver::Heartbeat).await.unwrap();
                }
            }
        }
    }
    assert_eq!(got, [hello(8), ToServer::Heartbeat]);
    assert!(ticks > 2, "the timer interrupted the receive {ticks} times");
    drop(writer.await.unwrap());
}
