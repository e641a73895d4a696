//! The receiver-side output file, and manifests as they travel.

use std::fs;
use std::path::Path;

use light::catalog::{
    Catalog, CatalogError, DROP_BEHIND, Digest, Manifest, OutputFile, PARTIAL_SUFFIX, PackOptions,
    STATE_SUFFIX,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

fn manifest(path: &str, chunk_size: u32, bytes: &[u8]) -> Manifest {
    Manifest::from_data(7, 1, path.to_owned(), chunk_size, bytes).unwrap()
}

fn partial(out: &Path, rel: &str) -> std::path::PathBuf {
    out.join(format!("{rel}{PARTIAL_SUFFIX}"))
}

fn state(out: &Path, rel: &str) -> std::path::PathBuf {
    out.join(format!("{rel}{STATE_SUFFIX}"))
}

/// Writes `bytes` as `piece`-sized writes in the given order of piece indices.
fn write_pieces(f: &mut OutputFile, bytes: &[u8], piece: usize, order: &[usize]) -> u64 {
    order
        .iter()
        .map(|&p| {
            let start = p * piece;
            let end = bytes.len().min(start + piece);
            f.write_at(start as u64, &bytes[start..end]).unwrap()
        })
        .sum()
}

#[test]
fn out_of_order_writes_produce_the_file() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(4500, 1);
    let m = manifest("dir/sub/file.bin", 1000, &bytes);
    let mut f = OutputFile::create(out.path(), m).unwrap();
    assert!(partial(out.path(), "dir/sub/file.bin").is_file());
    assert_eq!(
        fs::metadata(partial(out.path(), "dir/sub/file.bin"))
            .unwrap()
            .len(),
        4500
    );

    let mut order: Vec<usize> = (0..15).collect();
    order.shuffle(&mut StdRng::seed_from_u64(2));
    let verified = write_pieces(&mut f, &bytes, 300, &order);
    assert_eq!(verified, 5);
    assert!(f.is_complete());
    assert!(f.missing_chunks().is_empty());
    // Repeats of verified data are ignored.
    assert_eq!(f.write_at(0, &bytes[..10]).unwrap(), 0);

    let final_path = f.finish().unwrap();
    assert_eq!(final_path, out.path().join("dir/sub/file.bin"));
    assert_eq!(fs::read(&final_path).unwrap(), bytes);
    assert!(!partial(out.path(), "dir/sub/file.bin").exists());
    assert!(!state(out.path(), "dir/sub/file.bin").exists());
}

#[test]
fn whole_chunks_and_multi_chunk_writes_are_verified() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(3500, 3);
    let mut f = OutputFile::create(out.path(), manifest("f", 1000, &bytes)).unwrap();
    // One write covering chunk 1 whole plus half of chunk 2.
    assert_eq!(f.write_at(1000, &bytes[1000..2500]).unwrap(), 1);
    assert!(f.is_verified(1) && !f.is_verified(2));
    // The tail of chunk 0, then all of chunks 0..=3 in one write.
    assert_eq!(f.write_at(500, &bytes[500..1000]).unwrap(), 0);
    assert_eq!(f.write_at(0, &bytes).unwrap(), 3);
    assert_eq!(f.verified_count(), 4);
    assert_eq!(fs::read(f.finish().unwrap()).unwrap(), bytes);
}

