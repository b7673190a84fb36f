//! Response bodies: the observed body of the plain path (the observer sees
//! every byte as it passes), the channel body of the managed path, and the
//! stripping of the usage event the gateway asked for. Parsing itself
//! (SSE framing, thinking and visible tokens) is in `thinkgate-asu`.

pub mod observed;
pub mod response;
pub mod strip;
