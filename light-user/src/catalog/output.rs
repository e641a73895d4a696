//! The receiver's output file: bytes in any order in, a verified file out.
//!
//! Data goes to `OUT/<path>.light-partial`, pre-sized to the manifest size. Each chunk is
//! verified against the manifest the moment its last byte arrives, and its bit is then set
//! in the sidecar `OUT/<path>.light-state` (one small `pwrite`, no fsync). On resume the
//! sidecar says which chunks to trust, and each of those is re-hashed from the partial file
//! once, so a sidecar that got ahead of the data (power cut) or a tampered partial file costs
//! a re-download of those chunks, never a wrong file. `finish` renames the partial file into
//! place only when every chunk is verified.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{CatalogError, Digest, Manifest, Result, io_err};

/// Suffix of the file being written.
pub const PARTIAL_SUFFIX: &str = ".light-partial";
/// Suffix of the sidecar holding the verified-chunk bitmap.
pub const STATE_SUFFIX: &str = ".light-state";

/// Sidecar layout: magic, the manifest's root, size and chunk size, then one bit per chunk
/// (bit `i % 8` of byte `i / 8`). The header binds the bitmap to one exact manifest.
const STATE_MAGIC: &[u8; 8] = b"LIGHTST1";
const HEADER_LEN: u64 = 8 + 32 + 8 + 4;

/// A file being received against a manifest: `OUT/<path>.light-partial` plus the sidecar
/// `OUT/<path>.light-state` (the verified-chunk bitmap), renamed to `OUT/<path>` by
/// [`OutputFile::finish`] once every chunk is verified.
#[derive(Debug)]
pub struct OutputFile {
    manifest: Manifest,
    file: File,
    state: File,
    partial_path: PathBuf,
    state_path: PathBuf,
    final_path: PathBuf,
    /// Verified-chunk bitmap, mirrored in the sidecar.
    verified: Vec<u8>,
    verified_count: u64,
    /// Byte coverage of chunks that have some bytes written but are not complete.
    in_progress: BTreeMap<u64, Coverage>,
    /// Chunks written in order from their start so far: the running hash and the length
    /// hashed, so completing such a chunk needs no read-back.
    streaming: BTreeMap<u64, (blake3::Hasher, u64)>,
    /// Reused buffer for re-reading a chunk to verify it.
    scratch: Vec<u8>,
    /// Writes whole pages past the page cache, when asked for (`set_direct_io`) and the
    /// file system takes `O_DIRECT`.
    direct: Option<Direct>,
    /// Bytes written with direct I/O.
    direct_bytes: u64,
    /// Flushes the file to stable storage in the background as it fills.
    syncer: Option<Syncer>,
    /// Bytes verified since the last background flush was asked for.
    unsynced: u64,
    /// Verified chunks (offset, length) whose pages are still in the page cache, oldest
    /// first, and their total length.
    cached: VecDeque<(i64, i64)>,
    cached_bytes: i64,
}

/// Bytes verified between background flushes. Measured with 4 writers of 256 MiB over ~2 s
/// on this project's virtual disk (fio): a flush only at the end took 3.0-3.2 s in all, one
/// every 32 MiB 2.4 s, every 64 MiB 2.5 s; the device's flush writes everything since the
/// last one, so flushing along the way leaves the final fsync only the tail.
const SYNC_EVERY: u64 = 32 << 20;

/// Verified bytes left in the page cache behind the newest: twice the flush interval, so
/// the pages dropped have normally been flushed already (the kernel keeps dirty ones).
/// Writing into pages the page cache just freed is cheaper than into fresh ones: on this
/// project's VM a fresh page costs the host a fault, and writing 2 GiB took 2.6 s of
/// system time with every page kept and 0.6 s with the pages dropped 64 MiB behind.
pub const DROP_BEHIND: u64 = 2 * SYNC_EVERY;

/// A thread that runs `fdatasync` on its own descriptor of the partial file whenever asked,
/// one request at a time (requests made while it runs merge into the next). A hint: its
/// errors are not reported, and because its descriptor is a separate open file, the
/// final `fsync` on the writer's own descriptor still sees any writeback error.
#[derive(Debug)]
struct Syncer {
    kick: std::sync::mpsc::SyncSender<()>,
}

impl Syncer {
    fn start(path: &Path) -> Option<Self> {
        let file = File::open(path).ok()?;
        let (kick, requests) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("light-sync".into())
            .spawn(move || {
                while requests.recv().is_ok() {
                    let _ = file.sync_data();
                }
            })
            .ok()?;
        Some(Self { kick })
    }

