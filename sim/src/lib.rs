//! A simulated reasoning engine: an OpenAI-compatible server that behaves
//! like vLLM (or SGLang, or llama.cpp server) serving a reasoning model, so
//! the gateway, its policies and the load generator run without a GPU.
//!
//! - [`config`]: every knob and its calibration;
//! - [`engine`]: continuous batching over a paged KV cache, preemption,
//!   aborts, prefix cache;
//! - [`workload`]: difficulty, thinking length, accuracy and token text;
//! - [`wire`], [`server`], [`metrics`]: what goes over HTTP;
//! - [`faults`]: a front that breaks responses the ways real upstreams do.
//!
//! The gateway does not depend on this crate; only the `thinkgate` binary's
//! `sim` and `demo` subcommands do.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod engine;
pub mod faults;
pub mod metrics;
pub mod server;
pub mod wire;
pub mod workload;

pub use config::{EngineConfig, Flavor, ReasoningMode, SimConfig, WorkloadConfig};
