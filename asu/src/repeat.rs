//! Thinking loops: degenerate repetition in reasoning text, seen as it
//! streams.
//!
//! A looping model repeats a span of its thinking verbatim (or nearly) until
//! `max_tokens` runs out: the KV cache and the GPU time are spent, and the
//! answer never comes (vLLM issues 50166, 54906, 55420). Only something that
//! reads the stream sees it in any engine.
//!
//! The text is cut into words (runs of non-white-space ASCII; every
//! non-ASCII character is a word of its own, so text without spaces still
//! has words). For each period `p` up to `max_period_words`, the detector
//! keeps how many of the last `window_words` words equal the word `p`
//! before them. Ordinary reasoning matches at any lag only by chance (a few
//! percent, the common words); a loop of period `p` matches at lag `p`
//! everywhere. A loop is found when some period matches for at least
//! `min_match` of the window; the smallest such period is reported.
//!
//! Cost: per word, two comparisons per period, over slices of the last
//! `window + max_period` word hashes kept in order (so each comparison is a
//! plain index, and the loops vectorize); memory, 4 bytes per kept word
//! plus `SLACK` more, and 2 per period (about 1.6 KiB with the defaults),
//! allocated at the first reasoning byte of a request: a thinking stream
//! holds it for minutes.
//! The ring keeps 32 of each hash's 64 bits (folded): a false match
//! between two different words is then one in four billion, far below the
//! chance matches of common words that `min_match` already allows for.
//! Detection delay: about `p + min_match * window` words after the loop
//! starts (`docs/stragglers.md` has the measured figures).

use serde::Serialize;

/// Detector settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopConfig {
    /// Words over which the match share is taken.
    pub window_words: u16,
    /// Longest repeated span looked for, in words.
    pub max_period_words: u16,
    /// Share of the window that must match at one period (0..=1).
    pub min_match: f32,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            window_words: 160,
            max_period_words: 128,
            min_match: 0.9,
        }
    }
}

impl LoopConfig {
    /// Clamped to what the detector can use (a window and a period of at
    /// least one word, a share in (0, 1]).
    fn sane(self) -> Self {
        Self {
            window_words: self.window_words.max(1),
            max_period_words: self.max_period_words.max(1),
            min_match: if self.min_match.is_finite() {
                self.min_match.clamp(0.01, 1.0)
            } else {
                1.0
            },
        }
    }
}

/// A loop, where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LoopFound {
    /// When (ns since `t_recv`, the observer's clock).
    pub at_ns: u64,
    /// Reasoning words read when it was found.
    pub at_word: u64,
    /// Thinking tokens counted so far (one per event, as budgets count).
    pub thinking_tokens: u64,
    /// The repeated span's length in words.
    pub period_words: u32,
}

/// FNV-1a, one word at a time.
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// Free slots after the kept words: when they run out, the kept words move
/// to the front (one copy of ~1.2 KiB every `SLACK` words).
const SLACK: usize = 64;

/// The detector of one request's reasoning text (see the module docs).
#[derive(Debug)]
pub struct LoopDetector {
    window: usize,
    periods: usize,
    threshold: u16,
    /// Word hashes (folded to 32 bits), oldest first, the newest at
    /// `len - 1`; at least the last `window + periods + 1` words are kept.
    hist: Box<[u32]>,
    len: usize,
    /// `counts[p - 1]`: matches at lag `p` among the last `window` words.
    counts: Box<[u16]>,
    words: u64,
    cur: u64,
    cur_len: u32,
}

impl LoopDetector {
    pub fn new(cfg: LoopConfig) -> Self {
        let cfg = cfg.sane();
        let window = usize::from(cfg.window_words);
        let periods = usize::from(cfg.max_period_words);
        let threshold = ((f32::from(cfg.window_words) * cfg.min_match).ceil() as u16).max(1);
        Self {
            window,
            periods,
            threshold,
            hist: vec![0; window + periods + 1 + SLACK].into_boxed_slice(),
            len: 0,
            counts: vec![0; periods].into_boxed_slice(),
            words: 0,
            cur: FNV_START,
            cur_len: 0,
        }
    }

    /// Words read so far.
    pub fn words(&self) -> u64 {
        self.words
    }

