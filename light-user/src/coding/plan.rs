//! The planner: placement (what each receiver caches) and delivery (what is multicast).

use super::{
    CacheBudget, CachedPart, CodingError, DerivedSpec, MessageSpec, PlanInput, Scheme,
    SchemeChoice, Segment, Term,
};
use std::collections::HashMap;

/// Receivers a centralized plan supports (positions are bits of a u64).
const MAX_RECEIVERS: u32 = 64;
/// Receivers a decentralized plan supports (delivery enumerates all 2^K subsets).
const MAX_DECENTRALIZED_RECEIVERS: u32 = 20;
/// Upper bound on subfiles per file and messages per group and layer.
const MAX_SUBSETS: u64 = 1 << 20;

/// A complete session plan: caches, multicast messages and rebuilt (YMA) messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    receivers: u32,
    file_lens: Vec<u64>,
    demands: Vec<u32>,
    scheme: Scheme,
    t: f64,
    subpacketization: u64,
    theoretical_rate: f64,
    caches: Vec<Vec<Segment>>,
    messages: Vec<MessageSpec>,
    derived: Vec<DerivedSpec>,
}

impl Plan {
    /// The scheme chosen.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Caching parameter t = g·M/N (g = group size, K without grouping).
    pub fn t(&self) -> f64 {
        self.t
    }

    /// Subfiles per file (sum over memory-sharing layers; packets for decentralized).
    pub fn subpacketization(&self) -> u64 {
        self.subpacketization
    }

    /// Closed-form delivery rate in file units for equal-size files (DESIGN.md): YMA per
    /// group and layer, weighted by layer shares; for decentralized plans the MAN-2015
    /// form for distinct demands (shared demands send somewhat less).
    pub fn theoretical_rate(&self) -> f64 {
        self.theoretical_rate
    }

    /// Exact bytes of all multicast messages (before FEC and headers).
    pub fn payload_bytes(&self) -> u64 {
        self.messages.iter().map(|m| m.len).sum()
    }

    /// Exact cache bytes over all receivers.
    pub fn placement_bytes(&self) -> u64 {
        (0..self.receivers).map(|r| self.cache_len(r)).sum()
    }

    /// Number of receivers K.
    pub fn receivers(&self) -> u32 {
        self.receivers
    }

    /// File lengths of the library.
    pub fn file_lens(&self) -> &[u64] {
        &self.file_lens
    }

    /// The file `receiver` demands (`None` for an unknown receiver).
    pub fn demand(&self, receiver: u32) -> Option<u32> {
        self.demands.get(receiver as usize).copied()
    }

    /// The messages to multicast, in sending order (index = message index).
    pub fn messages(&self) -> &[MessageSpec] {
        &self.messages
    }

    /// Messages YMA does not send; receivers rebuild them from sent ones.
    pub fn derived(&self) -> &[DerivedSpec] {
        &self.derived
    }

