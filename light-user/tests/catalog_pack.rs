//! Packing real directories and querying the catalog.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use light::catalog::{
    CATALOG_DIR, CATALOG_FILE, Catalog, CatalogError, DEFAULT_CHUNK_SIZE, Manifest, PackOptions,
    PackReport, SessionOutcome, pack,
};

/// A fixed mtime safely in the past, so stamps are trusted (not "racily clean").
fn old(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn put(dir: &Path, rel: &str, data: &[u8], mtime: SystemTime) {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap();
    fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn opts(chunk_size: u32) -> PackOptions {
    PackOptions {
        chunk_size,
        threads: 2,
    }
}

/// Expected chunk hashes and root computed here, independently of the library.
fn expect_manifest(m: &Manifest, data: &[u8], chunk_size: usize) {
    assert_eq!(m.size(), data.len() as u64);
    assert_eq!(m.chunk_size() as usize, chunk_size);
    let chunks: Vec<[u8; 32]> = data
        .chunks(chunk_size)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect();
    let got: Vec<[u8; 32]> = m.chunks().iter().map(|d| d.0).collect();
    assert_eq!(got, chunks);
    let mut h = blake3::Hasher::new();
    for c in &chunks {
        h.update(c);
    }
    h.update(&(data.len() as u64).to_le_bytes());
    assert_eq!(m.root().0, *h.finalize().as_bytes());
    assert!(m.verify_root());
}

#[test]
fn pack_records_every_regular_file_and_repack_is_a_no_op() {
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a/b/c/deep.bin", bytes(2500, 1)),
        ("a/exact.bin", bytes(2000, 2)),
        ("empty", Vec::new()),
        ("top.txt", bytes(1, 3)),
        ("z.bin", bytes(999, 4)),
    ];
    for (i, (rel, data)) in files.iter().enumerate() {
        put(d, rel, data, old(i as u64));
    }
    put(d, ".hidden", b"secret", old(0));
    put(d, ".git/config", b"x", old(0));
    put(d, "a/.cache/blob", b"x", old(0));

    let cat = Catalog::open(d).unwrap();
    let r = cat.pack_with(&opts(1000)).unwrap();
    assert_eq!(
        r,
        PackReport {
            added: 5,
            files_hashed: 5,
            bytes_hashed: 2500 + 2000 + 1 + 999,
            ..PackReport::default()
        }
    );
    assert!(d.join(CATALOG_DIR).join(CATALOG_FILE).is_file());

    let contents = cat.contents().unwrap();
    let listed: Vec<(u32, &str, u32, bool)> = contents
        .iter()
        .map(|c| (c.id, c.path.as_str(), c.version, c.removed))
        .collect();
    // Ids are sequential in sorted path order; hidden entries and .light are absent.
    assert_eq!(
        listed,
        vec![
            (1, "a/b/c/deep.bin", 1, false),
            (2, "a/exact.bin", 1, false),
            (3, "empty", 1, false),
            (4, "top.txt", 1, false),
            (5, "z.bin", 1, false),
        ]
    );
    for (c, (rel, data)) in contents.iter().zip(&files) {
        let m = cat.manifest(c.id).unwrap();
        assert_eq!(m.path(), *rel);
        assert_eq!(m.content_id(), c.id);
        assert_eq!(m.version(), 1);
        assert_eq!(c.size, data.len() as u64);
        assert_eq!(c.root, m.root());
        expect_manifest(&m, data, 1000);
        assert_eq!(cat.manifest_by_path(rel).unwrap(), m);
    }
    assert_eq!(cat.manifest(3).unwrap().chunk_count(), 0);
    assert_eq!(cat.manifest(2).unwrap().chunk_count(), 2);
    assert_eq!(cat.manifest(1).unwrap().chunk_range(2), Some(2000..2500));

    let again = cat.pack_with(&opts(1000)).unwrap();
    assert_eq!(
        again,
        PackReport {
            unchanged: 5,
            ..PackReport::default()
        }
    );
    assert_eq!(cat.contents().unwrap(), contents);
}

#[test]
fn default_pack_uses_one_mib_chunks() {
    let lib = tempfile::tempdir().unwrap();
    let data = bytes(2 * DEFAULT_CHUNK_SIZE as usize + 12345, 9);
    put(lib.path(), "big.bin", &data, old(0));
    let r = pack(lib.path()).unwrap();
    assert_eq!((r.added, r.bytes_hashed), (1, data.len() as u64));
    let m = Catalog::open(lib.path()).unwrap().manifest(1).unwrap();
    assert_eq!(DEFAULT_CHUNK_SIZE, 1 << 20);
    assert_eq!(m.chunk_count(), 3);
    expect_manifest(&m, &data, DEFAULT_CHUNK_SIZE as usize);
}

#[test]
fn changed_file_gets_a_new_version_and_old_manifest_is_kept() {
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    let v1 = bytes(3000, 1);
    put(d, "f.bin", &v1, old(0));
    put(d, "g.bin", b"stays", old(0));
    let cat = Catalog::open(d).unwrap();
    cat.pack_with(&opts(1024)).unwrap();

    // Same size, new content, new mtime.
    let v2 = bytes(3000, 2);
    put(d, "f.bin", &v2, old(10));
    let r = cat.pack_with(&opts(1024)).unwrap();
    assert_eq!(
        r,
        PackReport {
            changed: 1,
            unchanged: 1,
            files_hashed: 1,
            bytes_hashed: 3000,
            ..PackReport::default()
        }
    );
    let info = cat.resolve("f.bin").unwrap();
    assert_eq!((info.id, info.version), (1, 2));
    let cur = cat.manifest(1).unwrap();
    assert_eq!(cur.version(), 2);
    expect_manifest(&cur, &v2, 1024);
    let old_m = cat.manifest_version(1, 1).unwrap();
    assert_eq!(old_m.version(), 1);
    expect_manifest(&old_m, &v1, 1024);
    assert!(matches!(
        cat.manifest_version(1, 3),
        Err(CatalogError::UnknownContent(_))
    ));

    // Touched but identical: hashed again, no new version.
    put(d, "f.bin", &v2, old(20));
    let r = cat.pack_with(&opts(1024)).unwrap();
    assert_eq!((r.changed, r.unchanged, r.files_hashed), (0, 2, 1));
    assert_eq!(cat.manifest(1).unwrap().version(), 2);
    // And the refreshed stamp is trusted next time.
    assert_eq!(cat.pack_with(&opts(1024)).unwrap().files_hashed, 0);

    // Different length.
    put(d, "f.bin", &v2[..10], old(30));
    let r = cat.pack_with(&opts(1024)).unwrap();
    assert_eq!((r.changed, r.bytes_hashed), (1, 10));
    assert_eq!(cat.manifest(1).unwrap().version(), 3);
}

#[test]
fn an_unchanged_stamp_means_the_file_is_not_read() {
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    put(d, "f", b"aaaa", old(0));
    let cat = Catalog::open(d).unwrap();
    let root = {
        cat.pack_with(&opts(1024)).unwrap();
        cat.manifest(1).unwrap().root()
    };
    // Same size, same mtime: the cheap check says unchanged and nothing is hashed.
    put(d, "f", b"bbbb", old(0));
    let r = cat.pack_with(&opts(1024)).unwrap();
    assert_eq!((r.unchanged, r.bytes_hashed), (1, 0));
    assert_eq!(cat.manifest(1).unwrap().root(), root);
}

#[test]
fn freshly_modified_files_are_rehashed_once_more() {
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    fs::write(d.join("new"), b"just written").unwrap();
    let cat = Catalog::open(d).unwrap();
    assert_eq!(cat.pack_with(&opts(1024)).unwrap().added, 1);
    // Its mtime is within the racy window of the pack, so the stamp is not trusted.
    let r = cat.pack_with(&opts(1024)).unwrap();
    assert_eq!((r.unchanged, r.changed, r.files_hashed), (1, 0, 1));
    assert_eq!(cat.manifest(1).unwrap().version(), 1);
}

#[test]
fn removed_files_are_marked_and_keep_their_id_when_back() {
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    put(d, "keep", b"k", old(0));
    put(d, "sub/gone", b"data", old(0));
    let cat = Catalog::open(d).unwrap();
    cat.pack_with(&opts(1024)).unwrap();

    fs::remove_dir_all(d.join("sub")).unwrap();
    let r = cat.pack_with(&opts(1024)).unwrap();
    assert_eq!((r.removed, r.unchanged), (1, 1));
    let gone = cat
        .contents()
        .unwrap()
        .into_iter()
        .find(|c| c.path == "sub/gone")
        .unwrap();
    assert!(gone.removed);
    assert!(
        matches!(cat.resolve("sub/gone"), Err(CatalogError::ContentRemoved(p)) if p == "sub/gone")
    );
    assert!(matches!(
        cat.manifest(gone.id),
        Err(CatalogError::ContentRemoved(_))
    ));
    // Removing again is not counted again.
    assert_eq!(cat.pack_with(&opts(1024)).unwrap().removed, 0);

    // Back with the same content: same id, same version.
    put(d, "sub/gone", b"data", old(1));
    let r = cat.pack_with(&opts(1024)).unwrap();
    assert_eq!(r.added, 1);
    let back = cat.resolve("sub/gone").unwrap();
    assert_eq!((back.id, back.version, back.removed), (gone.id, 1, false));

    // Removed then back with other content: same id, new version.
    fs::remove_file(d.join("sub/gone")).unwrap();
    cat.pack_with(&opts(1024)).unwrap();
    put(d, "sub/gone", b"other", old(2));
    assert_eq!(cat.pack_with(&opts(1024)).unwrap().added, 1);
    let back = cat.resolve("sub/gone").unwrap();
    assert_eq!((back.id, back.version), (gone.id, 2));
}

#[test]
fn resolve_accepts_ids_and_paths() {
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    // Sorted: "7" gets id 1, "a/b" id 2, "c" id 3.
    for (i, rel) in ["7", "a/b", "c"].iter().enumerate() {
        put(d, rel, rel.as_bytes(), old(i as u64));
    }
    let cat = Catalog::open(d).unwrap();
    cat.pack_with(&opts(1024)).unwrap();
    assert_eq!(cat.resolve("2").unwrap().path, "a/b");
    assert_eq!(cat.resolve("a/b").unwrap().id, 2);
    assert_eq!(cat.resolve("./a/b").unwrap().id, 2);
    // An id wins over a root file named like it; "./" forces the path; a number that is no
    // id falls back to the path.
    assert_eq!(cat.resolve("1").unwrap().path, "7");
    assert_eq!(cat.resolve("7").unwrap().id, 1);
    assert_eq!(cat.resolve("./7").unwrap().id, 1);
    for unknown in ["nope", "99", "", "a", "+2", "02", "/a/b"] {
        match cat.resolve(unknown) {
            Err(CatalogError::UnknownContent(s)) => assert_eq!(s, unknown),
            other => panic!("{unknown:?}: {other:?}"),
        }
    }
    assert!(matches!(cat.manifest(42), Err(CatalogError::UnknownContent(s)) if s == "42"));
    assert!(matches!(
        cat.manifest_by_path("zz"),
        Err(CatalogError::UnknownContent(s)) if s == "zz"
    ));
    let msg = cat.resolve("nope").unwrap_err().to_string();
    assert!(msg.contains("nope"), "{msg}");
    // Directories expand to the contents under them; files resolve to themselves.
    let paths = |name: &str| -> Vec<String> {
        cat.resolve_many(name)
            .unwrap()
            .into_iter()
            .map(|c| c.path)
            .collect()
    };
    assert_eq!(paths("a"), ["a/b"]);
    assert_eq!(paths("a/"), ["a/b"]);
    assert_eq!(paths("c"), ["c"]);
    assert_eq!(paths("."), ["7", "a/b", "c"]);
    for unknown in ["", "/", "a/b/", "b", "/a"] {
        assert!(
            matches!(
                cat.resolve_many(unknown),
                Err(CatalogError::UnknownContent(_))
            ),
            "{unknown:?}"
        );
    }
}

#[test]
fn symlinks_and_special_files_are_skipped() {
    let lib = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = lib.path();
    put(d, "real", b"r", old(0));
    put(outside.path(), "secret", b"s", old(0));
    std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("dirlink")).unwrap();
    let fifo = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: `fifo` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let r = Catalog::open(d).unwrap().pack_with(&opts(1024)).unwrap();
    assert_eq!((r.added, r.skipped), (1, 3));
}

