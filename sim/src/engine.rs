//! The engine model: continuous batching over a paged KV cache, as vLLM's V1
//! scheduler does it, in one task that owns all state (no locks).
//!
//! Each step: drop aborted sequences (their client went away) and free their
//! blocks; admit waiting sequences in FIFO order while a slot, the prefill
//! token budget and free blocks allow; give every running sequence the block
//! its next token needs, preempting the newest running sequence when the cache
//! is full (it returns to the head of the queue and is recomputed later);
//! take `base + per_seq * running + per_prefill_token * prefill_tokens`
//! milliseconds (divided by the time scale); emit one token per running
//! sequence. Engines started on one [`Host`] share its compute: each step
//! takes as many times longer as engines of the host are busy.

use crate::config::EngineConfig;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine tells a request's HTTP handler.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// Choice `choice` produced its next token.
    Token { choice: u32 },
    /// Choice `choice` is done.
    Finished { choice: u32, reason: Finish },
}

/// One sequence (one choice of a request) submitted to the engine.
#[derive(Debug)]
pub struct SeqSpec {
    pub choice: u32,
    pub prompt_tokens: u32,
    /// Chained hashes of the prompt's full blocks (prefix cache keys).
    pub block_hashes: Arc<[u64]>,
    /// Tokens to generate before finishing with `finish`.
    pub target: u32,
    pub finish: Finish,
}

/// A request: its sequences and where their events go.
#[derive(Debug)]
pub struct Submit {
    pub seqs: Vec<SeqSpec>,
    pub events: mpsc::UnboundedSender<Event>,
    pub arrival: Instant,
}

#[derive(Debug)]
struct Seq {
    spec: SeqSpec,
    events: mpsc::UnboundedSender<Event>,
    arrival: Instant,
    generated: u32,
    blocks: usize,
}

impl Seq {
    fn tokens(&self) -> usize {
        self.spec.prompt_tokens as usize + self.generated as usize
    }
}

/// Fixed-bucket histogram updated with atomics (the sim formats its own
/// `/metrics`, so it can share a process with the gateway's recorder).
#[derive(Debug)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub counts: Vec<AtomicU64>,
    pub sum_micros: AtomicU64,
    pub count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            if let Some(c) = self.counts.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

pub const LATENCY_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
    1280.0,
];

/// Engine state other tasks read (`/metrics`, tests).
#[derive(Debug)]
pub struct Stats {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub used_blocks: AtomicU64,
    pub num_blocks: u64,
    pub preemptions: AtomicU64,
    pub aborted: AtomicU64,
    pub finished: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub prefix_queries: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub steps: AtomicU64,
    pub ttft: Histogram,
    pub e2e: Histogram,
}

impl Stats {
    fn new(num_blocks: usize) -> Self {
        Self {
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            used_blocks: AtomicU64::new(0),
            num_blocks: num_blocks as u64,
            preemptions: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY_BOUNDS),
            e2e: Histogram::new(LATENCY_BOUNDS),
        }
    }

    /// KV-cache usage, 0..1.
    pub fn kv_usage(&self) -> f64 {
        self.used_blocks.load(Ordering::Relaxed) as f64 / self.num_blocks.max(1) as f64
    }
}

/// Compute that several engines share: CPU engines on one machine. Three
/// vLLM CPU servers on two cores (`scripts/vllm-steps.py`) make as many
/// tokens a second in all when three are busy as one does alone at the same
/// batch: they take turns on the cores, so a busy engine slows every other
/// one, which engines on GPUs of their own never do.
#[derive(Debug, Default)]
pub struct Host {
    busy: AtomicUsize,
}

impl Host {
    /// Engines of this host with sequences running.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }
}

/// Handle to a running engine.
#[derive(Debug, Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Submit>,
    pub stats: Arc<Stats>,
    pub block_size: usize,
}

