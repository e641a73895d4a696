//! Tokio glue: typed messages and cache blobs over a TCP (or any byte) stream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};

use super::blob::BlobReceiver;
use super::error::ControlError;
use super::frame::{
    Frame, FrameDecoder, MAX_DATA_CHUNK, decode_message, encode_data, encode_message,
};
use super::messages::{
    CacheTag, ClientExpect, Endpoint, Phase, ServerExpect, ToReceiver, ToServer,
};

/// How long [`Channel::recv`] and writes wait for the peer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of the data chunks [`Channel::send_blob`] sends.
pub const BLOB_CHUNK: usize = 256 * 1024;
/// Bytes requested from the stream per read.
const READ_CHUNK: usize = 64 * 1024;

/// One end of a control connection; `E` enforces the message order of that end.
#[derive(Debug)]
pub struct Channel<S, E: Endpoint> {
    stream: S,
    decoder: FrameDecoder,
    out: Vec<u8>,
    timeout: Duration,
    order: E,
}

/// The server's end of a receiver connection.
pub type ServerChannel<S = TcpStream> = Channel<S, ServerExpect>;
/// A receiver's end of its connection to the server.
pub type ReceiverChannel<S = TcpStream> = Channel<S, ClientExpect>;

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> ControlError {
    move |source| ControlError::Io { context, source }
}

impl<S: AsyncRead + AsyncWrite + Unpin, E: Endpoint> Channel<S, E> {
    /// Wraps a connected stream, with [`DEFAULT_TIMEOUT`].
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            decoder: FrameDecoder::new(),
            out: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            order: E::default(),
        }
    }

    /// Sets how long a receive or a write may wait for the peer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Where the connection stands in the protocol.
    pub fn phase(&self) -> Phase {
        self.order.phase()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Gives back the stream (any bytes buffered but not decoded are dropped).
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends one message after checking it is allowed now. Not cancel-safe: a dropped
    /// send may leave half a frame on the stream, so close the connection after one.
    pub async fn send(&mut self, msg: &E::Out) -> Result<(), ControlError> {
        self.order.sent(msg)?;
        self.out.clear();
        encode_message(msg, &mut self.out)?;
        self.flush_out("send a message").await
    }

    /// Receives the next message, refusing malformed, unknown, out-of-order messages and
    /// stray data chunks; fails after the timeout. Cancel-safe: bytes already read stay
    /// buffered, so it can race a timer in `tokio::select!` (e.g. to send heartbeats).
    pub async fn recv(&mut self) -> Result<E::In, ControlError> {
        self.fill_frame("receive a message").await?;
        let frame = self.decoder.pop()?.ok_or(ControlError::Truncated(0))?;
        match frame {
            Frame::Json(body) => {
                let msg = decode_message::<E::In>(body)?;
                self.order.received(&msg)?;
                Ok(msg)
            }
            Frame::Data { .. } => Err(ControlError::UnexpectedData),
        }
    }

    async fn flush_out(&mut self, doing: &'static str) -> Result<(), ControlError> {
        let deadline = Instant::now() + self.timeout;
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        match timeout_at(deadline, write).await {
            Ok(r) => r.map_err(io_err(doing)),
            Err(_) => Err(ControlError::Timeout {
                after: self.timeout,
                doing,
            }),
        }
    }

    /// Reads until a complete frame is buffered.
    async fn fill_frame(&mut self, doing: &'static str) -> Result<(), ControlError> {
        let deadline = Instant::now() + self.timeout;
        while !self.decoder.has_frame()? {
            let spare = self.decoder.spare(READ_CHUNK);
            let n = match timeout_at(deadline, self.stream.read(spare)).await {
                Ok(r) => r.map_err(io_err(doing))?,
                Err(_) => {
                    return Err(ControlError::Timeout {
                        after: self.timeout,
                        doing,
                    });
                }
            };
            if n == 0 {
                return Err(match self.decoder.buffered() {
                    0 => ControlError::Closed,
                    partial => ControlError::Truncated(partial),
                });
            }
            self.decoder.commit(n);
        }
        Ok(())
    }
}

impl ReceiverChannel<TcpStream> {
    /// Connects to the server (with the default timeout) and disables Nagle.
    pub async fn connect(addr: SocketAddr) -> Result<Self, ControlError> {
        let stream = match tokio::time::timeout(DEFAULT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(r) => r.map_err(io_err("connect to the server"))?,
            Err(_) => {
                return Err(ControlError::Timeout {
                    after: DEFAULT_TIMEOUT,
                    doing: "connect to the server",
                });
            }
        };
        stream
            .set_nodelay(true)
            .map_err(io_err("set TCP_NODELAY"))?;
        Ok(Self::new(stream))
    }
}

