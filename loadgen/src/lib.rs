//! The load generator: Gamma-bursty (or constant, or all-at-once, or closed
//! loop) traffic against an OpenAI-compatible server, measured on the ASU
//! axes from the client side with the same definitions as the gateway.
//!
//! - [`arrivals`]: send schedules;
//! - [`dataset`]: JSONL datasets and the built-in math set;
//! - [`client`]: one request, measured;
//! - [`grade`]: answer extraction and comparison;
//! - [`run`]: open and closed loops;
//! - [`report`]: `summary.json` and the text table;
//! - [`compare`]: B vs A with bootstrap intervals and regression gates,
//!   from load runs or the gateway's records;
//! - [`sequential`]: the always-valid test for watching a live experiment;
//! - [`plots`], [`scrape`]: SVG plots, `report.html`, engine KV over time.
#![forbid(unsafe_code)]

pub mod arrivals;
pub mod cli;
pub mod client;
pub mod compare;
pub mod dataset;
pub mod grade;
pub mod plots;
pub mod report;
pub mod run;
pub mod scrape;
pub mod sequential;
pub mod trace;
