//! The send pipeline: a producer fills recycled batches, a sender thread paces and sends
//! them, and the batches go back to the pool, so the steady state allocates nothing.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender as ChanSender, bounded};

use super::error::TxError;
use super::pacing::TokenBucket;
use super::socket::{GsoStatus, SendCounters, Sender, SocketConfig};

/// Everything [`spawn_sender`] needs.
#[derive(Clone, Debug)]
pub struct TxConfig {
    /// The socket.
    pub socket: SocketConfig,
    /// Pacing rate in UDP payload bytes per second; `None` sends as fast as possible.
    pub rate: Option<u64>,
    /// Token-bucket depth in bytes; `None`: two full batches or 1 ms at the rate, whichever
    /// is larger, so a sleep that overshoots does not cost rate.
    pub burst: Option<u64>,
    /// Datagrams per batch (one `sendmmsg` vector).
    pub batch_packets: usize,
    /// Bytes preallocated per datagram buffer (the largest payload expected).
    pub packet_capacity: usize,
    /// Batches in circulation (pool size); bounds the memory and the queue.
    pub pool_batches: usize,
}

impl TxConfig {
    /// Unpaced defaults for `dest`: 64 datagrams of up to 1472 bytes per batch, 16 batches.
    pub fn new(dest: std::net::SocketAddr) -> Self {
        Self {
            socket: SocketConfig::new(dest),
            rate: None,
            burst: None,
            batch_packets: 64,
            packet_capacity: 1472,
            pool_batches: 16,
        }
    }
}

/// What the sender thread did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams sent.
    pub packets: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// Batches sent.
    pub batches: u64,
    /// `sendmmsg` calls that sent something.
    pub syscalls: u64,
    /// GSO state at the end.
    pub gso: GsoStatus,
    /// Messages sent with GSO.
    pub gso_messages: u64,
    /// Retries after EAGAIN.
    pub eagain_retries: u64,
    /// Retries after ENOBUFS.
    pub enobufs_retries: u64,
    /// Time spent waiting for pacing tokens.
    pub paced_wait: Duration,
    /// From the thread's start to the last send.
    pub elapsed: Duration,
}

impl SendStats {
    fn new(
        c: SendCounters,
        gso: GsoStatus,
        batches: u64,
        paced_wait: Duration,
        elapsed: Duration,
    ) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            batches,
            syscalls: c.syscalls,
            gso,
            gso_messages: c.gso_messages,
            eagain_retries: c.eagain_retries,
            enobufs_retries: c.enobufs_retries,
            paced_wait,
            elapsed,
        }
    }
}

/// Up to a fixed number of datagram buffers, reused across sends.
#[derive(Debug)]
pub struct Batch {
    bufs: Vec<Vec<u8>>,
    len: usize,
    /// Where its datagrams go; `None`: the sender's configured destination.
    dest: Option<std::net::SocketAddr>,
}

impl Batch {
    /// A batch of `packets` buffers with `capacity` bytes each, allocated up front.
    pub fn new(packets: usize, capacity: usize) -> Self {
        Self {
            bufs: (0..packets).map(|_| Vec::with_capacity(capacity)).collect(),
            len: 0,
            dest: None,
        }
    }

    /// Sends this batch to `dest` instead of the configured destination (`None`: that one).
    pub fn set_dest(&mut self, dest: Option<std::net::SocketAddr>) {
        self.dest = dest;
    }

    /// Where this batch goes: `None` is the configured destination.
    pub fn dest(&self) -> Option<std::net::SocketAddr> {
        self.dest
    }

    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no datagram.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether no more datagrams fit.
    pub fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    /// Most datagrams the batch holds.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// The next datagram buffer, emptied, to fill in place; `None` when full.
    pub fn next_packet(&mut self) -> Option<&mut Vec<u8>> {
        let buf = self.bufs.get_mut(self.len)?;
        buf.clear();
        self.len += 1;
        Some(buf)
    }

    /// The next datagram buffer resized to `len` bytes, `None` when full. Its bytes are
    /// whatever its last use left (zeroes only where it grew), for callers that overwrite
    /// all of them: zeroing each full-size packet first cost the server ~0.1 s of CPU per
    /// GiB sent (perf, MTU 9000).
    pub fn next_packet_sized(&mut self, len: usize) -> Option<&mut Vec<u8>> {
        let buf = self.bufs.get_mut(self.len)?;
        buf.resize(len, 0);
        self.len += 1;
        Some(buf)
    }

    /// Appends a copy of `bytes` as the next datagram.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), TxError> {
        let cap = self.capacity();
        self.next_packet()
            .ok_or(TxError::BatchFull(cap))?
            .extend_from_slice(bytes);
        Ok(())
    }

    /// The datagrams, in order.
    pub fn packets(&self) -> &[Vec<u8>] {
        &self.bufs[..self.len]
    }

    /// Payload bytes in the batch.
    pub fn payload_bytes(&self) -> u64 {
        self.packets().iter().map(|p| p.len() as u64).sum()
    }

    /// Forgets the datagrams and the destination, keeping the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        self.dest = None;
    }
}

