//! Persistence of the pool in a sled tree (`mempool`), as chunks of transactions (see
//! [`crate::chunks`]).
//!
//! The pool's journal is written after every operation, or handed to the caller to
//! write once it has released the pool. At start the tree is read back and every
//! transaction re-validated against the current chain state, which may have moved on
//! while the node was down; what is kept is written back as fresh chunks.

use std::collections::HashSet;

use chainmesh_proto::{Address, Hash, Tx, TxError, wire};

use crate::chunks::{self, CHUNK_TXS, ChunkIndex, Fate};
use crate::orphans::{OrphanLimits, Orphans};
use crate::pool::{AccountState, AddError, Added, Change, Pool, PoolConfig};

pub struct PersistentPool {
    pool: Pool,
    tree: sled::Tree,
    chunks: ChunkIndex,
    /// Peers' transactions waiting for their sender's previous nonce (not persisted).
    orphans: Orphans,
    /// New tips seen: the orphans' clock (the pool reads no clock of its own).
    tips: u64,
}

impl PersistentPool {
    pub fn open(
        tree: sled::Tree,
        config: PoolConfig,
        chain: Hash,
        state: &dyn AccountState,
    ) -> Result<PersistentPool, sled::Error> {
        let began = std::time::Instant::now();
        let mut stored: Vec<Tx> = Vec::new();
        let mut old_keys = Vec::new();
        let mut next_chunk = 0;
        for r in tree.iter() {
            let (k, v) = r?;
            let decoded = match k.len() {
                8 => {
                    let mut n = [0u8; 8];
                    n.copy_from_slice(&k);
                    next_chunk = next_chunk.max(u64::from_be_bytes(n).saturating_add(1));
                    chunks::decode(&v).map_err(|e| e.to_string())
                }
                // One transaction under its id: how versions before chunks stored them.
                32 => wire::decode_tx(&v)
                    .map(|t| vec![t])
                    .map_err(|e| e.to_string()),
                n => Err(format!("a key of {n} bytes")),
            };
            match decoded {
                Ok(txs) => stored.extend(txs),
                Err(e) => {
                    tracing::warn!(key = %hex_key(&k), error = %e, "dropping malformed stored transactions");
                }
            }
            old_keys.push(k);
        }
        stored.sort_by_key(|t| (t.from, t.nonce, std::cmp::Reverse(t.fee)));
        let total = stored.len();
        let mut pool = Pool::new(config, chain);
        // What we stored passed verification when it came in, but the disk is not
        // trusted with what goes into our blocks: checked again, in batches over every
        // core (one by one, a full pool of 50,000 took seconds of one core).
        let verified = chainmesh_proto::batch::tx_signatures(&chain, &stored);
        let forged = verified.iter().filter(|ok| !**ok).count();
        for (tx, ok) in stored.into_iter().zip(verified) {
            if ok {
                let _ = pool.add_verified(tx, state);
            }
        }
        if forged > 0 {
            tracing::warn!(forged, "dropping stored transactions whose signatures fail");
        }
        // What is kept goes back as new chunks, replacing every old key in one batch.
        let mut me = PersistentPool {
            pool,
            tree,
            chunks: ChunkIndex::starting_at(next_chunk),
            orphans: Orphans::new(OrphanLimits::default()),
            tips: 0,
        };
        let mut batch = sled::Batch::default();
        for k in old_keys {
            batch.remove(k);
        }
        let writes = me.take_writes();
        for op in writes.ops {
            if let (k, Some(v)) = op {
                batch.insert(&k, v);
            }
        }
        me.tree.apply_batch(batch)?;
        tracing::info!(
            restored = me.pool.len(),
            dropped = total - me.pool.len(),
            stored = total,
            chunks = me.chunks.len(),
            ms = began.elapsed().as_millis() as u64,
            "mempool loaded"
        );
        Ok(me)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Peers' transactions waiting for a gap in their sender's nonces to fill.
    pub fn orphans(&self) -> usize {
        self.orphans.len()
    }

    /// Moves `sender`'s orphans that now follow its chain into the pool, in nonce order;
    /// returns how many entered.
    fn promote(&mut self, sender: &Address, state: &dyn AccountState) -> usize {
        let mut n = 0;
        while self.orphans.has_sender(sender) {
            let Ok(acct) = state.account(sender) else {
                break;
            };
            let next = self.pool.next_nonce(sender, acct.nonce);
            let Some(tx) = self.orphans.take(sender, next) else {
                break;
            };
            // Verified when it arrived; the pool judges the rest as for any newcomer.
            let Ok(added) = self.pool.add_verified(tx, state) else {
                break;
            };
            // Its first sight in the pool, as callers log for what they add (the
            // network's latency measurements read these records).
            tracing::trace!(target: "chainmesh::seen", tx = %added.id, "tx");
            n += 1;
        }
        n
    }

    fn sync(&mut self) -> Result<(), sled::Error> {
        self.take_writes().apply()
    }

    /// The pool's changes since the last write, as sled writes to apply, possibly after
    /// the pool is released. Two sets of writes applied in the opposite order to the
    /// one they were taken in (a block's pruning racing an add) can leave a stale chunk
    /// behind; that only matters after a crash, where reopening revalidates every entry.
    pub fn take_writes(&mut self) -> Writes {
        let mut added: Vec<Hash> = Vec::new();
        let mut new: HashSet<Hash> = HashSet::new();
        let mut removed: Vec<Hash> = Vec::new();
        for c in self.pool.take_changes() {
            match c {
                Change::Added(id) => {
                    if new.insert(id) {
                        added.push(id);
                    }
                }
                Change::Removed(id) => {
                    new.remove(&id);
                    removed.push(id);
                }
            }
        }
        // Removals first: a transaction removed and added again (a reorg, a
        // replacement's return) leaves its old chunk for a new one.
        let mut ops = Vec::new();
        for fate in self.chunks.remove(&removed) {
            match fate {
                Fate::Delete(n) => ops.push((chunks::key(n), None)),
                Fate::Rewrite(n, ids) => {
                    let txs = ids.iter().filter_map(|id| self.pool.get(id));
                    ops.push((chunks::key(n), Some(chunks::encode(txs))));
                }
            }
        }
        added.retain(|id| new.contains(id));
        for part in added.chunks(CHUNK_TXS) {
            let ids: Vec<Hash> = part
                .iter()
                .filter(|id| self.pool.contains(id))
                .copied()
                .collect();
            if ids.is_empty() {
                continue;
            }
            let value = chunks::encode(ids.iter().filter_map(|id| self.pool.get(id)));
            let n = self.chunks.add(ids);
            ops.push((chunks::key(n), Some(value)));
        }
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
        let sender = tx.from;
        let r = self.pool.add(tx, state);
        if r.is_ok() {
            self.promote(&sender, state);
        }
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
        let state = Remembered {
            state,
            seen: Default::default(),
        };
        let now = self.tips;
        let window = self.pool.config().max_per_sender as u64;
        let mut results = Vec::with_capacity(txs.len());
        for tx in txs {
            let sender = tx.from;
            let r = if sigs_verified {
                self.pool.add_verified(tx.clone(), &state)
            } else {
                self.pool.add(tx.clone(), &state)
            };
            match &r {
                Ok(_) => {
                    self.promote(&sender, &state);
                }
                // Verified, and within the sender's window: its predecessor may still
                // be on its way.
                Err(AddError::Invalid(TxError::NonceGap { expected, got }))
                    if sigs_verified && got - expected < window =>
                {
                    self.orphans.insert(tx, now);
                }
                Err(_) => {}
            }
            results.push(r);
        }
        (results, self.take_writes())
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
        // A block may carry the nonce an orphan waited for (one this node never saw).
        let senders: HashSet<Address> = applied
            .iter()
            .flat_map(|b| b.txs.iter().map(|t| t.from))
            .filter(|a| self.orphans.has_sender(a))
            .collect();
        for s in senders {
            self.promote(&s, state);
        }
        self.tips += 1;
        self.orphans.expire(self.tips);
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

/// Account state read once per sender for a batch of additions: a pulled batch holds
/// many transactions of few senders, and each read is a sled lookup.
struct Remembered<'a> {
    state: &'a dyn AccountState,
    seen: std::cell::RefCell<
        std::collections::HashMap<chainmesh_proto::Address, chainmesh_proto::Account>,
    >,
}

impl AccountState for Remembered<'_> {
    fn account(&self, addr: &chainmesh_proto::Address) -> Result<chainmesh_proto::Account, String> {
        if let Some(a) = self.seen.borrow().get(addr) {
            return Ok(*a);
        }
        let a = self.state.account(addr)?;
        self.seen.borrow_mut().insert(*addr, a);
        Ok(a)
    }
}

/// Writes of pool changes, not yet applied.
#[must_use = "the changes are lost unless applied"]
pub struct Writes {
    tree: sled::Tree,
    /// A chunk to store, or (None) to delete.
    ops: Vec<([u8; 8], Option<Vec<u8>>)>,
}

impl Writes {
    pub fn apply(self) -> Result<(), sled::Error> {
        // Separate writes for one or two chunks: a sled batch seals the log buffer and
        // hands it to an IO thread at once, a wake-up and a write per call, where plain
        // writes wait for the buffer to fill or for the next flush. Atomicity is not
        // needed: a reopened pool revalidates every entry it finds.
        if self.ops.len() <= 2 {
            for (k, v) in self.ops {
                match v {
                    Some(v) => self.tree.insert(k, v)?,
                    None => self.tree.remove(k)?,
                };
            }
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in self.ops {
            match v {
                Some(v) => batch.insert(&k, v),
                None => batch.remove(&k),
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

    /// Opens the database, waiting (up to 5 s) for the lock a just-dropped handle's
    /// flusher thread may still hold.
    fn open_db(dir: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match sled::open(dir) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => return r.unwrap(),
            }
        }
    }

    /// Transactions stored in the tree.
    fn stored(tree: &sled::Tree) -> usize {
        tree.iter()
            .map(|r| chunks::decode(&r.unwrap().1).unwrap().len())
            .sum()
    }

    fn state_of(k: &Keypair, balance: u64, nonce: u64) -> BTreeMap<Address, Account> {
        [(k.public(), Account { balance, nonce })]
            .into_iter()
            .collect()
    }

    /// A block carrying `txs` (the pool looks at its transactions only).
    fn block(txs: &[Tx]) -> chainmesh_proto::Block {
        chainmesh_proto::Block {
            header: chainmesh_proto::Header {
                parent: Hash::ZERO,
                height: 1,
                slot: 1,
                timestamp_ms: 0,
                tx_root: chainmesh_proto::Block::tx_root(txs),
                state_root: Hash::ZERO,
                producer: PublicKey([0; 32]),
                signature: chainmesh_proto::Signature([0; 64]),
            },
            txs: txs.to_vec(),
        }
    }

    #[test]
    fn many_transactions_share_a_chunk_and_leave_it_as_blocks_include_them() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Hash::digest(b"persist");
        let k = Keypair::generate();
        let state = state_of(&k, 100_000, 0);
        let txs: Vec<Tx> = (0..40)
            .map(|n| Tx::transfer(&k, &chain, PublicKey([1; 32]), 10, 1, n))
            .collect();
        let db = open_db(dir.path());
        let tree = db.open_tree("mempool").unwrap();
        let mut p =
            PersistentPool::open(tree.clone(), PoolConfig::default(), chain, &state).unwrap();
        // 40 from one sender: within the default of 64 per sender.
        let added = p.add_many(txs.clone(), &state, false).unwrap();
        assert!(added.iter().all(Result::is_ok));
        assert_eq!((tree.len(), stored(&tree)), (1, 40));
        // A block with the first 25: the chunk is rewritten with the 15 left.
        let after = state_of(&k, 100_000 - 25 * 11, 25);
        p.on_new_tip(&[block(&txs[..25])], &[], &after).unwrap();
        assert_eq!((tree.len(), stored(&tree)), (1, 15));
        let after = state_of(&k, 100_000 - 40 * 11, 40);
        p.on_new_tip(&[block(&txs[25..])], &[], &after).unwrap();
        assert_eq!(tree.len(), 0);
    }

    #[test]
    fn peers_transactions_out_of_nonce_order_wait_for_the_gap_to_fill() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Hash::digest(b"persist");
        let k = Keypair::generate();
        let state = state_of(&k, 100_000, 0);
        let tx = |n| Tx::transfer(&k, &chain, PublicKey([1; 32]), 10, 1, n);
        let db = open_db(dir.path());
        let tree = db.open_tree("mempool").unwrap();
        let mut p =
            PersistentPool::open(tree.clone(), PoolConfig::default(), chain, &state).unwrap();
        // Nonces 2 and 3 arrive from peers before 1 and 0: refused for now, kept aside.
        let r = p.add_many(vec![tx(3), tx(2)], &state, true).unwrap();
        assert!(
            r.iter()
                .all(|r| matches!(r, Err(AddError::Invalid(TxError::NonceGap { .. }))))
        );
        assert_eq!((p.pool().len(), p.orphans()), (0, 2));
        // Not from a client: an API submission with a gap is refused outright.
        assert!(p.add_many(vec![tx(5)], &state, false).unwrap()[0].is_err());
        assert_eq!(p.orphans(), 2);
        // Far beyond the sender's window: not kept.
        p.add_many(vec![tx(10_000)], &state, true).unwrap();
        assert_eq!(p.orphans(), 2);
        // Nonce 0 arrives; 1 is still missing.
        p.add_many(vec![tx(0)], &state, true).unwrap();
        assert_eq!((p.pool().len(), p.orphans()), (1, 2));
        // A block includes 0 and 1 (1 never reached us): 2 and 3 follow the chain now.
        let after = state_of(&k, 100_000 - 2 * 11, 2);
        p.on_new_tip(&[block(&[tx(0), tx(1)])], &[], &after)
            .unwrap();
        assert_eq!((p.pool().len(), p.orphans()), (2, 0));
        assert_eq!(p.pool().next_nonce(&k.public(), 2), 4);
        // And they are stored like any other pending transaction.
        assert_eq!(stored(&tree), 2);
    }