impl ServerChannel<TcpStream> {
    /// Accepts the next receiver connection and disables Nagle on it.
    pub async fn accept(listener: &TcpListener) -> Result<(Self, SocketAddr), ControlError> {
        let (stream, peer) = listener
            .accept()
            .await
            .map_err(io_err("accept a receiver"))?;
        stream
            .set_nodelay(true)
            .map_err(io_err("set TCP_NODELAY"))?;
        Ok((Self::new(stream), peer))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerChannel<S> {
    /// Offers a cache blob (`CacheBegin`) made of `pieces` back to back (slices of the
    /// library's mapped files: the blob is never copied whole), waits for the receiver's
    /// `CacheResume`, streams the rest from that offset and sends `CacheEnd`. Returns the
    /// offset resumed from.
    pub async fn send_cache(
        &mut self,
        pieces: &[&[u8]],
        hash: &blake3::Hash,
        tag: CacheTag,
    ) -> Result<u64, ControlError> {
        let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        self.send(&ToReceiver::CacheBegin {
            len,
            blake3: hash.to_hex().to_string(),
            tag,
        })
        .await?;
        let offset = loop {
            match self.recv().await? {
                ToServer::CacheResume { offset } => break offset,
                ToServer::Done { detail, .. } => return Err(ControlError::Aborted(detail)),
                // The order check lets only keep-alives through here.
                _ => continue,
            }
        };
        if offset > len {
            let err = ControlError::BadResume { offset, len };
            // Best effort: the receiver should learn why the connection ends.
            let _ = self
                .send(&ToReceiver::Refused {
                    reason: err.to_string(),
                })
                .await;
            return Err(err);
        }
        self.send_blob(pieces, offset).await?;
        self.send(&ToReceiver::CacheEnd).await?;
        Ok(offset)
    }

    /// Streams the blob `pieces` make, from byte `from` on, as data chunks of at most
    /// [`BLOB_CHUNK`] bytes; returns bytes sent. Only allowed between `CacheResume` and
    /// `CacheEnd`.
    pub async fn send_blob(&mut self, pieces: &[&[u8]], from: u64) -> Result<u64, ControlError> {
        self.order.data_allowed()?;
        let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        if from > len {
            return Err(ControlError::BadResume { offset: from, len });
        }
        // Frames stay full-size across piece boundaries (a cache can be many small
        // segments), so the receiver's resume offsets are whole chunks.
        let size = BLOB_CHUNK.min(MAX_DATA_CHUNK);
        let mut chunk = Vec::with_capacity(size);
        let (mut at, mut sent) = (0u64, 0u64);
        for piece in pieces {
            let end = at + piece.len() as u64;
            if end > from {
                let mut rest = &piece[from.saturating_sub(at) as usize..];
                while !rest.is_empty() {
                    let n = rest.len().min(size - chunk.len());
                    chunk.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    if chunk.len() == size {
                        sent += self.send_chunk(from + sent, &chunk).await?;
                        chunk.clear();
                    }
                }
            }
            at = end;
        }
        if !chunk.is_empty() {
            sent += self.send_chunk(from + sent, &chunk).await?;
        }
        Ok(sent)
    }

    async fn send_chunk(&mut self, offset: u64, chunk: &[u8]) -> Result<u64, ControlError> {
        self.out.clear();
        encode_data(offset, chunk, &mut self.out)?;
        self.flush_out("send a cache chunk").await?;
        Ok(chunk.len() as u64)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ReceiverChannel<S> {
    /// Answers the `CacheBegin` just received with `CacheResume { offset: state.offset() }`,
    /// writes the data chunks to `writer` (which must hold the first `state.offset()`
    /// bytes already) until `CacheEnd`, and verifies the BLAKE3. On a dropped connection
    /// `state` keeps the verified prefix length, to resume on a new connection; either
    /// way `writer` is flushed up to `state.offset()` before this returns.
    pub async fn recv_blob<W: AsyncWrite + Unpin>(
        &mut self,
        state: &mut BlobReceiver,
        writer: &mut W,
    ) -> Result<(), ControlError> {
        let received = self.recv_chunks(state, writer).await;
        let flushed = writer.flush().await.map_err(io_err("write the cache"));
        received?;
        flushed?;
        state.finish()
    }

    async fn recv_chunks<W: AsyncWrite + Unpin>(
        &mut self,
        state: &mut BlobReceiver,
        writer: &mut W,
    ) -> Result<(), ControlError> {
        self.send(&ToServer::CacheResume {
            offset: state.offset(),
        })
        .await?;
        loop {
            self.fill_frame("receive the cache").await?;
            match self.decoder.pop()?.ok_or(ControlError::Truncated(0))? {
                Frame::Data { offset, bytes } => {
                    self.order.data_allowed()?;
                    state.check(offset, bytes.len())?;
                    // Write before accepting, so `state` never counts bytes the writer lacks.
                    writer
                        .write_all(bytes)
                        .await
                        .map_err(io_err("write the cache"))?;
                    state.accept(offset, bytes)?;
                }
                Frame::Json(body) => {
                    let msg = decode_message::<ToReceiver>(body)?;
                    self.order.received(&msg)?;
                    match msg {
                        ToReceiver::CacheEnd => return Ok(()),
                        ToReceiver::Refused { reason } => {
                            return Err(ControlError::Refused(reason));
                        }
                        // The order check lets only keep-alives through here.
                        _ => continue,
                    }
                }
            }
        }
    }
}
