//! The response path: the observed body and usage-event stripping.

pub mod body;
pub mod strip;
