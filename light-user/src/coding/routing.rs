//! Which multicast group carries each message. Messages with the same audience (the
//! receivers that need them) share a group of their own, and each receiver joins only its
//! audiences' groups, so a switch with IGMP/MLD snooping, and every receiver's NIC filter,
//! drop a coded message where nobody uses it instead of every receiver's CPU.
//!
//! Sans-IO and deterministic: the server and each receiver compute the same routing from
//! the plan, the session's group and the announced group budget.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{CodingError, Decoder, Plan};

/// Most groups one receiver joins besides the session's. Its memberships are spread over
/// sockets (Linux allows 20 IPv4 memberships per socket by default), so this only bounds
/// what one receiver costs the switch's and its own group tables: 64 joins cover every
/// audience of a receiver up to K=8, t=3 (35).
pub const MAX_JOINS: usize = 64;

/// Largest group budget a server may announce.
pub const MAX_GROUPS: u16 = 1024;

/// The group of every sent message and the groups each receiver joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    base: IpAddr,
    /// Group index per sent message; 0 is the session's own group.
    of_message: Vec<u16>,
    /// Per receiver, the group indices it joins besides 0 (ascending).
    joins: Vec<Vec<u16>>,
}

impl Routing {
    /// Routes `plan`'s messages over `base` and at most `budget` further groups. A message
    /// every receiver needs stays on `base`; so does one whose audience would need a new
    /// group past the budget or past [`MAX_JOINS`] for one of its receivers (its
    /// receivers' message filters then drop it elsewhere, as with one group).
    pub fn new(plan: &Plan, base: IpAddr, budget: u16) -> Result<Self, CodingError> {
        let k = plan.receivers();
        let mut audience = vec![Vec::new(); plan.messages().len()];
        for r in 0..k {
            for &m in Decoder::new(plan, r)?.wanted_messages() {
                audience[m as usize].push(r);
            }
        }
        let budget = budget.min(MAX_GROUPS);
        let mut of_message = vec![0u16; audience.len()];
        let mut joins = vec![Vec::new(); k as usize];
        let mut group_of: HashMap<&[u32], u16> = HashMap::new();
        let mut used = 0u16;
        for (m, aud) in audience.iter().enumerate() {
            if aud.is_empty() || aud.len() == k as usize {
                continue;
            }
            if let Some(&g) = group_of.get(aud.as_slice()) {
                of_message[m] = g;
                continue;
            }
            if used >= budget || aud.iter().any(|&r| joins[r as usize].len() >= MAX_JOINS) {
                continue;
            }
            used += 1;
            group_of.insert(aud, used);
            for &r in aud {
                joins[r as usize].push(used);
            }
            of_message[m] = used;
        }
        Ok(Self {
            base,
            of_message,
            joins,
        })
    }

    /// The group index of sent message `message` (0, the session's group, if unknown).
    pub fn group_of(&self, message: u32) -> u16 {
        self.of_message.get(message as usize).copied().unwrap_or(0)
    }

    /// Groups in use, the session's included.
    pub fn groups(&self) -> usize {
        1 + self
            .joins
            .iter()
            .flatten()
            .max()
            .map_or(0, |&g| usize::from(g))
    }

    /// The address of group `index`.
    pub fn addr(&self, index: u16) -> IpAddr {
        nth_group(self.base, index)
    }

    /// The groups `receiver` joins besides the session's, as addresses.
    pub fn joins(&self, receiver: u32) -> Vec<IpAddr> {
        self.joins
            .get(receiver as usize)
            .map_or_else(Vec::new, |g| g.iter().map(|&i| self.addr(i)).collect())
    }
}

