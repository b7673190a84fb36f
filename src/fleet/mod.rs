//! The backends and their live state, and routing over them.
//!
//! Every counter a policy reads is an atomic updated on the request path
//! (in flight, in-flight tokens, thinking streams, EWMA of TTFT) or by the
//! probe task (health, scraped engine state): no locks. A pick takes a
//! snapshot of the candidates and hands it to the configured policy through
//! `thinkgate_policies::select`, which never offers an unhealthy backend.

pub mod probe;
pub mod ttft;

use crate::config::{AssignBy, BackendConfig, Config};
use crate::error::ConfigError;
use crate::upstream::{parse_base, Upstream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use thinkgate_policies::{
    Candidate, Completion, EngineState, NoBackend, Policy, PolicyConfig, RequestInfo,
};

/// An `f64` in an atomic (NaN = unknown).
#[derive(Debug)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub fn unknown() -> Self {
        Self(AtomicU64::new(f64::NAN.to_bits()))
    }
    pub fn get(&self) -> Option<f64> {
        let v = f64::from_bits(self.0.load(Ordering::Relaxed));
        (!v.is_nan()).then_some(v)
    }
    pub fn set(&self, v: Option<f64>) {
        self.0
            .store(v.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
    }
    /// Move the average `weight` of the way towards `v` (to `v` when unknown).
    pub fn ewma(&self, v: f64, weight: f64) {
        self.set(Some(
            self.get()
                .map_or(v, |old| old * (1.0 - weight) + v * weight),
        ));
    }
}

/// One backend engine and what the gateway knows of it now.
#[derive(Debug)]
pub struct Backend {
    pub index: usize,
    pub upstream: Upstream,
    pub pool: String,
    pub weight: u32,
    /// Models it serves (empty: any).
    pub models: Vec<String>,
    pub inflight: AtomicI64,
    pub inflight_tokens: AtomicI64,
    pub inflight_thinking: AtomicI64,
    ewma_ttft: AtomicF64,
    ewma_tpot: AtomicF64,
    /// Text bytes per output token, learned from the engine's usage: live
    /// streams are counted in tokens from their text, since an engine under
    /// load merges several tokens into one event (vLLM's API server does).
    bytes_per_token: AtomicF64,
    pub flavor: crate::config::Flavor,
    pub healthy: AtomicBool,
    /// Consecutive failures (probes, connects) and passing probes.
    failures: AtomicU32,
    successes: AtomicU32,
    /// The engine answered once (a passing probe, a response head): until
    /// then it is starting.
    pub seen_up: AtomicBool,
    /// When passive ejection ends without an active check (ms since start).
    ejected_until_ms: AtomicU64,
    pub kv_usage: AtomicF64,
    pub running: AtomicF64,
    pub waiting: AtomicF64,
    pub preemptions: AtomicF64,
    /// Recent TTFTs, for hedging after a percentile.
    pub ttft_ring: ttft::TtftRing,
}

/// A request leg counted on a backend while it lives (a hedge, or a
/// forced answer's continuation): in-flight +1 now, -1 on drop.
#[derive(Debug)]
pub struct LegLoad(Arc<Backend>);

impl LegLoad {
    pub fn new(b: Arc<Backend>) -> Self {
        b.inflight.fetch_add(1, Ordering::Relaxed);
        Self(b)
    }
}

