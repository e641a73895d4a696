//! A manifest as it arrives from the network: `serde_json` on arbitrary bytes never panics,
//! an accepted manifest keeps its promises (every chunk range is in bounds and the chunk
//! lookups agree), and serializing it and parsing it again gives the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use light::catalog::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    let chunk = u64::from(m.chunk_size());
    assert!(chunk > 0);
    assert_eq!(m.chunk_count(), m.size().div_ceil(chunk));
    assert_eq!(m.chunks().len() as u64, m.chunk_count());
    assert!(!m.path().is_empty() && !m.path().starts_with('/'));
    let mut next = 0;
    for i in 0..m.chunk_count() {
        let r = m.chunk_range(i).expect("every listed chunk has a range");
        assert_eq!(r.start, next, "chunk ranges tile the file");
        assert!(r.start < r.end && r.end <= m.size());
        assert_eq!(m.chunk_of(r.start), Some(i));
        assert_eq!(m.chunk_of(r.end - 1), Some(i));
        next = r.end;
    }
    assert_eq!(next, m.size());
    assert_eq!(m.chunk_range(m.chunk_count()), None);
    assert_eq!(m.chunk_of(m.size()), None);
    // Wrong lengths are refused before hashing; past the end there is nothing to verify.
    assert!(!m.verify_chunk(m.chunk_count(), &[]));
    let _ = m.verify_root();

    let json = serde_json::to_vec(&m).expect("a manifest serializes");
    let back: Manifest = serde_json::from_slice(&json).expect("a serialized manifest parses");
    assert_eq!(back, m);
});
