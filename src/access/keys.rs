//! Client keys: `Authorization: Bearer <key>` checked before anything is
//! forwarded, when `[auth] keys_file` is set. The file is TOML (a Kubernetes
//! Secret mounts it as is) and is read again when it changes, without a
//! restart:
//!
//! ```toml
//! [[keys]]
//! name = "team-a"          # a label on metrics and a field in records
//! key = "sk-team-a-..."    # never logged, never exported
//! max_inflight = 8         # optional: requests in flight at most
//! rps = 5.0                # optional: requests per second (burst: 1 s worth)
//! ```
//!
//! Keys are held as SHA-256 digests and a presented key is compared with
//! every one in constant time (`constant_time_eq`): neither the time taken
//! nor an early exit tells which key, or how much of one, matched.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    key: String,
    #[serde(default)]
    max_inflight: Option<u64>,
    #[serde(default)]
    rps: Option<f64>,
}

/// One client: its name and limits.
pub struct Client {
    pub name: metrics::SharedString,
    digest: [u8; 32],
    max_inflight: Option<u64>,
    inflight: Arc<AtomicU64>,
    rate: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // (the digest stays out of logs too)
        f.debug_struct("Client").field("name", &self.name).finish()
    }
}

/// The keys of one reading of the file.
#[derive(Debug, Default)]
pub struct KeyRing {
    clients: Vec<Arc<Client>>,
}

/// What a presented key gets.
#[derive(Debug)]
pub enum Verdict {
    /// Known, within its limits: the slot is held until the request ends.
    Admit(Arc<Client>, ClientSlot),
    /// No key, or not one of the file's.
    Unknown,
    /// Known, over a limit: retry after this long.
    Limited(Arc<Client>, Duration),
}

/// A request in flight for a client (released on drop).
#[derive(Debug)]
pub struct ClientSlot(Option<Arc<AtomicU64>>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyRing {
    /// Read and check a keys file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("keys file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let f: KeysFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::BTreeSet::new();
        let mut clients = Vec::new();
        for k in f.keys {
            if k.name.is_empty()
                || k.name.len() > 64
                || !k
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(format!(
                    "key name {:?}: 1 to 64 of letters, digits, - _ .",
                    k.name
                ));
            }
            if !names.insert(k.name.clone()) {
                return Err(format!("key name {:?} appears twice", k.name));
            }
            if k.key.trim().len() < 8 {
                return Err(format!(
                    "the key of {:?} is shorter than 8 characters",
                    k.name
                ));
            }
            let rate = match k.rps {
                None => None,
                Some(r) if r.is_finite() && r > 0.0 => {
                    // a quota of one request per 1/r seconds, bursting to
                    // one second's worth
                    let period = Duration::from_secs_f64(1.0 / r);
                    let burst =
                        NonZeroU32::new(r.ceil().max(1.0) as u32).unwrap_or(NonZeroU32::MIN);
                    Quota::with_period(period).map(|q| RateLimiter::direct(q.allow_burst(burst)))
                }
                Some(r) => return Err(format!("rps of {:?} must be > 0, not {r}", k.name)),
            };
            clients.push(Arc::new(Client {
                name: k.name.into(),
                digest: digest(k.key.trim()),
                max_inflight: k.max_inflight.filter(|n| *n > 0),
                inflight: Arc::new(AtomicU64::new(0)),
                rate,
            }));
        }
        if clients.is_empty() {
            return Err("no keys: every request would be refused".into());
        }
        Ok(Self { clients })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client whose key is `presented`, compared with every key.
    fn find(&self, presented: &str) -> Option<&Arc<Client>> {
        let d = digest(presented);
        let mut found = None;
        for c in &self.clients {
            if constant_time_eq::constant_time_eq_32(&c.digest, &d) {
                found = Some(c);
            }
        }
        found
    }

    /// The verdict on a request carrying `authorization` (the header).
    pub fn admit(&self, authorization: Option<&str>) -> Verdict {
        let Some(key) = authorization.and_then(bearer) else {
            return Verdict::Unknown;
        };
        let Some(c) = self.find(key) else {
            return Verdict::Unknown;
        };
        if let Some(rate) = &c.rate {
            if let Err(not_until) = rate.check() {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                return Verdict::Limited(Arc::clone(c), wait);
            }
        }
        let n = c.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = ClientSlot(Some(Arc::clone(&c.inflight)));
        if c.max_inflight.is_some_and(|max| n > max) {
            drop(slot);
            return Verdict::Limited(Arc::clone(c), Duration::from_secs(1));
        }
        Verdict::Admit(Arc::clone(c), slot)
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer(h: &str) -> Option<&str> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[keys]]
        name = "team-a"
        key = "sk-aaaaaaaaaaaa"
        [[keys]]
        name = "team-b"
        key = "sk-bbbbbbbbbbbb"
        max_inflight = 1
        [[keys]]
        name = "slow"
        key = "sk-ssssssssssss"
        rps = 1.0
    "#;

    fn name(v: &Verdict) -> Option<&str> {
        match v {
            Verdict::Admit(c, _) | Verdict::Limited(c, _) => Some(&c.name),
            Verdict::Unknown => None,
        }
    }

    #[test]
    fn a_known_key_is_admitted_and_named_an_unknown_one_is_not() {
        let ring = KeyRing::parse(FILE).unwrap();
        assert_eq!(ring.len(), 3);
        let v = ring.admit(Some("Bearer sk-aaaaaaaaaaaa"));
        assert!(matches!(v, Verdict::Admit(..)));
        assert_eq!(name(&v), Some("team-a"));
        assert!(matches!(
            ring.admit(Some("bearer  sk-aaaaaaaaaaaa ")),
            Verdict::Admit(..)
        ));
        for h in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer sk-aaaaaaaaaaa"),
            Some("Basic sk-aaaaaaaaaaaa"),
            Some("sk-aaaaaaaaaaaa"),
        ] {
            assert!(matches!(ring.admit(h), Verdict::Unknown), "{h:?}");
        }
    }

    #[test]
    fn limits_answer_with_a_wait() {
        let ring = KeyRing::parse(FILE).unwrap();
        let first = ring.admit(Some("Bearer sk-bbbbbbbbbbbb"));
        assert!(matches!(first, Verdict::Admit(..)));
        assert!(matches!(
            ring.admit(Some("Bearer sk-bbbbbbbbbbbb")),
            Verdict::Limited(..)
        ));
        drop(first);
        assert!(matches!(
            ring.admit(Some("Bearer sk-bbbbbbbbbbbb")),
            Verdict::Admit(..)
        ));
        assert!(matches!(
            ring.admit(Some("Bearer sk-ssssssssssss")),
            Verdict::Admit(..)
        ));
        match ring.admit(Some("Bearer sk-ssssssssssss")) {
            Verdict::Limited(_, wait) => assert!(wait <= Duration::from_secs(1)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        for bad in [
            "",
            "[[keys]]\nname = \"a\"\nkey = \"short\"",
            "[[keys]]\nname = \"a b\"\nkey = \"sk-123456789\"",
            "[[keys]]\nname = \"a\"\nkey = \"sk-123456789\"\n[[keys]]\nname = \"a\"\nkey = \"sk-987654321\"",
            "[[keys]]\nname = \"a\"\nkey = \"sk-123456789\"\nrps = 0",
            "[[keys]]\nname = \"a\"\nkey = \"sk-123456789\"\nextra = 1",
        ] {
            assert!(KeyRing::parse(bad).is_err(), "{bad}");
        }
    }
}
