//! chainmesh's transaction pool.
//!
//! - [`pool`]: the pool itself, without I/O: validation against account state, fee
//!   ordering with per-sender nonce order, count/byte limits with lowest-fee eviction,
//!   replacement by a higher fee, updates on blocks and reorgs. Every change is journaled.
//! - [`persist`]: mirrors the journal into a sled tree and reloads it at start.

pub mod persist;
pub mod pool;

pub use persist::PersistentPool;
pub use pool::{AccountState, AddError, Added, Pool, PoolConfig};
