//! What the simulated model "does" with a prompt: its difficulty, how long it
//! thinks, how long it answers, whether the answer is right, and the text of
//! every token. Everything is drawn from `(seed, request)` so a run is
//! reproducible.

use crate::config::WorkloadConfig;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Difficulty {
    Easy,
    Medium,
    Hard,
}

impl Difficulty {
    fn index(self) -> usize {
        match self {
            Difficulty::Easy => 0,
            Difficulty::Medium => 1,
            Difficulty::Hard => 2,
        }
    }
}

/// FNV-1a: a stable hash (the same on every platform and Rust version), so
/// seeds and prefix-cache keys do not change between builds.
pub fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A `difficulty: easy|medium|hard` marker (or a dataset tag `[hard]`) in
/// the prompt: a test's way to force a class. Benchmarks send no marker.
fn marker(prompt: &str) -> Option<Difficulty> {
    let lower = prompt.to_ascii_lowercase();
    [
        ("hard", Difficulty::Hard),
        ("medium", Difficulty::Medium),
        ("easy", Difficulty::Easy),
    ]
    .into_iter()
    .find(|(word, _)| {
        lower.contains(&format!("difficulty: {word}")) || lower.contains(&format!("[{word}]"))
    })
    .map(|(_, d)| d)
}

/// What a real model's thinking length responds to, read from the problem
/// text alone: how many operations, how large the numbers, how long the
/// statement, and the domain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProblemFeatures {
    pub operations: u32,
    pub largest_digits: u32,
    pub words: u32,
    pub hard_domain: bool,
}

/// Words of domains that make models think longer than the arithmetic
/// alone suggests (proofs, counting, probability, geometry).
const HARD_DOMAINS: &[&str] = &[
    "prove",
    "probability",
    "how many ways",
    "triangle",
    "remainder",
    "integer solutions",
];

impl ProblemFeatures {
    pub fn of(problem: &str) -> Self {
        let b = problem.as_bytes();
        let (mut operations, mut largest, mut run) = (0u32, 0u32, 0u32);
        let mut prev = b' ';
        for &c in b {
            if c.is_ascii_digit() {
                run += 1;
                largest = largest.max(run);
            } else {
                run = 0;
            }
            // an operator after an operand (so "-3" and hyphens in words do not count)
            if matches!(c, b'+' | b'-' | b'*' | b'/' | b'^')
                && (prev.is_ascii_digit() || prev == b')')
            {
                operations += 1;
            }
            if c != b' ' {
                prev = c;
            }
        }
        let lower = problem.to_ascii_lowercase();
        Self {
            operations,
            largest_digits: largest,
            words: problem.split_whitespace().count() as u32,
            hard_domain: HARD_DOMAINS.iter().any(|w| lower.contains(w)),
        }
    }

    /// The problem's load: about 1.1 for "a + b" with two-digit numbers, 1.9
    /// for "(a * b) + c", 3.4 for "(a * b - c) * d - e" (the built-in
    /// classes' typical shapes, with the default template's instruction).
    pub fn load(&self) -> f64 {
        0.6 * f64::from(self.operations.min(8))
            + 0.25 * f64::from(self.largest_digits.clamp(1, 12) - 1)
            + 0.2 * (1.0 + f64::from(self.words) / 8.0).ln()
            + if self.hard_domain { 0.4 } else { 0.0 }
    }
}

/// Loads of the three anchor shapes (see [`ProblemFeatures::load`]).
const ANCHORS: [f64; 3] = [1.08, 1.94, 3.40];

/// The problem's class (for accuracy) and the log of its median thinking
/// length: the configured medians at the anchor loads, interpolated in log
/// space between them and extended (boundedly) beyond. Equal medians give
/// every prompt the same length, as tests want.
pub fn difficulty_of(problem: &str, cfg: &WorkloadConfig) -> (Difficulty, f64) {
    let ln = |i: usize| cfg.think_median[i].max(1.0).ln();
    if let Some(d) = marker(problem) {
        return (d, ln(d.index()));
    }
    let r = ProblemFeatures::of(problem)
        .load()
        .clamp(ANCHORS[0] - 1.0, ANCHORS[2] + 1.5);
    let (i, j) = if r < ANCHORS[1] { (0, 1) } else { (1, 2) };
    let slope = (ln(j) - ln(i)) / (ANCHORS[j] - ANCHORS[i]);
    let mu = ln(i) + (r - ANCHORS[i]) * slope;
    let class = if r < (ANCHORS[0] + ANCHORS[1]) / 2.0 {
        Difficulty::Easy
    } else if r < (ANCHORS[1] + ANCHORS[2]) / 2.0 {
        Difficulty::Medium
    } else {
        Difficulty::Hard
    };
    (class, mu)
}