impl Drop for LegLoad {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    fn new(index: usize, cfg: &BackendConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            index,
            upstream: parse_base(&cfg.url)?,
            pool: cfg.pool.clone(),
            weight: cfg.weight,
            models: cfg.models.clone(),
            inflight: AtomicI64::new(0),
            inflight_tokens: AtomicI64::new(0),
            inflight_thinking: AtomicI64::new(0),
            ewma_ttft: AtomicF64::unknown(),
            ewma_tpot: AtomicF64::unknown(),
            bytes_per_token: AtomicF64::unknown(),
            flavor: cfg.flavor,
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            seen_up: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            kv_usage: AtomicF64::unknown(),
            running: AtomicF64::unknown(),
            waiting: AtomicF64::unknown(),
            preemptions: AtomicF64::unknown(),
            ttft_ring: Default::default(),
        })
    }

    fn serves(&self, model: Option<&str>) -> bool {
        self.models.is_empty() || model.is_some_and(|m| self.models.iter().any(|x| x == m))
    }

    fn candidate(&self) -> Candidate {
        let n = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0) as u64;
        Candidate {
            index: self.index,
            name: self.upstream.name.to_string(),
            pool: self.pool.clone(),
            weight: self.weight,
            healthy: self.healthy.load(Ordering::Relaxed),
            inflight: n(&self.inflight),
            inflight_tokens: n(&self.inflight_tokens),
            inflight_thinking: n(&self.inflight_thinking),
            ewma_ttft_s: self.ewma_ttft.get().unwrap_or(0.0),
            ewma_tpot_s: self.ewma_tpot.get().unwrap_or(0.0),
            engine: EngineState {
                kv_usage: self.kv_usage.get(),
                running: self.running.get(),
                waiting: self.waiting.get(),
                preemptions: self.preemptions.get(),
            },
        }
    }

    /// A response head arrived: the backend works.
    pub fn on_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.seen_up.store(true, Ordering::Relaxed);
    }

    /// Fold a finished request's TTFT and TPOT into the EWMAs (weight 0.2).
    pub fn observe_latency(&self, ttft: Option<f64>, tpot: Option<f64>) {
        if let Some(t) = ttft {
            self.ttft_ring.push(t);
        }
        for (ewma, v) in [(&self.ewma_ttft, ttft), (&self.ewma_tpot, tpot)] {
            if let Some(v) = v {
                ewma.ewma(v, 0.2);
            }
        }
    }

    /// A finished response had `text_bytes` of text in `tokens` output
    /// tokens by the engine's count. Short answers are skipped: the few
    /// tokens that carry no text (role, end) would skew their ratio.
    pub fn observe_text(&self, text_bytes: u64, tokens: u64) {
        if tokens < 32 || text_bytes == 0 {
            return;
        }
        self.bytes_per_token
            .ewma(text_bytes as f64 / tokens as f64, 0.1);
    }

    /// Output tokens of a live stream that sent `events` text events and
    /// `text_bytes` of text: the events, or more where the text shows that
    /// events carried several tokens.
    pub fn live_tokens(&self, events: u64, text_bytes: u64) -> u64 {
        match self.bytes_per_token.get() {
            Some(bpt) if bpt > 0.0 => events.max((text_bytes as f64 / bpt).round() as u64),
            _ => events,
        }
    }
}

/// One routing arm: a policy over a pool. Without an experiment there is
/// one arm, `default`.
#[derive(Debug)]
pub struct Arm {
    pub name: metrics::SharedString,
    pub weight: u32,
    pub policy: Arc<dyn Policy>,
    pub pool: Option<String>,
    /// The arm's thinking budget and deadline (override `[straggler]`).
    pub limits: crate::straggler::ArmLimits,
    /// The policy's config, serialized (to keep the policy across reloads).
    config: String,
}

/// All backends, the routing arms, and ejection settings.
#[derive(Debug)]
pub struct Fleet {
    pub backends: Vec<Arc<Backend>>,
    pub arms: Vec<Arm>,
    /// Straggler settings (reloaded with the fleet).
    pub straggler: Arc<crate::straggler::StragglerConfig>,
    /// Requests in flight per backend at most (0: no limit).
    max_inflight_per_backend: u64,
    assign_by: AssignBy,
    /// The experiment's guardrail (the live view applies it).
    pub guardrail: Option<crate::config::GuardrailConfig>,
    eject_after: u32,
    eject_ms: u64,
    healthy_after: u32,
    grace_ms: u64,
    panic_below: f64,
    /// Active health checks run: only then can an engine be known to be
    /// starting (without them, every backend is taken as up).
    probing: bool,
    /// The gateway's start (kept across reloads: the startup grace counts
    /// from it).
    start: Instant,
}

impl Fleet {
    pub fn new(cfg: &Config) -> Result<Self, ConfigError> {
        Self::reloaded(cfg, None)
    }