    #[test]
    fn reopening_reads_the_old_one_key_per_transaction_form() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Hash::digest(b"persist");
        let k = Keypair::generate();
        let state = state_of(&k, 1_000, 0);
        let db = open_db(dir.path());
        let tree = db.open_tree("mempool").unwrap();
        for n in 0..3 {
            let tx = Tx::transfer(&k, &chain, PublicKey([1; 32]), 10, 1, n);
            tree.insert(tx.id().0, wire::encode_tx(&tx)).unwrap();
        }
        tree.insert(b"junk", b"junk".to_vec()).unwrap();
        let p = PersistentPool::open(tree.clone(), PoolConfig::default(), chain, &state).unwrap();
        assert_eq!(p.pool().len(), 3);
        // Rewritten as one chunk; the junk is gone.
        assert_eq!((tree.len(), stored(&tree)), (1, 3));
    }

    #[test]
    fn reopening_checks_signatures_in_batches_and_drops_only_the_forged() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Hash::digest(b"persist");
        let to = PublicKey([1; 32]);
        let keys: Vec<Keypair> = (0..25).map(|_| Keypair::generate()).collect();
        let mut state: BTreeMap<Address, Account> = BTreeMap::new();
        let db = open_db(dir.path());
        let tree = db.open_tree("mempool").unwrap();
        // 1,500 transactions: more than one batch, on more than one thread.
        for k in &keys {
            state.insert(
                k.public(),
                Account {
                    balance: 1_000_000,
                    nonce: 0,
                },
            );
            for n in 0..60 {
                let tx = Tx::transfer(k, &chain, to, 10, 1, n);
                tree.insert(tx.id().0, wire::encode_tx(&tx)).unwrap();
            }
        }
        // The disk altered one signature: the last nonce of one sender, so that nothing
        // else depends on it.
        let mut forged = Tx::transfer(&keys[7], &chain, to, 10, 1, 59);
        tree.remove(forged.id().0).unwrap();
        forged.signature.0[5] ^= 0x10;
        tree.insert(forged.id().0, wire::encode_tx(&forged))
            .unwrap();
        let config = PoolConfig {
            max_per_sender: 100,
            ..PoolConfig::default()
        };
        let p = PersistentPool::open(tree.clone(), config, chain, &state).unwrap();
        assert_eq!(p.pool().len(), 1_499);
        assert!(!p.pool().contains(&forged.id()));
        assert_eq!(p.pool().next_nonce(&keys[7].public(), 0), 59);
        assert_eq!(stored(&tree), 1_499);
    }

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
            let db = open_db(dir.path());
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
            let db = open_db(dir.path());
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
        let db = open_db(dir.path());
        let tree = db.open_tree("mempool").unwrap();
        let p = PersistentPool::open(tree.clone(), PoolConfig::default(), chain, &state).unwrap();
        assert_eq!(p.pool().len(), 3);
        assert_eq!(stored(&tree), 3);
    }
}
