//! XOR encoding of messages and the per-receiver decoder.

use super::{CodingError, MessageSpec, Plan, Segment};
use std::collections::HashMap;

/// `dst[..src.len()] ^= src` (requires `src.len() <= dst.len()`; extra `src` is ignored).
///
/// Works on 32-byte chunks, which LLVM turns into vector XORs; only the tail is bytewise.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let n = src.len().min(dst.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut d = dst.chunks_exact_mut(32);
    let mut s = src.chunks_exact(32);
    for (d, s) in (&mut d).zip(&mut s) {
        for (a, b) in d.iter_mut().zip(s) {
            *a ^= *b;
        }
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a ^= *b;
    }
}

/// The bytes of a message that is one uncoded file segment, straight from the library
/// (`None` for a coded message): sending them needs no encoded copy.
pub fn uncoded_bytes<'a>(
    spec: &MessageSpec,
    files: &[&'a [u8]],
) -> Option<Result<&'a [u8], CodingError>> {
    match &spec.terms[..] {
        [term] if term.parts.len() == 1 && term.len() == spec.len => {
            Some(file_bytes(files, &term.parts[0]))
        }
        _ => None,
    }
}

fn file_bytes<'a>(files: &[&'a [u8]], seg: &Segment) -> Result<&'a [u8], CodingError> {
    let range = || {
        let start = usize::try_from(seg.offset).ok()?;
        Some(start..start.checked_add(usize::try_from(seg.len).ok()?)?)
    };
    range()
        .and_then(|r| files.get(seg.file as usize)?.get(r))
        .ok_or(CodingError::OutOfLibrary {
            file: seg.file,
            offset: seg.offset,
            len: seg.len,
        })
}

/// Writes the XOR of `spec`'s terms (each zero-padded) into `out` (`out.len() == spec.len`).
pub fn encode_message(
    spec: &MessageSpec,
    files: &[&[u8]],
    out: &mut [u8],
) -> Result<(), CodingError> {
    if out.len() as u64 != spec.len {
        return Err(CodingError::Length {
            what: "message buffer",
            got: out.len() as u64,
            expected: spec.len,
        });
    }
    encode_range(spec, files, 0, out)
}

/// Writes bytes `offset..offset + out.len()` of the message [`encode_message`] builds into
/// `out`: a sender encodes block by block, each block still in cache when it is packetized.
pub fn encode_range(
    spec: &MessageSpec,
    files: &[&[u8]],
    offset: u64,
    out: &mut [u8],
) -> Result<(), CodingError> {
    let end = offset.saturating_add(out.len() as u64);
    if end > spec.len {
        return Err(CodingError::Length {
            what: "message range end",
            got: end,
            expected: spec.len,
        });
    }
    if spec.terms.is_empty() {
        out.fill(0);
    }
    for (i, term) in spec.terms.iter().enumerate() {
        if term.len() > spec.len {
            return Err(CodingError::Length {
                what: "term",
                got: term.len(),
                expected: spec.len,
            });
        }
        let mut at = 0;
        for seg in &term.parts {
            if at >= end {
                break;
            }
            let src = file_bytes(files, seg)?;
            let (from, to) = (at.max(offset), (at + seg.len).min(end));
            if from < to {
                // In range: from - at < seg.len and to - offset <= out.len() (u64 to usize
                // is lossless here, both index slices in memory).
                let src = &src[(from - at) as usize..(to - at) as usize];
                let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
                // The first term is copied, saving a pass over a zeroed buffer.
                if i == 0 {
                    dst.copy_from_slice(src);
                } else {
                    xor_into(dst, src);
                }
            }
            at += seg.len;
        }
        if i == 0 {
            // `at` stops at the term's length or at or past `end`: the rest is padding.
            out[(at.clamp(offset, end) - offset) as usize..].fill(0);
        }
    }
    Ok(())
}