    /// A fleet for `cfg` that keeps what it can of `previous` (a hot
    /// reload): a backend with the same URL at the same position keeps its
    /// live state, and an arm with the same name, policy config and backends
    /// keeps its policy (and what it has learned).
    pub fn reloaded(cfg: &Config, previous: Option<&Fleet>) -> Result<Self, ConfigError> {
        let backends = cfg
            .all_backends()
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let keep = previous.and_then(|p| p.backends.get(i)).filter(|old| {
                    *old.upstream.name == *b.url.trim_end_matches('/')
                        && old.pool == b.pool
                        && old.weight == b.weight
                        && old.models == b.models
                        && old.flavor == b.flavor
                });
                match keep {
                    Some(old) => Ok(Arc::clone(old)),
                    None => Backend::new(i, b).map(Arc::new),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = backends
            .iter()
            .map(|b| b.upstream.name.to_string())
            .collect();
        let same_backends = previous.is_some_and(|p| {
            p.backends
                .iter()
                .map(|b| b.upstream.name.to_string())
                .eq(names.iter().cloned())
        });
        let arm = |name: &str,
                   weight: u32,
                   routing: &PolicyConfig,
                   pool: &Option<String>,
                   limits: crate::straggler::ArmLimits| {
            let key = serde_json::to_string(routing).unwrap_or_default();
            let kept = previous
                .filter(|_| same_backends)
                .and_then(|p| p.arms.iter().find(|a| &*a.name == name && a.config == key))
                .map(|a| Arc::clone(&a.policy));
            Arm {
                name: metrics::SharedString::from(Arc::<str>::from(name)),
                weight,
                policy: kept.unwrap_or_else(|| thinkgate_policies::build(routing, &names)),
                pool: pool.clone(),
                limits,
                config: key,
            }
        };
        let (arms, assign_by) = match &cfg.experiment {
            Some(e) => (
                e.arms
                    .iter()
                    .map(|a| {
                        let limits = crate::straggler::ArmLimits {
                            thinking_budget: a.thinking_budget,
                            deadline_ms: a.deadline_ms,
                        };
                        arm(&a.name, a.weight, &a.routing, &a.pool, limits)
                    })
                    .collect(),
                e.assign_by.clone(),
            ),
            None => (
                vec![arm(
                    "default",
                    1,
                    &cfg.routing,
                    &cfg.pool,
                    crate::straggler::ArmLimits::default(),
                )],
                AssignBy::Session,
            ),
        };
        Ok(Self {
            backends,
            arms,
            straggler: Arc::new(cfg.straggler.clone()),
            max_inflight_per_backend: cfg.max_inflight_per_backend,
            assign_by,
            guardrail: cfg.experiment.as_ref().and_then(|e| e.guardrail.clone()),
            eject_after: cfg.eject_after_failures.max(1),
            eject_ms: cfg.eject_secs.saturating_mul(1000),
            healthy_after: cfg.healthy_after_successes.max(1),
            grace_ms: cfg.startup_grace_secs.saturating_mul(1000),
            panic_below: cfg.panic_threshold,
            probing: cfg.health_interval_ms > 0,
            start: previous.map_or_else(Instant::now, |p| p.start),
        })
    }

    /// The arm of a request: a stable hash of its session key (the same on
    /// every gateway replica, no shared store), or random without one. An
    /// arm in `stopped` (a bit per arm: the experiment's guardrail stopped
    /// it) takes no request: one that would go there is placed over the
    /// arms still running by the same draw, so no other arm's sessions
    /// move.
    pub fn assign(&self, req: &RequestInfo, stopped: u64) -> usize {
        if self.arms.len() == 1 {
            return 0;
        }
        let x = match (&self.assign_by, &req.session) {
            (AssignBy::Session, Some(s)) => {
                thinkgate_policies::consistent_hash::stable_hash(s.as_bytes())
            }
            _ => rand::random::<u64>(),
        };
        let running = |i: usize| i >= 64 || stopped & (1 << i) == 0;
        let arm = self.draw(x, |_| true);
        if running(arm) || !(0..self.arms.len()).any(|i| running(i) && self.arms[i].weight > 0) {
            return arm;
        }
        self.draw(x, running)
    }

    /// The arm `x` falls on, by weight, over the arms `keep` says.
    fn draw(&self, x: u64, keep: impl Fn(usize) -> bool) -> usize {
        let weight = |i: usize, a: &Arm| if keep(i) { u64::from(a.weight) } else { 0 };
        let total: u64 = self
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| weight(i, a))
            .sum::<u64>()
            .max(1);
        let x = x % total;
        let mut acc = 0;
        for (i, a) in self.arms.iter().enumerate() {
            acc += weight(i, a);
            if x < acc {
                return i;
            }
        }
        self.arms.len() - 1
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Choose a backend for `req` (which the arm's policy may annotate) in
    /// arm `arm` (see [`Fleet::assign`]).
    pub fn pick(&self, arm: usize, req: &mut RequestInfo) -> Result<Arc<Backend>, NoBackend> {
        self.pick_excluding(arm, req, &[])
    }

    /// As [`Fleet::pick`], never choosing a backend in `exclude` (a retry or
    /// a hedge goes elsewhere). With `max_thinking_per_backend`, backends
    /// holding that many thinking streams are offered only if every other
    /// one is too.
    pub fn pick_excluding(
        &self,
        arm: usize,
        req: &mut RequestInfo,
        exclude: &[usize],
    ) -> Result<Arc<Backend>, NoBackend> {
        self.readmit_expired();
        let Some(arm) = self.arms.get(arm) else {
            return Err(NoBackend { pool: None });
        };
        if exclude.is_empty() {
            arm.policy.prepare(req);
        }
        let mut candidates: Vec<Candidate> = self
            .backends
            .iter()
            .filter(|b| b.serves(req.model.as_deref()) && !exclude.contains(&b.index))
            .map(|b| b.candidate())
            .collect();
        if self.panics(arm.pool.as_deref(), req.model.as_deref()) {
            // too few healthy: route over all of them (Envoy's panic mode)
            for c in &mut candidates {
                c.healthy = true;
            }
        } else if self.probing {
            // a starting engine only when nothing else of the pool is up
            let up = |c: &Candidate| {
                self.backends
                    .get(c.index)
                    .is_some_and(|b| b.seen_up.load(Ordering::Relaxed))
            };
            let in_pool = |c: &Candidate| arm.pool.as_deref().is_none_or(|p| c.pool == p);
            if candidates.iter().any(|c| c.healthy && in_pool(c) && up(c)) {
                candidates.retain(up);
            }
        }
        let limit = self.max_inflight_per_backend;
        if limit > 0 {
            candidates.retain(|c| c.inflight < limit);
        }
        if let Some(cap) = self.straggler.max_thinking_per_backend {
            let open = |c: &Candidate| {
                c.healthy
                    && c.inflight_thinking < cap
                    && arm.pool.as_deref().is_none_or(|p| c.pool == p)
            };
            if candidates.iter().any(open) {
                candidates.retain(|c| c.inflight_thinking < cap);
            }
        }
        // a retry or a hedge asks for the best other backend without
        // counting as a pick (issue: hedging bent round robin's split)
        let select = if exclude.is_empty() {
            thinkgate_policies::select
        } else {
            thinkgate_policies::select_other
        };
        let i = select(arm.policy.as_ref(), req, &candidates, arm.pool.as_deref())?;
        self.backends
            .get(i)
            .cloned()
            .ok_or(NoBackend { pool: None })
    }

    /// When a pick failed: the per-backend limit, if every healthy backend
    /// is at it (the fleet is busy, not down).
    pub fn busy_limit(&self) -> Option<u64> {
        let limit = self.max_inflight_per_backend;
        let healthy: Vec<&Arc<Backend>> = self
            .backends
            .iter()
            .filter(|b| b.healthy.load(Ordering::Relaxed))
            .collect();
        (limit > 0
            && !healthy.is_empty()
            && healthy
                .iter()
                .all(|b| b.inflight.load(Ordering::Relaxed) >= limit as i64))
        .then_some(limit)
    }

    /// The request routed by arm `arm` to `from` runs on `to` now (a retry,
    /// or a hedge that won): the policy moves what it counted.
    pub fn moved(&self, arm: usize, req: &RequestInfo, from: usize, to: usize) {
        if let Some(a) = self.arms.get(arm) {
            a.policy.moved(req, from, to);
        }
    }

    /// The request on `b`, routed by arm `arm`, finished.
    pub fn observe(&self, arm: usize, req: &RequestInfo, b: &Backend, done: &Completion) {
        if let Some(a) = self.arms.get(arm) {
            a.policy.observe(req, b.index, done);
        }
    }

    /// Whether the backends of `pool` (all, for `None`) that serve `model`
    /// are too few healthy to route by health: below `panic_threshold` of
    /// them (a pool of one, when it is out).
    pub fn panics(&self, pool: Option<&str>, model: Option<&str>) -> bool {
        let (mut total, mut healthy) = (0usize, 0usize);
        for b in &self.backends {
            if pool.is_none_or(|p| b.pool == p) && b.serves(model) {
                total += 1;
                healthy += usize::from(b.healthy.load(Ordering::Relaxed));
            }
        }
        // (no healthy backend at all: every backend, whatever the threshold)
        total > 0 && (healthy == 0 || (healthy as f64) < self.panic_below * total as f64)
    }

    /// The pools in panic mode now (for `/stats` and the gauge).
    pub fn panicking_pools(&self) -> Vec<String> {
        let mut pools: Vec<&str> = self.backends.iter().map(|b| b.pool.as_str()).collect();
        pools.sort_unstable();
        pools.dedup();
        pools
            .into_iter()
            .filter(|p| self.panics(Some(p), None))
            .map(str::to_string)
            .collect()
    }

    /// A failure counts unless the engine is still starting.
    fn counts(&self, b: &Backend) -> bool {
        !self.probing || b.seen_up.load(Ordering::Relaxed) || self.now_ms() >= self.grace_ms
    }

    /// Health as reported (gauge, `/stats`): a starting engine, never seen
    /// up by the probes, is not reported healthy, though it is not out.
    pub fn reported_healthy(&self, b: &Backend) -> bool {
        b.healthy.load(Ordering::Relaxed) && (!self.probing || b.seen_up.load(Ordering::Relaxed))
    }

    /// A probe or a connect to `b` failed: out after `eject_after` in a row.
    pub fn on_failure(&self, b: &Backend) {
        b.successes.store(0, Ordering::Relaxed);
        if !self.counts(b) {
            return;
        }
        let n = b.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.eject_after && b.healthy.swap(false, Ordering::Relaxed) {
            b.ejected_until_ms
                .store(self.now_ms() + self.eject_ms, Ordering::Relaxed);
            tracing::warn!(backend = %b.upstream.name, failures = n, "backend ejected");
        }
    }

    /// Without active health checks, an ejected backend gets another try
    /// after the ejection time.
    fn readmit_expired(&self) {
        let now = self.now_ms();
        for b in &self.backends {
            let until = b.ejected_until_ms.load(Ordering::Relaxed);
            if until != 0 && now >= until && !b.healthy.load(Ordering::Relaxed) {
                b.ejected_until_ms.store(0, Ordering::Relaxed);
                b.failures.store(0, Ordering::Relaxed);
                b.healthy.store(true, Ordering::Relaxed);
            }
        }
    }

    /// An active health check's result: out after `eject_after` failures
    /// in a row, back after `healthy_after` passes in a row.
    pub fn set_health(&self, b: &Backend, ok: bool) {
        if !ok {
            self.on_failure(b);
            return;
        }
        b.failures.store(0, Ordering::Relaxed);
        b.seen_up.store(true, Ordering::Relaxed);
        let n = b.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.healthy_after && !b.healthy.swap(true, Ordering::Relaxed) {
            b.ejected_until_ms.store(0, Ordering::Relaxed);
            tracing::info!(backend = %b.upstream.name, passes = n, "backend healthy again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize, tweak: impl FnOnce(&mut Config)) -> Fleet {
        let mut cfg = Config {
            upstreams: (0..n)
                .map(|i| format!("http://127.0.0.1:{}", 9000 + i))
                .collect(),
            ..Config::default()
        };
        tweak(&mut cfg);
        Fleet::new(&cfg).unwrap()
    }

    fn picks(f: &Fleet, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| {
                f.pick(0, &mut RequestInfo::default())
                    .map_or(usize::MAX, |b| b.index)
            })
            .collect()
    }

    #[test]
    fn live_tokens_follow_text_once_usage_taught_the_ratio() {
        let f = fleet(1, |_| {});
        let b = &f.backends[0];
        // nothing learned yet: one token per event
        assert_eq!(b.live_tokens(10, 400), 10);
        // a short answer teaches nothing (its text-less tokens dominate)
        b.observe_text(100, 20);
        assert_eq!(b.live_tokens(10, 400), 10);
        // 4 bytes per token: 400 bytes in 10 merged events are 100 tokens
        b.observe_text(4_000, 1_000);
        assert_eq!(b.live_tokens(10, 400), 100);
        // never below the events seen
        assert_eq!(b.live_tokens(50, 40), 50);
        // the ratio moves slowly towards new answers
        b.observe_text(8_000, 1_000);
        let t = b.live_tokens(0, 4_400);
        assert!((1_000..1_100).contains(&t), "{t}");
    }

    #[test]
    fn out_after_three_failures_back_after_two_passes() {
        let f = fleet(2, |_| {});
        let b = &f.backends[0];
        f.set_health(b, true);
        for _ in 0..2 {
            f.set_health(b, false);
            assert!(
                b.healthy.load(Ordering::Relaxed),
                "one blip is not an outage"
            );
        }
        f.set_health(b, true);
        for _ in 0..2 {
            f.set_health(b, false);
        }
        assert!(
            b.healthy.load(Ordering::Relaxed),
            "the streak started again"
        );
        f.set_health(b, false);
        assert!(!b.healthy.load(Ordering::Relaxed), "three in a row");
        f.set_health(b, true);
        assert!(!b.healthy.load(Ordering::Relaxed));
        f.set_health(b, true);
        assert!(b.healthy.load(Ordering::Relaxed), "two passes in a row");
        // connect failures count the same way
        for _ in 0..3 {
            f.on_failure(b);
        }
        assert!(!b.healthy.load(Ordering::Relaxed));
    }

    #[test]
    fn a_starting_engine_is_not_failed_and_not_preferred() {
        let f = fleet(2, |_| {});
        let (a, b) = (&f.backends[0], &f.backends[1]);
        // neither has answered yet: failed probes do not count in the grace
        for _ in 0..10 {
            f.set_health(a, false);
        }
        assert!(a.healthy.load(Ordering::Relaxed));
        // b comes up: a, still starting, gets nothing while b is up
        f.set_health(b, true);
        assert!(picks(&f, 20).iter().all(|&i| i == 1));
        f.set_health(a, true);
        let p = picks(&f, 20);
        assert!(p.contains(&0) && p.contains(&1), "{p:?}");
        // past the grace, a starting engine's failures count
        let g = fleet(1, |c| c.startup_grace_secs = 0);
        for _ in 0..3 {
            g.set_health(&g.backends[0], false);
        }
        assert!(!g.backends[0].healthy.load(Ordering::Relaxed));
    }

    #[test]
    fn below_half_healthy_routes_over_all_and_one_backend_never_refuses() {
        let one = fleet(1, |c| c.startup_grace_secs = 0);
        let b = &one.backends[0];
        for _ in 0..3 {
            one.set_health(b, false);
        }
        assert!(!b.healthy.load(Ordering::Relaxed));
        assert!(one.panics(None, None));
        assert_eq!(picks(&one, 3), [0, 0, 0], "a pool of one is never refused");
        assert_eq!(one.panicking_pools(), ["default"]);

        let three = fleet(3, |c| c.startup_grace_secs = 0);
        for b in &three.backends {
            three.set_health(b, true);
        }
        // one of three out: routed by health
        for _ in 0..3 {
            three.set_health(&three.backends[0], false);
        }
        assert!(!three.panics(None, None));
        assert!(picks(&three, 30).iter().all(|&i| i != 0));
        // two of three out: below half, every backend again
        for _ in 0..3 {
            three.set_health(&three.backends[1], false);
        }
        assert!(three.panics(None, None));
        let p = picks(&three, 60);
        assert!((0..3).all(|i| p.contains(&i)), "{p:?}");
        // with the threshold at 0 a pool still routes while any is healthy
        let strict = fleet(2, |c| {
            c.startup_grace_secs = 0;
            c.panic_threshold = 0.0;
        });
        for b in &strict.backends {
            strict.set_health(b, true);
        }
        for _ in 0..3 {
            strict.set_health(&strict.backends[0], false);
        }
        assert!(!strict.panics(None, None));
        assert!(picks(&strict, 10).iter().all(|&i| i == 1));
    }
}
