//! chainmesh's transaction pool.
//!
//! - [`pool`]: the pool itself, without I/O: validation against account state, fee
//!   ordering with per-sender nonce order, count/byte limits with lowest-fee eviction,
//!   replacement by a higher fee, updates on blocks and reorgs. Every change is journaled.
//!   Its propagation log lets peers read it with a cursor.
//! - [`orphans`]: peers' transactions that arrived before their sender's previous nonce,
//!   bounded, until the gap fills.
//! - [`persist`]: mirrors the journal into a sled tree and reloads it at start.
//! - [`chunks`]: the stored form, many transactions per sled value, and which chunk
//!   holds which transaction.
//! - [`pull`]: the receiving side of pull-based mempool sync: per-peer cursors and
//!   permits, one in flight per peer.

pub mod chunks;
pub mod orphans;
pub mod persist;
pub mod pool;
pub mod pull;

pub use persist::{PersistentPool, Writes};
pub use pool::{AccountState, AddError, Added, Pool, PoolConfig};
pub use pull::{Permit, PullConfig, PullError, PullSync, Ticket};