/// A piece of the receiver's demanded file recovered from a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// Offset in the demanded file.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// How one message becomes file bytes for this receiver.
#[derive(Clone, Debug)]
struct Recipe {
    len: usize,
    /// `(message offset, cache offset, len)`: cached bytes to XOR out.
    known: Vec<(usize, usize, usize)>,
    /// `(message offset, file offset, len)`: what remains is the demanded file.
    outputs: Vec<(usize, u64, usize)>,
}

impl Recipe {
    fn apply(&self, mut msg: Vec<u8>, cache: &[u8]) -> Vec<Recovered> {
        msg.truncate(self.len);
        for &(m, c, l) in &self.known {
            xor_into(&mut msg[m..m + l], &cache[c..c + l]);
        }
        if let [(0, offset, len)] = self.outputs[..] {
            msg.truncate(len);
            return vec![Recovered { offset, data: msg }];
        }
        self.outputs
            .iter()
            .map(|&(m, offset, len)| Recovered {
                offset,
                data: msg[m..m + len].to_vec(),
            })
            .collect()
    }
}

impl Recipe {
    /// Like [`Recipe::apply`] for bytes `[at, at + piece.len())` of the message.
    fn apply_piece(&self, at: usize, mut piece: Vec<u8>, cache: &[u8]) -> Vec<Recovered> {
        let end = at + piece.len();
        let overlap = |m: usize, l: usize| (m.max(at), (m + l).min(end));
        for &(m, c, l) in &self.known {
            let (lo, hi) = overlap(m, l);
            if lo < hi {
                let from = c + lo - m;
                xor_into(&mut piece[lo - at..hi - at], &cache[from..from + hi - lo]);
            }
        }
        let mut out: Vec<Recovered> = Vec::new();
        for &(m, offset, l) in &self.outputs {
            let (lo, hi) = overlap(m, l);
            if lo >= hi {
                continue;
            }
            let offset = offset + (lo - m) as u64;
            if lo == at && hi == end && self.outputs.len() == 1 {
                // The whole piece is file bytes: hand it over without a copy.
                return vec![Recovered {
                    offset,
                    data: piece,
                }];
            }
            out.push(Recovered {
                offset,
                data: piece[lo - at..hi - at].to_vec(),
            });
        }
        out
    }
}

/// A message rebuilt from sent ones (YMA).
struct Pending {
    recipe: Recipe,
    sources: Vec<u32>,
    missing: usize,
}

/// Per-receiver sans-IO decoder: feed it received messages, get file pieces back.
pub struct Decoder {
    receiver: u32,
    cache_len: u64,
    message_lens: Vec<u64>,
    direct: HashMap<u32, Recipe>,
    pending: Vec<Option<Pending>>,
    /// Sent message -> pending rebuilds that need it.
    needed_by: HashMap<u32, Vec<usize>>,
    buffers: HashMap<u32, Vec<u8>>,
    wanted: Vec<u32>,
    received: Vec<bool>,
    remaining: usize,
}

/// `(file offset, len, cache offset)` of a receiver's cached segments, per file, sorted.
type CacheIndex = HashMap<u32, Vec<(u64, u64, u64)>>;

fn cache_index(segments: &[Segment]) -> CacheIndex {
    let mut idx: CacheIndex = HashMap::new();
    let mut at = 0;
    for s in segments {
        idx.entry(s.file).or_default().push((s.offset, s.len, at));
        at += s.len;
    }
    for v in idx.values_mut() {
        v.sort_unstable();
    }
    idx
}

/// Cache ranges `(cache offset, len)` holding `seg`, or `None` if not fully cached.
fn locate(idx: &CacheIndex, seg: &Segment) -> Option<Vec<(u64, u64)>> {
    let list = idx.get(&seg.file)?;
    let mut i = list
        .partition_point(|&(o, _, _)| o <= seg.offset)
        .checked_sub(1)?;
    let (mut pos, end) = (seg.offset, seg.offset + seg.len);
    let mut out = Vec::new();
    while pos < end {
        let &(o, l, c) = list.get(i)?;
        if pos < o || pos >= o + l {
            return None;
        }
        let take = (o + l).min(end) - pos;
        out.push((c + pos - o, take));
        pos += take;
        i += 1;
    }
    Some(out)
}