/// The problem's class (see [`difficulty_of`]).
pub fn difficulty(problem: &str, cfg: &WorkloadConfig) -> Difficulty {
    difficulty_of(problem, cfg).0
}

/// How a request's settings scale thinking: `reasoning_effort` (gpt-oss's
/// low / medium / high differ by several times) and a system prompt that
/// asks for brevity or for thoroughness.
pub fn effort_scale(system: &str, effort: Option<&str>) -> f64 {
    let by_effort = match effort {
        Some("minimal") => 0.15,
        Some("low") => 0.3,
        Some("high") => 2.0,
        _ => 1.0,
    };
    let lower = system.to_ascii_lowercase();
    let by_system = if ["concise", "brief", "number only"]
        .iter()
        .any(|w| lower.contains(w))
    {
        0.5
    } else if ["thorough", "as long as you need"]
        .iter()
        .any(|w| lower.contains(w))
    {
        1.5
    } else {
        1.0
    };
    by_effort * by_system
}

/// The reference answer of a prompt: the value of the first integer
/// arithmetic expression in it (`+ - * /`, parentheses), else a number drawn
/// from the prompt's hash.
pub fn reference_answer(prompt: &str) -> i128 {
    let b = prompt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() || b[i] == b'(' {
            let mut p = Expr { b, i };
            if let Some(v) = p.sum() {
                // Require at least one operator so a lone number ("Q3") does not count.
                let text = &prompt[i..p.i];
                if text.contains(['+', '-', '*', '/']) {
                    return v;
                }
            }
        }
        i += 1;
    }
    (fnv1a(prompt.as_bytes(), 11) % 1000) as i128
}

struct Expr<'a> {
    b: &'a [u8],
    i: usize,
}

impl Expr<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i] == b' ' {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }
    fn sum(&mut self) -> Option<i128> {
        let mut v = self.product()?;
        loop {
            let save = self.i;
            match self.peek() {
                Some(b'+') | Some(b'-') => {
                    let op = self.b[self.i];
                    self.i += 1;
                    let Some(r) = self.product() else {
                        self.i = save;
                        return Some(v);
                    };
                    v = if op == b'+' {
                        v.checked_add(r)?
                    } else {
                        v.checked_sub(r)?
                    };
                }
                _ => return Some(v),
            }
        }
    }
    fn product(&mut self) -> Option<i128> {
        let mut v = self.atom()?;
        loop {
            let save = self.i;
            match self.peek() {
                Some(b'*') | Some(b'/') => {
                    let op = self.b[self.i];
                    self.i += 1;
                    let Some(r) = self.atom() else {
                        self.i = save;
                        return Some(v);
                    };
                    v = if op == b'*' {
                        v.checked_mul(r)?
                    } else {
                        v.checked_div(r)?
                    };
                }
                _ => return Some(v),
            }
        }
    }
    fn atom(&mut self) -> Option<i128> {
        match self.peek()? {
            b'(' => {
                self.i += 1;
                let v = self.sum()?;
                (self.peek()? == b')').then(|| self.i += 1)?;
                Some(v)
            }
            c if c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.b.len()
                    && self.b[self.i].is_ascii_digit()
                    && self.i - start < 30
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.b[start..self.i])
                    .ok()?
                    .parse()
                    .ok()
            }
            _ => None,
        }
    }
}

/// The model's behaviour for one choice of one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub difficulty: Difficulty,
    /// Thinking tokens the model would spend if nothing stopped it.
    pub natural_think: u64,
    /// Thinking tokens still to generate in this request (0 when a
    /// continuation closed thinking already).
    pub think: u64,
    /// Visible answer tokens (>= 6: filler, then "The answer is \boxed{N}.").
    pub answer: u64,
    /// Whether the final answer is right.
    pub correct: bool,
    /// The number the answer states.
    pub stated: i128,
    /// Seed of this choice's token text.
    pub text_seed: u64,
    /// A looping request: (first repeated word, period in words).
    pub looping: Option<(u64, u64)>,
}

