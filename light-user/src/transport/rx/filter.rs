//! The message filter both receive paths share: while a receiver takes a session, the
//! kernel drops the shards of messages it does not want (most of a coded pass is for other
//! receivers) before they cost a copy. The XDP program filters for the AF_XDP path; the
//! socket path attaches the same object's `light_sock` socket filter to its UDP socket.

use std::{collections::BTreeMap, os::fd::AsFd};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::SocketFilter,
};
use light_common::maps::{
    COUNTER_MAP, Counter, FILTER_MAP, FILTER_ON, FILTER_SESSION, WANT_MAP, WANT_WORDS, bit_of,
};

use super::{RxError, xdp::load_object};

/// The filter's state in user space: the words of the wanted-message bitmap it set.
#[derive(Debug, Default)]
pub struct MessageFilter {
    words: Vec<u32>,
}

impl MessageFilter {
    /// Turns the filter on for `session`, keeping only `wanted` messages; returns false
    /// (filter left off) when one is past the bitmap's end.
    pub fn set(&mut self, ebpf: &mut Ebpf, session: u32, wanted: &[u32]) -> Result<bool, RxError> {
        self.clear(ebpf)?;
        let words = bitmap_words(wanted.iter().copied());
        if words
            .last_key_value()
            .is_some_and(|(&w, _)| w >= WANT_WORDS)
        {
            return Ok(false);
        }
        {
            let mut want = want_map(ebpf)?;
            for (&word, &bits) in &words {
                want.set(word, bits, 0)
                    .map_err(|e| RxError::Map(WANT_MAP, e))?;
                self.words.push(word);
            }
        }
        // The session first: the filter must never be on with another session's id.
        set_word(ebpf, FILTER_SESSION, session)?;
        set_word(ebpf, FILTER_ON, 1)?;
        Ok(true)
    }

    /// Turns the filter off and empties the wanted-message bitmap.
    pub fn clear(&mut self, ebpf: &mut Ebpf) -> Result<(), RxError> {
        set_word(ebpf, FILTER_ON, 0)?;
        let mut want = want_map(ebpf)?;
        for word in self.words.drain(..) {
            want.set(word, 0, 0)
                .map_err(|e| RxError::Map(WANT_MAP, e))?;
        }
        Ok(())
    }
}

/// The words of a `u64`-array bitmap with the bits `indices` set, by word index.
pub(super) fn bitmap_words(indices: impl IntoIterator<Item = u32>) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for i in indices {
        let (word, mask) = bit_of(i);
        *words.entry(word).or_default() |= mask;
    }
    words
}

/// The object's wanted-message bitmap.
fn want_map(ebpf: &mut Ebpf) -> Result<Array<&mut aya::maps::MapData, u64>, RxError> {
    let map = ebpf
        .map_mut(WANT_MAP)
        .ok_or(RxError::MissingMap(WANT_MAP))?;
    Array::try_from(map).map_err(|e| RxError::Map(WANT_MAP, e))
}

fn set_word(ebpf: &mut Ebpf, index: u32, value: u32) -> Result<(), RxError> {
    let map = ebpf
        .map_mut(FILTER_MAP)
        .ok_or(RxError::MissingMap(FILTER_MAP))?;
    let mut words: Array<_, u32> = Array::try_from(map).map_err(|e| RxError::Map(FILTER_MAP, e))?;
    words
        .set(index, value, 0)
        .map_err(|e| RxError::Map(FILTER_MAP, e))
}

/// Shards the object's filter dropped since it was loaded (a running count: take
/// differences).
pub fn filtered(ebpf: &Ebpf) -> Result<u64, RxError> {
    counter(ebpf, Counter::Unwanted)
}

/// One of the object's per-CPU counters, summed over CPUs.
pub fn counter(ebpf: &Ebpf, c: Counter) -> Result<u64, RxError> {
    let map = ebpf
        .map(COUNTER_MAP)
        .ok_or(RxError::MissingMap(COUNTER_MAP))?;
    let arr: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(|e| RxError::Map(COUNTER_MAP, e))?;
    let v = arr
        .get(&(c as u32), 0)
        .map_err(|e| RxError::Map(COUNTER_MAP, e))?;
    Ok(v.iter().sum())
}

/// The object's `light_sock` socket filter program.
fn sock_program(ebpf: &mut Ebpf) -> Result<&mut SocketFilter, RxError> {
    ebpf.program_mut("light_sock")
        .ok_or(RxError::MissingMap("light_sock program"))?
        .try_into()
        .map_err(|e| RxError::Program(Box::new(e)))
}

/// The `light_sock` socket filter attached to one socket, with its maps.
pub struct SocketMessageFilter {
    ebpf: Ebpf,
    filter: MessageFilter,
}

impl SocketMessageFilter {
    /// Loads the object and attaches its socket filter to `socket` (needs CAP_BPF or root).
    pub fn attach(socket: impl AsFd) -> Result<Self, RxError> {
        let mut ebpf = load_object()?;
        let prog = sock_program(&mut ebpf)?;
        prog.load().map_err(|e| RxError::Program(Box::new(e)))?;
        prog.attach(socket)
            .map_err(|e| RxError::Program(Box::new(e)))?;
        Ok(Self {
            ebpf,
            filter: MessageFilter::default(),
        })
    }

    /// Attaches the same filter, with the same maps, to one more socket.
    pub fn attach_also(&mut self, socket: impl AsFd) -> Result<(), RxError> {
        sock_program(&mut self.ebpf)?
            .attach(socket)
            .map_err(|e| RxError::Program(Box::new(e)))?;
        Ok(())
    }

    /// See [`MessageFilter::set`].
    pub fn set(&mut self, session: u32, wanted: &[u32]) -> Result<bool, RxError> {
        self.filter.set(&mut self.ebpf, session, wanted)
    }

    /// See [`MessageFilter::clear`].
    pub fn clear(&mut self) -> Result<(), RxError> {
        self.filter.clear(&mut self.ebpf)
    }

    /// Shards the filter dropped so far.
    pub fn dropped(&self) -> Result<u64, RxError> {
        filtered(&self.ebpf)
    }
}