impl Decoder {
    /// The decoder of `receiver` under `plan`.
    pub fn new(plan: &Plan, receiver: u32) -> Result<Self, CodingError> {
        let demand = plan.demand(receiver).ok_or(CodingError::UnknownReceiver {
            receiver,
            receivers: plan.receivers(),
        })?;
        let idx = cache_index(plan.cache_segments(receiver));
        let recipe = |spec: &MessageSpec, message: u32| -> Result<Option<Recipe>, CodingError> {
            let bad = |reason| CodingError::Inconsistent {
                receiver,
                message,
                reason,
            };
            if spec.receivers.binary_search(&receiver).is_err() {
                return Ok(None);
            }
            if spec.terms.iter().any(|t| t.len() > spec.len) {
                return Err(bad("term longer than its message"));
            }
            let mut known = Vec::new();
            let mut outputs = Vec::new();
            for term in &spec.terms {
                let located: Option<Vec<Vec<(u64, u64)>>> =
                    term.parts.iter().map(|s| locate(&idx, s)).collect();
                let mut at = 0usize;
                match located {
                    Some(ranges) => {
                        for (c, l) in ranges.into_iter().flatten() {
                            known.push((at, c as usize, l as usize));
                            at += l as usize;
                        }
                    }
                    None => {
                        if !outputs.is_empty() {
                            return Err(bad("two terms missing from the cache"));
                        }
                        for s in &term.parts {
                            if s.file != demand {
                                return Err(bad("uncached term of another file"));
                            }
                            outputs.push((at, s.offset, s.len as usize));
                            at += s.len as usize;
                        }
                    }
                }
            }
            if outputs.is_empty() {
                return Err(bad("nothing new for a listed receiver"));
            }
            Ok(Some(Recipe {
                len: spec.len as usize,
                known,
                outputs,
            }))
        };
        let mut direct = HashMap::new();
        for (i, spec) in plan.messages().iter().enumerate() {
            if let Some(r) = recipe(spec, i as u32)? {
                direct.insert(i as u32, r);
            }
        }
        let mut rebuilds = Vec::new();
        for (i, d) in plan.derived().iter().enumerate() {
            if let Some(r) = recipe(&d.spec, i as u32 | 1 << 31)? {
                if let Some(&s) = d
                    .sources
                    .iter()
                    .find(|&&s| s as usize >= plan.messages().len())
                {
                    return Err(CodingError::UnknownMessage(s));
                }
                rebuilds.push((r, &d.sources));
            }
        }
        let mut uses: HashMap<u32, usize> = HashMap::new();
        for s in rebuilds.iter().flat_map(|(_, sources)| sources.iter()) {
            *uses.entry(*s).or_default() += 1;
        }
        let mut pending = Vec::new();
        let mut needed_by: HashMap<u32, Vec<usize>> = HashMap::new();
        for (r, sources) in rebuilds {
            // A rebuild from one sent message is that message (all receivers wanting the
            // same file): take it as a direct one, so it streams onto the file block by
            // block instead of being buffered whole and XORed into a zeroed copy.
            if let [s] = sources[..]
                && uses[&s] == 1
                && !direct.contains_key(&s)
                && plan.messages()[s as usize].len as usize == r.len
            {
                direct.insert(s, r);
                continue;
            }
            for &s in sources {
                needed_by.entry(s).or_default().push(pending.len());
            }
            pending.push(Some(Pending {
                recipe: r,
                sources: sources.clone(),
                missing: sources.len(),
            }));
        }
        let mut wanted: Vec<u32> = direct.keys().chain(needed_by.keys()).copied().collect();
        wanted.sort_unstable();
        wanted.dedup();
        Ok(Self {
            receiver,
            cache_len: plan.cache_len(receiver),
            message_lens: plan.messages().iter().map(|m| m.len).collect(),
            remaining: direct.len() + pending.len(),
            direct,
            pending,
            needed_by,
            buffers: HashMap::new(),
            wanted,
            received: vec![false; plan.messages().len()],
        })
    }

