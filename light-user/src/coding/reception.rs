//! A receiver's sans-IO data path for one session: packets in (any order, duplicates,
//! losses, garbage), pieces of the demanded file out. Joins the FEC [`Assembler`] and the
//! coded-caching [`Decoder`].

use crate::fec::{Assembler, Event, FecError, FecParams, Missing, Stats};

use super::{CodingError, Decoder, Plan, Recovered};

/// Errors of a receiver's data path.
#[derive(Debug, thiserror::Error)]
pub enum ReceptionError {
    /// The plan or a decoded message is inconsistent with the receiver's cache.
    #[error(transparent)]
    Coding(#[from] CodingError),
    /// The FEC layout of the plan's messages is unusable.
    #[error(transparent)]
    Fec(#[from] FecError),
}

/// One receiver's reception of a session.
pub struct Reception {
    assembler: Assembler,
    decoder: Decoder,
    /// Bytes of the demanded file recovered from the multicast so far.
    recovered: u64,
    end_seen: bool,
    session: u32,
}

impl Reception {
    /// Prepares to receive `slot`'s messages of `plan`; `cache` is the slot's cache bytes.
    ///
    /// Returns the pieces that need no packet at all (messages of length zero).
    pub fn new(
        plan: &Plan,
        slot: u32,
        fec: FecParams,
        session: u32,
        cache: &[u8],
    ) -> Result<(Self, Vec<Recovered>), ReceptionError> {
        let mut decoder = Decoder::new(plan, slot)?;
        let lens = plan.messages();
        let wanted: Vec<u32> = decoder.wanted_messages().to_vec();
        let mut ready = Vec::new();
        for &m in wanted.iter().filter(|&&m| lens[m as usize].len == 0) {
            ready.extend(decoder.on_message(m, &[], cache)?);
        }
        let assembler = Assembler::new(
            fec,
            session,
            wanted
                .iter()
                .map(|&m| (m, lens[m as usize].len))
                .filter(|&(_, len)| len > 0),
        )?;
        let recovered = ready.iter().map(|r| r.data.len() as u64).sum();
        Ok((
            Self {
                assembler,
                decoder,
                recovered,
                end_seen: false,
                session,
            },
            ready,
        ))
    }

    /// Takes one UDP payload; returns the file pieces it completes.
    pub fn on_packet(
        &mut self,
        packet: &[u8],
        cache: &[u8],
    ) -> Result<Vec<Recovered>, ReceptionError> {
        if is_end_marker(packet, self.session) {
            self.end_seen = true;
        }
        match self.assembler.on_packet(packet) {
            Some(Event::MessageComplete { message, bytes }) => {
                let out = self.decoder.on_message(message, &bytes, cache)?;
                self.recovered += out.iter().map(|r| r.data.len() as u64).sum::<u64>();
                Ok(out)
            }
            None => Ok(Vec::new()),
        }
    }

    /// True once every piece of the demanded file not in the cache is recovered.
    pub fn is_complete(&self) -> bool {
        self.decoder.is_complete()
    }

    /// Whether an End marker of this session arrived.
    pub fn end_seen(&self) -> bool {
        self.end_seen
    }

    /// Blocks still short of shards (for repair requests).
    pub fn missing(&self) -> Vec<Missing> {
        self.assembler.missing()
    }

    /// Packet counters by outcome.
    pub fn stats(&self) -> Stats {
        self.assembler.stats()
    }

    /// Bytes of the demanded file recovered from the multicast.
    pub fn recovered_bytes(&self) -> u64 {
        self.recovered
    }
}

fn is_end_marker(packet: &[u8], session: u32) -> bool {
    matches!(
        light_common::DataHeader::parse(packet),
        Ok((h, _)) if h.packet_kind() == Some(light_common::PacketKind::End) && h.session == session
    )
}