/// Optional pacing of whole batches.
#[derive(Clone, Debug)]
pub struct Pacer {
    bucket: Option<TokenBucket>,
}

impl Pacer {
    /// Paces at `rate` bytes per second with a bucket of `burst` bytes; `None`: unpaced.
    pub fn new(rate: Option<u64>, burst: u64) -> Self {
        Self {
            bucket: rate.map(|r| TokenBucket::new(r, burst)),
        }
    }

    /// How long to wait before `bytes` may go at `now` (`None`: go now; tokens taken).
    pub fn delay(&mut self, bytes: u64, now: Instant) -> Option<Duration> {
        self.bucket.as_mut()?.take(bytes, now)
    }
}

/// The producer's side of a running sender thread.
#[derive(Debug)]
pub struct SendHandle {
    pool: Receiver<Batch>,
    queue: ChanSender<Batch>,
}

impl SendHandle {
    /// An empty batch from the pool; blocks while all batches are queued or sending.
    pub fn batch(&self) -> Result<Batch, TxError> {
        self.pool.recv().map_err(|_| TxError::Stopped)
    }

    /// Queues a batch for sending; blocks while the queue is full.
    pub fn submit(&self, batch: Batch) -> Result<(), TxError> {
        self.queue.send(batch).map_err(|_| TxError::Stopped)
    }
}

/// Opens the socket (errors are reported here) and starts the sender thread. Dropping the
/// [`SendHandle`] ends the stream; join the thread for the [`SendStats`] or the error.
pub fn spawn_sender(
    config: TxConfig,
) -> Result<(SendHandle, JoinHandle<Result<SendStats, TxError>>), TxError> {
    if config.batch_packets == 0 || config.pool_batches == 0 {
        return Err(TxError::Config(
            "batch_packets and pool_batches must be positive".into(),
        ));
    }
    if config.rate == Some(0) {
        return Err(TxError::Config(
            "a pacing rate of 0 bytes/s never sends".into(),
        ));
    }
    let sender = Sender::new(&config.socket)?;
    let (pool_tx, pool_rx) = bounded(config.pool_batches);
    let (queue_tx, queue_rx) = bounded(config.pool_batches);
    for _ in 0..config.pool_batches {
        // Cannot fail: the channel has room for every batch and both ends are alive.
        let _ = pool_tx.send(Batch::new(config.batch_packets, config.packet_capacity));
    }
    let batch_bytes = (config.batch_packets * config.packet_capacity) as u64;
    let burst = config
        .burst
        .unwrap_or_else(|| (2 * batch_bytes).max(config.rate.unwrap_or(0) / 1000));
    let pacer = Pacer::new(config.rate, burst);
    let thread = std::thread::Builder::new()
        .name("light-tx".into())
        .spawn(move || run(sender, pacer, &queue_rx, &pool_tx))
        .map_err(setup_thread)?;
    Ok((
        SendHandle {
            pool: pool_rx,
            queue: queue_tx,
        },
        thread,
    ))
}

fn setup_thread(source: std::io::Error) -> TxError {
    TxError::Setup {
        context: "spawning the sender thread",
        source,
    }
}

fn run(
    mut sender: Sender,
    mut pacer: Pacer,
    queue: &Receiver<Batch>,
    pool: &ChanSender<Batch>,
) -> Result<SendStats, TxError> {
    let start = Instant::now();
    let mut last = start;
    let mut batches = 0;
    let mut paced_wait = Duration::ZERO;
    for mut batch in queue {
        let bytes = batch.payload_bytes();
        while let Some(wait) = pacer.delay(bytes, Instant::now()) {
            std::thread::sleep(wait);
            paced_wait += wait;
        }
        sender.send_to(batch.packets(), batch.dest())?;
        last = Instant::now();
        batches += 1;
        batch.clear();
        // The producer may have gone; the batch is then simply dropped.
        let _ = pool.send(batch);
    }
    Ok(SendStats::new(
        sender.counters(),
        sender.gso(),
        batches,
        paced_wait,
        last - start,
    ))
}

#[cfg(test)]
mod tests {
    use super::Batch;

    #[test]
    fn sized_packets_reuse_their_buffers_at_the_asked_length() {
        let mut b = Batch::new(2, 64);
        let first = b.next_packet_sized(40).unwrap();
        assert_eq!(
            first.as_slice(),
            &[0; 40][..],
            "a fresh buffer grows with zeroes"
        );
        first.fill(7);
        let at = first.as_ptr();
        b.next_packet_sized(64).unwrap();
        assert!(b.next_packet_sized(1).is_none(), "full");
        b.clear();
        let again = b.next_packet_sized(30).unwrap();
        assert_eq!(again.as_ptr(), at, "the buffer is reused, not reallocated");
        assert_eq!(again.len(), 30);
        // A shorter packet is the old bytes cut short: the caller overwrites them.
        assert!(again.iter().all(|&x| x == 7));
        assert_eq!(
            b.next_packet().unwrap().len(),
            0,
            "next_packet still empties"
        );
    }
}