#[test]
fn a_corrupt_chunk_is_named_and_never_put_in_place() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(4000, 4);
    let mut f = OutputFile::create(out.path(), manifest("c.bin", 1000, &bytes)).unwrap();
    let mut bad = bytes.clone();
    bad[2100] ^= 0x40;
    // Chunk 2 arrives in pieces with one flipped bit: detected when its last byte lands.
    for start in (0..4000).step_by(250) {
        let r = f.write_at(start as u64, &bad[start..start + 250]);
        if start == 2750 {
            match r {
                Err(CatalogError::ChunkMismatch { path, index }) => {
                    assert_eq!((path.as_str(), index), ("c.bin", 2));
                }
                other => panic!("expected a mismatch, got {other:?}"),
            }
        } else {
            r.unwrap();
        }
    }
    assert_eq!(f.missing_chunks(), vec![2]);
    let err = f.finish().unwrap_err();
    assert!(
        matches!(
            &err,
            CatalogError::Incomplete {
                missing: 1,
                first: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!out.path().join("c.bin").exists());
}

#[test]
fn a_corrupt_chunk_can_be_sent_again() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(2500, 5);
    let mut f = OutputFile::create(out.path(), manifest("r", 1000, &bytes)).unwrap();
    let mut bad = bytes[1000..2000].to_vec();
    bad[0] ^= 1;
    // A whole bad chunk in one write is rejected before it reaches the disk.
    assert!(matches!(
        f.write_at(1000, &bad),
        Err(CatalogError::ChunkMismatch { index: 1, .. })
    ));
    // Partially then fully, with an overlapping correction after a bad piece.
    f.write_at(1000, &bad[..600]).unwrap();
    assert!(f.write_at(1600, &bytes[1600..2000]).is_err());
    assert!(!f.is_verified(1));
    f.write_at(1000, &bytes[1000..1600]).unwrap();
    f.write_at(1500, &bytes[1500..2000]).unwrap();
    assert!(f.is_verified(1));
    f.write_at(0, &bytes[..1000]).unwrap();
    f.write_at(2000, &bytes[2000..]).unwrap();
    assert_eq!(fs::read(f.finish().unwrap()).unwrap(), bytes);
}

#[test]
fn an_interrupted_transfer_resumes() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(10_000, 6);
    let m = manifest("movie.bin", 1000, &bytes);
    {
        let (mut f, resumed) = OutputFile::open_or_resume(out.path(), m.clone()).unwrap();
        assert_eq!(resumed.verified, Vec::<u64>::new());
        for c in [1usize, 4, 5, 9] {
            f.write_at((c * 1000) as u64, &bytes[c * 1000..(c + 1) * 1000])
                .unwrap();
        }
        // Half of chunk 7: not verified, so not resumed.
        f.write_at(7000, &bytes[7000..7500]).unwrap();
    }
    assert!(state(out.path(), "movie.bin").is_file());

    let (mut f, resumed) = OutputFile::open_or_resume(out.path(), m.clone()).unwrap();
    assert_eq!(resumed.verified, vec![1, 4, 5, 9]);
    assert!(resumed.rejected.is_empty());
    assert_eq!(f.missing_chunks(), vec![0, 2, 3, 6, 7, 8]);
    for c in f.missing_chunks() {
        let c = c as usize;
        f.write_at((c * 1000) as u64, &bytes[c * 1000..(c + 1) * 1000])
            .unwrap();
    }
    assert_eq!(fs::read(f.finish().unwrap()).unwrap(), bytes);
}

#[test]
fn resume_rechecks_claimed_chunks_and_ignores_foreign_state() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(3000, 7);
    let m = manifest("x", 1000, &bytes);
    {
        let mut f = OutputFile::create(out.path(), m.clone()).unwrap();
        f.write_at(0, &bytes[..2000]).unwrap();
        f.sync().unwrap();
    }
    // Damage chunk 1 on disk behind the sidecar's back.
    let p = partial(out.path(), "x");
    let mut raw = fs::read(&p).unwrap();
    raw[1500] ^= 0xff;
    fs::write(&p, &raw).unwrap();
    let (f, resumed) = OutputFile::open_or_resume(out.path(), m.clone()).unwrap();
    assert_eq!((resumed.verified, resumed.rejected), (vec![0], vec![1]));
    assert_eq!(f.missing_chunks(), vec![1, 2]);
    drop(f);
    // The rejection was persisted.
    let (_, resumed) = OutputFile::open_or_resume(out.path(), m).unwrap();
    assert_eq!((resumed.verified, resumed.rejected), (vec![0], vec![]));

    // A new version of the content: the old partial state is not trusted at all.
    let mut v2 = bytes.clone();
    v2[0] ^= 1;
    let m2 = Manifest::from_data(7, 2, "x".into(), 1000, &v2).unwrap();
    let (f, resumed) = OutputFile::open_or_resume(out.path(), m2).unwrap();
    assert!(resumed.verified.is_empty() && resumed.rejected.is_empty());
    assert_eq!(f.verified_count(), 0);
}

