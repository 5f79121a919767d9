//! The transaction pool (sans I/O).
//!
//! Invariant: a sender's pending transactions carry consecutive nonces starting at the
//! sender's account nonce, and together cost no more than its balance. So every pending
//! transaction would apply if included in nonce order, and a block builder can take them
//! greedily. Anything that breaks the invariant (a block, a reorg, an eviction) makes the
//! pool drop or re-check that sender's chain.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use chainmesh_proto::limits::MAX_TX_BYTES;
use chainmesh_proto::{Account, Address, Block, Hash, Tx, TxError, wire};

/// Where the pool reads committed account state (the node passes its store).
pub trait AccountState {
    fn account(&self, addr: &Address) -> Result<Account, String>;
}

impl AccountState for BTreeMap<Address, Account> {
    fn account(&self, addr: &Address) -> Result<Account, String> {
        Ok(self.get(addr).copied().unwrap_or_default())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub max_txs: usize,
    pub max_bytes: usize,
    /// Most pending transactions of one sender: one account cannot fill the pool.
    pub max_per_sender: usize,
    /// The chain's minimum fee (from the genesis limits).
    pub min_fee: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_txs: 20_000,
            max_bytes: 16 * 1024 * 1024,
            max_per_sender: 64,
            min_fee: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error(transparent)]
    Invalid(#[from] TxError),
    #[error("transaction is already in the pool")]
    AlreadyKnown,
    #[error("encoded transaction of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error(
        "replacement underpriced: the pending transaction with this nonce pays fee {existing}, \
         a replacement must pay more (got {got})"
    )]
    ReplacementUnderpriced { existing: u64, got: u64 },
    #[error("sender already has {max} pending transactions, the most allowed")]
    SenderFull { max: usize },
    #[error("pool is full: a transaction must pay a fee above {lowest} to enter")]
    PoolFull { lowest: u64 },
    #[error("cannot read account state: {0}")]
    State(String),
}

impl AddError {
    /// A stable, machine-readable name for the reason: the API's error code and the
    /// metrics' label.
    pub fn code(&self) -> &'static str {
        match self {
            AddError::Invalid(TxError::BadSignature) => "bad_signature",
            AddError::Invalid(TxError::NonceReused { .. }) => "nonce_reused",
            AddError::Invalid(TxError::NonceGap { .. }) => "nonce_gap",
            AddError::Invalid(TxError::InsufficientBalance { .. }) => "insufficient_balance",
            AddError::Invalid(TxError::FeeTooLow { .. }) => "fee_too_low",
            AddError::Invalid(_) => "invalid_tx",
            AddError::AlreadyKnown => "already_known",
            AddError::TooLarge { .. } => "too_large",
            AddError::ReplacementUnderpriced { .. } => "replacement_underpriced",
            AddError::SenderFull { .. } => "sender_full",
            AddError::PoolFull { .. } => "pool_full",
            AddError::State(_) => "state_unreadable",
        }
    }
}

/// Result of a successful [`Pool::add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub id: Hash,
    pub replaced: Option<Hash>,
    pub evicted: Vec<Hash>,
}

/// A change to the pool's contents, for whoever mirrors it (persistence, gossip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(Hash),
    Removed(Hash),
}

struct Entry {
    tx: Tx,
    size: usize,
    seq: u64,
}

/// Fee-index key: lowest fee first; among equal fees the newest first, so eviction
/// takes the latecomer.
type FeeKey = (u64, Reverse<u64>, Hash);

pub struct Pool {
    config: PoolConfig,
    chain: Hash,
    entries: HashMap<Hash, Entry>,
    by_sender: HashMap<Address, BTreeMap<u64, Hash>>,
    /// What each sender's pending transactions cost together (amounts plus fees), so an
    /// admission checks affordability without walking the sender's chain.
    sender_cost: HashMap<Address, u64>,
    by_fee: BTreeSet<FeeKey>,
    bytes: usize,
    next_seq: u64,
    /// The propagation log: every pending transaction by the sequence number it got when
    /// it entered. Peers read it with a cursor ([`Pool::log_since`]); an entry that
    /// changes (re-added after a reorg, replaced) enters again at the end.
    log: BTreeMap<u64, Hash>,
    journal: Vec<Change>,
}

