//! The response path: the observed body, usage-event stripping, and the
//! response body types.

pub mod body;
pub mod response;
pub mod strip;
