//! The server's persistent cache placement: which bytes each of the K receiver slots
//! caches, recorded in the catalog so caches filled ahead (`light cache fill`) stay valid
//! across server restarts, and the transfer of one receiver's cache.

use std::sync::{Arc, Mutex};

use super::{
    CacheTag, ServerChannel, ToReceiver, ToServer,
    session::{MappedFile, SessionError},
};
use crate::{
    catalog::{Catalog, ContentInfo, PlacementId},
    coding::{Plan, PlanInput, plan},
};

/// Version of the planner's placement rules: a build that places differently from the
/// same input bumps it, so caches it did not fill are never taken for its own.
const PLACEMENT_FORMAT: u32 = 1;

/// The placement for one library version and receiver population.
#[derive(Debug)]
pub struct Placement {
    id: PlacementId,
    slots: u32,
    input: PlanInput,
    plan: Plan,
    library: String,
    key: String,
}

impl Placement {
    /// Loads the placement the catalog holds for these parameters, or records `fresh`
    /// (a plan input for `fresh.receivers` slots) as it. Only the placement fields of
    /// `fresh` matter; its demands are replaced per session.
    pub fn load_or_create(
        catalog: &Catalog,
        contents: &[ContentInfo],
        fresh: PlanInput,
    ) -> Result<Self, SessionError> {
        let library = blake3::hash(&contents.iter().flat_map(|c| c.root.0).collect::<Vec<u8>>())
            .to_hex()
            .to_string();
        // Everything the caches depend on except the seed (which the record keeps).
        let key = blake3::hash(
            serde_json::json!({
                "format": PLACEMENT_FORMAT,
                "library": library,
                "receivers": fresh.receivers,
                "file_lens": fresh.file_lens,
                "budget": fresh.budget,
                "scheme": fresh.scheme,
                "min_subfile_bytes": fresh.min_subfile_bytes,
                "packet_bytes": fresh.packet_bytes,
            })
            .to_string()
            .as_bytes(),
        )
        .to_hex()
        .to_string();
        let json = serde_json::to_string(&fresh)
            .map_err(|e| SessionError::Protocol(format!("placement input: {e}")))?;
        let (id, stored) = catalog.placement(&key, &json)?;
        let input: PlanInput = serde_json::from_str(&stored).map_err(|e| {
            SessionError::Protocol(format!("the catalog's placement {id} is unreadable: {e}"))
        })?;
        let plan = plan(&input)?;
        Ok(Self {
            id,
            slots: input.receivers,
            input,
            plan,
            library,
            key,
        })
    }

    /// The plan input for a session whose receiver in slot `s` demands `demands[s]`
    /// (`None` for an empty slot).
    pub fn session_input(&self, demands: &[Option<u32>]) -> PlanInput {
        // An empty slot asks for what another receiver of its group asks for: YMA then
        // sends nothing extra for it, and the caches stay exactly as placed.
        let any = demands.iter().flatten().next().copied().unwrap_or(0);
        let group = match self.plan.scheme() {
            crate::coding::Scheme::Centralized { group_size, .. } => *group_size as usize,
            crate::coding::Scheme::Decentralized { .. } => demands.len().max(1),
        };
        let filled = (0..self.slots as usize)
            .map(|s| {
                demands.get(s).copied().flatten().unwrap_or_else(|| {
                    let first = s / group * group;
                    demands[first..(first + group).min(demands.len())]
                        .iter()
                        .flatten()
                        .next()
                        .copied()
                        .unwrap_or(any)
                })
            })
            .collect();
        PlanInput {
            demands: filled,
            ..self.input.clone()
        }
    }

    /// What a complete cache for `slot` is.
    pub fn tag(&self, slot: u32) -> CacheTag {
        CacheTag {
            library: self.library.clone(),
            placement: blake3::hash(format!("{}/{slot}", self.key).as_bytes())
                .to_hex()
                .to_string(),
        }
    }

    /// The slot `receiver` holds, assigning it one (possibly taking over the slot of the
    /// receiver seen longest ago that is not in `busy`).
    pub fn slot_of(
        &self,
        catalog: &Catalog,
        receiver: u32,
        busy: &[u32],
    ) -> Result<u32, SessionError> {
        let busy: Vec<String> = busy.iter().map(u32::to_string).collect();
        match catalog.assign_slot(self.id, &receiver.to_string(), self.slots, &busy)? {
            Some((slot, evicted)) => {
                if let Some(old) = evicted {
                    eprintln!(
                        "light: receiver {receiver} takes over cache slot {slot} from receiver \
                         {old} (seen longest ago); {old}'s cache will be refilled"
                    );
                }
                Ok(slot)
            }
            None => Err(SessionError::Refused(format!(
                "all {} cache slots are held by receivers in this session; start the server \
                 with more --receivers",
                self.slots
            ))),
        }
    }

    /// The cache of `slot` as slices of the library's files, back to back.
    fn pieces<'a>(&self, slot: u32, files: &'a [MappedFile]) -> Vec<&'a [u8]> {
        self.plan
            .cache_segments(slot)
            .iter()
            .map(|s| {
                &files[s.file as usize].as_ref()[s.offset as usize..(s.offset + s.len) as usize]
            })
            .collect()
    }
}

/// Gives receiver `id` (in `slot`) its cache: nothing when it holds the right one and the
/// catalog agrees, else the blob (resumed from what it kept). Records the cache in the
/// catalog once the receiver confirms it stored it. Returns the bytes sent.
pub async fn place(
    chan: &mut ServerChannel,
    id: u32,
    slot: u32,
    have: Option<&CacheTag>,
    placement: &Arc<Placement>,
    files: &Arc<Vec<MappedFile>>,
    catalog: &Arc<Mutex<Catalog>>,
) -> Result<u64, SessionError> {
    let tag = placement.tag(slot);
    let lock = || {
        catalog
            .lock()
            .map_err(|_| SessionError::Protocol("catalog lock poisoned".into()))
    };
    let recorded = lock()?.receiver(&id.to_string())?.and_then(|r| r.cache_tag);
    if have == Some(&tag) && recorded.as_deref() == Some(tag.placement.as_str()) {
        chan.send(&ToReceiver::CacheKept { tag: tag.clone() })
            .await
            .map_err(SessionError::control("confirm the kept cache"))?;
        lock()?.upsert_receiver(&id.to_string(), Some(&tag.placement))?;
        return Ok(0);
    }
    // Hashing a large cache takes a while: off the async threads.
    let hash = {
        let (placement, files) = (placement.clone(), files.clone());
        tokio::task::spawn_blocking(move || {
            let mut h = blake3::Hasher::new();
            for p in placement.pieces(slot, &files) {
                h.update(p);
            }
            h.finalize()
        })
        .await
        .map_err(|e| SessionError::Protocol(format!("cache hash task: {e}")))?
    };
    let pieces = placement.pieces(slot, files);
    let len: u64 = pieces.iter().map(|p| p.len() as u64).sum();
    // Until the receiver confirms the new cache, the catalog must not claim it holds one.
    lock()?.upsert_receiver(&id.to_string(), None)?;
    let from = chan
        .send_cache(&pieces, &hash, tag.clone())
        .await
        .map_err(SessionError::control("send the cache"))?;
    loop {
        match chan
            .recv()
            .await
            .map_err(SessionError::control("wait for the cache to be stored"))?
        {
            ToServer::CacheStored => break,
            ToServer::Done {
                ok: false, detail, ..
            } => return Err(SessionError::Incomplete(detail)),
            _ => continue,
        }
    }
    lock()?.upsert_receiver(&id.to_string(), Some(&tag.placement))?;
    Ok(len - from)
}
