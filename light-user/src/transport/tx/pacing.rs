//! Sans-IO token-bucket pacing.

use std::time::{Duration, Instant};

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// A token bucket in exact integer arithmetic: tokens are byte-nanoseconds, so refilling
/// `rate` bytes per second for `d` nanoseconds adds exactly `rate * d`.
///
/// It starts full. A request larger than the burst is let through once the bucket is
/// full and leaves a debt, so oversized batches still pass at the configured rate.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: i128,
    burst: i128,
    tokens: i128,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A bucket refilling `rate_bytes_per_sec` (at least 1) holding at most `burst` bytes.
    pub fn new(rate_bytes_per_sec: u64, burst: u64) -> Self {
        let burst = i128::from(burst) * NANOS_PER_SEC;
        Self {
            rate: i128::from(rate_bytes_per_sec.max(1)),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        // Constructed from a u64.
        self.rate as u64
    }

    /// Takes `bytes` at time `now` and returns `None`, or takes nothing and returns how
    /// long to wait before the same request succeeds.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        let want = i128::from(bytes) * NANOS_PER_SEC;
        let need = want.min(self.burst);
        if self.tokens >= need {
            self.tokens -= want;
            return None;
        }
        let missing = need - self.tokens;
        // Round up so the retry at `now + wait` is guaranteed to succeed.
        let nanos = (missing + self.rate - 1) / self.rate;
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// Whole bytes available at `now` (negative while in debt).
    pub fn available(&mut self, now: Instant) -> i64 {
        self.refill(now);
        i64::try_from(self.tokens.div_euclid(NANOS_PER_SEC)).unwrap_or(i64::MAX)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            // Instants are monotonic, but a caller may pass an older one: no refill then.
            let elapsed = now.saturating_duration_since(last).as_nanos() as i128;
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
            if now > last {
                self.last = Some(now);
            }
        } else {
            self.last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_exactly_for_the_missing_tokens() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100);
        assert_eq!(b.take(100, t0), None);
        assert_eq!(b.take(50, t0), Some(Duration::from_millis(50)));
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(
            b.take(50, t1 - Duration::from_nanos(1)),
            Some(Duration::from_nanos(1))
        );
        assert_eq!(b.take(50, t1), None);
        assert_eq!(b.available(t1), 0);
    }

    #[test]
    fn oversized_request_passes_when_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100);
        assert_eq!(b.take(300, t0), None);
        assert_eq!(b.available(t0), -200);
        // 200 bytes of debt plus 100 for the next full bucket: 300 ms.
        assert_eq!(b.take(300, t0), Some(Duration::from_millis(300)));
    }
}