/// The encoded size of `tx`, refused beyond the largest transaction a pool holds.
fn checked_size(tx: &Tx) -> Result<usize, AddError> {
    let size = wire::encode_tx(tx).len();
    if size > MAX_TX_BYTES {
        return Err(AddError::TooLarge {
            size,
            max: MAX_TX_BYTES,
        });
    }
    Ok(size)
}

/// A pending transaction's cost; [`Tx::cost`] passed when it entered, so this never
/// saturates in practice.
fn cost_of(tx: &Tx) -> u64 {
    tx.amount.saturating_add(tx.fee)
}

impl Pool {
    /// `chain` is the genesis hash, which transaction signatures commit to.
    pub fn new(config: PoolConfig, chain: Hash) -> Pool {
        Pool {
            config,
            chain,
            entries: HashMap::new(),
            by_sender: HashMap::new(),
            sender_cost: HashMap::new(),
            by_fee: BTreeSet::new(),
            bytes: 0,
            next_seq: 0,
            log: BTreeMap::new(),
            journal: Vec::new(),
        }
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, id: &Hash) -> Option<&Tx> {
        self.entries.get(id).map(|e| &e.tx)
    }

    pub fn contains(&self, id: &Hash) -> bool {
        self.entries.contains_key(id)
    }

    /// The nonce the sender's next new transaction should carry.
    pub fn next_nonce(&self, sender: &Address, account_nonce: u64) -> u64 {
        account_nonce + self.by_sender.get(sender).map_or(0, |m| m.len() as u64)
    }