#[test]
fn non_utf8_names_are_refused_clearly() {
    use std::os::unix::ffi::OsStrExt;
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    put(d, "ok", b"fine", old(0));
    let bad = d.join("sub").join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    fs::create_dir_all(bad.parent().unwrap()).unwrap();
    fs::write(&bad, b"x").unwrap();
    let err = pack(d).unwrap_err();
    assert!(
        matches!(&err, CatalogError::NonUtf8Name(p) if *p == bad),
        "{err:?}"
    );
    assert!(err.to_string().contains("not valid UTF-8"));
    // Nothing was recorded.
    assert!(Catalog::open(d).unwrap().contents().unwrap().is_empty());
}

#[test]
fn parallel_and_serial_hashing_agree() {
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    for i in 0..9u8 {
        put(d, &format!("f{i}"), &bytes(700 * usize::from(i), i), old(0));
    }
    let serial = Catalog::open(d).unwrap();
    serial
        .pack_with(&PackOptions {
            chunk_size: 256,
            threads: 1,
        })
        .unwrap();
    let lib2 = tempfile::tempdir().unwrap();
    for i in 0..9u8 {
        put(
            lib2.path(),
            &format!("f{i}"),
            &bytes(700 * usize::from(i), i),
            old(0),
        );
    }
    let parallel = Catalog::open(lib2.path()).unwrap();
    let r = parallel
        .pack_with(&PackOptions {
            chunk_size: 256,
            threads: 4,
        })
        .unwrap();
    assert_eq!(r.files_hashed, 9);
    for id in 1..=9 {
        assert_eq!(serial.manifest(id).unwrap(), parallel.manifest(id).unwrap());
    }
}

