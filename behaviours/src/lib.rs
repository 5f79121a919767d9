//! chainmesh's libp2p behaviours, one folder each, and the pieces they share.
//!
//! - [`status`]: `/chainmesh/<net>/status/1`, the handshake (network, genesis, version,
//!   tip, serving limits).
//! - [`sync`]: `/chainmesh/<net>/sync/1`, headers, blocks and transactions on request.
//! - [`gossip`]: gossipsub for transactions and compact blocks, with our scoring.
//! - [`pool`]: `/chainmesh/<net>/pool/1`, pull-based mempool sync with permits.
//! - [`pex`]: `/chainmesh/<net>/pex/1`, peer exchange.
//! - [`discovery`]: Kademlia under `/chainmesh/<net>/kad/1`, and mDNS.
//! - [`nat`]: AutoNAT, circuit relay v2 (server and client), DCUtR.
//! - [`mina`]: the Mina profile's gossip topics, message ids and `/mina/peer-exchange`.
//! - [`admission`]: `/chainmesh/admission/1`, proof of work before a relay reservation.
//! - [`peers`]: scores and bans.
//! - [`guard`]: inbound stream budgets for gossipsub, Kademlia and identify.
//! - [`codec`]: size-capped protobuf framing for request-response protocols.
//! - [`rate_limit`]: per-peer token buckets with a bounded key set.
//! - [`serve_queue`]: serving slots shared between peers by standing.
//!
//! Each request-response protocol is a `request_response::Behaviour` with our codec; the
//! node composes them with gossipsub and libp2p's identify, ping and connection limits.

pub mod admission;
pub mod boxed;
pub mod codec;
pub mod discovery;
pub mod gossip;
pub mod guard;
pub mod mina;
pub mod nat;
pub mod peers;
pub mod pex;
pub mod pool;
pub mod rate_limit;
pub mod repeats;
pub mod serve_queue;
pub mod status;
pub mod sync;

pub use rate_limit::{Quota, RateLimiter};