#[test]
fn one_writer_per_output_file() {
    let out = tempfile::tempdir().unwrap();
    let m = manifest("busy", 16, b"some bytes here, more than one chunk");
    let _first = OutputFile::create(out.path(), m.clone()).unwrap();
    assert!(matches!(
        OutputFile::open_or_resume(out.path(), m),
        Err(CatalogError::OutputBusy(_))
    ));
}

#[test]
fn writes_outside_the_file_are_errors() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(100, 8);
    let mut f = OutputFile::create(out.path(), manifest("b", 64, &bytes)).unwrap();
    for (off, len) in [(90u64, 11usize), (100, 1), (u64::MAX, 2)] {
        assert!(matches!(
            f.write_at(off, &vec![0; len]),
            Err(CatalogError::OutOfBounds { .. })
        ));
    }
    assert_eq!(f.write_at(100, &[]).unwrap(), 0);
    assert_eq!(f.verified_count(), 0);
}

#[test]
fn empty_files_finish_immediately() {
    let out = tempfile::tempdir().unwrap();
    let f = OutputFile::create(out.path(), manifest("e/empty", 1000, &[])).unwrap();
    assert!(f.is_complete());
    let p = f.finish().unwrap();
    assert_eq!(fs::metadata(p).unwrap().len(), 0);
}

#[test]
fn a_new_output_file_has_its_blocks_reserved() {
    use std::os::unix::fs::MetadataExt;
    let out = tempfile::tempdir().unwrap();
    let bytes = data(3 << 20, 9);
    let f = OutputFile::create(out.path(), manifest("r/eserved", 1 << 20, &bytes)).unwrap();
    let meta = fs::metadata(partial(out.path(), "r/eserved")).unwrap();
    assert_eq!(meta.len(), bytes.len() as u64);
    // A sparse file would hold no blocks before the first write.
    assert!(
        meta.blocks() * 512 >= bytes.len() as u64,
        "{} blocks",
        meta.blocks()
    );
    drop(f);
}

#[test]
fn a_new_output_file_on_tmpfs_is_not_zeroed_up_front() {
    use std::os::unix::fs::MetadataExt;
    // /dev/shm is tmpfs wherever glibc runs; `fallocate` there would zero every page.
    let out = tempfile::tempdir_in("/dev/shm").unwrap();
    let bytes = data(3 << 20, 10);
    let mut f = OutputFile::create(out.path(), manifest("t/mpfs", 1 << 20, &bytes)).unwrap();
    let meta = fs::metadata(partial(out.path(), "t/mpfs")).unwrap();
    assert_eq!(meta.len(), bytes.len() as u64);
    assert_eq!(meta.blocks(), 0, "pages allocated before any write");
    assert_eq!(write_pieces(&mut f, &bytes, 1 << 20, &[2, 0, 1]), 3);
    let p = f.finish().unwrap();
    assert_eq!(fs::read(p).unwrap(), bytes);
}

#[test]
fn escaping_paths_are_rejected() {
    for bad in ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", ""] {
        assert!(
            matches!(
                Manifest::from_data(1, 1, bad.to_owned(), 16, b"x"),
                Err(CatalogError::UnsafePath(_))
            ),
            "{bad:?}"
        );
    }
    let good = manifest("ok", 16, b"x");
    let mut json = serde_json::to_value(&good).unwrap();
    json["path"] = "../../etc/cron.d/x".into();
    let err = serde_json::from_value::<Manifest>(json).unwrap_err();
    assert!(err.to_string().contains("unsafe path"), "{err}");
}

