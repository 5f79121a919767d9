//! chainmesh's libp2p behaviours, one folder each, and the pieces they share.
//!
//! - [`status`]: `/chainmesh/<net>/status/1`, the handshake (network, genesis, version,
//!   tip, serving limits).
//! - [`sync`]: `/chainmesh/<net>/sync/1`, headers, blocks and transactions on request.
//! - [`peers`]: scores and bans.
//! - [`codec`]: size-capped protobuf framing for request-response protocols.
//! - [`rate_limit`]: per-peer token buckets with a bounded key set.
//!
//! Each behaviour is a `request_response::Behaviour` with our codec; the node composes
//! them with libp2p's identify, ping and connection limits.

pub mod codec;
pub mod peers;
pub mod rate_limit;
pub mod status;
pub mod sync;

pub use rate_limit::{Quota, RateLimiter};
