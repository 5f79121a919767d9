//! The mempool, shared between the chain task and the network task.
//!
//! The chain task builds blocks from it and takes out what blocks include; the network
//! task adds peers' transactions itself, so that a transaction reaches the pool without
//! waiting behind a block import in the chain task. Every change holds the lock while
//! it reads account state and writes, and the chain task brings the pool in line after
//! each new tip under the same lock, so a transaction checked against the state just
//! before an import is pruned right after it. Peers' reads (pool log, transactions by
//! id, compact-block lookups) take the lock too, never the chain task's queue.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use chainmesh_chain_sync::state::AccountReader;
use chainmesh_chain_sync::store::{AccountsTree, StoreReader};
use chainmesh_mempool::{AccountState, AddError, Added, PersistentPool, Pool, Writes};
use chainmesh_proto::{Account, Address};

use crate::chain::SubmitError;
use crate::metrics::ChainMetrics;

#[derive(Clone)]
pub struct SharedPool {
    pool: Arc<Mutex<PersistentPool>>,
    /// The chain's and the pool's counters: whoever holds the pool counts through it.
    metrics: ChainMetrics,
    gauges: Arc<Gauges>,
}

/// The pool's size and log head as of the last release of its lock, read without it.
/// The pool is held for milliseconds at a time (a pulled answer of a thousand
/// transactions is added under it, a new tip prunes under it): a `/status` handler or
/// the network event loop that took the lock for a counter stalled its runtime thread
/// that long.
#[derive(Default)]
struct Gauges {
    txs: AtomicUsize,
    bytes: AtomicUsize,
    orphans: AtomicUsize,
    head: AtomicU64,
}

/// Each transaction's outcome, and the sled writes still to apply.
pub(crate) type Pooled = (Vec<Result<Added, AddError>>, Writes);

/// What the pool's gauges read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGauges {
    pub txs: usize,
    pub bytes: usize,
    pub orphans: usize,
    pub log_head: u64,
}

/// The pool, held; its gauges are brought up to date when it is released.
pub struct PoolGuard<'a> {
    guard: MutexGuard<'a, PersistentPool>,
    gauges: &'a Gauges,
}

impl Deref for PoolGuard<'_> {
    type Target = PersistentPool;
    fn deref(&self) -> &PersistentPool {
        &self.guard
    }
}

impl DerefMut for PoolGuard<'_> {
    fn deref_mut(&mut self) -> &mut PersistentPool {
        &mut self.guard
    }
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        // Still under the lock: the gauges move with the pool, never behind a change
        // that another thread has already seen.
        publish(self.gauges, &self.guard);
    }
}

fn publish(g: &Gauges, p: &PersistentPool) {
    g.txs.store(p.pool().len(), Ordering::Release);
    g.bytes.store(p.pool().bytes(), Ordering::Release);
    g.orphans.store(p.orphans(), Ordering::Release);
    g.head.store(p.pool().log_head(), Ordering::Release);
}

impl SharedPool {
    pub fn new(pool: PersistentPool) -> Self {
        let gauges = Arc::new(Gauges::default());
        publish(&gauges, &pool);
        SharedPool {
            pool: Arc::new(Mutex::new(pool)),
            metrics: ChainMetrics::default(),
            gauges,
        }
    }

    /// The pool's size and log head, without waiting for its lock.
    pub fn gauges(&self) -> PoolGauges {
        let g = &self.gauges;
        PoolGauges {
            txs: g.txs.load(Ordering::Acquire),
            bytes: g.bytes.load(Ordering::Acquire),
            orphans: g.orphans.load(Ordering::Acquire),
            log_head: g.head.load(Ordering::Acquire),
        }
    }

    pub fn metrics(&self) -> &ChainMetrics {
        &self.metrics
    }

    /// The pool, for one short step. A panic while it was held leaves a pool whose
    /// every operation completed or did not start (they are not interleaved), so it is
    /// used as it is rather than poisoning the node.
    pub fn lock(&self) -> PoolGuard<'_> {
        PoolGuard {
            guard: self.pool.lock().unwrap_or_else(PoisonError::into_inner),
            gauges: &self.gauges,
        }
    }

    /// Adds peers' transactions whose signatures were verified, outside the chain task
    /// (which may be importing a block); written to sled after the lock is released.
    /// Blocks: call it on a blocking thread.
    pub(crate) fn add_verified(
        &self,
        reader: &StoreReader,
        txs: Vec<chainmesh_proto::Tx>,
    ) -> Vec<Result<Added, AddError>> {
        let (results, writes) = self
            .lock()
            .add_many_unwritten(txs, &ReaderState(reader), true);
        self.admitted(&results);
        if let Err(e) = writes.apply() {
            tracing::error!(error = %e, "the mempool cannot be written");
        }
        results
    }

    /// [`Self::add_verified`] on the caller's thread, if the pool is free this instant:
    /// the in-memory add of a few transactions takes microseconds, a wait for the lock
    /// (a pulled answer, a new tip's pruning) milliseconds, so a caller that must not
    /// block gets its transactions back when the lock is held. The sled writes are
    /// returned, to be applied off that thread.
    pub(crate) fn try_add_verified(
        &self,
        reader: &StoreReader,
        txs: Vec<chainmesh_proto::Tx>,
    ) -> Result<Pooled, Vec<chainmesh_proto::Tx>> {
        let guard = match self.pool.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(txs),
        };
        let (results, writes) = PoolGuard {
            guard,
            gauges: &self.gauges,
        }
        .add_many_unwritten(txs, &ReaderState(reader), true);
        self.admitted(&results);
        Ok((results, writes))
    }

    fn admitted(&self, results: &[Result<Added, AddError>]) {
        for r in results {
            self.metrics.admitted("peer", r);
        }
        for added in results.iter().flatten() {
            // First sight of a transaction, for latency measurements across nodes.
            tracing::trace!(target: "chainmesh::seen", tx = %added.id, "tx");
        }
    }

    /// Adds one client's transaction (its signature is checked here), written to sled but
    /// not flushed: the caller answers only once a flush covers it. Blocks: call it on a
    /// blocking thread, or from the chain task.
    pub(crate) fn add_one(
        &self,
        tx: chainmesh_proto::Tx,
        state: &dyn AccountState,
    ) -> Result<chainmesh_proto::Hash, SubmitError> {
        let added = self.lock().add(tx, state);
        if let Ok(r) = &added {
            self.metrics.admitted("api", r);
        }
        match added {
            Ok(Ok(added)) => {
                // First sight of a transaction, for latency measurements across nodes.
                tracing::trace!(target: "chainmesh::seen", tx = %added.id, "tx");
                Ok(added.id)
            }
            Ok(Err(e)) => Err(SubmitError::Rejected(e)),
            Err(e) => Err(SubmitError::Storage(e.to_string())),
        }
    }

    /// Reads the pool on a blocking thread: the lock may be held for a while (a new tip
    /// prunes under it), and the network task must not wait for it. `None` if the
    /// runtime is shutting down.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Pool) -> R + Send + 'static,
    ) -> Option<R> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || f(pool.lock().pool()))
            .await
            .ok()
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
