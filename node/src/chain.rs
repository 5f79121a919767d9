//! The chain task: the one owner of the store and the mempool, and the block producer.
//!
//! It runs on a thread of its own (sled calls block). API handlers reach it through a
//! bounded command channel; it answers after the change they asked for is durable. The
//! fsync runs on a blocking thread while the task goes on with other work: whatever
//! waits to be made visible (answers, announcements, the reported tip) is released when
//! the flush that covers it completes, and everything that came in during one flush
//! shares the next (group commit), so the cost of durability grows neither with the
//! request rate nor sits in front of peers' transactions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chainmesh_chain_sync::state::SigCheck;
use chainmesh_chain_sync::store::{ImportError, Tip};
use chainmesh_chain_sync::sync::ImportResult;
use chainmesh_chain_sync::{ImportOutcome, Store};
use chainmesh_mempool::{AccountState, AddError};

use crate::pool::{PoolState, SharedPool};
use chainmesh_proto::{Address, Hash, Keypair, Tx};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

/// Most blocks, and transactions, written in one transaction: large enough that the
/// per-transaction cost vanishes, small enough that one write stays a few MB.
const MAX_RUN: usize = 256;
const MAX_RUN_TXS: usize = 16_384;
/// Most commands taken in one round before a flush.
const MAX_BATCH: usize = 256;
/// Capacity of the command channel: beyond it the API answers 503 at once.
pub const COMMAND_QUEUE: usize = 1024;

#[derive(Debug)]
pub enum Command {
    SubmitTx {
        tx: Tx,
        reply: oneshot::Sender<Result<Hash, SubmitError>>,
    },
    NextNonce {
        addr: Address,
        reply: oneshot::Sender<u64>,
    },
    /// Blocks from sync, in order, imported in runs; reported once a flush covers them.
    /// `sigs_verified`: the caller verified their signatures (the network task batch-
    /// verifies transactions; the API, a submitted block's header too). `announce`: a
    /// block of the run that becomes our tip is announced to peers once durable (a block
    /// a client submitted; peers' blocks are relayed by the network task itself).
    ImportBlocks {
        blocks: Vec<chainmesh_proto::Block>,
        sigs_verified: bool,
        announce: bool,
        reply: oneshot::Sender<ImportResult>,
    },
}

/// What the chain task tells the network task to spread.
#[derive(Debug, Clone)]
pub enum ChainEvent {
    /// A transaction submitted through the API entered the pool: publish it.
    NewTx(Tx),
    /// A block to announce: one we produced, or one a client submitted that became our
    /// tip.
    Announce(chainmesh_proto::Block),
}

/// Capacity of the event channel. When it is full an event is dropped: gossip is an
/// optimisation, and pool sync and block sync deliver what it misses.
pub const EVENT_QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Rejected(#[from] AddError),
    #[error("storage error: {0}")]
    Storage(String),
}

/// What the node reports as its state. Published only after the tip it names is durable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub version: String,
    pub network_id: String,
    pub genesis: Hash,
    pub height: u64,
    pub tip: Hash,
    pub tip_slot: u64,
    pub mempool_txs: usize,
    pub mempool_bytes: usize,
    /// The authority this node produces for, if any.
    pub producer: Option<Address>,
    /// The pool's log head: peers holding a permit at a lower cursor have news.
    #[serde(default)]
    pub pool_head: u64,
    /// Sync progress (filled in by the API from the network task).
    #[serde(default)]
    pub sync: crate::p2p::SyncView,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct ChainService {
    store: Store,
    pool: SharedPool,
    producer: Option<Keypair>,
    status: watch::Sender<NodeStatus>,
    events: Option<mpsc::Sender<ChainEvent>>,
    /// The tip as of the last completed flush: the one reported.
    durable: Tip,
    /// Held until the next flush starts, then until it completes.
    waiting: Vec<AfterFlush>,
    /// The slot `on_slot` last looked at: a gap to the next means the chain task was busy
    /// past whole slots, and ours among them went without a block.
    last_slot: u64,
}

/// What becomes visible only once durable.
enum AfterFlush {
    Reply(
        oneshot::Sender<Result<Hash, SubmitError>>,
        Result<Hash, SubmitError>,
    ),
    Announce(chainmesh_proto::Block),
}