#[test]
fn manifests_round_trip_and_inconsistent_ones_are_refused() {
    let bytes = data(2500, 9);
    let m = manifest("a/b.bin", 1000, &bytes);
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains(&m.root().to_hex()));
    assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    let mut simd = json.clone().into_bytes();
    assert_eq!(
        simd_json::serde::from_slice::<Manifest>(&mut simd).unwrap(),
        m
    );

    let base = serde_json::to_value(&m).unwrap();
    let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        edit(&mut v);
        serde_json::from_value::<Manifest>(v)
    };
    assert!(bad(&|v| v["size"] = 5000.into()).is_err());
    assert!(bad(&|v| v["chunk_size"] = 0.into()).is_err());
    assert!(bad(&|v| v["chunk_size"] = u32::MAX.into()).is_err());
    assert!(bad(&|v| v["chunks"][0] = "zz".into()).is_err());
    assert!(bad(&|v| v["root"] = "00".into()).is_err());

    // A root that does not match parses (the fields are consistent) but fails the check,
    // and an output file refuses it.
    let tampered = bad(&|v| v["root"] = Digest::of(b"other").to_hex().into()).unwrap();
    assert!(!tampered.verify_root());
    let out = tempfile::tempdir().unwrap();
    assert!(matches!(
        OutputFile::create(out.path(), tampered),
        Err(CatalogError::RootMismatch(_))
    ));
}

#[test]
fn a_packed_file_travels_to_an_output_file() {
    let lib = tempfile::tempdir().unwrap();
    let bytes = data(5000, 10);
    fs::create_dir_all(lib.path().join("films")).unwrap();
    fs::write(lib.path().join("films/a.mkv"), &bytes).unwrap();
    let cat = Catalog::open(lib.path()).unwrap();
    cat.pack_with(&PackOptions {
        chunk_size: 1024,
        threads: 2,
    })
    .unwrap();
    let info = cat.resolve("films/a.mkv").unwrap();
    let wire = serde_json::to_vec(&cat.manifest(info.id).unwrap()).unwrap();
    let m: Manifest = serde_json::from_slice(&wire).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut f = OutputFile::create(out.path(), m).unwrap();
    for start in (0..bytes.len()).step_by(1400).rev() {
        let end = bytes.len().min(start + 1400);
        f.write_at(start as u64, &bytes[start..end]).unwrap();
    }
    assert_eq!(fs::read(f.finish().unwrap()).unwrap(), bytes);
}