impl Plan {
    /// Text of thinking word `k`; a looping plan repeats itself.
    pub fn think_word(&self, k: u64) -> &'static str {
        let k = match self.looping {
            Some((from, period)) if k >= from + period => from + (k - from) % period.max(1),
            _ => k,
        };
        think_word(self.text_seed, k)
    }
}

/// Accuracy after `spent` thinking tokens, for a request whose natural
/// thinking length is `natural`: rises with thinking (the model needs about
/// half its natural length to find the answer), saturates, and dips past the
/// overthinking point.
pub fn accuracy(cfg: &WorkloadConfig, d: Difficulty, natural: u64, spent: u64) -> f64 {
    let need = (natural as f64 * 0.5).max(1.0);
    let sat = |x: f64| 1.0 - (-3.0 * x).exp();
    let found = (sat(spent as f64 / need) / sat(2.0)).min(1.0);
    let over =
        ((spent as f64 - cfg.overthink_tokens) / (3.0 * cfg.overthink_tokens)).clamp(0.0, 1.0);
    cfg.accuracy[d.index()] * found * (1.0 - cfg.overthink_dip * over)
}

/// One request as the model sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// The whole prompt (every message): seeds the draws, so the same
    /// question in another context is another sample.
    pub prompt: &'a str,
    /// The question being answered: the last user message (the whole prompt
    /// on `/v1/completions`).
    pub problem: &'a str,
    /// The system prompt, if any.
    pub system: &'a str,
    /// `reasoning_effort` as sent.
    pub effort: Option<&'a str>,
    pub choice: u32,
    /// Sampling salt (seed, temperature).
    pub salt: u64,
    pub thinking_enabled: bool,
    /// Thinking tokens in a continued assistant message, with `closed` when
    /// that message already ended thinking.
    pub already_thought: u64,
    pub closed: bool,
    /// An engine-enforced thinking budget (vLLM `thinking_token_budget`),
    /// which ends thinking early as the sampler would.
    pub budget: Option<u64>,
}

/// Draw the plan of one choice of a request.
pub fn plan(cfg: &WorkloadConfig, seed: u64, ask: &Ask<'_>) -> Plan {
    let (d, mu) = difficulty_of(ask.problem, cfg);
    let base = fnv1a(ask.prompt.as_bytes(), seed)
        ^ u64::from(ask.choice).wrapping_mul(0x9E37_79B9)
        ^ ask.salt;
    let mut rng = rand::rngs::StdRng::seed_from_u64(base);
    let i = d.index();
    let median = mu.exp() * effort_scale(ask.system, ask.effort);
    let ln = |median: f64, sigma: f64| LogNormal::new(median.max(1.0).ln(), sigma.max(1e-6)).ok();
    let natural = ln(median, cfg.think_sigma[i])
        .map(|dist| dist.sample(&mut rng))
        .unwrap_or(median)
        .clamp(16.0, cfg.think_max as f64) as u64;
    // (a hash of its own, so a loop rate leaves every other draw as it was)
    let looping = (cfg.loop_rate > 0.0
        && ((fnv1a(b"loop", base) % 1_000_000) as f64) < cfg.loop_rate * 1e6)
        .then_some((cfg.loop_after, cfg.loop_period.max(1)));
    // a loop never closes its thinking by itself
    let natural = if looping.is_some() {
        cfg.think_max
    } else {
        natural
    };
    let answer = ln(cfg.answer_median, cfg.answer_sigma)
        .map(|dist| dist.sample(&mut rng))
        .unwrap_or(cfg.answer_median)
        .clamp(6.0, 4096.0) as u64;
    let u: f64 = rng.random();
    let (spent, think) = if !ask.thinking_enabled {
        (0, 0)
    } else if ask.closed {
        (ask.already_thought, 0)
    } else {
        let reach = natural.min(ask.budget.unwrap_or(u64::MAX));
        (
            reach.max(ask.already_thought),
            reach.saturating_sub(ask.already_thought),
        )
    };
    let p = if ask.thinking_enabled {
        accuracy(cfg, d, natural, spent)
    } else {
        // Without thinking a reasoning model still answers easy items.
        accuracy(cfg, d, natural, natural / 8)
    };
    let correct = u < p;
    let truth = reference_answer(ask.problem);
    let stated = if correct {
        truth
    } else {
        let off: i128 = rng.random_range(1..=9);
        truth + if rng.random::<bool>() { off } else { -off }
    };
    Plan {
        difficulty: d,
        natural_think: natural,
        think,
        answer,
        correct,
        stated,
        text_seed: rng.random(),
        looping,
    }
}