#[test]
fn bad_inputs_are_errors() {
    let lib = tempfile::tempdir().unwrap();
    let file = lib.path().join("plain");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Catalog::open(&file),
        Err(CatalogError::NotADirectory(_))
    ));
    assert!(matches!(
        Catalog::open(lib.path().join("missing")),
        Err(CatalogError::Io { .. })
    ));
    let cat = Catalog::open(lib.path()).unwrap();
    for bad in [0, light::catalog::MAX_CHUNK_SIZE + 1] {
        assert!(matches!(
            cat.pack_with(&opts(bad)),
            Err(CatalogError::InvalidChunkSize(b)) if b == bad
        ));
    }
}

#[test]
fn a_second_pack_of_the_same_library_is_refused() {
    let lib = tempfile::tempdir().unwrap();
    let cat = Catalog::open(lib.path()).unwrap();
    let lock = fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(lib.path().join(CATALOG_DIR).join("pack.lock"))
        .unwrap();
    lock.lock().unwrap();
    assert!(matches!(
        cat.pack_with(&opts(1024)),
        Err(CatalogError::PackInProgress(_))
    ));
    lock.unlock().unwrap();
    cat.pack_with(&opts(1024)).unwrap();
}

#[test]
fn readers_do_not_block_a_pack() {
    let lib = tempfile::tempdir().unwrap();
    let d = lib.path();
    put(d, "one", b"1", old(0));
    let cat = Catalog::open(d).unwrap();
    cat.pack_with(&opts(1024)).unwrap();

    let reader = rusqlite::Connection::open(d.join(CATALOG_DIR).join(CATALOG_FILE)).unwrap();
    let mode: String = reader
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    reader.execute_batch("BEGIN").unwrap();
    let count = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT count(*) FROM contents", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&reader), 1);

    // The reader holds an open read transaction while the pack commits.
    put(d, "two", b"2", old(1));
    assert_eq!(cat.pack_with(&opts(1024)).unwrap().added, 1);
    assert_eq!(count(&reader), 1, "the reader keeps its snapshot");
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&reader), 2);
}