    /// The segments whose concatenation is `receiver`'s cache (empty if unknown).
    pub fn cache_segments(&self, receiver: u32) -> &[Segment] {
        self.caches
            .get(receiver as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// Bytes of `receiver`'s cache.
    pub fn cache_len(&self, receiver: u32) -> u64 {
        self.cache_segments(receiver).iter().map(|s| s.len).sum()
    }

    /// Pieces of `receiver`'s demanded file already in its cache, to write directly.
    pub fn cached_parts_of_demand(&self, receiver: u32) -> Vec<CachedPart> {
        let Some(demand) = self.demand(receiver) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut at = 0;
        for s in self.cache_segments(receiver) {
            if s.file == demand {
                out.push(CachedPart {
                    file_offset: s.offset,
                    cache_offset: at,
                    len: s.len,
                });
            }
            at += s.len;
        }
        out
    }
}

/// Computes the plan for `input`; a pure function of its argument.
pub fn plan(input: &PlanInput) -> Result<Plan, CodingError> {
    let k = input.receivers;
    let bad = |s: String| Err(CodingError::InvalidInput(s));
    if k == 0 {
        return bad("no receivers".into());
    }
    if input.demands.len() != k as usize {
        return bad(format!("{} demands for {k} receivers", input.demands.len()));
    }
    let n = input.file_lens.len();
    if let Some(d) = input.demands.iter().find(|&&d| d as usize >= n) {
        return bad(format!("demand for file {d} but the library has {n} files"));
    }
    if u32::try_from(n).is_err() {
        return bad("too many files".into());
    }
    let library: u128 = input.file_lens.iter().map(|&l| u128::from(l)).sum();
    let mu = match input.budget {
        CacheBudget::Bytes(b) if library == 0 => f64::from(u8::from(b > 0)),
        CacheBudget::Bytes(b) => (b as f64 / library as f64).min(1.0),
        CacheBudget::Fraction(f) if f.is_finite() && (0.0..=1.0).contains(&f) => f,
        CacheBudget::Fraction(f) => return bad(format!("cache fraction {f} not in [0, 1]")),
    };
    let decentralized = match input.scheme {
        SchemeChoice::Centralized => false,
        SchemeChoice::Decentralized => true,
        SchemeChoice::Auto => {
            k <= MAX_DECENTRALIZED_RECEIVERS
                && input.packet_bytes > 0
                && decentralized_rate(mu, k) < centralized_choice(input, mu)?.rate
        }
    };
    if decentralized {
        if k > MAX_DECENTRALIZED_RECEIVERS {
            return bad(format!(
                "decentralized plans support up to {MAX_DECENTRALIZED_RECEIVERS} receivers"
            ));
        }
        if input.packet_bytes == 0 {
            return bad("decentralized placement needs packet_bytes > 0".into());
        }
        Ok(decentralized_plan(input, mu))
    } else {
        if k > MAX_RECEIVERS {
            return bad(format!(
                "centralized plans support up to {MAX_RECEIVERS} receivers"
            ));
        }
        centralized_plan(input, mu)
    }
}

fn binom(n: u64, k: u64) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: u128 = 1;
    for i in 0..k {
        r = r * u128::from(n - i) / u128::from(i + 1);
        if r > u128::from(u64::MAX) {
            return u64::MAX;
        }
    }
    r as u64
}

/// All `r`-subsets of `0..n` as bitmasks, in lexicographic order of their elements.
fn combinations(n: u32, r: u32) -> Vec<u64> {
    if r > n {
        return Vec::new();
    }
    let r = r as usize;
    let mut idx: Vec<u32> = (0..r as u32).collect();
    let mut out = Vec::new();
    loop {
        out.push(idx.iter().fold(0u64, |m, &i| m | 1 << i));
        let Some(i) = (0..r).rev().find(|&i| idx[i] < n - r as u32 + i as u32) else {
            return out;
        };
        idx[i] += 1;
        for j in i + 1..r {
            idx[j] = idx[j - 1] + 1;
        }
    }
}

/// Memory-sharing layers for a (possibly fractional) t: `(integer t, share of each file)`.
fn layers(t: f64) -> Vec<(u32, f64)> {
    let r = t.round();
    if (t - r).abs() < 1e-9 {
        return vec![(r as u32, 1.0)];
    }
    let (lo, hi) = (t.floor(), t.ceil());
    vec![(lo as u32, hi - t), (hi as u32, t - lo)]
}

/// YMA rate of one group of `g` positions with `ne` distinct demands at integer `t`.
fn yma_rate(g: u64, t: u64, ne: u64) -> f64 {
    (binom(g, t + 1) - binom(g.saturating_sub(ne), t + 1)) as f64 / binom(g, t) as f64
}

fn decentralized_rate(q: f64, k: u32) -> f64 {
    if q <= 0.0 {
        return f64::from(k);
    }
    (1.0 - q) / q * (1.0 - (1.0 - q).powi(k as i32))
}

struct Choice {
    group: u32,
    layers: Vec<(u32, f64)>,
    rate: f64,
}

/// Demands the placement is chosen for: receiver r wants file r mod N, as many distinct
/// files as the library allows. Caches are filled before demands are known (and kept
/// across sessions), so the placement must not depend on the session's demands.
fn placement_demands(input: &PlanInput) -> Vec<u32> {
    let n = input.file_lens.len().max(1) as u32;
    (0..input.receivers).map(|r| r % n).collect()
}

/// YMA rate of `demands` in groups of `g` under layering `ls`, in files.
fn layered_rate(demands: &[u32], g: u32, ls: &[(u32, f64)]) -> f64 {
    demands
        .chunks(g as usize)
        .map(|members| {
            let mut distinct: Vec<u32> = members.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            let ne = distinct.len() as u64;
            ls.iter()
                .map(|&(t, s)| s * yma_rate(u64::from(g), u64::from(t), ne))
                .sum::<f64>()
        })
        .sum()
}

/// The group size and layering with the lowest rate (for [`placement_demands`]) whose
/// subfiles reach `min_subfile_bytes` and whose subset counts stay within bounds; ties go
/// to larger groups. Layerings for g receivers per group, t = g·M/N: memory sharing
/// between floor(t) and ceil(t), or floor(t) alone (less cache, but fewer, larger
/// subfiles). g = 1 always qualifies.
fn centralized_choice(input: &PlanInput, mu: f64) -> Result<Choice, CodingError> {
    let k = input.receivers;
    let n = input.file_lens.len().max(1) as f64;
    let mean = input.file_lens.iter().map(|&l| l as f64).sum::<f64>() / n;
    let basis = placement_demands(input);
    let mut best: Option<Choice> = None;
    for g in (1..=k.min(MAX_RECEIVERS)).rev() {
        let shared = layers(f64::from(g) * mu);
        let mut candidates = vec![shared.clone()];
        if shared.len() == 2 {
            candidates.push(vec![(shared[0].0, 1.0)]);
        }
        for ls in candidates {
            let fits = ls.iter().all(|&(t, share)| {
                let c = binom(u64::from(g), u64::from(t));
                let sub = share * mean / c as f64;
                c <= MAX_SUBSETS
                    && binom(u64::from(g), u64::from(t) + 1) <= MAX_SUBSETS
                    && (g == 1 || sub >= input.min_subfile_bytes as f64)
            });
            if !fits {
                continue;
            }
            let rate = layered_rate(&basis, g, &ls);
            if best.as_ref().is_none_or(|b| rate < b.rate - 1e-12) {
                best = Some(Choice {
                    group: g,
                    layers: ls,
                    rate,
                });
            }
        }
    }
    best.ok_or_else(|| CodingError::TooLarge("no group size fits the subset bounds".into()))
}

/// Offset and length of subfile `rank` of `count` equal-as-possible pieces of `len` bytes.
fn piece(base: u64, len: u64, count: u64, rank: u64) -> (u64, u64) {
    let (q, r) = (len / count, len % count);
    (base + rank * q + rank.min(r), q + u64::from(rank < r))
}

/// Appends `s` to `segs`, merging it with the previous segment when contiguous.
fn push_merged(segs: &mut Vec<Segment>, s: Segment) {
    if s.len == 0 {
        return;
    }
    if let Some(last) = segs.last_mut()
        && last.file == s.file
        && last.offset + last.len == s.offset
    {
        last.len += s.len;
        return;
    }
    segs.push(s);
}

/// One memory-sharing layer: an integer t and where each file's part for it lies.
struct Layer {
    t: u32,
    /// Per file: (offset of the layer's part, its length).
    parts: Vec<(u64, u64)>,
    /// t-subsets of group positions; index = subfile rank.
    subsets: Vec<u64>,
    rank: HashMap<u64, u64>,
}

impl Layer {
    fn subfile(&self, file: u32, mask: u64) -> Segment {
        let (base, len) = self.parts[file as usize];
        let rank = self.rank[&mask];
        let (offset, len) = piece(base, len, self.subsets.len() as u64, rank);
        Segment { file, offset, len }
    }
}

fn centralized_plan(input: &PlanInput, mu: f64) -> Result<Plan, CodingError> {
    let k = input.receivers;
    let choice = centralized_choice(input, mu)?;
    let g = choice.group;
    let mut offsets = vec![0u64; input.file_lens.len()];
    let last = choice.layers.len() - 1;
    let layers: Vec<Layer> = choice
        .layers
        .iter()
        .enumerate()
        .map(|(i, &(t, share))| {
            let parts = input
                .file_lens
                .iter()
                .zip(offsets.iter_mut())
                .map(|(&len, off)| {
                    let part = if i == last {
                        len - *off
                    } else {
                        ((share * len as f64).round() as u64).min(len)
                    };
                    let base = *off;
                    *off += part;
                    (base, part)
                })
                .collect();
            let subsets = combinations(g, t);
            let rank = subsets
                .iter()
                .enumerate()
                .map(|(i, &m)| (m, i as u64))
                .collect();
            Layer {
                t,
                parts,
                subsets,
                rank,
            }
        })
        .collect();

    // Placement: position p of every group caches subfiles whose set holds p.
    let caches: Vec<Vec<Segment>> = (0..k)
        .map(|r| {
            let bit = 1u64 << (r % g);
            let mut segs = Vec::new();
            for file in 0..input.file_lens.len() as u32 {
                for layer in &layers {
                    for &mask in layer.subsets.iter().filter(|&&m| m & bit != 0) {
                        push_merged(&mut segs, layer.subfile(file, mask));
                    }
                }
            }
            segs
        })
        .collect();

    let mut messages = Vec::new();
    let mut derived = Vec::new();
    for (gi, members) in input.demands.chunks(g as usize).enumerate() {
        let first = gi as u32 * g;
        for layer in &layers {
            deliver_group(layer, g, first, members, &mut messages, &mut derived);
        }
    }
    let t_low = choice.layers[0].0;
    Ok(Plan {
        receivers: k,
        file_lens: input.file_lens.clone(),
        demands: input.demands.clone(),
        scheme: Scheme::Centralized {
            group_size: g,
            groups: k.div_ceil(g),
            t_low,
            t_high: choice.layers[last].0,
            low_share: choice.layers[0].1,
            yma: !derived.is_empty(),
        },
        t: f64::from(g) * mu,
        subpacketization: layers.iter().map(|l| l.subsets.len() as u64).sum(),
        theoretical_rate: layered_rate(&input.demands, g, &choice.layers),
        caches,
        messages,
        derived,
    })
}

/// YMA delivery for one group (positions `0..g`, receivers `first + p`, demands
/// `members`; positions beyond `members` are empty) in one layer.
fn deliver_group(
    layer: &Layer,
    g: u32,
    first: u32,
    members: &[u32],
    messages: &mut Vec<MessageSpec>,
    derived: &mut Vec<DerivedSpec>,
) {
    // Leaders: first requester of each distinct file; `requesters[i]` = mask per file.
    let mut files: Vec<u32> = Vec::new();
    let mut requesters: Vec<u64> = Vec::new();
    for (p, &d) in members.iter().enumerate() {
        match files.iter().position(|&f| f == d) {
            Some(i) => requesters[i] |= 1 << p,
            None => {
                files.push(d);
                requesters.push(1 << p);
            }
        }
    }
    let leaders: u64 = requesters
        .iter()
        .map(|&m| m & m.wrapping_neg())
        .fold(0, |a, b| a | b);
    let spec = |s: u64| {
        let mut terms = Vec::new();
        let mut receivers = Vec::new();
        for (p, &d) in members.iter().enumerate() {
            if s & (1 << p) != 0 {
                let seg = layer.subfile(d, s & !(1 << p));
                if seg.len > 0 {
                    terms.push(Term { parts: vec![seg] });
                    receivers.push(first + p as u32);
                }
            }
        }
        let len = terms.iter().map(Term::len).max().unwrap_or(0);
        MessageSpec {
            len,
            terms,
            receivers,
        }
    };
    let mut sent: HashMap<u64, u32> = HashMap::new();
    let all = combinations(g, layer.t + 1);
    for &s in all.iter().filter(|&&s| s & leaders != 0) {
        let m = spec(s);
        if m.len > 0 {
            sent.insert(s, messages.len() as u32);
            messages.push(m);
        }
    }
    for &a in all.iter().filter(|&&s| s & leaders == 0) {
        let m = spec(a);
        if m.receivers.is_empty() {
            continue;
        }
        // Lemma (YMA 2018): with B = A ∪ U, the XOR of X_{B\V} over all V ⊂ B holding
        // exactly one requester of each distinct file is zero; V = U gives X_A.
        let b = a | leaders;
        let mut sources = Vec::new();
        let mut choose = vec![0u64];
        for &req in &requesters {
            let mut next = Vec::new();
            let mut opts = req & b;
            while opts != 0 {
                let bit = opts & opts.wrapping_neg();
                opts &= opts - 1;
                next.extend(choose.iter().map(|&v| v | bit));
            }
            choose = next;
        }
        for v in choose.into_iter().filter(|&v| v != leaders) {
            // Zero-length messages are not sent; they add nothing to the XOR.
            if let Some(&i) = sent.get(&(b & !v)) {
                sources.push(i);
            }
        }
        derived.push(DerivedSpec { spec: m, sources });
    }
}

/// Keyed-hash membership of every packet of `file` for receivers `0..k`: bit r set when
/// receiver r caches the packet.
fn packet_masks(key: &[u8; 32], file: u32, packets: u64, k: u32, q: f64) -> Vec<u64> {
    let threshold = (q * 2f64.powi(64)).min(u64::MAX as f64) as u64;
    let mut words = vec![0u8; 8 * k as usize];
    (0..packets)
        .map(|j| {
            if q >= 1.0 {
                return (1u64 << k) - 1;
            }
            let mut h = blake3::Hasher::new_keyed(key);
            h.update(&file.to_le_bytes());
            h.update(&j.to_le_bytes());
            // One XOF word per receiver: the value of (receiver, file, packet).
            h.finalize_xof().fill(&mut words);
            words
                .chunks_exact(8)
                .enumerate()
                .filter(|(_, w)| {
                    u64::from_le_bytes((*w).try_into().unwrap_or([0xff; 8])) < threshold
                })
                .fold(0u64, |m, (r, _)| m | 1 << r)
        })
        .collect()
}

fn decentralized_plan(input: &PlanInput, q: f64) -> Plan {
    let k = input.receivers;
    let p = input.packet_bytes;
    let key = blake3::derive_key(
        "light decentralized placement v1",
        &input.seed.to_le_bytes(),
    );
    let packet = |file: u32, j: u64| {
        let len = input.file_lens[file as usize];
        let offset = j * p;
        Segment {
            file,
            offset,
            len: p.min(len - offset),
        }
    };
    let mut caches = vec![Vec::new(); k as usize];
    // Per demanded file: mask of cachers -> the packets with exactly that mask.
    let mut pieces: HashMap<u32, HashMap<u64, Vec<Segment>>> = HashMap::new();
    let mut max_packets = 0;
    for (file, &len) in input.file_lens.iter().enumerate() {
        let file = file as u32;
        let packets = len.div_ceil(p);
        max_packets = max_packets.max(packets);
        let masks = packet_masks(&key, file, packets, k, q);
        for (r, cache) in caches.iter_mut().enumerate() {
            for (j, &m) in masks.iter().enumerate() {
                if m & (1 << r) != 0 {
                    push_merged(cache, packet(file, j as u64));
                }
            }
        }
        if input.demands.contains(&file) {
            let by_mask = pieces.entry(file).or_default();
            for (j, &m) in masks.iter().enumerate() {
                push_merged(by_mask.entry(m).or_default(), packet(file, j as u64));
            }
        }
    }
    let mut messages: Vec<MessageSpec> = Vec::new();
    // Single-term messages are identical for every receiver wanting the same piece.
    let mut single: HashMap<(u32, u64), usize> = HashMap::new();
    for s in 1u64..1 << k {
        let mut terms = Vec::new();
        let mut receivers = Vec::new();
        let mut key = (0, 0);
        for r in (0..k).filter(|r| s & (1 << r) != 0) {
            let d = input.demands[r as usize];
            let t = s & !(1 << r);
            if let Some(parts) = pieces.get(&d).and_then(|m| m.get(&t)) {
                terms.push(Term {
                    parts: parts.clone(),
                });
                receivers.push(r);
                key = (d, t);
            }
        }
        match terms.len() {
            0 => continue,
            1 => {
                if let Some(&i) = single.get(&key) {
                    messages[i].receivers.extend(receivers);
                    continue;
                }
                single.insert(key, messages.len());
            }
            _ => {}
        }
        let len = terms.iter().map(Term::len).max().unwrap_or(0);
        messages.push(MessageSpec {
            len,
            terms,
            receivers,
        });
    }
    for m in &mut messages {
        m.receivers.sort_unstable();
    }
    Plan {
        receivers: k,
        file_lens: input.file_lens.clone(),
        demands: input.demands.clone(),
        scheme: Scheme::Decentralized { q, packet_bytes: p },
        t: f64::from(k) * q,
        subpacketization: max_packets,
        theoretical_rate: decentralized_rate(q, k),
        caches,
        messages,
        derived: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(k: u32, lens: Vec<u64>, budget: CacheBudget, scheme: SchemeChoice) -> PlanInput {
        PlanInput {
            receivers: k,
            demands: (0..k).map(|r| r % lens.len() as u32).collect(),
            file_lens: lens,
            budget,
            scheme,
            seed: 3,
            min_subfile_bytes: 0,
            packet_bytes: 16,
        }
    }

    #[test]
    fn combinations_are_lexicographic_and_complete() {
        assert_eq!(
            combinations(4, 2),
            vec![0b0011, 0b0101, 0b1001, 0b0110, 0b1010, 0b1100]
        );
        assert_eq!(combinations(3, 0), vec![0]);
        assert!(combinations(2, 3).is_empty());
        for n in 0..10 {
            for r in 0..=n {
                let c = combinations(n, r);
                assert_eq!(c.len() as u64, binom(u64::from(n), u64::from(r)));
                assert!(c.iter().all(|m| m.count_ones() == r));
            }
        }
        assert_eq!(binom(64, 32), 1_832_624_140_942_590_534);
    }

    #[test]
    fn layers_snap_and_share() {
        assert_eq!(layers(2.0 + 1e-12), vec![(2, 1.0)]);
        let l = layers(1.25);
        assert_eq!((l[0].0, l[1].0), (1, 2));
        assert!((l[0].1 - 0.75).abs() < 1e-12 && (l[1].1 - 0.25).abs() < 1e-12);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let ok = input(
            3,
            vec![10, 20],
            CacheBudget::Fraction(0.5),
            SchemeChoice::Auto,
        );
        assert!(plan(&ok).is_ok());
        let mut i = ok.clone();
        i.receivers = 0;
        i.demands.clear();
        assert!(plan(&i).is_err());
        let mut i = ok.clone();
        i.demands[1] = 2;
        assert!(plan(&i).is_err());
        let mut i = ok.clone();
        i.demands.pop();
        assert!(plan(&i).is_err());
        let mut i = ok.clone();
        i.budget = CacheBudget::Fraction(1.5);
        assert!(plan(&i).is_err());
        let mut i = ok.clone();
        i.budget = CacheBudget::Fraction(f64::NAN);
        assert!(plan(&i).is_err());
        let mut i = ok.clone();
        i.scheme = SchemeChoice::Decentralized;
        i.packet_bytes = 0;
        assert!(plan(&i).is_err());
        let i = input(
            65,
            vec![10],
            CacheBudget::Fraction(0.5),
            SchemeChoice::Centralized,
        );
        assert!(plan(&i).is_err());
        let i = input(
            21,
            vec![10],
            CacheBudget::Fraction(0.5),
            SchemeChoice::Decentralized,
        );
        assert!(plan(&i).is_err());
    }

    #[test]
    fn auto_prefers_the_lower_rate() {
        let lens = vec![6000; 4];
        let p = plan(&input(
            4,
            lens.clone(),
            CacheBudget::Fraction(0.25),
            SchemeChoice::Auto,
        ))
        .unwrap();
        assert!(
            matches!(p.scheme(), Scheme::Centralized { .. }),
            "{}",
            p.scheme()
        );
        // Subfiles must be huge: only g = 1 qualifies (rate 3/4 per receiver, 3 in all),
        // and decentralized placement (rate 3·(1 − 0.75^4) ≈ 2.05) wins.
        let mut i = input(4, lens, CacheBudget::Fraction(0.25), SchemeChoice::Auto);
        i.min_subfile_bytes = 1 << 40;
        let p = plan(&i).unwrap();
        assert!(
            matches!(p.scheme(), Scheme::Decentralized { .. }),
            "{}",
            p.scheme()
        );
    }

    #[test]
    fn budget_in_bytes_is_respected() {
        let lens = vec![1000, 3000, 0, 777];
        for budget in [0, 1, 500, 2390, 4777, 10_000] {
            let i = input(
                5,
                lens.clone(),
                CacheBudget::Bytes(budget),
                SchemeChoice::Centralized,
            );
            let p = plan(&i).unwrap();
            for r in 0..5 {
                // Rounding of subfile sizes may add at most one byte per cached subfile.
                let slack = p.cache_segments(r).len() as u64 * 2;
                assert!(
                    p.cache_len(r) <= budget + slack,
                    "budget {budget}: {}",
                    p.cache_len(r)
                );
            }
        }
    }

    #[test]
    fn decentralized_caches_are_recomputable_from_the_seed() {
        let i = input(
            3,
            vec![500, 333],
            CacheBudget::Fraction(0.4),
            SchemeChoice::Decentralized,
        );
        let a = plan(&i).unwrap();
        assert_eq!(a, plan(&i).unwrap());
        let mut j = i.clone();
        j.seed = 4;
        assert_ne!(a.cache_segments(0), plan(&j).unwrap().cache_segments(0));
    }
}