    /// Read more reasoning text. Returns the period (words) of a loop as
    /// soon as one is found.
    pub fn feed(&mut self, text: &str) -> Option<u32> {
        let mut found = None;
        for ch in text.chars() {
            if ch.is_ascii_whitespace() {
                found = found.or(self.end_word());
            } else if ch.is_ascii() {
                self.cur = (self.cur ^ ch as u64).wrapping_mul(FNV_PRIME);
                self.cur_len += 1;
            } else {
                found = found.or(self.end_word());
                self.cur = (self.cur ^ ch as u64).wrapping_mul(FNV_PRIME);
                self.cur_len += 1;
                found = found.or(self.end_word());
            }
        }
        found
    }

    fn end_word(&mut self) -> Option<u32> {
        if self.cur_len == 0 {
            return None;
        }
        let h = (self.cur ^ (self.cur >> 32)) as u32;
        self.cur = FNV_START;
        self.cur_len = 0;
        // word number `t` (from 0) goes at `now`
        let t = usize::try_from(self.words).unwrap_or(usize::MAX);
        self.words += 1;
        let keep = self.window + self.periods;
        if self.len == self.hist.len() {
            self.hist.copy_within(self.len - keep.., 0);
            self.len = keep;
        }
        let now = self.len;
        self.hist[now] = h;
        self.len += 1;
        // lag `p` adds a match when word `t - p` equals word `t` (p <= t)
        let adds = self.periods.min(t);
        let recent = &self.hist[now - adds..now];
        for (count, &w) in self.counts[..adds].iter_mut().zip(recent.iter().rev()) {
            *count += u16::from(w == h);
        }
        // word `old = t - window` leaves the window: its match at lag `p`
        // (counted when it came, p <= old) goes
        if let Some(old_t) = t.checked_sub(self.window) {
            let removes = self.periods.min(old_t);
            let old = now - self.window;
            let gone = self.hist[old];
            let before = &self.hist[old - removes..old];
            for (count, &w) in self.counts[..removes].iter_mut().zip(before.iter().rev()) {
                *count -= u16::from(w == gone);
            }
        }
        self.counts[..adds]
            .iter()
            .position(|&c| c >= self.threshold)
            .map(|i| i as u32 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, seed: u64) -> Vec<String> {
        // distinct-ish words from a small LCG
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                format!("w{}", (x >> 33) % 5000)
            })
            .collect()
    }

    fn first_found(d: &mut LoopDetector, text: &[String]) -> Option<(usize, u32)> {
        for (i, w) in text.iter().enumerate() {
            if let Some(p) = d.feed(&format!("{w} ")) {
                return Some((i, p));
            }
        }
        None
    }

    #[test]
    fn a_verbatim_loop_is_found_at_its_period_after_about_a_window() {
        for period in [1usize, 7, 40, 128] {
            let mut text = words(300, 1);
            let unit = words(period, 2);
            let start = text.len();
            for _ in 0..(2000 / period + 3) {
                text.extend(unit.iter().cloned());
            }
            let mut d = LoopDetector::new(LoopConfig::default());
            let (at, p) = first_found(&mut d, &text).expect("found");
            assert_eq!(p as usize, period);
            let delay = at - start;
            // p + ceil(0.9 * 160) = p + 144 words, give or take chance matches
            assert!(
                delay <= period + 144 && delay + 10 >= period + 144,
                "period {period}: delay {delay}"
            );
        }
    }

    #[test]
    fn ordinary_text_is_not_a_loop() {
        let mut d = LoopDetector::new(LoopConfig::default());
        assert_eq!(first_found(&mut d, &words(50_000, 3)), None);
        // a counted list repeats its frame but not its numbers
        let list: Vec<String> = (0..3000)
            .flat_map(|i| {
                [
                    "x".to_string(),
                    "=".to_string(),
                    format!("{i}:"),
                    "no.".to_string(),
                ]
            })
            .collect();
        let mut d = LoopDetector::new(LoopConfig::default());
        assert_eq!(first_found(&mut d, &list), None);
    }

    #[test]
    fn a_loop_with_a_changed_word_now_and_then_is_still_found() {
        let unit = words(30, 4);
        let mut text = words(200, 5);
        for k in 0..40 {
            let mut u = unit.clone();
            u[k % 30] = format!("changed{k}");
            text.extend(u);
        }
        let mut d = LoopDetector::new(LoopConfig::default());
        assert_eq!(first_found(&mut d, &text).map(|f| f.1), Some(30));
    }

    #[test]
    fn words_split_across_deltas_and_text_without_spaces_are_read_alike() {
        let unit = "思考一下这个问题。";
        let text: String = unit.repeat(100);
        let mut whole = LoopDetector::new(LoopConfig::default());
        let a = whole.feed(&text);
        let mut split = LoopDetector::new(LoopConfig::default());
        let mut b = None;
        for c in text.chars() {
            b = b.or(split.feed(&c.to_string()));
        }
        assert_eq!(a, Some(9));
        assert_eq!(a, b);
        let latin = "wait let me reconsider the sum ".repeat(60);
        let mut one = LoopDetector::new(LoopConfig::default());
        let mut bytes = LoopDetector::new(LoopConfig::default());
        let x = one.feed(&latin);
        let mut y = None;
        for piece in latin.as_bytes().chunks(3) {
            y = y.or(bytes.feed(std::str::from_utf8(piece).unwrap()));
        }
        assert_eq!(x, Some(6));
        assert_eq!(x, y);
    }

    /// The detector as first written: a ring indexed modulo its length,
    /// every lag checked with its own conditions. The kept-in-order
    /// version must agree with it word for word.
    struct Reference {
        window: u64,
        threshold: u16,
        ring: Vec<u32>,
        counts: Vec<u16>,
        words: u64,
    }

    impl Reference {
        fn new(cfg: LoopConfig) -> Self {
            let cfg = cfg.sane();
            let periods = usize::from(cfg.max_period_words);
            Self {
                window: u64::from(cfg.window_words),
                threshold: ((f32::from(cfg.window_words) * cfg.min_match).ceil() as u16).max(1),
                ring: vec![0; usize::from(cfg.window_words) + periods + 1],
                counts: vec![0; periods],
                words: 0,
            }
        }

        fn word(&mut self, h: u32) -> Option<u32> {
            let r = self.ring.len() as u64;
            let t = self.words;
            self.words += 1;
            let at = |pos: u64| (pos % r) as usize;
            self.ring[at(t)] = h;
            let mut found = None;
            for (i, count) in self.counts.iter_mut().enumerate() {
                let p = i as u64 + 1;
                if t < p {
                    break;
                }
                if self.ring[at(t - p)] == h {
                    *count += 1;
                }
                if t >= self.window + p {
                    let old = t - self.window;
                    if self.ring[at(old)] == self.ring[at(old - p)] {
                        *count -= 1;
                    }
                }
                if found.is_none() && *count >= self.threshold {
                    found = Some(p as u32);
                }
            }
            found
        }
    }

    fn hash(word: &str) -> u32 {
        let mut d = LoopDetector::new(LoopConfig::default());
        let _ = d.feed(word);
        let cur = d.cur;
        (cur ^ (cur >> 32)) as u32
    }

    #[test]
    fn agrees_with_the_ring_it_replaced_word_for_word() {
        let mut x = 99u64;
        let mut next = move |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        for round in 0..40 {
            let cfg = LoopConfig {
                window_words: 1 + next(200) as u16,
                max_period_words: 1 + next(150) as u16,
                min_match: 0.5 + next(50) as f32 / 100.0,
            };
            // ordinary words, loops of a few periods, words from a small
            // vocabulary (many chance matches), and back again
            let mut text: Vec<String> = Vec::new();
            while text.len() < 3000 {
                match next(3) {
                    0 => text.extend((0..next(400)).map(|_| format!("w{}", next(5000)))),
                    1 => {
                        let unit: Vec<String> = (0..1 + next(160))
                            .map(|_| format!("u{}", next(5000)))
                            .collect();
                        for _ in 0..1 + next(8) {
                            text.extend(unit.iter().cloned());
                        }
                    }
                    _ => text.extend((0..next(300)).map(|_| format!("v{}", next(4)))),
                }
            }
            let mut d = LoopDetector::new(cfg);
            let mut r = Reference::new(cfg);
            for (i, w) in text.iter().enumerate() {
                let got = d.feed(&format!("{w} "));
                let want = r.word(hash(w));
                assert_eq!(got, want, "round {round} {cfg:?}: word {i}");
                assert_eq!(&d.counts[..], &r.counts[..], "round {round}: word {i}");
            }
        }
    }

    #[test]
    fn silly_settings_are_clamped_not_trusted() {
        for cfg in [
            LoopConfig {
                window_words: 0,
                max_period_words: 0,
                min_match: f32::NAN,
            },
            LoopConfig {
                window_words: 1,
                max_period_words: 1,
                min_match: 5.0,
            },
            LoopConfig {
                window_words: 65535,
                max_period_words: 65535,
                min_match: -1.0,
            },
        ] {
            let mut d = LoopDetector::new(cfg);
            let _ = d.feed(&"a b ".repeat(100));
        }
    }
}