#[test]
fn schema_is_versioned_and_newer_schemas_are_refused() {
    let lib = tempfile::tempdir().unwrap();
    let v = Catalog::open(lib.path()).unwrap().schema_version().unwrap();
    assert_eq!(v, 3);
    // Reopening does not re-run migrations.
    assert_eq!(
        Catalog::open(lib.path()).unwrap().schema_version().unwrap(),
        v
    );
    let conn = rusqlite::Connection::open(lib.path().join(CATALOG_DIR).join(CATALOG_FILE)).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    assert!(matches!(
        Catalog::open(lib.path()),
        Err(CatalogError::SchemaTooNew {
            found: 99,
            supported: 3
        })
    ));
}

#[test]
fn sessions_are_recorded() {
    let lib = tempfile::tempdir().unwrap();
    let cat = Catalog::open(lib.path()).unwrap();
    let before = SystemTime::now() - Duration::from_secs(1);
    let plan = serde_json::json!({"scheme": "man", "k": 4, "t": 1});
    let id = cat.record_session_start(&plan).unwrap();
    let s = cat.session(id).unwrap();
    assert_eq!(s.id, id);
    assert!(s.started >= before);
    assert_eq!((s.ended, s.outcome, s.bytes_multicast), (None, None, None));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&s.plan_json).unwrap(),
        plan
    );

    cat.record_session_end(id, SessionOutcome::Partial, 1_000_000, 250_000)
        .unwrap();
    let s = cat.session(id).unwrap();
    assert_eq!(s.outcome, Some(SessionOutcome::Partial));
    assert_eq!(
        (s.bytes_multicast, s.bytes_placed),
        (Some(1_000_000), Some(250_000))
    );
    assert!(s.ended.unwrap() >= s.started);

    // Ending twice, or a session that does not exist, is an error.
    assert!(matches!(
        cat.record_session_end(id, SessionOutcome::Completed, 0, 0),
        Err(CatalogError::UnknownSession(i)) if i == id
    ));
    assert!(matches!(
        cat.session(id + 100),
        Err(CatalogError::UnknownSession(_))
    ));
    let id2 = cat.record_session_start(&"plan").unwrap();
    assert!(id2 > id);
}

