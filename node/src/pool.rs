//! The mempool, shared between the chain task and the network task.
//!
//! The chain task builds blocks from it and takes out what blocks include; the network
//! task adds peers' transactions itself, so that a transaction reaches the pool without
//! waiting behind a block import in the chain task. Every change holds the lock while
//! it reads account state and writes, and the chain task brings the pool in line after
//! each new tip under the same lock, so a transaction checked against the state just
//! before an import is pruned right after it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chainmesh_chain_sync::state::AccountReader;
use chainmesh_chain_sync::store::{AccountsTree, StoreReader};
use chainmesh_mempool::{AccountState, PersistentPool};
use chainmesh_proto::{Account, Address};

#[derive(Clone)]
pub struct SharedPool(Arc<Mutex<PersistentPool>>);

impl SharedPool {
    pub fn new(pool: PersistentPool) -> Self {
        SharedPool(Arc::new(Mutex::new(pool)))
    }

    /// The pool, for one short step. A panic while it was held leaves a pool whose
    /// every operation completed or did not start (they are not interleaved), so it is
    /// used as it is rather than poisoning the node.
    pub fn lock(&self) -> MutexGuard<'_, PersistentPool> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Account state for the pool, from the chain task's store.
pub(crate) struct PoolState<'a>(pub(crate) &'a AccountsTree);

impl AccountState for PoolState<'_> {
    fn account(&self, addr: &Address) -> Result<Account, String> {
        self.0
            .read_account(addr)
            .map(Option::unwrap_or_default)
            .map_err(|e| e.to_string())
    }
}

/// Account state for the pool, from a store reader (outside the chain task).
pub(crate) struct ReaderState<'a>(pub(crate) &'a StoreReader);

impl AccountState for ReaderState<'_> {
    fn account(&self, addr: &Address) -> Result<Account, String> {
        self.0.account(addr).map_err(|e| e.to_string())
    }
}