    /// Asks for a flush; a request already waiting covers this one.
    fn request(&self) {
        let _ = self.kick.try_send(());
    }
}

/// Alignment of direct writes, in memory and in the file: the page size, which covers
/// 512-byte and 4 KiB logical blocks.
const DIRECT_ALIGN: usize = 4096;
/// Largest direct write (a decoded block is at most a few MiB).
const DIRECT_MAX: usize = 4 << 20;

/// A second descriptor on the partial file opened with `O_DIRECT`, and an aligned buffer
/// to write from. Which way is faster depends on the storage: on one virtual disk 4
/// writers of 256 MiB took 2.4 s buffered + fsync (3.6 s system time) and 0.9 s direct; on
/// another (fresh blocks ~0.6 GB/s) 1.4-1.9 s buffered and 2.4-2.9 s direct.
#[derive(Debug)]
struct Direct {
    file: File,
    /// Over-allocated by one alignment: the aligned window starts at `start`.
    buf: Vec<u8>,
    start: usize,
}

impl Direct {
    fn open(path: &Path) -> Option<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        let buf = vec![0u8; DIRECT_MAX + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Some(Self { file, buf, start })
    }

    /// Writes `data` (whole pages) at `offset` (page-aligned).
    fn write(&mut self, data: &[u8], offset: u64) -> std::io::Result<()> {
        for (i, piece) in data.chunks(DIRECT_MAX).enumerate() {
            let window = &mut self.buf[self.start..self.start + piece.len()];
            window.copy_from_slice(piece);
            self.file
                .write_all_at(window, offset + (i * DIRECT_MAX) as u64)?;
        }
        Ok(())
    }
}

/// What `open_or_resume` found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Chunks already verified: no need to receive them again.
    pub verified: Vec<u64>,
    /// Chunks the sidecar claimed but whose data no longer matches: receive them again.
    pub rejected: Vec<u64>,
}

impl OutputFile {
    /// Starts receiving `manifest` into `out_dir`, discarding any earlier partial state.
    pub fn create(out_dir: impl AsRef<Path>, manifest: Manifest) -> Result<Self> {
        let mut f = Self::open_files(out_dir.as_ref(), manifest)?;
        f.start_fresh()?;
        Ok(f)
    }

    /// Resumes an interrupted transfer of exactly this manifest if one is on disk, or starts
    /// fresh; reports which chunks are already verified.
    ///
    /// Chunks the sidecar claims are re-hashed from the partial file once, so a sidecar that
    /// got ahead of the data (power cut) or a damaged partial file only costs re-receiving
    /// those chunks (listed in [`Resumed::rejected`]).
    pub fn open_or_resume(
        out_dir: impl AsRef<Path>,
        manifest: Manifest,
    ) -> Result<(Self, Resumed)> {
        let mut f = Self::open_files(out_dir.as_ref(), manifest)?;
        if !f.load_state()? {
            f.start_fresh()?;
            return Ok((f, Resumed::default()));
        }
        let mut resumed = Resumed::default();
        for index in 0..f.manifest.chunk_count() {
            if !f.is_verified(index) {
                continue;
            }
            if f.chunk_on_disk_is_valid(index)? {
                resumed.verified.push(index);
            } else {
                f.clear_verified(index)?;
                resumed.rejected.push(index);
            }
        }
        if !resumed.rejected.is_empty() {
            tracing::warn!(
                path = f.manifest.path(),
                rejected = resumed.rejected.len(),
                "resumed chunks failed re-verification and will be received again"
            );
        }
        Ok((f, resumed))
    }

