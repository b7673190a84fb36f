//! Every knob of the simulated engine, with the defaults and where they come
//! from. All of them can be set in a TOML file (`--config`) and most by flag.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Which engine's wire format and metric names to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Vllm,
    Sglang,
    Llamacpp,
}

/// How the model's thinking appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReasoningMode {
    /// A reasoning parser is on: `delta.reasoning` (vLLM >= 0.11) or
    /// `delta.reasoning_content` (SGLang, llama.cpp).
    Field,
    /// `delta.reasoning_content` whatever the flavour (vLLM < 0.16).
    FieldLegacy,
    /// No parser: `<think>...</think>` inline in content.
    Tags,
    /// No parser, DeepSeek-R1 form: no opening tag, only `</think>`.
    TagsNoOpen,
    /// A plain model: no thinking at all.
    None,
}

/// The engine's cost and capacity model.
///
/// Defaults are calibrated to a 7B model (DeepSeek-R1-Distill-Qwen-7B: 28
/// layers, 4 KV heads of dim 128, bf16) on one 80 GB H100-class GPU:
/// - `step_base_ms = 6`: a decode step at batch 1 reads ~15 GB of weights
///   at ~3.3 TB/s (4.5 ms) plus scheduling and sampling overhead;
/// - `step_per_seq_ms = 0.08`: decode at batch 256 runs at ~25-30 ms per
///   step as attention and KV reads grow with the batch;
/// - `step_per_prefill_token_ms = 0.035`: ~14 GFLOP per prompt token at
///   ~400 TFLOP/s effective is ~28k prefill tokens/s;
/// - `num_blocks = 56_000` of 16 tokens: 57,344 bytes of KV per token
///   (2 x 28 x 4 x 128 x 2 B); 0.9 x 80 GB minus 15 GB of weights and ~4 GB
///   of activations leaves ~52 GB, ~900k tokens;
/// - `max_num_seqs = 256`, `max_num_batched_tokens = 8192`: vLLM's defaults.
///
/// These are estimates from the hardware's published figures, not
/// measurements of a GPU; set them from your own engine's `/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub step_base_ms: f64,
    pub step_per_seq_ms: f64,
    pub step_per_prefill_token_ms: f64,
    /// Cache full prompt blocks by hash and skip their prefill (hits are
    /// counted; cached blocks are not shared in memory in this model).
    pub prefix_cache: bool,
    /// Longest prompt + output (tokens) a request may ask for.
    pub max_model_len: usize,
    /// Prompt bytes per token: 4 for the usual BPE vocabularies on English;
    /// about 1 for a tokenizer that knows few of the prompt's words (the
    /// real-engine tests' tiny model), whose prompts take four times the
    /// prefill and KV cache.
    pub bytes_per_token: f64,
    /// Tokens per streamed event (vLLM's `--stream-interval`): above 1,
    /// consecutive tokens of one choice and channel go out as one event, as
    /// vLLM's API server also merges them when it falls behind under load.
    pub stream_interval: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            block_size: 16,
            num_blocks: 56_000,
            step_base_ms: 6.0,
            step_per_seq_ms: 0.08,
            step_per_prefill_token_ms: 0.035,
            prefix_cache: false,
            max_model_len: 131_072,
            bytes_per_token: 4.0,
            stream_interval: 1,
        }
    }
}

/// What the simulated model does with a prompt.
///
/// Thinking lengths are log-normal around a median that follows the
/// problem's own features (operations, size of the numbers, length of the
/// statement, domain; see `workload::difficulty_of`), scaled by the
/// request's reasoning effort and system prompt, with a heavy right tail as
/// the study's runtime distributions. The medians at the three anchor shapes
/// follow its finding that easy problems need hundreds of thinking tokens,
/// hard ones thousands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Median thinking tokens at the easy / medium / hard anchor shapes
    /// ("a + b", "(a * b) + c", "(a * b - c) * d - e"); equal values give
    /// every prompt the same median.
    pub think_median: [f64; 3],
    /// Log-normal sigma of thinking tokens per class: the part of a
    /// problem's length no feature of its text explains.
    pub think_sigma: [f64; 3],
    /// Median visible answer tokens, and its sigma.
    pub answer_median: f64,
    pub answer_sigma: f64,
    /// Longest thinking drawn.
    pub think_max: u64,
    /// Accuracy with enough thinking, per difficulty.
    pub accuracy: [f64; 3],
    /// Thinking tokens past which accuracy starts to dip (overthinking).
    pub overthink_tokens: f64,
    /// Largest accuracy loss from overthinking (reached at 4x the point).
    pub overthink_dip: f64,
    /// Share of requests whose thinking loops: after `loop_after` words it
    /// repeats its last `loop_period` words until `max_tokens` (or
    /// `think_max`) runs out, as looping models do.
    pub loop_rate: f64,
    pub loop_after: u64,
    pub loop_period: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            think_median: [400.0, 1500.0, 5000.0],
            think_sigma: [0.5, 0.6, 0.7],
            answer_median: 60.0,
            answer_sigma: 0.4,
            think_max: 32_768,
            accuracy: [0.95, 0.8, 0.55],
            overthink_tokens: 8_000.0,
            overthink_dip: 0.25,
            loop_rate: 0.0,
            loop_after: 200,
            loop_period: 48,
        }
    }
}

/// The whole simulator configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub flavor: Flavor,
    pub reasoning: ReasoningMode,
    /// Model name served (requests for another model get 404, as vLLM).
    pub model: String,
    pub seed: u64,
    /// Run the whole model this many times faster than real time.
    pub time_scale: f64,
    pub engine: EngineConfig,
    pub workload: WorkloadConfig,
    /// Compute shared with the other engines given the same host (not a
    /// setting of the file: engines of one process, as a bench starts them).
    #[serde(skip)]
    pub host: Option<std::sync::Arc<crate::engine::Host>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            flavor: Flavor::Vllm,
            reasoning: ReasoningMode::Field,
            model: "sim-r1-distill-qwen-7b".into(),
            seed: 1,
            time_scale: 1.0,
            engine: EngineConfig::default(),
            workload: WorkloadConfig::default(),
            host: None,
        }
    }
}

impl SimConfig {
    /// The longest sequence the engine serves: `max_model_len`, but never
    /// more than the KV cache holds (vLLM refuses to start otherwise).
    pub fn model_len(&self) -> usize {
        self.engine
            .max_model_len
            .min(self.engine.num_blocks * self.engine.block_size)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let e = &self.engine;
        anyhow::ensure!(
            self.time_scale > 0.0 && self.time_scale.is_finite(),
            "time_scale must be > 0"
        );
        anyhow::ensure!(e.max_num_seqs > 0, "max_num_seqs must be > 0");
        anyhow::ensure!(
            e.block_size > 0 && e.num_blocks > 0,
            "block_size and num_blocks must be > 0"
        );
        anyhow::ensure!(
            e.max_num_batched_tokens > 0,
            "max_num_batched_tokens must be > 0"
        );
        Ok(())
    }
}