const WORDS: &[&str] = &[
    " Let",
    " me",
    " think",
    " about",
    " this",
    " step",
    " by",
    " step",
    ".",
    " First",
    ",",
    " we",
    " need",
    " to",
    " compute",
    " the",
    " value",
    " carefully",
    " Then",
    " check",
    " it",
    " again",
    " Wait",
    " that",
    " is",
    " not",
    " right",
    " so",
    " recompute",
    " using",
    " another",
    " approach",
    " multiply",
    " add",
    " subtract",
    " result",
    " equals",
    " verify",
    " Hmm",
    " okay",
    " which",
    " gives",
    " number",
    " term",
    " sum",
    " product",
    " and",
    " so",
    " on",
    " then",
    " final",
    " check",
    " looks",
    " good",
    " now",
    " write",
    " down",
    " answer",
    " carry",
    " digit",
    " one",
    " two",
    " three",
    " four",
];

/// Text of thinking word `k` (0-based) of a choice.
pub fn think_word(seed: u64, k: u64) -> &'static str {
    // FNV's low bits depend only on the input's low bits: `h % 64` repeated
    // every 64 tokens, a thinking loop the loop detector found at once.
    // The high bits, mixed (murmur3's finalizer), depend on all of `k`.
    let mut h = fnv1a(&k.to_le_bytes(), seed);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    WORDS[(h % WORDS.len() as u64) as usize]
}

/// Text of answer token `k` of `n`, ending in "The answer is \boxed{N}.".
pub fn answer_token(seed: u64, k: u64, n: u64, stated: i128) -> std::borrow::Cow<'static, str> {
    let tail = n.saturating_sub(k);
    match tail {
        5 => " The".into(),
        4 => " answer".into(),
        3 => " is".into(),
        2 => format!(" \\boxed{{{stated}}}").into(),
        1 => ".".into(),
        _ => think_word(seed ^ 0xA5A5, k).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_answers() {
        assert_eq!(
            reference_answer("Compute (12 + 3) * 4 - 6. Put the answer in \\boxed{}."),
            54
        );
        assert_eq!(reference_answer("Q3: compute 7 * 8"), 56);
        assert_eq!(reference_answer("What is 100 / 7 + 1?"), 15);
        let r = reference_answer("no numbers here");
        assert!((0..1000).contains(&r));
    }

    #[test]
    fn difficulty_markers_and_determinism() {
        let c = WorkloadConfig::default();
        assert_eq!(
            difficulty("difficulty: hard. Compute 1+1", &c),
            Difficulty::Hard
        );
        assert_eq!(difficulty("[easy] Compute 1+1", &c), Difficulty::Easy);
        let ask = Ask {
            prompt: "Compute 2+2",
            problem: "Compute 2+2",
            thinking_enabled: true,
            ..Ask::default()
        };
        let a = plan(&c, 1, &ask);
        let b = plan(&c, 1, &ask);
        assert_eq!(
            (a.natural_think, a.answer, a.correct, a.stated),
            (b.natural_think, b.answer, b.correct, b.stated)
        );
    }

    #[test]
    fn accuracy_rises_saturates_and_dips() {
        let c = WorkloadConfig::default();
        let d = Difficulty::Hard;
        let natural = 20_000;
        let a1 = accuracy(&c, d, natural, 1_000);
        let a2 = accuracy(&c, d, natural, 8_000);
        let a3 = accuracy(&c, d, natural, 20_000);
        assert!(a1 < a2, "{a1} {a2}");
        assert!(a3 < c.accuracy[2], "overthinking dips: {a3}");
        let easy = accuracy(&c, Difficulty::Easy, 400, 400);
        assert!((easy - 0.95).abs() < 0.01);
    }
}