    /// The receiver this decoder serves.
    pub fn receiver(&self) -> u32 {
        self.receiver
    }

    /// Sent messages this receiver needs (sorted); others can be dropped unread.
    pub fn wanted_messages(&self) -> &[u32] {
        &self.wanted
    }

    /// True once every piece of the demanded file not in the cache was recovered.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// True if message `idx` can be taken piece by piece ([`Decoder::take_piece`]): it maps
    /// onto the file directly and no rebuilt message needs it whole.
    pub fn streams(&self, idx: u32) -> bool {
        self.direct.contains_key(&idx) && !self.needed_by.contains_key(&idx)
    }

    /// Takes bytes `[at, at + piece.len())` of a streamed message (see
    /// [`Decoder::streams`]); returns the file pieces they yield. The message counts as
    /// received once [`Decoder::streamed`] says all its pieces came.
    pub fn take_piece(
        &self,
        idx: u32,
        at: u64,
        piece: Vec<u8>,
        cache: &[u8],
    ) -> Result<Vec<Recovered>, CodingError> {
        let r = match self.direct.get(&idx) {
            Some(r) if self.streams(idx) => r,
            _ => return Err(CodingError::UnknownMessage(idx)),
        };
        let end = at.saturating_add(piece.len() as u64);
        if end > r.len as u64 {
            return Err(CodingError::Length {
                what: "message piece end",
                got: end,
                expected: r.len as u64,
            });
        }
        if cache.len() as u64 != self.cache_len {
            return Err(CodingError::Length {
                what: "cache",
                got: cache.len() as u64,
                expected: self.cache_len,
            });
        }
        // Fits usize: at < end <= r.len.
        Ok(r.apply_piece(at as usize, piece, cache))
    }

    /// Marks streamed message `idx` complete (all its pieces were taken).
    pub fn streamed(&mut self, idx: u32) -> Result<(), CodingError> {
        if !self.streams(idx) {
            return Err(CodingError::UnknownMessage(idx));
        }
        if !std::mem::replace(&mut self.received[idx as usize], true) {
            self.remaining -= 1;
        }
        Ok(())
    }

    /// Takes message `idx` and the receiver's cache; returns the file pieces it yields,
    /// including those of rebuilt messages it completes (unwanted or repeated: nothing).
    pub fn on_message(
        &mut self,
        idx: u32,
        bytes: &[u8],
        cache: &[u8],
    ) -> Result<Vec<Recovered>, CodingError> {
        self.take_message(idx, bytes.to_vec(), cache)
    }

