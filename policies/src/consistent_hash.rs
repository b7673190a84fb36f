//! `consistent_hash`: session or prefix affinity on a Ketama-style ring with
//! bounded load (Mirrokni et al.): a request goes to the first backend
//! clockwise from its key's hash whose in-flight count is within
//! `load_factor` of the mean; past it, the walk continues.
//!
//! The ring is built from the configured backend names with a stable hash
//! (FNV-1a with a murmur3 finalizer), so every gateway replica with the same config maps a key to the
//! same backend without a shared store. (pingora-ketama builds rings of
//! socket addresses; engines here are named by URL, often a DNS name, so the
//! ring is built on names.)

use crate::{Candidate, Policy, RequestInfo};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The session/user key; requests without one use the prefix.
    #[default]
    Session,
    /// The hash of the prompt's first bytes (prefix-cache affinity).
    Prefix,
}

const POINTS_PER_BACKEND: usize = 160;

/// FNV-1a followed by murmur3's 64-bit finalizer: FNV alone leaves
/// near-identical inputs (`name#1`, `name#2`) close together on the ring.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Debug)]
pub struct ConsistentHash {
    key: HashKey,
    load_factor: f64,
    /// (point, configuration index), sorted by point.
    ring: Vec<(u64, usize)>,
}

impl ConsistentHash {
    /// `names[i]` is backend i's name.
    pub fn new(names: &[String], key: HashKey, load_factor: f64) -> Self {
        let mut ring = Vec::with_capacity(names.len() * POINTS_PER_BACKEND);
        for (i, n) in names.iter().enumerate() {
            for p in 0..POINTS_PER_BACKEND {
                ring.push((stable_hash(format!("{n}#{p}").as_bytes()), i));
            }
        }
        ring.sort_unstable();
        Self {
            key,
            load_factor: load_factor.max(1.0),
            ring,
        }
    }

    fn key_hash(&self, req: &RequestInfo) -> u64 {
        match (&self.key, &req.session) {
            (HashKey::Session, Some(s)) => stable_hash(s.as_bytes()),
            _ => req.prefix_hash,
        }
    }
}

impl Policy for ConsistentHash {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn pick(&self, req: &RequestInfo, c: &[Candidate]) -> usize {
        if self.ring.is_empty() {
            return 0;
        }
        let total: u64 = c.iter().map(|b| b.inflight).sum();
        let cap = ((total + 1) as f64 / c.len() as f64 * self.load_factor).ceil() as u64;
        let h = self.key_hash(req);
        let start = self.ring.partition_point(|(p, _)| *p < h);
        let mut fallback = None;
        for k in 0..self.ring.len() {
            let (_, idx) = self.ring[(start + k) % self.ring.len()];
            if let Some(pos) = c.iter().position(|b| b.index == idx) {
                if c[pos].inflight < cap {
                    return pos;
                }
                fallback.get_or_insert(pos);
            }
        }
        fallback.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::backends;

    fn req(session: &str) -> RequestInfo {
        RequestInfo {
            session: Some(session.into()),
            ..RequestInfo::default()
        }
    }

    #[test]
    fn affinity_is_stable_and_spread_and_survives_a_missing_backend() {
        let b = backends(4);
        let names: Vec<String> = b.iter().map(|x| x.name.clone()).collect();
        let p = ConsistentHash::new(&names, HashKey::Session, 1.25);
        let q = ConsistentHash::new(&names, HashKey::Session, 1.25); // another replica
        let mut count = [0; 4];
        for i in 0..400 {
            let r = req(&format!("user-{i}"));
            let a = p.pick(&r, &b);
            assert_eq!(a, q.pick(&r, &b), "replicas agree");
            assert_eq!(a, p.pick(&r, &b), "stable");
            count[a] += 1;
        }
        assert!(count.iter().all(|n| *n > 50), "{count:?}");
        // Backend 2 down: its keys move, the others' keys stay.
        let without: Vec<Candidate> = b.iter().filter(|x| x.index != 2).cloned().collect();
        for i in 0..400 {
            let r = req(&format!("user-{i}"));
            let before = b[p.pick(&r, &b)].index;
            let after = without[p.pick(&r, &without)].index;
            if before != 2 {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn bounded_load_moves_keys_off_a_hot_backend() {
        let mut b = backends(3);
        let names: Vec<String> = b.iter().map(|x| x.name.clone()).collect();
        let p = ConsistentHash::new(&names, HashKey::Session, 1.25);
        let r = req("hot-user");
        let home = p.pick(&r, &b);
        b[home].inflight = 30;
        assert_ne!(p.pick(&r, &b), home);
    }
}
