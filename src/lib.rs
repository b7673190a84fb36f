//! thinkgate: a reasoning-aware gateway for LLM inference.
//!
//! A transparent reverse proxy for OpenAI-compatible engines (vLLM, SGLang,
//! llama.cpp server) that measures every request on the ASU axes as its
//! response streams past: time to first token of any kind (TTFT), time to
//! first *visible* token (TTFVT), thinking time, end-to-end time, thinking and
//! visible tokens. Parts, in the order a request meets them:
//! - [`server`]: listeners (HTTP/1.1 + h2c), admin endpoints, drain;
//! - [`proxy`]: the forwarding service, request inspection, upstreams;
//! - [`fleet`]: backends' live state, routing through `thinkgate-policies`,
//!   health checks and engine scraping;
//! - [`stream`]: the observed response body (framing and splitting live in
//!   the `thinkgate-asu` crate, shared with the load generator);
//! - [`record`], [`metrics`]: where each settled request goes.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod proxy;
pub mod record;
pub mod run;
pub mod server;
pub mod straggler;
pub mod stream;