    /// Takes the changes since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.journal)
    }

    /// Up to `max` ids of pending transactions that entered the log at or after `cursor`,
    /// in log order, and the cursor to read from next.
    pub fn log_since(&self, cursor: u64, max: usize) -> (Vec<Hash>, u64) {
        let mut next = cursor;
        let ids = self
            .log
            .range(cursor..)
            .take(max)
            .map(|(seq, id)| {
                next = seq + 1;
                *id
            })
            .collect();
        (ids, next)
    }

    /// For each short id (salted with `block`, see [`chainmesh_proto::short_id`]) the
    /// pending transaction that has it, if any. Costs one hash per pending transaction.
    pub fn by_short_ids(&self, block: &Hash, short_ids: &[u64]) -> Vec<Option<Tx>> {
        let mine: HashMap<u64, &Hash> = self
            .entries
            .keys()
            .map(|id| (chainmesh_proto::short_id(block, id), id))
            .collect();
        short_ids
            .iter()
            .map(|s| {
                mine.get(s)
                    .and_then(|id| self.entries.get(*id))
                    .map(|e| e.tx.clone())
            })
            .collect()
    }

    /// The cursor after the newest log entry: a reader at it has seen everything.
    pub fn log_head(&self) -> u64 {
        self.next_seq
    }

    /// Validates `tx` against `state` and the pool, and adds it.
    pub fn add(&mut self, tx: Tx, state: &dyn AccountState) -> Result<Added, AddError> {
        self.add_inner(tx, state, true)
    }

    /// [`Pool::add`] for a transaction whose signature the caller verified already (in a
    /// batch, off the thread that owns the pool).
    pub fn add_verified(&mut self, tx: Tx, state: &dyn AccountState) -> Result<Added, AddError> {
        self.add_inner(tx, state, false)
    }

    fn add_inner(
        &mut self,
        tx: Tx,
        state: &dyn AccountState,
        check_sig: bool,
    ) -> Result<Added, AddError> {
        let size = checked_size(&tx)?;
        let id = tx.id();
        if self.entries.contains_key(&id) {
            return Err(AddError::AlreadyKnown);
        }
        if check_sig {
            tx.check_stateless(&self.chain, self.config.min_fee)?;
        } else {
            tx.check_stateless_unsigned(self.config.min_fee)?;
        }
        let acct = state.account(&tx.from).map_err(AddError::State)?;
        if tx.nonce < acct.nonce {
            return Err(TxError::NonceReused {
                expected: acct.nonce,
                got: tx.nonce,
            }
            .into());
        }
        let empty = BTreeMap::new();
        let pending = self.by_sender.get(&tx.from).unwrap_or(&empty);
        let next = acct.nonce + pending.len() as u64;
        if tx.nonce > next {
            return Err(TxError::NonceGap {
                expected: next,
                got: tx.nonce,
            }
            .into());
        }
        let replaced = pending.get(&tx.nonce).copied();
        match replaced.and_then(|r| self.entries.get(&r)) {
            Some(old) if tx.fee <= old.tx.fee => {
                return Err(AddError::ReplacementUnderpriced {
                    existing: old.tx.fee,
                    got: tx.fee,
                });
            }
            Some(_) => {}
            None if pending.len() >= self.config.max_per_sender => {
                return Err(AddError::SenderFull {
                    max: self.config.max_per_sender,
                });
            }
            None => {}
        }
        // The sender's whole chain, with this tx in its place, must be affordable.
        let pending_cost = self.sender_cost.get(&tx.from).copied().unwrap_or(0);
        let replaced_cost = replaced
            .and_then(|r| self.entries.get(&r))
            .map_or(0, |e| cost_of(&e.tx));
        let needed = tx
            .cost()?
            .checked_add(pending_cost.saturating_sub(replaced_cost))
            .ok_or(TxError::Overflow)?;
        if needed > acct.balance {
            return Err(TxError::InsufficientBalance {
                needed,
                available: acct.balance,
            }
            .into());
        }

        let evict = self.eviction_plan(&tx, size, replaced)?;
        if let Some(r) = replaced {
            self.remove_entry(&r);
        }
        for v in &evict {
            self.remove_entry(v);
        }
        self.insert(id, tx, size);
        Ok(Added {
            id,
            replaced,
            evicted: evict,
        })
    }

    /// Whether some pool at `account`'s confirmed state could admit `tx`, whose signature
    /// the caller verified: what a relay checks before forwarding a transaction without
    /// waiting for its own pool. Looser than [`Pool::add`] (it ignores the pending
    /// transactions, so a nonce up to `max_per_sender` ahead passes, and a replacement
    /// is judged on its own), never stricter: what fails here fails in every pool.
    pub fn precheck(tx: &Tx, account: Account, config: &PoolConfig) -> Result<(), AddError> {
        checked_size(tx)?;
        tx.check_stateless_unsigned(config.min_fee)?;
        if tx.nonce < account.nonce {
            return Err(TxError::NonceReused {
                expected: account.nonce,
                got: tx.nonce,
            }
            .into());
        }
        let furthest = account
            .nonce
            .saturating_add((config.max_per_sender as u64).saturating_sub(1));
        if tx.nonce > furthest {
            return Err(TxError::NonceGap {
                expected: furthest,
                got: tx.nonce,
            }
            .into());
        }
        let needed = tx.cost()?;
        if needed > account.balance {
            return Err(TxError::InsufficientBalance {
                needed,
                available: account.balance,
            }
            .into());
        }
        Ok(())
    }

    /// Which entries must go for `tx` to fit; refuses if that would evict a fee at least
    /// as high as the newcomer's, or an earlier nonce of the newcomer's own sender.
    fn eviction_plan(
        &self,
        tx: &Tx,
        size: usize,
        replaced: Option<Hash>,
    ) -> Result<Vec<Hash>, AddError> {
        let (mut count, mut bytes) = (self.entries.len(), self.bytes);
        if let Some(e) = replaced.and_then(|r| self.entries.get(&r)) {
            count -= 1;
            bytes -= e.size;
        }
        let mut victims: Vec<Hash> = Vec::new();
        let fits =
            |c: usize, b: usize| c < self.config.max_txs && b + size <= self.config.max_bytes;
        let mut candidates = self.by_fee.iter();
        while !fits(count, bytes) {
            let Some((fee, _, id)) = candidates.next() else {
                return Err(AddError::PoolFull { lowest: 0 });
            };
            if Some(*id) == replaced || victims.contains(id) {
                continue;
            }
            let full = AddError::PoolFull { lowest: *fee };
            if *fee >= tx.fee {
                return Err(full);
            }
            let Some(e) = self.entries.get(id) else {
                continue;
            };
            if e.tx.from == tx.from {
                return Err(full);
            }
            // Evicting a nonce strands the sender's later ones: they go too.
            let tail = self
                .by_sender
                .get(&e.tx.from)
                .into_iter()
                .flat_map(|m| m.range(e.tx.nonce..));
            for (_, t) in tail {
                if !victims.contains(t) {
                    if let Some(te) = self.entries.get(t) {
                        count -= 1;
                        bytes -= te.size;
                    }
                    victims.push(*t);
                }
            }
        }
        Ok(victims)
    }

    fn insert(&mut self, id: Hash, tx: Tx, size: usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_sender
            .entry(tx.from)
            .or_default()
            .insert(tx.nonce, id);
        self.by_fee.insert((tx.fee, Reverse(seq), id));
        let cost = self.sender_cost.entry(tx.from).or_default();
        *cost = cost.saturating_add(cost_of(&tx));
        self.bytes += size;
        self.log.insert(seq, id);
        self.entries.insert(id, Entry { tx, size, seq });
        self.journal.push(Change::Added(id));
    }

    fn remove_entry(&mut self, id: &Hash) -> Option<Tx> {
        let e = self.entries.remove(id)?;
        self.by_fee.remove(&(e.tx.fee, Reverse(e.seq), *id));
        self.log.remove(&e.seq);
        if let Some(m) = self.by_sender.get_mut(&e.tx.from) {
            m.remove(&e.tx.nonce);
            if m.is_empty() {
                self.by_sender.remove(&e.tx.from);
            }
        }
        if let Some(c) = self.sender_cost.get_mut(&e.tx.from) {
            *c = c.saturating_sub(cost_of(&e.tx));
            if !self.by_sender.contains_key(&e.tx.from) {
                self.sender_cost.remove(&e.tx.from);
            }
        }
        self.bytes -= e.size;
        self.journal.push(Change::Removed(*id));
        Some(e.tx)
    }

    /// Up to `max` transactions in block order: highest fee first among each sender's
    /// next nonce, so a sender's transactions stay in nonce order.
    pub fn best(&self, max: usize) -> Vec<Tx> {
        let mut cursors: HashMap<Address, std::collections::btree_map::Iter<'_, u64, Hash>> =
            HashMap::new();
        let mut heap = BinaryHeap::new();
        for (sender, txs) in &self.by_sender {
            let mut it = txs.iter();
            if let Some((_, id)) = it.next()
                && let Some(e) = self.entries.get(id)
            {
                heap.push((e.tx.fee, Reverse(e.seq), *id));
                cursors.insert(*sender, it);
            }
        }
        let mut out = Vec::new();
        while out.len() < max {
            let Some((_, _, id)) = heap.pop() else { break };
            let Some(e) = self.entries.get(&id) else {
                continue;
            };
            if let Some(next) = cursors.get_mut(&e.tx.from).and_then(|c| c.next())
                && let Some(n) = self.entries.get(next.1)
            {
                heap.push((n.tx.fee, Reverse(n.seq), *next.1));
            }
            out.push(e.tx.clone());
        }
        out
    }

    /// Removes transactions the chain no longer accepts (`ids`, e.g. found invalid while
    /// building a block), with the later nonces of their senders.
    pub fn remove_invalid(&mut self, ids: &[Hash], state: &dyn AccountState) {
        let mut senders = BTreeSet::new();
        for id in ids {
            if let Some(tx) = self.remove_entry(id) {
                senders.insert(tx.from);
            }
        }
        for s in senders {
            self.recheck_sender(&s, Vec::new(), state);
        }
    }

    /// Brings the pool in line with a new canonical chain: drops what `applied` included,
    /// returns what `reverted` included (if still valid on the new chain), and re-checks
    /// every sender involved. `state` is the state at the new tip.
    pub fn on_new_tip(&mut self, applied: &[Block], reverted: &[Block], state: &dyn AccountState) {
        let mut returned: BTreeMap<Address, Vec<Tx>> = BTreeMap::new();
        for b in reverted {
            for tx in &b.txs {
                returned.entry(tx.from).or_default().push(tx.clone());
            }
        }
        for b in applied {
            for tx in &b.txs {
                self.remove_entry(&tx.id());
                returned.entry(tx.from).or_default();
            }
        }
        for (sender, txs) in returned {
            self.recheck_sender(&sender, txs, state);
        }
    }

    /// Rebuilds one sender's chain from its pending transactions plus `extra`, keeping
    /// what is still valid in nonce order.
    fn recheck_sender(&mut self, sender: &Address, extra: Vec<Tx>, state: &dyn AccountState) {
        if extra.is_empty() {
            self.prune_sender(sender, state);
            return;
        }
        let ids: Vec<Hash> = self
            .by_sender
            .get(sender)
            .map(|m| m.values().copied().collect())
            .unwrap_or_default();
        let mut txs = extra;
        for id in ids {
            if let Some(tx) = self.remove_entry(&id) {
                txs.push(tx);
            }
        }
        // Lower nonce first; for one nonce, higher fee first so it wins the slot. The
        // signatures were checked when these entered the pool or their block.
        txs.sort_by_key(|t| (t.nonce, Reverse(t.fee)));
        for tx in txs {
            let _ = self.add_inner(tx, state, false);
        }
    }

    /// After blocks that only moved the sender's account forward: drops the pending
    /// transactions that no longer apply (nonce used, or unaffordable, and every later
    /// one then), leaving the rest where they are, in the log too, so peers are not told
    /// about them again. What [`Pool::recheck_sender`] keeps is the same.
    fn prune_sender(&mut self, sender: &Address, state: &dyn AccountState) {
        let Some(pending) = self.by_sender.get(sender) else {
            return;
        };
        let Ok(acct) = state.account(sender) else {
            // Unknown state: keep them; the next block or production checks again.
            return;
        };
        let (mut next, mut spent, mut valid) = (acct.nonce, 0u64, true);
        let mut drop = Vec::new();
        for (nonce, id) in pending {
            let cost = self.entries.get(id).map_or(u64::MAX, |e| cost_of(&e.tx));
            let affordable = spent
                .checked_add(cost)
                .is_some_and(|total| total <= acct.balance);
            if *nonce < acct.nonce {
                drop.push(*id);
            } else if valid && *nonce == next && affordable {
                next += 1;
                spent += cost;
            } else {
                valid = false;
                drop.push(*id);
            }
        }
        for id in drop {
            self.remove_entry(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::{Keypair, PublicKey};

    struct Fx {
        chain: Hash,
        keys: Vec<Keypair>,
        state: BTreeMap<Address, Account>,
    }

    fn fx(n: usize, balance: u64) -> Fx {
        let keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate()).collect();
        let state = keys
            .iter()
            .map(|k| (k.public(), Account { balance, nonce: 0 }))
            .collect();
        Fx {
            chain: Hash::digest(b"pool-test"),
            keys,
            state,
        }
    }

    impl Fx {
        fn tx(&self, k: usize, amount: u64, fee: u64, nonce: u64) -> Tx {
            Tx::transfer(
                &self.keys[k],
                &self.chain,
                PublicKey([0xee; 32]),
                amount,
                fee,
                nonce,
            )
        }
        fn pool(&self, cfg: PoolConfig) -> Pool {
            Pool::new(cfg, self.chain)
        }
    }

    #[test]
    fn precheck_refuses_what_no_pool_admits_and_passes_what_one_would() {
        let f = fx(1, 100);
        let cfg = PoolConfig {
            max_per_sender: 4,
            ..PoolConfig::default()
        };
        let acct = Account {
            balance: 100,
            nonce: 3,
        };
        let check = |tx: &Tx| Pool::precheck(tx, acct, &cfg);
        assert_eq!(check(&f.tx(0, 5, 1, 3)), Ok(()));
        // Pending nonces are not known here: anything within the sender's window passes.
        assert_eq!(check(&f.tx(0, 5, 1, 6)), Ok(()));
        assert_eq!(
            check(&f.tx(0, 5, 1, 7)),
            Err(AddError::Invalid(TxError::NonceGap {
                expected: 6,
                got: 7
            }))
        );
        assert_eq!(
            check(&f.tx(0, 5, 1, 2)),
            Err(AddError::Invalid(TxError::NonceReused {
                expected: 3,
                got: 2
            }))
        );
        assert_eq!(
            check(&f.tx(0, 100, 1, 3)),
            Err(AddError::Invalid(TxError::InsufficientBalance {
                needed: 101,
                available: 100
            }))
        );
        assert_eq!(
            check(&f.tx(0, 5, 0, 3)),
            Err(AddError::Invalid(TxError::FeeTooLow { min: 1, got: 0 }))
        );
        assert_eq!(
            check(&f.tx(0, 0, 1, 3)),
            Err(AddError::Invalid(TxError::ZeroAmount))
        );
        // Never stricter than the pool: what the pool admits passes.
        let state: BTreeMap<Address, Account> = [(f.keys[0].public(), acct)].into();
        let mut p = f.pool(cfg.clone());
        for nonce in 3..7 {
            let tx = f.tx(0, 5, 1, nonce);
            p.add(tx.clone(), &state).unwrap();
            assert_eq!(check(&tx), Ok(()));
        }
    }

    #[test]
    fn validation_errors_name_the_cause() {
        let f = fx(1, 100);
        let mut p = f.pool(PoolConfig::default());
        let mut bad = f.tx(0, 5, 1, 0);
        bad.signature.0[0] ^= 1;
        assert_eq!(
            p.add(bad, &f.state),
            Err(AddError::Invalid(TxError::BadSignature))
        );
        assert_eq!(
            p.add(f.tx(0, 5, 1, 1), &f.state),
            Err(AddError::Invalid(TxError::NonceGap {
                expected: 0,
                got: 1
            }))
        );
        assert_eq!(
            p.add(f.tx(0, 100, 1, 0), &f.state),
            Err(AddError::Invalid(TxError::InsufficientBalance {
                needed: 101,
                available: 100
            }))
        );
        assert_eq!(
            p.add(f.tx(0, 5, 0, 0), &f.state),
            Err(AddError::Invalid(TxError::FeeTooLow { min: 1, got: 0 }))
        );
        let ok = f.tx(0, 5, 1, 0);
        p.add(ok.clone(), &f.state).unwrap();
        assert_eq!(p.add(ok, &f.state), Err(AddError::AlreadyKnown));
        let mut st = f.state.clone();
        st.insert(
            f.keys[0].public(),
            Account {
                balance: 100,
                nonce: 3,
            },
        );
        assert_eq!(
            p.add(f.tx(0, 5, 1, 2), &st),
            Err(AddError::Invalid(TxError::NonceReused {
                expected: 3,
                got: 2
            }))
        );
        // The balance check covers the sender's whole pending chain.
        assert!(matches!(
            p.add(f.tx(0, 95, 1, 1), &f.state),
            Err(AddError::Invalid(TxError::InsufficientBalance {
                needed: 102,
                ..
            }))
        ));
    }

    #[test]
    fn best_orders_by_fee_and_keeps_nonce_order() {
        let f = fx(3, 1_000);
        let mut p = f.pool(PoolConfig::default());
        // Sender 0: fees 1, 9 (nonce order forces 1 first). Sender 1: fee 5. Sender 2: 3.
        for tx in [
            f.tx(0, 1, 1, 0),
            f.tx(0, 1, 9, 1),
            f.tx(1, 1, 5, 0),
            f.tx(2, 1, 3, 0),
        ] {
            p.add(tx, &f.state).unwrap();
        }
        let fees: Vec<u64> = p.best(10).iter().map(|t| t.fee).collect();
        assert_eq!(fees, vec![5, 3, 1, 9]);
        assert_eq!(p.best(2).len(), 2);
        assert_eq!(p.next_nonce(&f.keys[0].public(), 0), 2);
    }

    #[test]
    fn replacement_only_by_higher_fee() {
        let f = fx(1, 1_000);
        let mut p = f.pool(PoolConfig::default());
        let a = p.add(f.tx(0, 10, 5, 0), &f.state).unwrap();
        assert_eq!(
            p.add(f.tx(0, 11, 5, 0), &f.state),
            Err(AddError::ReplacementUnderpriced {
                existing: 5,
                got: 5
            })
        );
        let b = p.add(f.tx(0, 11, 6, 0), &f.state).unwrap();
        assert_eq!(b.replaced, Some(a.id));
        assert_eq!(p.len(), 1);
        assert!(p.get(&a.id).is_none());
    }

    #[test]
    fn affordability_follows_replacements_and_inclusions() {
        let f = fx(1, 100);
        let mut p = f.pool(PoolConfig::default());
        p.add(f.tx(0, 39, 1, 0), &f.state).unwrap();
        p.add(f.tx(0, 39, 1, 1), &f.state).unwrap();
        // 80 pending: 21 more is one too many.
        assert!(matches!(
            p.add(f.tx(0, 20, 1, 2), &f.state),
            Err(AddError::Invalid(TxError::InsufficientBalance {
                needed: 101,
                ..
            }))
        ));
        // Replacing nonce 1 by a cheaper amount frees room (its old cost no longer counts).
        p.add(f.tx(0, 9, 2, 1), &f.state).unwrap();
        p.add(f.tx(0, 48, 1, 2), &f.state).unwrap();
        assert!(matches!(
            p.add(f.tx(0, 1, 1, 3), &f.state),
            Err(AddError::Invalid(TxError::InsufficientBalance {
                needed: 102,
                ..
            }))
        ));
        // Nonce 0 included: its cost leaves with it (the account paid it).
        let mut st = f.state.clone();
        st.insert(
            f.keys[0].public(),
            Account {
                balance: 62,
                nonce: 1,
            },
        );
        p.on_new_tip(&[block_with(vec![f.tx(0, 39, 1, 0)])], &[], &st);
        assert_eq!(p.len(), 2);
        p.add(f.tx(0, 1, 1, 3), &st).unwrap();
        assert!(matches!(
            p.add(f.tx(0, 1, 1, 4), &st),
            Err(AddError::Invalid(TxError::InsufficientBalance {
                needed: 64,
                ..
            }))
        ));
    }

    #[test]
    fn limits_evict_lowest_fee_with_its_sender_tail() {
        let f = fx(4, 1_000);
        let cfg = PoolConfig {
            max_txs: 4,
            ..PoolConfig::default()
        };
        let mut p = f.pool(cfg);
        let low0 = p.add(f.tx(0, 1, 2, 0), &f.state).unwrap().id;
        let low1 = p.add(f.tx(0, 1, 8, 1), &f.state).unwrap().id;
        p.add(f.tx(1, 1, 5, 0), &f.state).unwrap();
        p.add(f.tx(2, 1, 6, 0), &f.state).unwrap();
        // Fee 1 cannot push out anything.
        assert_eq!(
            p.add(f.tx(3, 1, 1, 0), &f.state),
            Err(AddError::PoolFull { lowest: 2 })
        );
        // Fee 7 evicts the fee-2 tx and, with it, sender 0's stranded nonce 1.
        let added = p.add(f.tx(3, 1, 7, 0), &f.state).unwrap();
        assert_eq!(added.evicted, vec![low0, low1]);
        assert_eq!(p.len(), 3);
        // Per-sender cap.
        let mut q = f.pool(PoolConfig {
            max_per_sender: 2,
            ..PoolConfig::default()
        });
        q.add(f.tx(0, 1, 1, 0), &f.state).unwrap();
        q.add(f.tx(0, 1, 1, 1), &f.state).unwrap();
        assert_eq!(
            q.add(f.tx(0, 1, 1, 2), &f.state),
            Err(AddError::SenderFull { max: 2 })
        );
        // Byte limit.
        let one = wire::encode_tx(&f.tx(0, 1, 1, 0)).len();
        let mut r = f.pool(PoolConfig {
            max_bytes: one * 2,
            ..PoolConfig::default()
        });
        r.add(f.tx(0, 1, 1, 0), &f.state).unwrap();
        r.add(f.tx(1, 1, 1, 0), &f.state).unwrap();
        assert!(matches!(
            r.add(f.tx(2, 1, 1, 0), &f.state),
            Err(AddError::PoolFull { .. })
        ));
        assert!(r.bytes() <= one * 2);
    }

    fn block_with(txs: Vec<Tx>) -> Block {
        use chainmesh_proto::{Header, Signature};
        Block {
            header: Header {
                parent: Hash::ZERO,
                height: 1,
                slot: 1,
                timestamp_ms: 0,
                tx_root: Block::tx_root(&txs),
                state_root: Hash::ZERO,
                producer: PublicKey([0; 32]),
                signature: Signature::ZERO,
            },
            txs,
        }
    }

    #[test]
    fn inclusion_leaves_the_rest_in_place_and_prunes_what_no_longer_applies() {
        let f = fx(2, 100);
        let mut p = f.pool(PoolConfig::default());
        // Sender 0: nonces 0..3, each costing 21 of 100.
        let mine: Vec<Tx> = (0..4).map(|n| f.tx(0, 20, 1, n)).collect();
        // Sender 1: nonces 0 and 1.
        let theirs: Vec<Tx> = (0..2).map(|n| f.tx(1, 20, 1, n)).collect();
        for t in mine.iter().chain(&theirs) {
            p.add(t.clone(), &f.state).unwrap();
        }
        let head = p.log_head();
        // A block includes sender 0's nonce 0; elsewhere sender 1 spent most of its
        // balance, so its nonce 1 (cost 21) is no longer affordable after nonce 0.
        let mut st = f.state.clone();
        st.insert(
            f.keys[0].public(),
            Account {
                balance: 79,
                nonce: 1,
            },
        );
        st.insert(
            f.keys[1].public(),
            Account {
                balance: 30,
                nonce: 0,
            },
        );
        let b = block_with(vec![mine[0].clone(), f.tx(1, 1, 1, 99)]);
        p.on_new_tip(std::slice::from_ref(&b), &[], &st);
        let left: BTreeSet<Hash> = p.log_since(0, 100).0.into_iter().collect();
        let expected: BTreeSet<Hash> = [&mine[1], &mine[2], &mine[3], &theirs[0]]
            .iter()
            .map(|t| t.id())
            .collect();
        assert_eq!(left, expected);
        // Nothing re-entered the log: peers are not told about them again.
        assert_eq!(p.log_head(), head);
        assert!(p.log_since(head, 100).0.is_empty());
    }

    #[test]
    fn inclusion_removes_and_reorg_returns() {
        let f = fx(2, 1_000);
        let mut p = f.pool(PoolConfig::default());
        let t0 = f.tx(0, 10, 1, 0);
        let t1 = f.tx(0, 10, 1, 1);
        let u0 = f.tx(1, 10, 1, 0);
        for t in [&t0, &t1, &u0] {
            p.add(t.clone(), &f.state).unwrap();
        }
        // A block includes t0 and u0: state moves on.
        let mut st = f.state.clone();
        st.insert(
            f.keys[0].public(),
            Account {
                balance: 989,
                nonce: 1,
            },
        );
        st.insert(
            f.keys[1].public(),
            Account {
                balance: 989,
                nonce: 1,
            },
        );
        let b = block_with(vec![t0.clone(), u0.clone()]);
        p.on_new_tip(std::slice::from_ref(&b), &[], &st);
        assert_eq!(p.len(), 1);
        assert!(p.contains(&t1.id()));
        // A reorg undoes that block: state goes back, t0 and u0 come home, t1 stays.
        p.on_new_tip(&[], &[b], &f.state);
        assert_eq!(p.len(), 3);
        let order: Vec<Hash> = p
            .best(10)
            .iter()
            .filter(|t| t.from == t0.from)
            .map(Tx::id)
            .collect();
        assert_eq!(order, vec![t0.id(), t1.id()]);
    }

    #[test]
    fn a_competing_inclusion_drops_the_stale_nonce_chain() {
        let f = fx(1, 100);
        let mut p = f.pool(PoolConfig::default());
        p.add(f.tx(0, 10, 1, 0), &f.state).unwrap();
        p.add(f.tx(0, 10, 1, 1), &f.state).unwrap();
        // Another node's block spent nonce 0 differently, leaving 40.
        let other = f.tx(0, 59, 1, 0);
        let mut st = f.state.clone();
        st.insert(
            f.keys[0].public(),
            Account {
                balance: 40,
                nonce: 1,
            },
        );
        p.on_new_tip(&[block_with(vec![other])], &[], &st);
        // Our nonce 0 is gone; nonce 1 still fits (11 <= 40).
        assert_eq!(p.len(), 1);
        assert_eq!(p.best(1)[0].nonce, 1);
    }

    #[test]
    fn the_log_serves_entries_in_order_and_moves_changed_ones_to_the_end() {
        let f = fx(2, 1_000);
        let mut p = f.pool(PoolConfig::default());
        let a0 = p.add(f.tx(0, 10, 1, 0), &f.state).unwrap().id;
        let b0 = p.add(f.tx(1, 10, 1, 0), &f.state).unwrap().id;
        let a1 = p.add(f.tx(0, 10, 1, 1), &f.state).unwrap().id;
        let (ids, next) = p.log_since(0, 2);
        assert_eq!(ids, vec![a0, b0]);
        let (ids, next) = p.log_since(next, 10);
        assert_eq!(ids, vec![a1]);
        assert_eq!(next, p.log_head());
        assert_eq!(p.log_since(next, 10), (vec![], next));
        // A replacement enters at the end; the replaced entry leaves the log.
        let b0r = p.add(f.tx(1, 10, 5, 0), &f.state).unwrap().id;
        assert_eq!(p.log_since(next, 10).0, vec![b0r]);
        assert_eq!(p.log_since(0, 10).0, vec![a0, a1, b0r]);
        let _ = b0;
    }

    #[test]
    fn journal_reports_every_change() {
        let f = fx(1, 1_000);
        let mut p = f.pool(PoolConfig::default());
        let a = p.add(f.tx(0, 1, 1, 0), &f.state).unwrap().id;
        let b = p.add(f.tx(0, 1, 2, 0), &f.state).unwrap().id;
        assert_eq!(
            p.take_changes(),
            vec![Change::Added(a), Change::Removed(a), Change::Added(b)]
        );
        assert!(p.take_changes().is_empty());
    }
}
