//! ASU definitions shared by the gateway, the load generator and the simulator.
//!
//! One crate, no I/O, so TTFT, TTFVT, thinking time and token counts have a
//! single definition wherever they are measured (see `shared/ASU.md` and the
//! README's metric reference):
//! - [`sse`]: incremental SSE framing over arbitrarily split bytes;
//! - [`think`]: inline `<think>` splitting, markers split anywhere;
//! - [`wire`]: the response fields that measurement reads, borrowed;
//! - [`engine`]: engine state (KV use, queues) from Prometheus text;
//! - [`repeat`]: thinking-loop detection in reasoning text;
//! - [`rank`]: rank correlation of a prediction against what happened;
//! - [`sequential`]: the always-valid test of two arms' means (mSPRT);
//! - [`observe`]: the per-request observer that turns a body into a
//!   [`Summary`] of timestamps and counts.
#![forbid(unsafe_code)]

pub mod engine;
pub mod fast;
pub mod observe;
pub mod rank;
pub mod repeat;
pub mod sequential;
pub mod sse;
pub mod think;
pub mod wire;

pub use observe::{BodyKind, ChoiceText, Observer, ObserverConfig, Summary, TokenSource};
pub use repeat::{LoopConfig, LoopFound};
pub use think::{Markers, ThinkTags};
