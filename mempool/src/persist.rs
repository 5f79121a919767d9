//! Persistence of the pool in a sled tree (`mempool`: tx id → protobuf tx).
//!
//! The pool's journal is written after every operation (a batch when it is long), or
//! handed to the caller to write once it has released the pool. At start the tree is read back and every
//! transaction re-validated against the current chain state, which may have moved on
//! while the node was down.

use chainmesh_proto::{Hash, Tx, wire};

use crate::pool::{AccountState, AddError, Added, Change, Pool, PoolConfig};

/// Up to this many changes are written one by one rather than as a batch.
const FEW_CHANGES: usize = 64;

pub struct PersistentPool {
    pool: Pool,
    tree: sled::Tree,
}

impl PersistentPool {
    pub fn open(
        tree: sled::Tree,
        config: PoolConfig,
        chain: Hash,
        state: &dyn AccountState,
    ) -> Result<PersistentPool, sled::Error> {
        let mut stored: Vec<Tx> = Vec::new();
        let mut bad = Vec::new();
        for r in tree.iter() {
            let (k, v) = r?;
            match wire::decode_tx(&v) {
                Ok(tx) => stored.push(tx),
                Err(e) => {
                    tracing::warn!(key = %hex_key(&k), error = %e, "dropping a malformed stored transaction");
                    bad.push(k);
                }
            }
        }
        for k in bad {
            tree.remove(k)?;
        }
        stored.sort_by_key(|t| (t.from, t.nonce, std::cmp::Reverse(t.fee)));
        let total = stored.len();
        let mut pool = Pool::new(config, chain);
        for tx in stored {
            let _ = pool.add(tx, state);
        }
        let mut me = PersistentPool { pool, tree };
        // Entries that no longer validate are journaled as never added: remove them.
        me.pool.take_changes();
        let keep: std::collections::HashSet<Hash> =
            me.pool.best(usize::MAX).iter().map(Tx::id).collect();
        let mut batch = sled::Batch::default();
        let mut dropped = 0;
        for r in me.tree.iter() {
            let (k, _) = r?;
            if Hash::from_slice(&k).is_none_or(|h| !keep.contains(&h)) {
                batch.remove(k);
                dropped += 1;
            }
        }
        me.tree.apply_batch(batch)?;
        tracing::info!(
            restored = me.pool.len(),
            dropped,
            stored = total,
            "mempool loaded"
        );
        Ok(me)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn sync(&mut self) -> Result<(), sled::Error> {
        self.take_writes().apply()
    }

    /// The pool's changes since the last write, as sled writes to apply, possibly after
    /// the pool is released: they name different keys than any later change can until
    /// they are applied, except in a reorg racing an add, and a stale or missing entry
    /// there only matters after a crash, where reopening revalidates every entry.
    pub fn take_writes(&mut self) -> Writes {
        let ops = self
            .pool
            .take_changes()
            .into_iter()
            .map(|c| match c {
                Change::Added(id) => (id, self.pool.get(&id).map(wire::encode_tx)),
                Change::Removed(id) => (id, None),
            })
            .collect();
        Writes {
            tree: self.tree.clone(),
            ops,
        }
    }

    pub fn add(
        &mut self,
        tx: Tx,
        state: &dyn AccountState,
    ) -> Result<Result<Added, AddError>, sled::Error> {
        let r = self.pool.add(tx, state);
        self.sync()?;
        Ok(r)
    }

    /// Adds many transactions with one write; `sigs_verified`: their signatures were
    /// checked by the caller.
    pub fn add_many(
        &mut self,
        txs: Vec<Tx>,
        state: &dyn AccountState,
        sigs_verified: bool,
    ) -> Result<Vec<Result<Added, AddError>>, sled::Error> {
        let (r, writes) = self.add_many_unwritten(txs, state, sigs_verified);
        writes.apply()?;
        Ok(r)
    }

    /// [`PersistentPool::add_many`] leaving the writes to the caller, to apply once the
    /// pool is released.
    pub fn add_many_unwritten(
        &mut self,
        txs: Vec<Tx>,
        state: &dyn AccountState,
        sigs_verified: bool,
    ) -> (Vec<Result<Added, AddError>>, Writes) {
        let r = txs
            .into_iter()
            .map(|tx| {
                if sigs_verified {
                    self.pool.add_verified(tx, state)
                } else {
                    self.pool.add(tx, state)
                }
            })
            .collect();
        (r, self.take_writes())
    }

    pub fn on_new_tip(
        &mut self,
        applied: &[chainmesh_proto::Block],
        reverted: &[chainmesh_proto::Block],
        state: &dyn AccountState,
    ) -> Result<(), sled::Error> {
        self.on_new_tip_unwritten(applied, reverted, state).apply()
    }

    /// [`PersistentPool::on_new_tip`] leaving the writes (one per included transaction)
    /// to the caller, to apply once the pool is released.
    pub fn on_new_tip_unwritten(
        &mut self,
        applied: &[chainmesh_proto::Block],
        reverted: &[chainmesh_proto::Block],
        state: &dyn AccountState,
    ) -> Writes {
        self.pool.on_new_tip(applied, reverted, state);
        self.take_writes()
    }

    pub fn remove_invalid(
        &mut self,
        ids: &[Hash],
        state: &dyn AccountState,
    ) -> Result<(), sled::Error> {
        self.pool.remove_invalid(ids, state);
        self.sync()
    }
}

/// Writes of pool changes, not yet applied.
#[must_use = "the changes are lost unless applied"]
pub struct Writes {
    tree: sled::Tree,
    /// A transaction to store, or (None) an id to remove.
    ops: Vec<(Hash, Option<Vec<u8>>)>,
}

impl Writes {
    pub fn apply(self) -> Result<(), sled::Error> {
        // Separate writes for a few changes: a sled batch seals the log buffer and
        // hands it to an IO thread at once, a wake-up and a write per call, where plain
        // writes wait for the buffer to fill or for the next flush. Atomicity is not
        // needed: a reopened pool revalidates every entry it finds.
        if self.ops.len() <= FEW_CHANGES {
            for (id, v) in self.ops {
                match v {
                    Some(v) => self.tree.insert(id.0, v)?,
                    None => self.tree.remove(id.0)?,
                };
            }
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (id, v) in self.ops {
            match v {
                Some(v) => batch.insert(&id.0, v),
                None => batch.remove(&id.0),
            }
        }
        self.tree.apply_batch(batch)
    }
}

fn hex_key(k: &[u8]) -> String {
    k.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::{Account, Address, Keypair, PublicKey};
    use std::collections::BTreeMap;

    #[test]
    fn survives_reopen_and_revalidates() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Hash::digest(b"persist");
        let k = Keypair::generate();
        let mut state: BTreeMap<Address, Account> = BTreeMap::new();
        state.insert(
            k.public(),
            Account {
                balance: 1_000,
                nonce: 0,
            },
        );
        let to = PublicKey([1; 32]);
        let txs: Vec<Tx> = (0..5)
            .map(|n| Tx::transfer(&k, &chain, to, 10, 1, n))
            .collect();
        {
            let db = sled::open(dir.path()).unwrap();
            let mut p = PersistentPool::open(
                db.open_tree("mempool").unwrap(),
                PoolConfig::default(),
                chain,
                &state,
            )
            .unwrap();
            for t in &txs {
                p.add(t.clone(), &state).unwrap().unwrap();
            }
            // Replacement: the stored copy of nonce 4 must be replaced too.
            p.add(Tx::transfer(&k, &chain, to, 10, 2, 4), &state)
                .unwrap()
                .unwrap();
            db.flush().unwrap();
        }
        {
            let db = sled::open(dir.path()).unwrap();
            let p = PersistentPool::open(
                db.open_tree("mempool").unwrap(),
                PoolConfig::default(),
                chain,
                &state,
            )
            .unwrap();
            assert_eq!(p.pool().len(), 5);
            assert_eq!(p.pool().best(10)[4].fee, 2);
        }
        // While the node was down, two of them were included elsewhere.
        state.insert(
            k.public(),
            Account {
                balance: 978,
                nonce: 2,
            },
        );
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("mempool").unwrap();
        let p = PersistentPool::open(tree.clone(), PoolConfig::default(), chain, &state).unwrap();
        assert_eq!(p.pool().len(), 3);
        assert_eq!(tree.len(), 3);
    }
}