    /// Like [`Decoder::on_message`], taking the message by value: a message that maps
    /// straight onto the file becomes the recovered piece without a copy.
    pub fn take_message(
        &mut self,
        idx: u32,
        bytes: Vec<u8>,
        cache: &[u8],
    ) -> Result<Vec<Recovered>, CodingError> {
        let expected = *self
            .message_lens
            .get(idx as usize)
            .ok_or(CodingError::UnknownMessage(idx))?;
        if bytes.len() as u64 != expected {
            return Err(CodingError::Length {
                what: "message",
                got: bytes.len() as u64,
                expected,
            });
        }
        if cache.len() as u64 != self.cache_len {
            return Err(CodingError::Length {
                what: "cache",
                got: cache.len() as u64,
                expected: self.cache_len,
            });
        }
        if std::mem::replace(&mut self.received[idx as usize], true) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let users = self.needed_by.get(&idx);
        if let Some(r) = self.direct.get(&idx) {
            self.remaining -= 1;
            // Copied only when a rebuild still needs the message itself.
            if users.is_none() {
                out.extend(r.apply(bytes, cache));
                return Ok(out);
            }
            out.extend(r.apply(bytes.clone(), cache));
        }
        let Some(users) = users else {
            return Ok(out);
        };
        self.buffers.insert(idx, bytes);
        for &p in users {
            let Some(pending) = self.pending[p].as_mut() else {
                continue;
            };
            pending.missing -= 1;
            if pending.missing > 0 {
                continue;
            }
            let width = pending
                .sources
                .iter()
                .map(|s| self.message_lens[*s as usize] as usize)
                .max()
                .unwrap_or(0);
            let mut acc = vec![0u8; width.max(pending.recipe.len)];
            for s in &pending.sources {
                xor_into(&mut acc, &self.buffers[s]);
            }
            out.extend(pending.recipe.apply(acc, cache));
            self.remaining -= 1;
            // Free buffers no remaining rebuild needs.
            let sources = std::mem::take(&mut pending.sources);
            self.pending[p] = None;
            for s in sources {
                if self.needed_by[&s]
                    .iter()
                    .all(|&q| self.pending[q].is_none())
                {
                    self.buffers.remove(&s);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coding::{CacheBudget, PlanInput, SchemeChoice, Segment, Term, plan};

    #[test]
    fn xor_matches_bytewise() {
        let a: Vec<u8> = (0..300).map(|i| (i * 7) as u8).collect();
        let b: Vec<u8> = (0..300).map(|i| (i * 13 + 5) as u8).collect();
        for len in [0, 1, 31, 32, 33, 64, 100, 299] {
            for off in [0, 1, 3] {
                let mut d = a.clone();
                xor_into(&mut d[off..], &b[..len]);
                for i in 0..300 {
                    let want = if i >= off && i < off + len {
                        a[i] ^ b[i - off]
                    } else {
                        a[i]
                    };
                    assert_eq!(d[i], want, "len {len} off {off} at {i}");
                }
            }
        }
    }

    fn small_plan() -> (Plan, Vec<Vec<u8>>) {
        let input = PlanInput {
            receivers: 3,
            file_lens: vec![90, 60, 33],
            budget: CacheBudget::Fraction(1.0 / 3.0),
            scheme: SchemeChoice::Centralized,
            demands: vec![0, 0, 2],
            seed: 0,
            min_subfile_bytes: 0,
            packet_bytes: 1,
        };
        let files = input
            .file_lens
            .iter()
            .map(|&l| (0..l).map(|i| i as u8 ^ 0x5a).collect())
            .collect();
        (plan(&input).unwrap(), files)
    }

    #[test]
    fn encode_checks_lengths_and_library() {
        let (p, files) = small_plan();
        let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let spec = &p.messages()[0];
        let mut out = vec![0; spec.len as usize + 1];
        assert!(matches!(
            encode_message(spec, &refs, &mut out),
            Err(CodingError::Length { .. })
        ));
        let mut out = vec![0; spec.len as usize];
        assert!(matches!(
            encode_message(spec, &[], &mut out),
            Err(CodingError::OutOfLibrary { .. })
        ));
        encode_message(spec, &refs, &mut out).unwrap();
    }

    proptest::proptest! {
        /// Whole messages and any cut of them into ranges encode the XOR of the zero-padded
        /// terms, for plans of both families (decentralized terms gather many segments).
        #[test]
        fn ranges_encode_the_xor_of_the_padded_terms(
            receivers in 2u32..5,
            lens in proptest::collection::vec(1u64..400, 1..4),
            fraction in 0.0f64..1.0,
            decentralized: bool,
            seed: u64,
            cut in 1usize..97,
        ) {
            let input = PlanInput {
                receivers,
                demands: (0..receivers).map(|r| r % lens.len() as u32).collect(),
                file_lens: lens,
                budget: CacheBudget::Fraction(fraction),
                scheme: if decentralized {
                    SchemeChoice::Decentralized
                } else {
                    SchemeChoice::Centralized
                },
                seed,
                min_subfile_bytes: 0,
                packet_bytes: 1,
            };
            let p = plan(&input).unwrap();
            let files: Vec<Vec<u8>> = input
                .file_lens
                .iter()
                .enumerate()
                .map(|(f, &l)| (0..l).map(|i| (i as u8).wrapping_mul(31) ^ f as u8).collect())
                .collect();
            let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
            for spec in p.messages() {
                // By the definition: every term zero-padded, all XORed together.
                let mut want = vec![0u8; spec.len as usize];
                for term in &spec.terms {
                    let bytes = term.parts.iter().flat_map(|s| {
                        &files[s.file as usize][s.offset as usize..(s.offset + s.len) as usize]
                    });
                    for (w, b) in want.iter_mut().zip(bytes) {
                        *w ^= b;
                    }
                }
                let mut whole = vec![0x5a; spec.len as usize];
                encode_message(spec, &refs, &mut whole).unwrap();
                proptest::prop_assert_eq!(&whole, &want);
                // Stale bytes in the buffer must not leak into a range.
                let mut ranged = vec![0xa5; spec.len as usize];
                for (i, chunk) in ranged.chunks_mut(cut).enumerate() {
                    encode_range(spec, &refs, (i * cut) as u64, chunk).unwrap();
                }
                proptest::prop_assert_eq!(&ranged, &whole);
                let mut past = [0; 2];
                proptest::prop_assert!(
                    encode_range(spec, &refs, spec.len.saturating_sub(1), &mut past).is_err()
                );
            }
        }
    }

    #[test]
    fn decoder_rejects_bad_input_and_ignores_repeats() {
        let (p, files) = small_plan();
        assert!(matches!(
            Decoder::new(&p, 3),
            Err(CodingError::UnknownReceiver { .. })
        ));
        let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let mut d = Decoder::new(&p, 1).unwrap();
        let cache: Vec<u8> = p
            .cache_segments(1)
            .iter()
            .flat_map(|s| {
                files[s.file as usize][s.offset as usize..(s.offset + s.len) as usize].to_vec()
            })
            .collect();
        let m = d.wanted_messages()[0];
        let spec = &p.messages()[m as usize];
        let mut msg = vec![0; spec.len as usize];
        encode_message(spec, &refs, &mut msg).unwrap();
        assert!(d.on_message(99, &msg, &cache).is_err());
        assert!(d.on_message(m, &msg[1..], &cache).is_err());
        assert!(d.on_message(m, &msg, &cache[1..]).is_err());
        let first = d.on_message(m, &msg, &cache).unwrap();
        assert!(!first.is_empty() || !p.derived().is_empty());
        assert!(d.on_message(m, &msg, &cache).unwrap().is_empty());
    }

    #[test]
    fn pieces_recover_what_whole_messages_do() {
        let (p, files) = small_plan();
        let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        for r in 0..p.receivers() {
            let cache: Vec<u8> = p
                .cache_segments(r)
                .iter()
                .flat_map(|s| {
                    files[s.file as usize][s.offset as usize..(s.offset + s.len) as usize].to_vec()
                })
                .collect();
            let want = &files[p.demand(r).unwrap() as usize];
            let mut whole = Decoder::new(&p, r).unwrap();
            let mut streamed = Decoder::new(&p, r).unwrap();
            let (mut a, mut b) = (vec![None; want.len()], vec![None; want.len()]);
            let put = |img: &mut Vec<Option<u8>>, rec: Vec<Recovered>| {
                for x in rec {
                    for (i, v) in x.data.into_iter().enumerate() {
                        img[x.offset as usize + i] = Some(v);
                    }
                }
            };
            for part in p.cached_parts_of_demand(r) {
                for i in 0..part.len {
                    let v = Some(cache[(part.cache_offset + i) as usize]);
                    a[(part.file_offset + i) as usize] = v;
                    b[(part.file_offset + i) as usize] = v;
                }
            }
            for &m in whole.wanted_messages().to_vec().iter() {
                let spec = &p.messages()[m as usize];
                let mut msg = vec![0; spec.len as usize];
                encode_message(spec, &refs, &mut msg).unwrap();
                put(&mut a, whole.on_message(m, &msg, &cache).unwrap());
                if !streamed.streams(m) {
                    put(&mut b, streamed.on_message(m, &msg, &cache).unwrap());
                    continue;
                }
                // Odd piece sizes cross the recipe's term and cache-part boundaries.
                for (i, piece) in msg.chunks(7).enumerate() {
                    let rec = streamed.take_piece(m, i as u64 * 7, piece.to_vec(), &cache);
                    put(&mut b, rec.unwrap());
                }
                assert!(
                    streamed
                        .take_piece(m, spec.len - 1, vec![0; 2], &cache)
                        .is_err()
                );
                streamed.streamed(m).unwrap();
            }
            assert!(
                whole.is_complete() && streamed.is_complete(),
                "receiver {r}"
            );
            let want: Vec<Option<u8>> = want.iter().map(|&v| Some(v)).collect();
            assert_eq!(a, want, "receiver {r}");
            assert_eq!(b, want, "receiver {r}");
        }
    }

    #[test]
    fn receivers_of_the_same_file_without_caches_all_stream_it() {
        let input = PlanInput {
            receivers: 4,
            file_lens: vec![100, 80],
            budget: CacheBudget::Fraction(0.0),
            scheme: SchemeChoice::Centralized,
            demands: vec![0, 0, 0, 0],
            seed: 0,
            min_subfile_bytes: 0,
            packet_bytes: 1,
        };
        let p = plan(&input).unwrap();
        let file: Vec<u8> = (0..100).map(|i| i as u8 ^ 0x33).collect();
        let refs: Vec<&[u8]> = vec![&file, &[0; 80]];
        for r in 0..4 {
            let mut d = Decoder::new(&p, r).unwrap();
            let mut got = vec![None; 100];
            for &m in d.wanted_messages().to_vec().iter() {
                assert!(d.streams(m), "receiver {r} buffers message {m} whole");
                let spec = &p.messages()[m as usize];
                let mut msg = vec![0; spec.len as usize];
                encode_message(spec, &refs, &mut msg).unwrap();
                for (i, piece) in msg.chunks(9).enumerate() {
                    for x in d.take_piece(m, i as u64 * 9, piece.to_vec(), &[]).unwrap() {
                        for (j, v) in x.data.into_iter().enumerate() {
                            got[x.offset as usize + j] = Some(v);
                        }
                    }
                }
                d.streamed(m).unwrap();
            }
            assert!(d.is_complete(), "receiver {r}");
            assert_eq!(got, file.iter().map(|&v| Some(v)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn uncoded_messages_are_the_library_bytes() {
        let (p, files) = small_plan();
        let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
        let single = MessageSpec {
            len: 20,
            terms: vec![Term {
                parts: vec![Segment {
                    file: 1,
                    offset: 5,
                    len: 20,
                }],
            }],
            receivers: vec![0],
        };
        let mut want = vec![0; 20];
        encode_message(&single, &refs, &mut want).unwrap();
        assert_eq!(uncoded_bytes(&single, &refs).unwrap().unwrap(), &want[..]);
        let mut outside = single.clone();
        outside.terms[0].parts[0].offset = 50;
        assert!(matches!(
            uncoded_bytes(&outside, &refs),
            Some(Err(CodingError::OutOfLibrary { .. }))
        ));
        // Coded messages (several terms) and padded terms need encoding.
        for spec in p.messages().iter().filter(|m| m.terms.len() > 1) {
            assert!(uncoded_bytes(spec, &refs).is_none());
        }
        let mut padded = single;
        padded.len = 21;
        assert!(uncoded_bytes(&padded, &refs).is_none());
    }
}
