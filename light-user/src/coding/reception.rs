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
    last_end: Option<u32>,
    session: u32,
}

impl Reception {
    /// Prepares to receive `slot`'s messages of `plan` (the planner never plans empty ones).
    pub fn new(
        plan: &Plan,
        slot: u32,
        fec: FecParams,
        session: u32,
    ) -> Result<Self, ReceptionError> {
        let decoder = Decoder::new(plan, slot)?;
        let lens = plan.messages();
        let assembler = Assembler::new(
            fec,
            session,
            decoder
                .wanted_messages()
                .iter()
                .map(|&m| (m, lens[m as usize].len)),
        )?;
        Ok(Self {
            assembler,
            decoder,
            recovered: 0,
            last_end: None,
            session,
        })
    }

    /// Takes one UDP payload; returns the file pieces it completes.
    pub fn on_packet(
        &mut self,
        packet: &[u8],
        cache: &[u8],
    ) -> Result<Vec<Recovered>, ReceptionError> {
        if let Some(seq) = end_marker_seq(packet, self.session) {
            self.last_end = Some(self.last_end.map_or(seq, |l| l.max(seq)));
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

    /// Sequence number of the latest End marker of this session seen (each pass ends
    /// with markers numbered after its packets, so a larger one means a newer pass).
    pub fn last_end(&self) -> Option<u32> {
        self.last_end
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

fn end_marker_seq(packet: &[u8], session: u32) -> Option<u32> {
    match light_common::DataHeader::parse(packet) {
        Ok((h, _))
            if h.packet_kind() == Some(light_common::PacketKind::End) && h.session == session =>
        {
            Some(h.seq)
        }
        _ => None,
    }
}