#[test]
fn receivers_are_upserted() {
    let lib = tempfile::tempdir().unwrap();
    let cat = Catalog::open(lib.path()).unwrap();
    cat.upsert_receiver("rx-b", None).unwrap();
    cat.upsert_receiver("rx-a", Some("seed=1,q=0.25")).unwrap();
    cat.upsert_receiver("rx-b", Some("seed=2,q=0.5")).unwrap();
    let rs = cat.receivers().unwrap();
    let got: Vec<(&str, Option<&str>)> = rs
        .iter()
        .map(|r| (r.id.as_str(), r.cache_tag.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("rx-a", Some("seed=1,q=0.25")),
            ("rx-b", Some("seed=2,q=0.5"))
        ]
    );
    assert!(
        rs.iter()
            .all(|r| r.last_seen > SystemTime::now() - Duration::from_secs(3600))
    );
}

#[test]
fn placements_and_slots_persist_and_fill_up() {
    let lib = tempfile::tempdir().unwrap();
    let cat = Catalog::open(lib.path()).unwrap();
    let (id, def) = cat.placement("k1", "{\"a\":1}").unwrap();
    assert_eq!(def, "{\"a\":1}");
    // The first definition wins: a restarted server gets the same placement back.
    assert_eq!(cat.placement("k1", "{\"a\":2}").unwrap(), (id, def.clone()));
    let (other, _) = cat.placement("k2", "{}").unwrap();
    assert_ne!(other, id);
    let none: &[String] = &[];
    assert_eq!(cat.assign_slot(id, "7", 2, none).unwrap(), Some((0, None)));
    cat.upsert_receiver("7", Some("tag-7")).unwrap();
    assert_eq!(cat.assign_slot(id, "3", 2, none).unwrap(), Some((1, None)));
    std::thread::sleep(Duration::from_millis(5));
    cat.upsert_receiver("3", Some("tag-3")).unwrap();
    assert_eq!(
        cat.assign_slot(id, "7", 2, none).unwrap(),
        Some((0, None)),
        "a receiver keeps its slot"
    );
    // All slots taken: a newcomer takes the slot of the holder seen longest ago unless
    // that one is busy in the session.
    let busy = ["7".to_owned(), "3".to_owned()];
    assert_eq!(cat.assign_slot(id, "9", 2, &busy).unwrap(), None);
    assert_eq!(
        cat.assign_slot(id, "9", 2, &busy[1..]).unwrap(),
        Some((0, Some("7".to_owned())))
    );
    assert_eq!(cat.receiver("7").unwrap().unwrap().cache_tag, None);
    assert_eq!(
        cat.assign_slot(other, "9", 2, none).unwrap(),
        Some((0, None))
    );
    drop(cat);
    let cat = Catalog::open(lib.path()).unwrap();
    assert_eq!(
        cat.slot_holders(id).unwrap(),
        vec![(0, "9".to_owned()), (1, "3".to_owned())]
    );
    cat.integrity_check().unwrap();
}

