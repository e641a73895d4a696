//! Sans-IO state of a resumable cache blob download.

use super::error::ControlError;

/// Tracks a blob being received in order: how far it got and the running BLAKE3.
///
/// It outlives a connection: after a drop the receiver reconnects, answers the new
/// `CacheBegin` with `CacheResume { offset: self.offset() }` if [`BlobReceiver::matches`],
/// and keeps feeding chunks. A receiver restarted from a partial file on disk rebuilds
/// the state by feeding the file's bytes through [`BlobReceiver::accept`].
#[derive(Clone, Debug)]
pub struct BlobReceiver {
    len: u64,
    expected: blake3::Hash,
    offset: u64,
    hasher: blake3::Hasher,
}

impl BlobReceiver {
    /// Starts receiving a blob of `len` bytes announced with BLAKE3 `blake3_hex`.
    pub fn new(len: u64, blake3_hex: &str) -> Result<Self, ControlError> {
        let expected =
            blake3::Hash::from_hex(blake3_hex).map_err(|e| ControlError::InvalidMessage {
                ty: "cache_begin".to_owned(),
                reason: format!("blake3 {blake3_hex:?}: {e}"),
            })?;
        Ok(Self {
            len,
            expected,
            offset: 0,
            hasher: blake3::Hasher::new(),
        })
    }

    /// Announced length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes received in order so far: where a resumed transfer continues.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether a new `CacheBegin` announces this same blob (so the transfer can resume).
    pub fn matches(&self, len: u64, blake3_hex: &str) -> bool {
        self.len == len && blake3::Hash::from_hex(blake3_hex).is_ok_and(|h| h == self.expected)
    }

    /// Checks that a chunk of `n` bytes at `offset` continues the blob.
    pub fn check(&self, offset: u64, n: usize) -> Result<(), ControlError> {
        if offset != self.offset {
            return Err(ControlError::BlobGap {
                expected: self.offset,
                got: offset,
            });
        }
        let end = offset.saturating_add(n as u64);
        if end > self.len {
            return Err(ControlError::BlobOverrun { end, len: self.len });
        }
        Ok(())
    }

    /// Takes a chunk at `offset` into the hash and advances the offset.
    pub fn accept(&mut self, offset: u64, bytes: &[u8]) -> Result<(), ControlError> {
        self.check(offset, bytes.len())?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Confirms that all bytes arrived and hash to the announced BLAKE3.
    pub fn finish(&self) -> Result<(), ControlError> {
        if self.offset != self.len {
            return Err(ControlError::BlobIncomplete {
                got: self.offset,
                len: self.len,
            });
        }
        let got = self.hasher.finalize();
        if got != self.expected {
            return Err(ControlError::BlobHash {
                expected: self.expected.to_hex().to_string(),
                got: got.to_hex().to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_chunks_verify() {
        let blob: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let hex = blake3::hash(&blob).to_hex().to_string();
        let mut r = BlobReceiver::new(blob.len() as u64, &hex).unwrap();
        assert!(matches!(
            r.finish(),
            Err(ControlError::BlobIncomplete { got: 0, .. })
        ));
        for (i, c) in blob.chunks(999).enumerate() {
            r.accept((i * 999) as u64, c).unwrap();
        }
        r.finish().unwrap();
        assert!(r.matches(blob.len() as u64, &hex));
        assert!(!r.matches(blob.len() as u64 + 1, &hex));
    }

    #[test]
    fn gaps_overruns_and_wrong_bytes_are_refused() {
        let blob = [1u8; 100];
        let hex = blake3::hash(&blob).to_hex().to_string();
        let mut r = BlobReceiver::new(100, &hex).unwrap();
        assert!(matches!(
            r.accept(10, &blob[..10]),
            Err(ControlError::BlobGap {
                expected: 0,
                got: 10
            })
        ));
        assert!(matches!(
            r.accept(0, &[0; 101]),
            Err(ControlError::BlobOverrun { end: 101, len: 100 })
        ));
        assert_eq!(r.offset(), 0);
        r.accept(0, &[2; 100]).unwrap();
        assert!(matches!(r.finish(), Err(ControlError::BlobHash { .. })));
        assert!(BlobReceiver::new(1, "xyz").is_err());
    }
}
