//! thinkgate: a reasoning-aware gateway for LLM inference.
//!
//! A transparent reverse proxy for OpenAI-compatible engines (vLLM, SGLang,
//! llama.cpp server) that measures every request on the ASU axes as its
//! response streams past: time to first token of any kind (TTFT), time to
//! first *visible* token (TTFVT), thinking time, end-to-end time, thinking and
//! visible tokens.
//!
//! The modules are layers: each uses only those below it (a test,
//! `tests/layers.rs`, holds the order). From the top, in the order a request
//! meets them (`docs/lifecycle.md` walks it phase by phase):
//! - [`server`]: listeners (HTTP/1.1 + h2c), admin endpoints, drain;
//! - [`proxy`]: the request pipeline, as named phases, and the plain path;
//! - [`managed`]: the managed path (budgets, deadlines, hedging);
//! - [`upstream::send`]: sending upstream with retries;
//! - [`body`]: response bodies (observed, channel, usage stripping);
//! - [`context`]: one request's context, where it is settled once;
//! - [`state`]: what all requests share, and its lifecycle;
//! - [`fleet`]: backends' live state, routing through `thinkgate-policies`,
//!   health checks and engine scraping;
//! - [`record`], [`metrics`]: where each settled request goes;
//! - [`feedback`]: grades of answers, posted later, written with the records;
//! - [`config`], [`access`] (the route policy and client keys),
//!   [`straggler`] (what to enforce), [`upstream`] (base URLs,
//!   clients), [`error`].
#![forbid(unsafe_code)]
// a future over 16 KiB held by every request is memory per open stream:
// box the large branch instead (see `proxy::forward`)
#![warn(clippy::large_futures)]

pub mod access;
pub mod body;
pub mod config;
pub mod context;
pub mod error;
pub mod feedback;
pub mod fleet;
pub mod managed;
pub mod metrics;
pub mod proxy;
pub mod record;
pub mod server;
pub mod state;
pub mod straggler;
pub mod tls;
pub mod trace;
pub mod upstream;