/// Writes a file of `len` bytes as pieces of 1..=`max_piece` bytes, with duplicates and
/// overlaps, in a shuffled order, interrupted and resumed at `interrupt_at`, both writers
/// with `direct` I/O or both without; checks the result.
fn reassemble(
    len: usize,
    chunk_size: u32,
    seed: u64,
    interrupt_at: f64,
    max_piece: usize,
    direct: bool,
) -> Result<(), TestCaseError> {
    let bytes = data(len, seed);
    let m = manifest("p/q.bin", chunk_size, &bytes);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < len {
        let n = rng.random_range(1..=max_piece).min(len - pos);
        pieces.push((pos, pos + n));
        pos += n;
    }
    // Some retransmitted duplicates and overlapping pieces.
    for _ in 0..pieces.len() / 4 {
        let s = rng.random_range(0..len);
        pieces.push((s, len.min(s + rng.random_range(1..max_piece / 2 + 2))));
    }
    pieces.shuffle(&mut rng);
    let cut = (pieces.len() as f64 * interrupt_at) as usize;

    let out = tempfile::tempdir().unwrap();
    let before = {
        let mut f = OutputFile::create(out.path(), m.clone()).unwrap();
        prop_assert_eq!(f.set_direct_io(direct), direct);
        for &(s, e) in &pieces[..cut] {
            f.write_at(s as u64, &bytes[s..e]).unwrap();
        }
        f.verified_count()
    };
    let (mut f, resumed) = OutputFile::open_or_resume(out.path(), m.clone()).unwrap();
    prop_assert_eq!(f.set_direct_io(direct), direct);
    prop_assert_eq!(resumed.verified.len() as u64, before);
    prop_assert!(resumed.rejected.is_empty());
    // Bytes of incomplete chunks were forgotten at the interruption: send everything
    // not verified again, in the same shuffled order.
    for &(s, e) in &pieces {
        f.write_at(s as u64, &bytes[s..e]).unwrap();
    }
    prop_assert!(f.is_complete());
    prop_assert_eq!(f.verified_count(), m.chunk_count());
    if !direct {
        prop_assert_eq!(f.direct_bytes(), 0);
    }
    let p = f.finish().unwrap();
    prop_assert_eq!(fs::read(p).unwrap(), bytes);
    prop_assert!(!partial(out.path(), "p/q.bin").exists());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any size, chunk size, write segmentation, order, duplication and interruption point
    /// gives back exactly the original bytes.
    #[test]
    fn any_write_order_reassembles(
        len in 0usize..6000,
        chunk_size in 1u32..1500,
        seed in any::<u64>(),
        interrupt_at in 0.0f64..1.0,
    ) {
        reassemble(len, chunk_size, seed, interrupt_at, 700, false)?;
    }

    /// The same with pieces of many pages, through the page cache or with direct I/O
    /// (whole pages past the page cache, ragged ends through it).
    #[test]
    fn large_pieces_reassemble(
        len in 0usize..400_000,
        chunk_size in 1u32..200_000,
        seed in any::<u64>(),
        interrupt_at in 0.0f64..1.0,
        direct in any::<bool>(),
    ) {
        reassemble(len, chunk_size, seed, interrupt_at, 60_000, direct)?;
    }
}

/// With direct I/O on, block-sized, page-aligned pieces out of order are written entirely
/// past the page cache (the test directory's file system takes `O_DIRECT`, as ext4, xfs and
/// tmpfs do); by default none are.
#[test]
fn aligned_pieces_are_written_directly_when_asked() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(1 << 20, 3);
    let mut f = OutputFile::create(out.path(), manifest("b", 1 << 18, &bytes)).unwrap();
    assert_eq!(write_pieces(&mut f, &bytes, 1 << 16, &[0, 1, 2, 3]), 1);
    assert_eq!(f.direct_bytes(), 0);
    assert!(f.set_direct_io(true));
    // The first chunk is verified already: its pieces are ignored.
    let order: Vec<usize> = (0..16).rev().collect();
    assert_eq!(write_pieces(&mut f, &bytes, 1 << 16, &order), 3);
    assert_eq!(f.direct_bytes(), 3 << 18);
    assert_eq!(fs::read(f.finish().unwrap()).unwrap(), bytes);
}

/// Pieces hashed as they stream in never vouch for bytes the file does not hold: a piece
/// rewritten out of order sends the chunk back to be read and checked from disk.
#[test]
fn rewritten_pieces_are_checked_from_disk() {
    let out = tempfile::tempdir().unwrap();
    let bytes = data(1000, 7);
    let mut bad = bytes.clone();
    bad[300] ^= 1;
    // Bad bytes hashed in order, then overwritten with the good ones: verifies.
    let mut f = OutputFile::create(out.path(), manifest("a", 1000, &bytes)).unwrap();
    f.write_at(0, &bytes[..250]).unwrap();
    f.write_at(250, &bad[250..500]).unwrap();
    f.write_at(250, &bytes[250..500]).unwrap();
    assert_eq!(f.write_at(500, &bytes[500..]).unwrap(), 1);
    assert_eq!(fs::read(f.finish().unwrap()).unwrap(), bytes);
    // Good bytes hashed in order, then overwritten with bad ones: caught.
    let out = tempfile::tempdir().unwrap();
    let mut f = OutputFile::create(out.path(), manifest("b", 1000, &bytes)).unwrap();
    f.write_at(0, &bytes[..250]).unwrap();
    f.write_at(250, &bytes[250..500]).unwrap();
    f.write_at(250, &bad[250..500]).unwrap();
    assert!(matches!(
        f.write_at(500, &bytes[500..]),
        Err(CatalogError::ChunkMismatch { index: 0, .. })
    ));
}

