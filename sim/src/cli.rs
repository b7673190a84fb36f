//! `thinkgate sim`: command line of the simulated engine.

use crate::config::{Flavor, ReasoningMode, SimConfig};
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags override the TOML file given with `--config`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// TOML file with any of the keys below, plus `[engine]` and `[workload]` tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Engine to imitate: field names, metric names, error bodies.
    #[arg(long, value_enum)]
    pub flavor: Option<Flavor>,
    /// How thinking appears: field (delta.reasoning / reasoning_content),
    /// field-legacy (reasoning_content), tags (<think>..</think> in content),
    /// tags-no-open (DeepSeek-R1 form), none (a plain model).
    #[arg(long, value_enum)]
    pub reasoning: Option<ReasoningMode>,
    /// Model name served; requests naming another model get 404.
    #[arg(long)]
    pub model: Option<String>,
    /// Seed of every draw; the same seed and request give the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run the engine model this many times faster than real time.
    #[arg(long)]
    pub time_scale: Option<f64>,
    /// Most sequences in a batch.
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Prefill token budget per step.
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// KV-cache blocks (capacity = num_blocks x block_size tokens).
    #[arg(long)]
    pub num_blocks: Option<usize>,
    /// Tokens per KV block.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Cache full prompt blocks by hash and skip their prefill.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub prefix_cache: Option<bool>,
    /// Tokens per streamed event (vLLM's `--stream-interval`).
    #[arg(long)]
    pub stream_interval: Option<u32>,
    /// Put a fault-injecting front before the engine: `name=rate,...` per
    /// inference request (e.g. `reset_mid_stream=0.01,status_503=0.02`), or
    /// `none` for faults chosen only by the `x-sim-fault` request header.
    #[arg(long)]
    pub faults: Option<String>,
    /// Flap: with the fault front, reset every request for DOWN ms every
    /// UP+DOWN ms (`UP_MS:DOWN_MS`).
    #[arg(long)]
    pub flap: Option<String>,
    /// How long the stall faults hold a connection, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub fault_stall_ms: u64,
}

impl SimArgs {
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        let mut c = match &self.config {
            Some(p) => toml::from_str(&std::fs::read_to_string(p)?)?,
            None => SimConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(listen, flavor, reasoning, model, seed, time_scale);
        macro_rules! set_engine {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.engine.$f = v; } )* };
        }
        set_engine!(
            max_num_seqs,
            max_num_batched_tokens,
            num_blocks,
            block_size,
            prefix_cache,
            stream_interval
        );
        c.validate()?;
        Ok(c)
    }
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let plan = match (&args.faults, &args.flap) {
        (None, None) => None,
        (rates, flap) => Some(crate::faults::FaultPlan {
            rates: crate::faults::FaultPlan::parse_rates(rates.as_deref().unwrap_or(""))?,
            flap: flap
                .as_deref()
                .map(crate::faults::FaultPlan::parse_flap)
                .transpose()?,
            stall: std::time::Duration::from_millis(args.fault_stall_ms),
            seed: cfg.seed,
            ..Default::default()
        }),
    };
    // the engine, and the fault front before it when faults are asked for;
    // both run until Ctrl-C
    let _running = match plan {
        None => {
            let (addr, sim, task) = crate::server::spawn(cfg).await?;
            println!("thinkgate-sim listening on {addr}");
            (sim, task, None)
        }
        Some(plan) => {
            let listen = cfg.listen;
            let inner = SimConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..cfg
            };
            let (inner_addr, sim, task) = crate::server::spawn(inner).await?;
            let (addr, _stats, front) = crate::faults::spawn(listen, inner_addr, plan).await?;
            println!("thinkgate-sim listening on {addr} (fault front; engine on {inner_addr})");
            (sim, task, Some(front))
        }
    };
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}
