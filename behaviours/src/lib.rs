//! chainmesh's libp2p behaviours, one folder each (status, sync, gossip, pool, pex,
//! discovery, nat, admission, peers), and the per-peer defences they share.
//!
//! The behaviours arrive with the networking issues; what is here is the part every one
//! of them uses and that needs no network:
//! - [`rate_limit`]: per-peer, per-protocol token buckets with a bounded key set.

pub mod rate_limit;

pub use rate_limit::{Quota, RateLimiter};