#[test]
fn sessions_left_unfinished_are_recorded_as_failed() {
    let lib = tempfile::tempdir().unwrap();
    let cat = Catalog::open(lib.path()).unwrap();
    let done = cat.record_session_start(&"plan").unwrap();
    cat.record_session_end(done, SessionOutcome::Completed, 10, 0)
        .unwrap();
    let killed = cat.record_session_start(&"plan").unwrap();
    drop(cat);
    let cat = Catalog::open(lib.path()).unwrap();
    assert_eq!(cat.fail_unfinished_sessions().unwrap(), 1);
    assert_eq!(
        cat.session(killed).unwrap().outcome,
        Some(SessionOutcome::Failed)
    );
    assert_eq!(
        cat.session(done).unwrap().outcome,
        Some(SessionOutcome::Completed)
    );
    assert_eq!(cat.fail_unfinished_sessions().unwrap(), 0);
}

#[test]
fn observed_loss_of_recent_sessions() {
    let lib = tempfile::tempdir().unwrap();
    let cat = Catalog::open(lib.path()).unwrap();
    assert_eq!(cat.recent_loss(3).unwrap(), None);
    let ids: Vec<_> = (0..4)
        .map(|_| cat.record_session_start(&"plan").unwrap())
        .collect();
    for (id, loss) in ids.iter().zip([0.3, 0.01, 0.05, 0.02]) {
        cat.record_observed_loss(*id, loss).unwrap();
    }
    // The worst of the last three: the 30% session has aged out.
    assert_eq!(cat.recent_loss(3).unwrap(), Some(0.05));
    assert_eq!(cat.recent_loss(10).unwrap(), Some(0.3));
    cat.record_observed_loss(ids[3], 7.0).unwrap();
    assert_eq!(cat.recent_loss(1).unwrap(), Some(1.0), "clamped");
}