/// A flush running on a blocking thread, and what it makes durable.
struct Flushing {
    done: tokio::task::JoinHandle<Result<(), String>>,
    tip: Tip,
    released: Vec<AfterFlush>,
}

impl ChainService {
    pub fn new(
        store: Store,
        pool: SharedPool,
        producer: Option<Keypair>,
    ) -> (Self, watch::Receiver<NodeStatus>) {
        let tip = store.tip().clone();
        let g = pool.gauges();
        let (mempool_txs, mempool_bytes, pool_head) = (g.txs, g.bytes, g.log_head);
        let status = NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            network_id: store.genesis().network_id.clone(),
            genesis: store.genesis_hash(),
            height: tip.height,
            tip: tip.hash,
            tip_slot: tip.slot,
            mempool_txs,
            mempool_bytes,
            producer: producer.as_ref().map(Keypair::public),
            pool_head,
            sync: Default::default(),
        };
        let (tx, rx) = watch::channel(status);
        (
            ChainService {
                store,
                pool,
                producer,
                status: tx,
                events: None,
                durable: tip,
                waiting: Vec::new(),
                last_slot: 0,
            },
            rx,
        )
    }

    /// Where to report transactions and blocks for the network to spread.
    pub fn with_events(mut self, events: mpsc::Sender<ChainEvent>) -> Self {
        self.events = Some(events);
        self
    }

    fn emit(&self, e: ChainEvent) {
        if let Some(tx) = &self.events
            && let Err(mpsc::error::TrySendError::Full(e)) = tx.try_send(e)
        {
            tracing::debug!(event = ?std::mem::discriminant(&e), "network busy: an announcement was dropped");
        }
    }

    /// The pool as it is, the tip as of the last flush.
    fn publish_status(&self) {
        let tip = &self.durable;
        let pool = self.pool.gauges();
        self.status.send_modify(|s| {
            s.height = tip.height;
            s.tip = tip.hash;
            s.tip_slot = tip.slot;
            s.mempool_txs = pool.txs;
            s.mempool_bytes = pool.bytes;
            s.pool_head = pool.log_head;
        });
    }

    /// Runs until every command sender is gone; flushes on the way out.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut flushing: Option<Flushing> = None;
        loop {
            if flushing.is_none() {
                flushing = self.start_flush();
            }
            let wait = self.until_next_slot();
            tokio::select! {
                done = async {
                    match flushing.as_mut() {
                        Some(f) => (&mut f.done).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(f) = flushing.take() {
                        let result = done.unwrap_or_else(|e| Err(format!("flush task: {e}")));
                        self.flushed(f.tip, f.released, result);
                    }
                }
                first = commands.recv() => {
                    let Some(first) = first else { break };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match commands.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    self.handle_batch(batch);
                }
                _ = tokio::time::sleep(wait) => self.on_slot(),
            }
        }
        if let Some(f) = flushing.take() {
            let result = f
                .done
                .await
                .unwrap_or_else(|e| Err(format!("flush task: {e}")));
            self.flushed(f.tip, f.released, result);
        }
        self.flush_now();
        tracing::info!("chain task stopped");
    }

    /// Flushes on this thread and releases everything waiting.
    fn flush_now(&mut self) {
        let result = self.store.flush().map(|_| ()).map_err(|e| e.to_string());
        let (tip, waiting) = (self.store.tip().clone(), std::mem::take(&mut self.waiting));
        self.flushed(tip, waiting, result);
    }

    /// Starts a flush if anything waits for one or the tip moved since the last.
    fn start_flush(&mut self) -> Option<Flushing> {
        let tip = self.store.tip().clone();
        if self.waiting.is_empty() && tip == self.durable {
            return None;
        }
        let db = self.store.db().clone();
        Some(Flushing {
            done: tokio::task::spawn_blocking(move || {
                db.flush().map(|_| ()).map_err(|e| e.to_string())
            }),
            tip,
            released: std::mem::take(&mut self.waiting),
        })
    }

    /// Releases what a flush made durable; on failure, answers with the error and
    /// announces nothing (the next flush tries again for the tip).
    fn flushed(&mut self, tip: Tip, released: Vec<AfterFlush>, result: Result<(), String>) {
        if let Err(e) = &result {
            tracing::error!(error = %e, "flush failed: nothing acknowledged until one succeeds");
        }
        for a in released {
            match (a, &result) {
                (AfterFlush::Reply(reply, r), Ok(())) => {
                    let _ = reply.send(r);
                }
                (AfterFlush::Reply(reply, _), Err(e)) => {
                    let _ = reply.send(Err(SubmitError::Storage(e.clone())));
                }
                (AfterFlush::Announce(b), Ok(())) => self.emit(ChainEvent::Announce(b)),
                (_, Err(_)) => {}
            }
        }
        if result.is_ok() && tip != self.durable {
            self.durable = tip;
        }
        self.publish_status();
    }

    /// Until the start of the first slot `on_slot` has not looked at yet. Not "the slot
    /// after now": when a command or a flush wins the select at the moment the timer is
    /// due, the loop comes back just after the slot started, and aiming at the next one
    /// from there skipped a whole slot (a producer under load missed ~9% of its slots,
    /// each woken exactly one slot late).
    fn until_next_slot(&self) -> Duration {
        let g = self.store.genesis();
        let now = now_ms();
        let target = if self.last_slot == 0 {
            g.slot_at(now) + 1
        } else {
            self.last_slot + 1
        };
        let next = g.slot_start(target).unwrap_or(u64::MAX).max(g.timestamp_ms);
        Duration::from_millis(next.saturating_sub(now).max(1))
    }

    fn handle_batch(&mut self, batch: Vec<Command>) {
        let mut replies = Vec::new();
        let mut publish = Vec::new();
        let mut wrote = false;
        for cmd in batch {
            match cmd {
                Command::SubmitTx { tx, reply } => {
                    let r = self.add_tx(tx.clone(), &mut wrote);
                    if r.is_ok() {
                        publish.push(tx);
                    }
                    replies.push((reply, r));
                }
                Command::ImportBlocks {
                    blocks,
                    sigs_verified,
                    announce,
                    reply,
                } => {
                    let sig = if sigs_verified {
                        SigCheck::AlreadyVerified
                    } else {
                        SigCheck::Verify
                    };
                    let last = blocks.last().filter(|_| announce).cloned();
                    let r = self.import_blocks(blocks, sig);
                    if let Some(b) = last
                        && matches!(r, ImportResult::Done)
                        && self.store.tip().hash == b.hash()
                    {
                        self.waiting.push(AfterFlush::Announce(b));
                    }
                    let _ = reply.send(r);
                }
                Command::NextNonce { addr, reply } => {
                    let acct = PoolState(self.store.account_reader())
                        .account(&addr)
                        .unwrap_or_default();
                    let _ = reply.send(self.pool.lock().pool().next_nonce(&addr, acct.nonce));
                }
            }
        }
        // Spread at once: a transaction is the sender's, not a promise of ours, and
        // peers holding it if we crashed before the flush loses nothing. The answer
        // to the client waits for the flush.
        for tx in publish {
            self.emit(ChainEvent::NewTx(tx));
        }
        if wrote {
            self.waiting.extend(
                replies
                    .into_iter()
                    .map(|(reply, r)| AfterFlush::Reply(reply, r)),
            );
        } else {
            for (reply, r) in replies {
                let _ = reply.send(r);
            }
        }
        self.publish_status();
    }

    /// Adds peers' transactions with one write for all of them.
    fn add_tx(&mut self, tx: Tx, wrote: &mut bool) -> Result<Hash, SubmitError> {
        let r = self
            .pool
            .add_one(tx, &PoolState(self.store.account_reader()));
        *wrote |= r.is_ok();
        r
    }

    fn on_slot(&mut self) {
        let Some(key) = self.producer.clone() else {
            return;
        };
        let g = self.store.genesis();
        let now = now_ms();
        let slot = g.slot_at(now);
        let last = std::mem::replace(&mut self.last_slot, slot);
        if last != 0 && slot > last + 1 {
            // Bounded: a clock jump must not make this walk millions of slots.
            let skipped = (last + 1..slot).take(10_000);
            let missed = skipped
                .filter(|s| g.producer_for(*s) == &key.public())
                .count();
            if missed > 0 {
                let late_ms = g
                    .slot_start(last + 1)
                    .map_or(0, |start| now.saturating_sub(start));
                tracing::warn!(
                    missed,
                    first = last + 1,
                    late_ms,
                    "missed our slots: the chain task was busy past them"
                );
                self.pool.metrics().missed_slots.inc_by(missed as u64);
            }
        }
        if g.producer_for(slot) != &key.public()
            || slot <= self.store.tip().slot
            || now < g.timestamp_ms
        {
            return;
        }
        if let Err(e) = self.produce(&key, slot) {
            tracing::error!(slot, error = %e, "block production failed");
        }
    }

    fn produce(&mut self, key: &Keypair, slot: u64) -> anyhow::Result<()> {
        let max = self.store.genesis().limits.max_block_txs as usize;
        let candidates = self.pool.lock().pool().best(max);
        let built = self.store.build_block(key, slot, candidates)?;
        if !built.invalid.is_empty() {
            let ids: Vec<Hash> = built.invalid.iter().map(|(h, _)| *h).collect();
            for (id, why) in &built.invalid {
                tracing::debug!(tx = %id, error = %why, "dropping a pool transaction that no longer applies");
            }
            self.pool
                .lock()
                .remove_invalid(&ids, &PoolState(self.store.account_reader()))?;
        }
        let txs = built.block.txs.len();
        let hash = built.block.hash();
        let block = built.block.clone();
        if let ImportOutcome::NewTip { tip, .. } =
            self.import_block_with(built.block, SigCheck::AlreadyVerified, "produced")?
        {
            tracing::info!(height = tip.height, slot, txs, hash = %hash, "produced block");
            // Announced once durable: a producer that crashed with its block announced
            // but lost would produce another for the same slot.
            self.waiting.push(AfterFlush::Announce(block));
        }
        Ok(())
    }

    /// Imports a block (ours or a peer's) and brings the mempool in line: included
    /// transactions leave it, those of blocks a reorg abandoned return. The new tip is
    /// reported after the next flush.
    pub fn import_block(&mut self, block: chainmesh_proto::Block) -> anyhow::Result<ImportOutcome> {
        self.import_block_with(block, SigCheck::Verify, "peers")
    }

    fn import_block_with(
        &mut self,
        block: chainmesh_proto::Block,
        sig: SigCheck,
        source: &'static str,
    ) -> anyhow::Result<ImportOutcome> {
        let hash = block.hash();
        let outcome = self.store.import_with(block, now_ms(), sig)?;
        if !matches!(outcome, ImportOutcome::AlreadyKnown) {
            tracing::trace!(target: "chainmesh::seen", block = %hash, "block");
        }
        if let ImportOutcome::NewTip {
            applied, reverted, ..
        } = &outcome
        {
            self.pool
                .metrics()
                .imported(source, applied, reverted.len());
            self.after_new_tip(applied, reverted)?;
        }
        Ok(outcome)
    }

    fn after_new_tip(
        &mut self,
        applied: &[chainmesh_proto::Block],
        reverted: &[chainmesh_proto::Block],
    ) -> anyhow::Result<()> {
        // Written after the pool is released: peers' transactions wait for the pool, not
        // for the removal of what the block included from disk.
        let mut pool = self.pool.lock();
        if tracing::enabled!(target: "chainmesh::seen", tracing::Level::TRACE) {
            // A transaction can reach us first inside a block (its producer's block
            // outran its gossip): that is its first sight here, or the latency
            // measurements across nodes would count it as never delivered.
            for tx in applied.iter().flat_map(|b| &b.txs) {
                let id = tx.id();
                if !pool.pool().contains(&id) {
                    tracing::trace!(target: "chainmesh::seen", tx = %id, in_block = true, "tx");
                }
            }
        }
        let writes =
            pool.on_new_tip_unwritten(applied, reverted, &PoolState(self.store.account_reader()));
        drop(pool);
        writes.apply()?;
        if !reverted.is_empty() {
            let returned: usize = reverted.iter().map(|b| b.txs.len()).sum();
            tracing::info!(
                reverted = reverted.len(),
                txs = returned,
                "returned transactions of abandoned blocks to the mempool"
            );
        }
        self.publish_status();
        Ok(())
    }

    /// Imports a run of blocks from sync, stopping at the first failure; the new tip is
    /// reported after the next flush.
    pub fn import_blocks(
        &mut self,
        blocks: Vec<chainmesh_proto::Block>,
        sig: SigCheck,
    ) -> ImportResult {
        let mut applied = Vec::new();
        let mut reverted = Vec::new();
        let mut result = ImportResult::Done;
        let now = now_ms();
        let failed = |hash, e: ImportError| ImportResult::Failed {
            hash,
            invalid: matches!(e, ImportError::Invalid { .. }),
            reason: e.to_string(),
        };
        let mut rest = blocks.into_iter().peekable();
        let mut run = Vec::new();
        while rest.peek().is_some() {
            // Blocks that extend the tip one after another go in as one write; anything
            // else (a known block, a fork) takes the general path, one block.
            run.clear();
            let mut txs = 0;
            while run.len() < MAX_RUN && txs < MAX_RUN_TXS {
                let Some(b) = rest.next() else { break };
                txs += b.txs.len();
                run.push(b);
            }
            match self.store.extend(&run, now, sig) {
                Ok((n, err)) => {
                    let stopped = run.get(n).map(|b| b.hash());
                    let mut tail = run.split_off(n);
                    applied.append(&mut run);
                    if let (Some(e), Some(h)) = (err, stopped) {
                        result = failed(h, e);
                        break;
                    }
                    if tail.is_empty() {
                        continue;
                    }
                    let b = tail.remove(0);
                    // The rest of this run goes back in front of the remaining blocks.
                    let later: Vec<_> = tail.into_iter().chain(rest).collect();
                    rest = later.into_iter().peekable();
                    let hash = b.hash();
                    match self.store.import_with(b, now, sig) {
                        Ok(ImportOutcome::NewTip {
                            applied: a,
                            reverted: r,
                            ..
                        }) => {
                            applied.extend(a);
                            reverted.extend(r);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            result = failed(hash, e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    let hash = run
                        .first()
                        .map_or(chainmesh_proto::Hash::ZERO, |b| b.hash());
                    result = failed(hash, e);
                    break;
                }
            }
        }
        if applied.is_empty() && reverted.is_empty() {
            return result;
        }
        for b in &applied {
            tracing::trace!(target: "chainmesh::seen", block = %b.hash(), "block");
        }
        self.pool
            .metrics()
            .imported("peers", &applied, reverted.len());
        if let Err(e) = self.after_new_tip(&applied, &reverted) {
            tracing::error!(error = %e, "storing synced blocks failed");
            return ImportResult::Failed {
                hash: chainmesh_proto::Hash::ZERO,
                invalid: false,
                reason: e.to_string(),
            };
        }
        result
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn pool(&self) -> &SharedPool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_chain_sync::{Allocation, ChainLimits, Genesis};
    use chainmesh_mempool::{PersistentPool, PoolConfig};
    use chainmesh_proto::PublicKey;

    struct Fx {
        a: Keypair,
        b: Keypair,
        alice: Keypair,
        genesis: Genesis,
    }

    fn fx() -> Fx {
        let (a, b, alice) = (
            Keypair::generate(),
            Keypair::generate(),
            Keypair::generate(),
        );
        let genesis = Genesis {
            network_id: "reorg".into(),
            timestamp_ms: (now_ms() - 3_600_000) / 1000 * 1000,
            block_time_ms: 1000,
            authorities: vec![a.public(), b.public()],
            allocations: vec![Allocation {
                address: alice.public(),
                balance: 1_000,
            }],
            limits: ChainLimits::default(),
        };
        Fx {
            a,
            b,
            alice,
            genesis,
        }
    }

    fn service(f: &Fx, dir: &std::path::Path) -> ChainService {
        let db = sled::open(dir).unwrap();
        let store = Store::open_db(db.clone(), &f.genesis).unwrap();
        let pool = PersistentPool::open(
            db.open_tree("mempool").unwrap(),
            PoolConfig::default(),
            store.genesis_hash(),
            &PoolState(store.account_reader()),
        )
        .unwrap();
        ChainService::new(store, SharedPool::new(pool), None).0
    }

    #[test]
    fn slots_of_ours_that_pass_while_the_task_is_busy_are_counted() {
        let f = fx();
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = Store::open_db(db.clone(), &f.genesis).unwrap();
        let pool = PersistentPool::open(
            db.open_tree("mempool").unwrap(),
            PoolConfig::default(),
            store.genesis_hash(),
            &PoolState(store.account_reader()),
        )
        .unwrap();
        let mut svc = ChainService::new(store, SharedPool::new(pool), Some(f.a.clone())).0;
        let now = f.genesis.slot_at(now_ms());
        // The task last looked six slots ago; a and b alternate.
        svc.last_slot = now - 6;
        svc.on_slot();
        let ours = (now - 5..now)
            .filter(|s| f.genesis.producer_for(*s) == &f.a.public())
            .count() as u64;
        assert!(ours >= 2);
        // (A slot boundary between the two `now`s would shift the range by one.)
        let counted = svc.pool().metrics().missed_slots.get();
        assert!(
            counted == ours || counted.abs_diff(ours) == 1,
            "{counted} vs {ours}"
        );
        // Looked at every slot: nothing more.
        svc.on_slot();
        assert_eq!(svc.pool().metrics().missed_slots.get(), counted);
    }

    fn submit(svc: &mut ChainService, tx: Tx) -> Result<Hash, SubmitError> {
        let (reply, mut rx) = oneshot::channel();
        svc.handle_batch(vec![Command::SubmitTx { tx, reply }]);
        svc.flush_now();
        rx.try_recv().unwrap()
    }

    #[test]
    fn reorg_to_a_higher_fork_returns_orphaned_txs_to_the_mempool() {
        let f = fx();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut ours = service(&f, d1.path());
        let chain = ours.store().genesis_hash();
        let bob = PublicKey([0xb0; 32]);
        let t0 = Tx::transfer(&f.alice, &chain, bob, 100, 1, 0);
        let t1 = Tx::transfer(&f.alice, &chain, bob, 200, 1, 1);
        submit(&mut ours, t0.clone()).unwrap();
        submit(&mut ours, t1.clone()).unwrap();
        assert!(matches!(
            submit(&mut ours, t1.clone()),
            Err(SubmitError::Rejected(AddError::AlreadyKnown))
        ));
        // Our block (slot 2, authority a) includes both; the pool empties.
        ours.produce(&f.a, 2).unwrap();
        assert_eq!(ours.store().tip().height, 1);
        assert!(ours.pool().lock().pool().is_empty());
        assert_eq!(ours.store().account(&bob).unwrap().balance, 300);

        // Another node built a longer fork from genesis without those txs.
        let mut theirs = service(&f, d2.path());
        theirs.produce(&f.b, 3).unwrap();
        theirs.produce(&f.a, 4).unwrap();
        let fork: Vec<_> = (1..=2)
            .map(|h| theirs.store().reader().block_at(h).unwrap().unwrap())
            .collect();
        for b in fork {
            ours.import_block(b).unwrap();
        }

        assert_eq!(ours.store().tip(), theirs.store().tip());
        assert_eq!(ours.store().account(&bob).unwrap().balance, 0);
        assert_eq!(
            ours.store().account(&f.alice.public()).unwrap().balance,
            1_000
        );
        // The orphaned txs are pending again, in nonce order, ready for the next block.
        let pending: Vec<Hash> = ours
            .pool()
            .lock()
            .pool()
            .best(10)
            .iter()
            .map(Tx::id)
            .collect();
        assert_eq!(pending, vec![t0.id(), t1.id()]);
        // The pool's gauges, read without its lock, follow every change made under it.
        let head = ours.pool().lock().pool().log_head();
        assert_eq!(
            ours.pool().gauges(),
            crate::pool::PoolGauges {
                txs: 2,
                bytes: ours.pool().lock().pool().bytes(),
                orphans: 0,
                log_head: head,
            }
        );
        // The new tip is reported once a flush made it durable.
        assert!(ours.status.borrow().height < 2);
        ours.flush_now();
        assert_eq!(*ours.status.borrow(), {
            let mut s = ours.status.borrow().clone();
            s.height = 2;
            s.mempool_txs = 2;
            s
        });
        ours.produce(&f.b, 5).unwrap();
        assert_eq!(ours.store().account(&bob).unwrap().balance, 300);
        assert!(ours.pool().lock().pool().is_empty());
        assert_eq!(
            (ours.pool().gauges().txs, ours.pool().gauges().bytes),
            (0, 0)
        );
    }
}
