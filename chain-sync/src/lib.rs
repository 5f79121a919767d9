//! Chain storage and rules for chainmesh's reference chain ("devnet" rules).
//!
//! - [`genesis`]: the network's founding document and what follows from it (slots,
//!   authorities, the genesis block and state).
//! - [`state`]: account state transitions over an overlay, with an incremental state hash.
//! - [`rules`]: header and body validation (proof-of-authority slots, signatures, roots).
//! - [`relay`]: compact block relay: rebuilding announced blocks from the mempool.
//! - [`account_cache`]: recent confirmed accounts in memory, read without waiting for
//!   a commit.
//! - [`store`]: the sled store: blocks, canonical index, accounts, undo records, tip; block
//!   import with fork choice and reorgs as one atomic write.
//!
//! No networking lives here: the node's event loop feeds blocks in and acts on the
//! [`store::ImportOutcome`].

pub mod account_cache;
pub mod genesis;
pub mod relay;
pub mod rules;
pub mod state;
pub mod store;
pub mod sync;

pub use genesis::{Allocation, ChainLimits, Genesis, GenesisError};
pub use rules::BlockError;
pub use store::{ImportError, ImportOutcome, Store, StoreError, Tip};

#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