/// A file larger than the background flush interval (32 MiB: the file is flushed as it
/// fills, from a thread of its own) finishes intact from pieces in any order, through the
/// page cache or with direct I/O.
#[test]
fn files_flushed_as_they_fill_finish_intact() {
    let bytes: Vec<u8> = (0..36usize << 20).map(|i| (i ^ (i >> 11)) as u8).collect();
    let m = manifest("big.bin", 1 << 20, &bytes);
    let piece = 3 << 18;
    let mut order: Vec<usize> = (0..bytes.len().div_ceil(piece)).collect();
    order.shuffle(&mut StdRng::seed_from_u64(5));
    for direct in [false, true] {
        let out = tempfile::tempdir().unwrap();
        let mut f = OutputFile::create(out.path(), m.clone()).unwrap();
        assert_eq!(f.set_direct_io(direct), direct);
        assert_eq!(write_pieces(&mut f, &bytes, piece, &order), 36);
        assert!(fs::read(f.finish().unwrap()).unwrap() == bytes);
    }
}

/// Which of the file's pages are in the page cache.
fn resident_pages(path: &Path) -> Vec<bool> {
    let file = fs::File::open(path).unwrap();
    // SAFETY: a read-only mapping that is never read through, only asked about.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let mut vec = vec![0u8; map.len().div_ceil(4096)];
    // SAFETY: `map` covers `map.len()` bytes; mincore writes one byte per page into `vec`,
    // which holds that many.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut _, map.len(), vec.as_mut_ptr()) };
    assert_eq!(rc, 0);
    vec.into_iter().map(|b| b & 1 == 1).collect()
}

/// Once DROP_BEHIND bytes have been verified after a chunk that is on disk, its pages
/// leave the page cache; the newer ones stay, and the file finishes intact.
#[test]
fn verified_chunks_on_disk_leave_the_page_cache() {
    const CHUNK: usize = 1 << 20;
    let behind = DROP_BEHIND as usize / CHUNK;
    let bytes: Vec<u8> = (0..(behind + 8) * CHUNK)
        .map(|i| (i ^ (i >> 13)) as u8)
        .collect();
    // Under the target directory: a tmpfs /tmp keeps every page whatever it is told.
    let out = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut f = OutputFile::create(out.path(), manifest("drop.bin", CHUNK as u32, &bytes)).unwrap();
    let order: Vec<usize> = (0..behind).collect();
    assert_eq!(write_pieces(&mut f, &bytes, CHUNK, &order), behind as u64);
    // On disk now, so dropping cannot be refused for dirty or in-flight pages.
    f.sync().unwrap();
    let path = partial(out.path(), "drop.bin");
    let first = 8 * CHUNK / 4096;
    let before = resident_pages(&path);
    assert!(
        before[..first].iter().all(|&r| r),
        "written pages not cached"
    );
    let order: Vec<usize> = (behind..behind + 8).collect();
    assert_eq!(write_pieces(&mut f, &bytes, CHUNK, &order), 8);
    let after = resident_pages(&path);
    let kept = after[..first].iter().filter(|&&r| r).count();
    assert_eq!(kept, 0, "{kept} pages of the 8 oldest chunks still cached");
    assert!(
        after[first..].iter().any(|&r| r),
        "newer chunks dropped too"
    );
    assert!(fs::read(f.finish().unwrap()).unwrap() == bytes);
}