/// Group `index` counted from `base` in the address's low 16 bits (wrapping there, so the
/// prefix, and with it the multicast scope, stays `base`'s).
pub fn nth_group(base: IpAddr, index: u16) -> IpAddr {
    match base {
        IpAddr::V4(a) => {
            let x = u32::from(a);
            let low = (x as u16).wrapping_add(index);
            IpAddr::V4((x & 0xffff_0000 | u32::from(low)).into())
        }
        IpAddr::V6(a) => {
            let x = u128::from(a);
            let low = (x as u16).wrapping_add(index);
            IpAddr::V6((x & !0xffff | u128::from(low)).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coding::{CacheBudget, PlanInput, SchemeChoice, plan};

    fn input(receivers: u32, files: u32, fraction: f64, scheme: SchemeChoice) -> PlanInput {
        PlanInput {
            receivers,
            demands: (0..receivers).map(|r| r % files).collect(),
            file_lens: vec![4096; files as usize],
            budget: CacheBudget::Fraction(fraction),
            scheme,
            seed: 7,
            min_subfile_bytes: 0,
            packet_bytes: 64,
        }
    }

    #[test]
    fn group_addresses_count_in_the_low_bits_and_keep_the_prefix() {
        let v4: IpAddr = "239.255.255.254".parse().unwrap();
        assert_eq!(nth_group(v4, 0), v4);
        assert_eq!(nth_group(v4, 1).to_string(), "239.255.255.255");
        assert_eq!(nth_group(v4, 3).to_string(), "239.255.0.1");
        let v6: IpAddr = "ff15::fffe".parse().unwrap();
        assert_eq!(nth_group(v6, 2).to_string(), "ff15::");
    }

    #[test]
    fn distinct_files_at_t1_get_a_group_per_pair() {
        let p = plan(&input(4, 4, 0.25, SchemeChoice::Centralized)).unwrap();
        let base: IpAddr = "239.1.2.3".parse().unwrap();
        let r = Routing::new(&p, base, 64).unwrap();
        // MAN at t=1: one message per pair of receivers, each its own audience.
        assert_eq!(r.groups(), 1 + 6);
        for k in 0..4 {
            assert_eq!(r.joins(k).len(), 3, "receiver {k} is in 3 pairs");
        }
        // No budget: everything on the session's group, nothing to join.
        let one = Routing::new(&p, base, 0).unwrap();
        assert_eq!(one.groups(), 1);
        assert!((0..p.messages().len() as u32).all(|m| one.group_of(m) == 0));
    }

    #[test]
    fn distinct_files_at_k8_t2_get_a_group_per_triple() {
        // 4 KiB files split 28 ways: big enough that every subfile is sent.
        let mut i = input(8, 8, 0.25, SchemeChoice::Centralized);
        i.file_lens = vec![28 * 64 * 4; 8];
        let p = plan(&i).unwrap();
        let r = Routing::new(&p, "239.1.2.3".parse().unwrap(), 64).unwrap();
        // MAN at t=2: one message per triple of receivers; each receiver is in C(7,2) = 21,
        // more groups than one socket may join.
        assert_eq!(r.groups(), 1 + 56);
        for k in 0..8 {
            assert_eq!(r.joins(k).len(), 21, "receiver {k} is in 21 triples");
        }
        assert!((0..p.messages().len() as u32).all(|m| r.group_of(m) != 0));
    }

    #[test]
    fn the_same_file_stays_on_the_session_group() {
        let mut i = input(5, 3, 0.2, SchemeChoice::Centralized);
        i.demands = vec![1; 5];
        let p = plan(&i).unwrap();
        let r = Routing::new(&p, "239.1.2.3".parse().unwrap(), 64).unwrap();
        assert_eq!(r.groups(), 1);
        assert!((0..5).all(|k| r.joins(k).is_empty()));
    }

    proptest::proptest! {
        /// Every message a receiver needs is on the session's group or on one it joins, no
        /// receiver joins more than MAX_JOINS, the budget holds, and both sides agree.
        #[test]
        fn every_wanted_message_reaches_its_receivers(
            receivers in 1u32..9,
            files in 1u32..9,
            fraction in 0.0f64..1.0,
            decentralized: bool,
            budget in 0u16..300,
        ) {
            let scheme = if decentralized {
                SchemeChoice::Decentralized
            } else {
                SchemeChoice::Centralized
            };
            let p = plan(&input(receivers, files, fraction, scheme)).unwrap();
            let base: IpAddr = "239.7.0.1".parse().unwrap();
            let r = Routing::new(&p, base, budget).unwrap();
            proptest::prop_assert!(r.groups() <= 1 + usize::from(budget));
            proptest::prop_assert_eq!(&r, &Routing::new(&p, base, budget).unwrap());
            for k in 0..receivers {
                let joined = r.joins(k);
                proptest::prop_assert!(joined.len() <= MAX_JOINS);
                for &m in Decoder::new(&p, k).unwrap().wanted_messages() {
                    let g = r.addr(r.group_of(m));
                    proptest::prop_assert!(g == base || joined.contains(&g));
                }
            }
        }
    }
}