impl Engine {
    /// Start the engine task, on compute of its own or on a shared `host`.
    pub fn start(cfg: EngineConfig, time_scale: f64, host: Option<Arc<Host>>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::new(cfg.num_blocks));
        let block_size = cfg.block_size;
        let core = Core {
            free_blocks: cfg.num_blocks,
            cfg,
            time_scale,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefix: PrefixCache::default(),
            stats: Arc::clone(&stats),
            host: host.map(|h| Busy { host: h, on: false }),
        };
        tokio::spawn(core.run(rx));
        Self {
            tx,
            stats,
            block_size,
        }
    }

    /// Queue a request. Fails only if the engine task is gone.
    pub fn submit(&self, s: Submit) -> bool {
        self.tx.send(s).is_ok()
    }
}

/// Prompt-block hashes seen recently (bounded FIFO).
#[derive(Debug, Default)]
struct PrefixCache {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl PrefixCache {
    /// Number of leading blocks already cached; records all of them.
    fn lookup_insert(&mut self, hashes: &[u64], cap: usize) -> usize {
        let hit = hashes.iter().take_while(|h| self.set.contains(h)).count();
        for h in &hashes[hit..] {
            if self.set.insert(*h) {
                self.order.push_back(*h);
            }
        }
        while self.order.len() > cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        hit
    }
}

struct Core {
    cfg: EngineConfig,
    time_scale: f64,
    free_blocks: usize,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    prefix: PrefixCache,
    stats: Arc<Stats>,
    host: Option<Busy>,
}

/// This engine's share of a host: counted busy while it runs sequences.
struct Busy {
    host: Arc<Host>,
    on: bool,
}

impl Busy {
    /// Mark the engine busy or idle; the host's busy engines after it.
    fn set(&mut self, on: bool) -> usize {
        if on != self.on {
            self.on = on;
            if on {
                self.host.busy.fetch_add(1, Ordering::Relaxed);
            } else {
                self.host.busy.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.host.busy().max(1)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set(false);
    }
}

impl Core {
    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.cfg.block_size)
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Submit>) {
        let mut clock = Instant::now();
        loop {
            // Intake: block when idle, otherwise take what has arrived.
            if self.running.is_empty() && self.waiting.is_empty() {
                self.share(false);
                match rx.recv().await {
                    Some(s) => self.enqueue(s),
                    None => return,
                }
                clock = Instant::now();
            }
            while let Ok(s) = rx.try_recv() {
                self.enqueue(s);
            }
            self.drop_aborted();
            let prefill = self.admit();
            self.grow_or_preempt();
            self.publish();
            if self.running.is_empty() {
                // Nothing fits (e.g. a prompt larger than the whole cache was
                // refused at admission): wait for more work.
                self.share(false);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let sharing = self.share(true) as f64;
            let ms = sharing
                * (self.cfg.step_base_ms
                    + self.cfg.step_per_seq_ms * self.running.len() as f64
                    + self.cfg.step_per_prefill_token_ms * prefill as f64);
            clock += Duration::from_secs_f64(ms / 1000.0 / self.time_scale);
            let now = Instant::now();
            if clock > now {
                tokio::time::sleep_until(clock.into()).await;
            } else {
                if now.duration_since(clock) > Duration::from_millis(50) {
                    // The host cannot keep up with this time scale: do not
                    // try to catch up a backlog in a burst.
                    clock = now;
                }
                tokio::task::yield_now().await;
            }
            self.emit();
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Mark this engine busy or idle on its host; how many engines share
    /// the host's compute now (1 on compute of its own).
    fn share(&mut self, busy: bool) -> usize {
        self.host.as_mut().map_or(1, |b| b.set(busy))
    }

    fn enqueue(&mut self, s: Submit) {
        for spec in s.seqs {
            self.waiting.push_back(Seq {
                spec,
                events: s.events.clone(),
                arrival: s.arrival,
                generated: 0,
                blocks: 0,
            });
        }
    }

    fn free(&mut self, blocks: usize) {
        self.free_blocks = (self.free_blocks + blocks).min(self.cfg.num_blocks);
    }

    /// A closed event channel means the client went away: abort at once.
    fn drop_aborted(&mut self) {
        let mut freed = 0;
        let mut aborted = 0;
        self.running.retain(|s| {
            let gone = s.events.is_closed();
            if gone {
                freed += s.blocks;
                aborted += 1;
            }
            !gone
        });
        self.waiting.retain(|s| {
            let gone = s.events.is_closed();
            if gone {
                freed += s.blocks;
                aborted += 1;
            }
            !gone
        });
        self.free(freed);
        self.stats.aborted.fetch_add(aborted, Ordering::Relaxed);
    }

    /// FIFO admission; returns the prefill tokens of this step.
    fn admit(&mut self) -> usize {
        let mut prefill = 0;
        while self.running.len() < self.cfg.max_num_seqs {
            let Some(head) = self.waiting.front() else {
                break;
            };
            let tokens = head.tokens();
            let need = self.blocks_for(tokens + 1);
            if need > self.cfg.num_blocks {
                // Can never fit: finish it at once rather than block the queue.
                if let Some(s) = self.waiting.pop_front() {
                    let _ = s.events.send(Event::Finished {
                        choice: s.spec.choice,
                        reason: Finish::Length,
                    });
                }
                continue;
            }
            let hit_blocks = if self.cfg.prefix_cache && head.generated == 0 {
                let hashes = Arc::clone(&head.spec.block_hashes);
                self.prefix.lookup_insert(&hashes, self.cfg.num_blocks)
            } else {
                0
            };
            let compute = tokens
                .saturating_sub(hit_blocks * self.cfg.block_size)
                .max(1);
            if prefill > 0 && prefill + compute > self.cfg.max_num_batched_tokens {
                break;
            }
            if need > self.free_blocks {
                break;
            }
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            self.free_blocks -= need;
            s.blocks = need;
            if s.generated == 0 {
                self.stats
                    .prompt_tokens
                    .fetch_add(u64::from(s.spec.prompt_tokens), Ordering::Relaxed);
                if self.cfg.prefix_cache {
                    self.stats
                        .prefix_queries
                        .fetch_add(u64::from(s.spec.prompt_tokens), Ordering::Relaxed);
                    self.stats
                        .prefix_hits
                        .fetch_add((hit_blocks * self.cfg.block_size) as u64, Ordering::Relaxed);
                }
            }
            prefill += compute;
            self.running.push(s);
        }
        prefill
    }

    /// Every running sequence needs room for its next token; when the cache
    /// is full, preempt the newest sequence (vLLM's recompute preemption).
    fn grow_or_preempt(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let need = self.blocks_for(self.running[i].tokens() + 1);
            if need <= self.running[i].blocks {
                i += 1;
                continue;
            }
            if self.free_blocks > 0 {
                self.free_blocks -= 1;
                self.running[i].blocks += 1;
                i += 1;
                continue;
            }
            // Preempt from the back; this may be sequence i itself.
            let Some(mut victim) = self.running.pop() else {
                break;
            };
            self.free(victim.blocks);
            victim.blocks = 0;
            self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
            self.waiting.push_front(victim);
        }
    }

    fn emit(&mut self) {
        let now = Instant::now();
        let mut freed = 0;
        let mut done = 0u64;
        let n = self.running.len() as u64;
        let stats = Arc::clone(&self.stats);
        self.running.retain_mut(|s| {
            if s.generated == 0 {
                stats
                    .ttft
                    .observe(now.duration_since(s.arrival).as_secs_f64());
            }
            s.generated += 1;
            let _ = s.events.send(Event::Token {
                choice: s.spec.choice,
            });
            if s.generated >= s.spec.target {
                let _ = s.events.send(Event::Finished {
                    choice: s.spec.choice,
                    reason: s.spec.finish,
                });
                stats
                    .e2e
                    .observe(now.duration_since(s.arrival).as_secs_f64());
                freed += s.blocks;
                done += 1;
                false
            } else {
                true
            }
        });
        self.free(freed);
        self.stats.generation_tokens.fetch_add(n, Ordering::Relaxed);
        self.stats.finished.fetch_add(done, Ordering::Relaxed);
        self.publish();
    }

    fn publish(&self) {
        let s = &self.stats;
        s.running
            .store(self.running.len() as u64, Ordering::Relaxed);
        s.waiting
            .store(self.waiting.len() as u64, Ordering::Relaxed);
        s.used_blocks.store(
            (self.cfg.num_blocks - self.free_blocks) as u64,
            Ordering::Relaxed,
        );
    }
}