    /// The manifest being received.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where the file will be once finished.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Writes `data` at `offset`; returns how many chunks this write completed and verified.
    ///
    /// Writes may come in any order, overlap or repeat. Bytes aimed at an already verified
    /// chunk are ignored. A chunk supplied whole in one write is hashed from `data` before
    /// touching the disk; otherwise it is re-read from the file once its last byte arrives.
    /// If it does not match, the error names it and its bytes count as unwritten again; a
    /// write spanning several chunks stops there (later chunks stay missing).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<u64> {
        let size = self.manifest.size();
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= size)
            .ok_or_else(|| CatalogError::OutOfBounds {
                path: self.manifest.path().to_owned(),
                offset,
                len: data.len() as u64,
                size,
            })?;
        let mut newly = 0;
        let mut pos = offset;
        let mut rest = data;
        while pos < end {
            let (index, range) = self.chunk_at(pos)?;
            let seg_end = end.min(range.end);
            let (seg, tail) = rest.split_at((seg_end - pos) as usize);
            rest = tail;
            let seg_start = pos;
            pos = seg_end;
            if self.is_verified(index) {
                continue;
            }
            if seg_start == range.start && seg_end == range.end {
                self.in_progress.remove(&index);
                self.streaming.remove(&index);
                if !self.manifest.verify_chunk(index, seg) {
                    return Err(self.mismatch(index));
                }
                self.pwrite(seg, seg_start)?;
            } else {
                self.pwrite(seg, seg_start)?;
                self.hash_in_order(index, seg_start - range.start, seg);
                let cov = self.in_progress.entry(index).or_default();
                cov.insert(seg_start - range.start, seg_end - range.start);
                if cov.covered() < range.end - range.start {
                    continue;
                }
                self.in_progress.remove(&index);
                let valid = match self.streaming.remove(&index) {
                    Some((h, hashed)) if hashed == range.end - range.start => {
                        self.manifest.chunk_digest(index) == Some(Digest(*h.finalize().as_bytes()))
                    }
                    _ => self.chunk_on_disk_is_valid(index)?,
                };
                if !valid {
                    return Err(self.mismatch(index));
                }
            }
            self.set_verified(index)?;
            newly += 1;
        }
        Ok(newly)
    }

    /// True if chunk `index` is verified.
    pub fn is_verified(&self, index: u64) -> bool {
        usize::try_from(index / 8)
            .ok()
            .and_then(|i| self.verified.get(i))
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    /// Number of verified chunks.
    pub fn verified_count(&self) -> u64 {
        self.verified_count
    }

    /// True once every chunk is verified.
    pub fn is_complete(&self) -> bool {
        self.verified_count == self.manifest.chunk_count()
    }

    /// Indices of the chunks not verified yet.
    pub fn missing_chunks(&self) -> Vec<u64> {
        (0..self.manifest.chunk_count())
            .filter(|&i| !self.is_verified(i))
            .collect()
    }

    /// Flushes data and sidecar to stable storage, so progress survives a power cut.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(io_err("syncing", &self.partial_path))?;
        self.state
            .sync_data()
            .map_err(io_err("syncing", &self.state_path))
    }

    /// Checks that every chunk is verified and the root matches, makes the data durable and
    /// atomically renames it to `OUT/<path>`; removes the sidecar. Returns the final path.
    pub fn finish(self) -> Result<PathBuf> {
        let path = self.manifest.path();
        if !self.is_complete() {
            let missing = self.missing_chunks();
            return Err(CatalogError::Incomplete {
                path: path.to_owned(),
                missing: missing.len() as u64,
                first: missing.first().copied().unwrap_or(0),
            });
        }
        if !self.manifest.verify_root() {
            return Err(CatalogError::RootMismatch(path.to_owned()));
        }
        self.file
            .sync_all()
            .map_err(io_err("syncing", &self.partial_path))?;
        std::fs::rename(&self.partial_path, &self.final_path)
            .map_err(io_err("renaming into place", &self.partial_path))?;
        // Make the rename itself durable before forgetting the resume state.
        if let Some(parent) = self.final_path.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing", parent))?;
        }
        match std::fs::remove_file(&self.state_path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(io_err("removing", &self.state_path)(e));
            }
            _ => {}
        }
        Ok(self.final_path)
    }

    /// Opens (creating) the partial file and sidecar, locking the partial file.
    fn open_files(out_dir: &Path, manifest: Manifest) -> Result<Self> {
        if !manifest.verify_root() {
            return Err(CatalogError::RootMismatch(manifest.path().to_owned()));
        }
        // The manifest guarantees a relative path without `..`; joining stays inside OUT.
        let final_path = out_dir.join(manifest.path());
        let partial_path = with_suffix(&final_path, PARTIAL_SUFFIX);
        let state_path = with_suffix(&final_path, STATE_SUFFIX);
        if let Some(parent) = final_path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(io_err("opening", p))
        };
        let file = open(&partial_path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(CatalogError::OutputBusy(partial_path));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_err("locking", &partial_path)(e));
            }
        }
        let state = open(&state_path)?;
        let bitmap_len = usize::try_from(manifest.chunk_count().div_ceil(8))
            .map_err(|_| CatalogError::InvalidManifest("too many chunks".into()))?;
        let chunk_size = manifest.chunk_size() as usize;
        Ok(Self {
            manifest,
            file,
            state,
            partial_path,
            state_path,
            final_path,
            verified: vec![0; bitmap_len],
            verified_count: 0,
            in_progress: BTreeMap::new(),
            streaming: BTreeMap::new(),
            scratch: Vec::with_capacity(chunk_size.min(1 << 20)),
            direct: None,
            direct_bytes: 0,
            syncer: None,
            unsynced: 0,
            cached: VecDeque::new(),
            cached_bytes: 0,
        })
    }

    /// Truncates the partial file to the manifest size (sparse) and writes an empty sidecar.
    fn start_fresh(&mut self) -> Result<()> {
        self.verified.fill(0);
        self.verified_count = 0;
        self.in_progress.clear();
        self.streaming.clear();
        // Truncate first so no stale bytes survive, then reserve the whole file.
        self.file
            .set_len(0)
            .map_err(io_err("truncating", &self.partial_path))?;
        self.reserve()?;
        let mut state = self.header();
        state.extend_from_slice(&self.verified);
        self.state
            .set_len(0)
            .and_then(|()| self.state.write_all_at(&state, 0))
            .map_err(io_err("writing", &self.state_path))
    }

    /// Allocates the file's blocks up front: a disk too small fails now, naming the file,
    /// not after minutes of transfer, and the writes then skip the file system's per-page
    /// delayed allocation. A file system without `fallocate` gets a sparse file instead.
    /// On tmpfs the free space is checked instead: there `fallocate` zeroes every page
    /// (1 GiB: most of a second before the receiver can listen), pages the writes would
    /// allocate anyway without zeroing.
    fn reserve(&self) -> Result<()> {
        use std::os::fd::AsRawFd;
        let size = self.manifest.size();
        let len = i64::try_from(size).map_err(|_| {
            CatalogError::InvalidManifest(format!("size {size} too large for this system"))
        })?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: `statfs` is plain data, so all zeroes is a valid value.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor belongs to `self.file`; `fs` is a valid statfs to fill.
        if unsafe { libc::fstatfs(self.file.as_raw_fd(), &mut fs) } == 0
            && fs.f_type == libc::TMPFS_MAGIC
        {
            check_tmpfs_room(&fs, size)
                .map_err(io_err("reserving space for", &self.partial_path))?;
        } else {
            // SAFETY: the descriptor belongs to `self.file`, open for the call's duration;
            // fallocate reads no memory of ours.
            if unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len) } == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(io_err("reserving space for", &self.partial_path)(e));
            }
        }
        self.file
            .set_len(size)
            .map_err(io_err("sizing", &self.partial_path))
    }

    /// Loads the sidecar if it belongs to this manifest and the partial file has the right
    /// size; returns false if there is nothing valid to resume.
    fn load_state(&mut self) -> Result<bool> {
        let meta = self
            .file
            .metadata()
            .map_err(io_err("inspecting", &self.partial_path))?;
        let header = self.header();
        let want = HEADER_LEN + self.verified.len() as u64;
        let state_len = self
            .state
            .metadata()
            .map_err(io_err("inspecting", &self.state_path))?
            .len();
        if meta.len() != self.manifest.size() || state_len != want {
            return Ok(false);
        }
        let mut buf = vec![0u8; want as usize];
        self.state
            .read_exact_at(&mut buf, 0)
            .map_err(io_err("reading", &self.state_path))?;
        if buf[..header.len()] != header[..] {
            return Ok(false);
        }
        self.verified.copy_from_slice(&buf[header.len()..]);
        // Bits past the last chunk mean the sidecar is not ours.
        let count = self.manifest.chunk_count();
        if !count.is_multiple_of(8) && self.verified.last().is_some_and(|&b| b >> (count % 8) != 0)
        {
            return Ok(false);
        }
        self.verified_count = self
            .verified
            .iter()
            .map(|b| u64::from(b.count_ones()))
            .sum();
        Ok(true)
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(STATE_MAGIC);
        h.extend_from_slice(&self.manifest.root().0);
        h.extend_from_slice(&self.manifest.size().to_le_bytes());
        h.extend_from_slice(&self.manifest.chunk_size().to_le_bytes());
        h
    }

    fn chunk_at(&self, pos: u64) -> Result<(u64, std::ops::Range<u64>)> {
        self.manifest
            .chunk_of(pos)
            .and_then(|i| Some((i, self.manifest.chunk_range(i)?)))
            .ok_or_else(|| CatalogError::InvalidManifest(format!("no chunk at offset {pos}")))
    }

    /// Hashes a piece written at `rel` into chunk `index` when it continues the chunk's
    /// in-order run from its start; any other piece ends the run (the chunk is then read
    /// back to be checked).
    fn hash_in_order(&mut self, index: u64, rel: u64, piece: &[u8]) {
        if rel == 0 {
            self.streaming.insert(index, (blake3::Hasher::new(), 0));
        }
        match self.streaming.get_mut(&index) {
            Some((h, hashed)) if *hashed == rel => {
                h.update(piece);
                *hashed += piece.len() as u64;
            }
            Some(_) => {
                self.streaming.remove(&index);
            }
            None => {}
        }
    }

    fn chunk_on_disk_is_valid(&mut self, index: u64) -> Result<bool> {
        let Some(range) = self.manifest.chunk_range(index) else {
            return Ok(false);
        };
        self.scratch.resize((range.end - range.start) as usize, 0);
        self.file
            .read_exact_at(&mut self.scratch, range.start)
            .map_err(io_err("reading back", &self.partial_path))?;
        Ok(self.manifest.verify_chunk(index, &self.scratch))
    }

    /// Writes whole pages past the page cache (`O_DIRECT`) from now on, or through it
    /// again. Returns whether direct writes are on: false where the file system refuses
    /// `O_DIRECT`.
    pub fn set_direct_io(&mut self, on: bool) -> bool {
        self.direct = if on {
            self.direct
                .take()
                .or_else(|| Direct::open(&self.partial_path))
        } else {
            None
        };
        self.direct.is_some()
    }

    /// Bytes written past the page cache so far (0 unless `set_direct_io` is on and the
    /// file system takes `O_DIRECT`).
    pub fn direct_bytes(&self) -> u64 {
        self.direct_bytes
    }

    /// Writes the piece's whole pages directly and its ragged ends through the page cache.
    /// No page is written both ways unless pieces overlap, and then the kernel keeps the
    /// two coherent (a direct write flushes and drops cached pages in its range).
    fn pwrite(&mut self, data: &[u8], offset: u64) -> Result<()> {
        let align = DIRECT_ALIGN as u64;
        let end = offset + data.len() as u64;
        let (first, last) = (offset.next_multiple_of(align), end / align * align);
        if let Some(d) = self.direct.as_mut()
            && last > first
        {
            let (head, rest) = data.split_at((first - offset) as usize);
            let (body, tail) = rest.split_at((last - first) as usize);
            match d.write(body, first) {
                Ok(()) => {
                    self.direct_bytes += body.len() as u64;
                    self.buffered(head, offset)?;
                    return self.buffered(tail, last);
                }
                // A file system that opened with O_DIRECT but refuses these writes (other
                // alignment rules): the page cache takes everything from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(io_err("writing", &self.partial_path)(e)),
            }
        }
        self.buffered(data, offset)
    }

    fn buffered(&self, data: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(data, offset)
            .map_err(io_err("writing", &self.partial_path))
    }

    fn set_verified(&mut self, index: u64) -> Result<()> {
        self.update_bit(index, true)?;
        self.verified_count += 1;
        if let Some(range) = self.kernel_range(index) {
            self.start_writeback(range);
            self.drop_written(range);
        }
        self.unsynced += u64::from(self.manifest.chunk_size());
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            if self.syncer.is_none() {
                self.syncer = Syncer::start(&self.partial_path);
            }
            if let Some(s) = &self.syncer {
                s.request();
            }
        }
        Ok(())
    }

    /// Chunk `index`'s offset and length as the kernel's file-range calls take them.
    fn kernel_range(&self, index: u64) -> Option<(i64, i64)> {
        let r = self.manifest.chunk_range(index)?;
        Some((
            i64::try_from(r.start).ok()?,
            i64::try_from(r.end - r.start).ok()?,
        ))
    }

    /// Starts writing a verified chunk to disk now, so the final fsync waits only for the
    /// last chunks (measured: 4 receivers' 256 MiB fsyncs took 0.3-0.5 s when all of it was
    /// still dirty). A hint: a file system that does not support it syncs it all at the end.
    fn start_writeback(&self, (at, len): (i64, i64)) {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor belongs to `self.file`, open for the call's duration;
        // sync_file_range reads no memory of ours.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), at, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Remembers a verified chunk's range and asks the kernel to drop the pages of the
    /// oldest chunks once more than [`DROP_BEHIND`] bytes are held: a file of many GiB then
    /// does not push the host's other data out of memory. A hint: pages still dirty or being
    /// written stay, so no data is lost, and a reader of the file gets it back from disk.
    fn drop_written(&mut self, range: (i64, i64)) {
        use std::os::fd::AsRawFd;
        self.cached.push_back(range);
        self.cached_bytes += range.1;
        while self.cached_bytes > DROP_BEHIND as i64 {
            let Some((at, len)) = self.cached.pop_front() else {
                break;
            };
            self.cached_bytes -= len;
            // SAFETY: the descriptor belongs to `self.file`, open for the call's duration;
            // posix_fadvise reads no memory of ours.
            unsafe {
                libc::posix_fadvise(self.file.as_raw_fd(), at, len, libc::POSIX_FADV_DONTNEED);
            }
        }
    }

    fn clear_verified(&mut self, index: u64) -> Result<()> {
        self.update_bit(index, false)?;
        self.verified_count -= 1;
        Ok(())
    }

    fn update_bit(&mut self, index: u64, on: bool) -> Result<()> {
        let byte_index = index / 8;
        let byte = usize::try_from(byte_index)
            .ok()
            .and_then(|i| self.verified.get_mut(i))
            .ok_or_else(|| CatalogError::InvalidManifest(format!("no chunk {index}")))?;
        let mask = 1u8 << (index % 8);
        if on {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
        let value = *byte;
        self.state
            .write_all_at(&[value], HEADER_LEN + byte_index)
            .map_err(io_err("writing", &self.state_path))
    }

    fn mismatch(&self, index: u64) -> CatalogError {
        CatalogError::ChunkMismatch {
            path: self.manifest.path().to_owned(),
            index,
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Refuses a file of `size` bytes on a tmpfs whose free space (`fs`) cannot hold it; a tmpfs
/// without a size limit reports no blocks at all and takes anything.
fn check_tmpfs_room(fs: &libc::statfs, size: u64) -> std::io::Result<()> {
    let page = u64::try_from(fs.f_bsize).unwrap_or(0);
    let free = fs.f_bavail.saturating_mul(page);
    if fs.f_blocks == 0 || free >= size {
        return Ok(());
    }
    Err(std::io::Error::new(
        ErrorKind::StorageFull,
        format!("{size} bytes needed, {free} free on this tmpfs"),
    ))
}

/// Which bytes of one chunk have been written: sorted, disjoint, non-adjacent half-open
/// intervals. Packets mostly arrive in order, so this stays at one or two intervals.
#[derive(Debug, Default)]
struct Coverage {
    intervals: Vec<(u64, u64)>,
}

impl Coverage {
    fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // First interval that touches or follows `start`.
        let first = self.intervals.partition_point(|&(_, e)| e < start);
        let mut last = first;
        let (mut s, mut e) = (start, end);
        while let Some(&(is, ie)) = self.intervals.get(last) {
            if is > end {
                break;
            }
            s = s.min(is);
            e = e.max(ie);
            last += 1;
        }
        self.intervals.splice(first..last, [(s, e)]);
    }

    fn covered(&self) -> u64 {
        self.intervals.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::{Coverage, check_tmpfs_room};

    #[test]
    fn tmpfs_room_is_checked_against_free_pages() {
        // SAFETY: `statfs` is plain data, so all zeroes is a valid value.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        fs.f_bsize = 4096;
        fs.f_blocks = 1000;
        fs.f_bavail = 10;
        assert!(check_tmpfs_room(&fs, 40960).is_ok());
        let err = check_tmpfs_room(&fs, 40961).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert!(
            err.to_string().contains("40961 bytes needed, 40960 free"),
            "{err}"
        );
        fs.f_blocks = 0;
        fs.f_bavail = 0;
        assert!(check_tmpfs_room(&fs, u64::MAX).is_ok(), "unlimited tmpfs");
    }

    #[test]
    fn coverage_merges_overlaps_and_neighbours() {
        let mut c = Coverage::default();
        c.insert(10, 20);
        c.insert(30, 40);
        assert_eq!(c.covered(), 20);
        c.insert(20, 30);
        assert_eq!(c.intervals, vec![(10, 40)]);
        c.insert(0, 5);
        c.insert(3, 12);
        assert_eq!(c.intervals, vec![(0, 40)]);
        c.insert(5, 6);
        c.insert(50, 50);
        assert_eq!(c.covered(), 40);
        c.insert(45, 60);
        c.insert(0, 100);
        assert_eq!(c.intervals, vec![(0, 100)]);
    }
}
