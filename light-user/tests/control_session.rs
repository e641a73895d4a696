//! The server's admission rules over a real loopback control channel (no multicast needed):
//! a second receiver claiming an id already in the session is refused with the reason.

use std::{net::SocketAddr, time::Duration};

use light::{
    coding::{CacheBudget, SchemeChoice},
    control::{
        ReceiverChannel, ToReceiver, ToServer,
        server::{ServeConfig, serve},
        session::SessionError,
    },
};

fn hello(receiver: u32, content: &str) -> ToServer {
    ToServer::Hello {
        receiver,
        content: content.into(),
        token: None,
        have_cache: None,
        more: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_receiver_id_is_refused_with_a_reason() {
    let lib = tempfile::tempdir().unwrap();
    std::fs::write(lib.path().join("a.bin"), vec![7u8; 10_000]).unwrap();
    // Find a free port, then let the server bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = ServeConfig {
        library: lib.path().into(),
        receivers: 2,
        min_receivers: 2,
        wait: Duration::from_secs(3),
        budget: CacheBudget::Bytes(0),
        scheme: SchemeChoice::Auto,
        group: "239.77.3.3".parse().unwrap(),
        port: 7733,
        subset_groups: 64,
        iface: None,
        rate: None,
        bind,
        mtu: 1500,
        expected_loss: 0.01,
        adapt_loss: true,
        done_timeout: Duration::from_secs(5),
        token: None,
        authenticate_packets: true,
        metrics: None,
    };
    let server = tokio::spawn(serve(cfg));
    let connect = || async {
        for _ in 0..100 {
            if let Ok(c) = ReceiverChannel::connect(bind).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server never listened");
    };
    let mut first = connect().await;
    first.send(&hello(1, "a.bin")).await.unwrap();
    assert!(matches!(
        first.recv().await.unwrap(),
        ToReceiver::Accepted { .. }
    ));
    let mut second = connect().await;
    second.send(&hello(1, "a.bin")).await.unwrap();
    match second.recv().await.unwrap() {
        ToReceiver::Refused { reason } => {
            assert!(
                reason.contains("receiver id 1 is already in this session"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nobody else comes: the server gives up after --wait with a clear error.
    match server.await.unwrap() {
        Err(SessionError::TooFewReceivers { got: 1, need: 2 }) => {}
        other => panic!("expected TooFewReceivers, got {other:?}"),
    }
}
