//! Compact block relay (sans I/O): a block announced as its header and transaction ids is
//! rebuilt from the local mempool; only the transactions we lack are fetched from the
//! announcer, and the whole block is fetched as a last resort.
//!
//! The node does the cheap checks first (header signature and slot, block already known,
//! parent known) and hands the rest here. This state machine decides what to ask for and
//! when to give up; the node performs the lookups and requests and feeds the answers back.
//! Every announcement ends in exactly one [`RelayAction::Settled`], which the node turns
//! into the gossip validation result (forward, reject, or drop silently).
//!
//! A block is forwarded once its body is whole, matches the header's transaction root,
//! and every transaction's signature is known good (those from our pool were checked
//! when they entered it; only fetched ones are checked here) — before its state
//! transition is run. As in Bitcoin's high-bandwidth compact blocks and Ethereum's
//! gossip rules, a hop then costs a lookup and a little verification instead of a
//! whole import; what the import could still find wrong (balances, nonces, the state
//! root) only a producer's signed block can carry, so no relaying peer is blamed for it.

use std::collections::{HashMap, VecDeque};

pub use chainmesh_proto::CompactBlock;
use chainmesh_proto::{Block, Hash, Header, Tx, short_id};

use crate::sync::SyncFault;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Most announcements being rebuilt at once; more are dropped (gossip will offer them
    /// again through another peer, and sync catches up what gossip misses).
    pub max_pending: usize,
    /// How long to wait for missing transactions before fetching the whole block.
    pub txs_timeout_ms: u64,
    /// How long an announcement may take in all before it is dropped.
    pub total_timeout_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_pending: 32,
            txs_timeout_ms: 1_500,
            total_timeout_ms: 4_000,
        }
    }
}

/// What gossip should do with an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it.
    Accept,
    /// Invalid: do not forward, and count it against the sender.
    Reject,
    /// Neither: do not forward, no penalty (too busy, timed out, not ours to judge).
    Ignore,
}

// A few of these wait in the queue at a time, each moved once: the size of `Import`
// (a header inline) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAction<P, T> {
    /// Find the mempool's transactions with these short ids (salted with `block`) and
    /// answer with [`CompactRelay::on_pool`], position by position.
    LookupPool { block: Hash, short_ids: Vec<u64> },
    /// Ask the announcer for the block's transactions at these positions; answer with
    /// [`CompactRelay::on_txs`].
    FetchTxs {
        peer: P,
        block: Hash,
        indexes: Vec<u32>,
    },
    /// Ask the announcer for the whole block; answer with [`CompactRelay::on_block`].
    FetchBlock { peer: P, block: Hash },
    /// The body is complete and matches the header: check the signatures of the
    /// transactions at `unverified` (the fetched ones), answer with
    /// [`CompactRelay::on_checked`], and if they are good import the block and answer
    /// with [`CompactRelay::on_imported`]. The block may be served to peers meanwhile:
    /// it is forwarded as soon as it is checked.
    Import { block: Block, unverified: Vec<u32> },
    /// The announcement is done with.
    Settled { tag: T, verdict: Verdict },
    Penalize {
        peer: P,
        fault: SyncFault,
        detail: String,
    },
}

/// What happened to the announcements handled so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub announcements: u64,
    /// Rebuilt with nothing fetched.
    pub from_pool: u64,
    /// Rebuilt after fetching some transactions.
    pub with_fetched_txs: u64,
    pub txs_fetched: u64,
    /// Fetched whole.
    pub full_fetches: u64,
    pub dropped: u64,
    /// Forwarded (body and signatures good), then found invalid by the import: a
    /// producer's fault, not the relaying peer's.
    pub invalid_after_forward: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Pool,
    Txs,
    Block,
    /// Signatures of the fetched transactions being checked, then the import; the
    /// verdict is given at the check and the entry stays until the import ends.
    Importing,
}

struct Pending<P, T> {
    peer: P,
    /// Taken when the verdict is given (at the check, before the import ends).
    tag: Option<T>,
    header: Header,
    short_ids: Vec<u64>,
    txs: Vec<Option<Tx>>,
    /// Positions whose transaction came from the network, not our pool.
    fetched_at: Vec<u32>,
    stage: Stage,
    since_ms: u64,
    stage_since_ms: u64,
    /// The announced short ids do not match the block: the message is bad even if the
    /// block turns out fine.
    bad_ids: bool,
    fetched: bool,
}

impl<P, T> Pending<P, T> {
    fn missing(&self) -> Vec<u32> {
        self.txs
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_none())
            .map(|(i, _)| i as u32)
            .collect()
    }
}

pub struct CompactRelay<P, T> {
    cfg: RelayConfig,
    pending: HashMap<Hash, Pending<P, T>>,
    actions: VecDeque<RelayAction<P, T>>,
    stats: RelayStats,
}

impl<P: Clone + Eq + std::fmt::Debug, T> CompactRelay<P, T> {
    pub fn new(cfg: RelayConfig) -> Self {
        CompactRelay {
            cfg,
            pending: HashMap::new(),
            actions: VecDeque::new(),
            stats: RelayStats::default(),
        }
    }

    pub fn poll_action(&mut self) -> Option<RelayAction<P, T>> {
        self.actions.pop_front()
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn is_pending(&self, block: &Hash) -> bool {
        self.pending.contains_key(block)
    }

    /// An announcement whose header passed the cheap checks and whose parent we have.
    pub fn on_announcement(&mut self, peer: P, tag: T, cb: CompactBlock, now_ms: u64) {
        self.stats.announcements += 1;
        let hash = cb.hash();
        if self.pending.contains_key(&hash) || self.pending.len() >= self.cfg.max_pending {
            // Already being rebuilt from another announcement, or too busy.
            self.stats.dropped += 1;
            self.actions.push_back(RelayAction::Settled {
                tag,
                verdict: Verdict::Ignore,
            });
            return;
        }
        let n = cb.short_ids.len();
        self.actions.push_back(RelayAction::LookupPool {
            block: hash,
            short_ids: cb.short_ids.clone(),
        });
        self.pending.insert(
            hash,
            Pending {
                peer,
                tag: Some(tag),
                header: cb.header,
                short_ids: cb.short_ids,
                txs: vec![None; n],
                fetched_at: Vec::new(),
                stage: Stage::Pool,
                since_ms: now_ms,
                stage_since_ms: now_ms,
                bad_ids: false,
                fetched: false,
            },
        );
    }

    /// The answer to [`RelayAction::LookupPool`]: per position, the pool's transaction
    /// with that short id, if any.
    pub fn on_pool(&mut self, block: &Hash, found: Vec<Option<Tx>>, now_ms: u64) {
        let Some(p) = self.pending.get_mut(block) else {
            return;
        };
        if p.stage != Stage::Pool {
            return;
        }
        if found.len() == p.txs.len() {
            p.txs = found;
        }
        let missing = p.missing();
        if missing.is_empty() {
            self.assemble(block, now_ms);
        } else {
            p.stage = Stage::Txs;
            p.stage_since_ms = now_ms;
            p.fetched = true;
            self.stats.txs_fetched += missing.len() as u64;
            self.actions.push_back(RelayAction::FetchTxs {
                peer: p.peer.clone(),
                block: *block,
                indexes: missing,
            });
        }
    }

    /// The announcer's answer to [`RelayAction::FetchTxs`].
    pub fn on_txs(&mut self, block: &Hash, txs: Vec<Tx>, now_ms: u64) {
        let Some(p) = self.pending.get_mut(block) else {
            return;
        };
        if p.stage != Stage::Txs {
            return;
        }
        // Each answer must be the transaction at one of the positions we lack.
        let slots: HashMap<u64, usize> = p
            .missing()
            .into_iter()
            .map(|i| (p.short_ids[i as usize], i as usize))
            .collect();
        let mut stray = 0;
        for t in txs {
            match slots.get(&short_id(block, &t.id())) {
                Some(&i) => {
                    p.txs[i] = Some(t);
                    p.fetched_at.push(i as u32);
                }
                None => stray += 1,
            }
        }
        if stray > 0 {
            self.actions.push_back(RelayAction::Penalize {
                peer: p.peer.clone(),
                fault: SyncFault::BadData,
                detail: format!("{stray} transactions that were not asked for"),
            });
        }
        if p.missing().is_empty() {
            self.assemble(block, now_ms);
        } else {
            // The announcer does not have what it announced: take the whole block.
            self.fetch_block(block, now_ms);
        }
    }

    /// [`RelayAction::FetchTxs`] failed (timeout, refusal, broken stream).
    pub fn on_txs_failed(&mut self, block: &Hash, now_ms: u64) {
        if self
            .pending
            .get(block)
            .is_some_and(|p| p.stage == Stage::Txs)
        {
            self.fetch_block(block, now_ms);
        }
    }

    /// The answer to [`RelayAction::FetchBlock`]: the block, or `None` if it failed or the
    /// peer did not have it.
    pub fn on_block(&mut self, block: &Hash, got: Option<Block>) {
        let Some(p) = self.pending.get_mut(block) else {
            return;
        };
        if p.stage != Stage::Block {
            return;
        }
        match got {
            Some(b) if b.hash() == *block => {
                p.stage = Stage::Importing;
                if CompactBlock::of(&b).short_ids != p.short_ids {
                    p.bad_ids = true;
                    let peer = p.peer.clone();
                    self.actions.push_back(RelayAction::Penalize {
                        peer,
                        fault: SyncFault::BadData,
                        detail: format!("announced short ids that do not match block {block}"),
                    });
                }
                let unverified = (0..b.txs.len() as u32).collect();
                self.actions.push_back(RelayAction::Import {
                    block: b,
                    unverified,
                });
            }
            Some(_) => {
                let peer = p.peer.clone();
                self.actions.push_back(RelayAction::Penalize {
                    peer,
                    fault: SyncFault::BadData,
                    detail: "a block other than the one it announced".into(),
                });
                self.settle(block, Verdict::Ignore);
            }
            None => self.settle(block, Verdict::Ignore),
        }
    }

    /// The signature check of [`RelayAction::Import`]: good, the block is forwarded
    /// (the import goes on); bad, the announcer sent transactions no honest node
    /// forwards, and the block is not imported.
    pub fn on_checked(&mut self, block: &Hash, signatures_good: bool) {
        let Some(p) = self.pending.get_mut(block) else {
            return;
        };
        if p.stage != Stage::Importing || p.tag.is_none() {
            return;
        }
        if !signatures_good {
            let peer = p.peer.clone();
            self.actions.push_back(RelayAction::Penalize {
                peer,
                fault: SyncFault::Invalid,
                detail: format!("block {block} with a bad transaction signature"),
            });
            self.settle(block, Verdict::Reject);
            return;
        }
        let verdict = if p.bad_ids {
            Verdict::Reject
        } else {
            if p.fetched {
                self.stats.with_fetched_txs += 1;
            } else {
                self.stats.from_pool += 1;
            }
            Verdict::Accept
        };
        if let Some(tag) = p.tag.take() {
            self.actions
                .push_back(RelayAction::Settled { tag, verdict });
        }
    }

    /// The result of [`RelayAction::Import`]: `Ok` if the block is valid (whether or not
    /// it became the tip), `Err(true)` if it is invalid, `Err(false)` if it could not be
    /// judged (storage error, parent gone). Ends the announcement.
    pub fn on_imported(&mut self, block: &Hash, result: Result<(), bool>) {
        let Some(p) = self.pending.get(block) else {
            return;
        };
        if p.tag.is_none() {
            // Forwarded at the check. Invalid now means its state transition is wrong,
            // which only the producer's signed header vouches for.
            if result == Err(true) {
                self.stats.invalid_after_forward += 1;
            }
            self.pending.remove(block);
            return;
        }
        // Not checked first (a node that imports without the check): judged here.
        let verdict = match result {
            Ok(()) if p.bad_ids => Verdict::Reject,
            Ok(()) => Verdict::Accept,
            Err(true) => {
                let peer = p.peer.clone();
                self.actions.push_back(RelayAction::Penalize {
                    peer,
                    fault: SyncFault::Invalid,
                    detail: format!("announced invalid block {block}"),
                });
                Verdict::Reject
            }
            Err(false) => Verdict::Ignore,
        };
        self.settle(block, verdict);
    }

    /// Moves stalled announcements on: missing transactions that do not come lead to a
    /// full fetch, and an announcement that takes too long in all is dropped.
    pub fn tick(&mut self, now_ms: u64) {
        let mut to_block = Vec::new();
        let mut to_drop = Vec::new();
        for (h, p) in &self.pending {
            if now_ms.saturating_sub(p.since_ms) > self.cfg.total_timeout_ms
                && p.stage != Stage::Importing
            {
                to_drop.push(*h);
            } else if p.stage == Stage::Txs
                && now_ms.saturating_sub(p.stage_since_ms) > self.cfg.txs_timeout_ms
            {
                to_block.push(*h);
            }
        }
        for h in to_block {
            self.fetch_block(&h, now_ms);
        }
        for h in to_drop {
            self.stats.dropped += 1;
            self.settle(&h, Verdict::Ignore);
        }
    }

    /// The announcer went away: whatever it was to answer will not come.
    pub fn peer_gone(&mut self, peer: &P) {
        let gone: Vec<Hash> = self
            .pending
            .iter()
            .filter(|(_, p)| &p.peer == peer && p.stage != Stage::Importing)
            .map(|(h, _)| *h)
            .collect();
        for h in gone {
            self.stats.dropped += 1;
            self.settle(&h, Verdict::Ignore);
        }
    }

    fn assemble(&mut self, block: &Hash, now_ms: u64) {
        let Some(p) = self.pending.get_mut(block) else {
            return;
        };
        let txs: Vec<Tx> = p.txs.iter().flatten().cloned().collect();
        if Block::tx_root(&txs) != p.header.tx_root {
            // A short id collision, or an announcer that lied: the full block tells which.
            self.fetch_block(block, now_ms);
            return;
        }
        p.stage = Stage::Importing;
        let block = Block {
            header: p.header.clone(),
            txs,
        };
        let mut unverified = std::mem::take(&mut p.fetched_at);
        unverified.sort_unstable();
        self.actions
            .push_back(RelayAction::Import { block, unverified });
    }

    fn fetch_block(&mut self, block: &Hash, now_ms: u64) {
        let Some(p) = self.pending.get_mut(block) else {
            return;
        };
        if p.stage == Stage::Block || p.stage == Stage::Importing {
            return;
        }
        p.stage = Stage::Block;
        p.stage_since_ms = now_ms;
        p.fetched = true;
        self.stats.full_fetches += 1;
        self.actions.push_back(RelayAction::FetchBlock {
            peer: p.peer.clone(),
            block: *block,
        });
    }

    fn settle(&mut self, block: &Hash, verdict: Verdict) {
        if let Some(tag) = self.pending.remove(block).and_then(|p| p.tag) {
            self.actions
                .push_back(RelayAction::Settled { tag, verdict });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::{Keypair, PublicKey, Signature};

    fn block(n: u64) -> Block {
        let k = Keypair::generate();
        let chain = Hash::digest(b"relay");
        let txs: Vec<Tx> = (0..n)
            .map(|i| Tx::transfer(&k, &chain, PublicKey([2; 32]), 1, 1, i))
            .collect();
        let mut header = Header {
            parent: Hash::ZERO,
            height: 1,
            slot: 1,
            timestamp_ms: 0,
            tx_root: Block::tx_root(&txs),
            state_root: Hash::ZERO,
            producer: k.public(),
            signature: Signature([0; 64]),
        };
        header.sign(&k);
        Block { header, txs }
    }

    fn drain(r: &mut CompactRelay<&'static str, u32>) -> Vec<RelayAction<&'static str, u32>> {
        std::iter::from_fn(|| r.poll_action()).collect()
    }

    #[test]
    fn a_block_whose_txs_are_all_pooled_needs_no_fetch() {
        let b = block(5);
        let h = b.hash();
        let mut r = CompactRelay::new(RelayConfig::default());
        r.on_announcement("p", 7, CompactBlock::of(&b), 0);
        assert!(matches!(
            &drain(&mut r)[..],
            [RelayAction::LookupPool { .. }]
        ));
        r.on_pool(&h, b.txs.iter().cloned().map(Some).collect(), 1);
        // Every transaction came from the pool: nothing left to verify.
        assert_eq!(
            drain(&mut r),
            vec![RelayAction::Import {
                block: b.clone(),
                unverified: vec![]
            }]
        );
        // Forwarded at the check, before the import ends...
        r.on_checked(&h, true);
        assert_eq!(
            drain(&mut r),
            vec![RelayAction::Settled {
                tag: 7,
                verdict: Verdict::Accept
            }]
        );
        assert!(r.is_pending(&h), "held until the import ends");
        // ...and a later announcement of it while importing is not rebuilt again.
        r.on_announcement("q", 8, CompactBlock::of(&b), 2);
        assert_eq!(
            drain(&mut r),
            vec![RelayAction::Settled {
                tag: 8,
                verdict: Verdict::Ignore
            }]
        );
        r.on_imported(&h, Ok(()));
        assert_eq!(drain(&mut r), vec![]);
        assert_eq!(r.stats().from_pool, 1);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn only_fetched_transactions_are_verified_and_a_bad_import_after_forwarding_blames_no_peer() {
        let b = block(4);
        let h = b.hash();
        let mut r = CompactRelay::new(RelayConfig::default());
        r.on_announcement("p", 1, CompactBlock::of(&b), 0);
        drain(&mut r);
        let partial = vec![None, Some(b.txs[1].clone()), None, Some(b.txs[3].clone())];
        r.on_pool(&h, partial, 1);
        drain(&mut r);
        r.on_txs(&h, vec![b.txs[2].clone(), b.txs[0].clone()], 2);
        assert_eq!(
            drain(&mut r),
            vec![RelayAction::Import {
                block: b.clone(),
                unverified: vec![0, 2]
            }]
        );
        r.on_checked(&h, true);
        assert_eq!(
            drain(&mut r),
            vec![RelayAction::Settled {
                tag: 1,
                verdict: Verdict::Accept
            }]
        );
        // The state transition fails: the producer signed it; the relaying peer
        // forwarded a whole, well-signed body and is not penalised.
        r.on_imported(&h, Err(true));
        assert_eq!(drain(&mut r), vec![]);
        assert_eq!(r.stats().invalid_after_forward, 1);
        assert_eq!(r.stats().with_fetched_txs, 1);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn missing_txs_are_fetched_then_the_block_as_a_last_resort() {
        let b = block(4);
        let h = b.hash();
        let mut r = CompactRelay::new(RelayConfig::default());
        r.on_announcement("p", 1, CompactBlock::of(&b), 0);
        drain(&mut r);
        let partial = vec![Some(b.txs[0].clone()), Some(b.txs[1].clone()), None, None];
        r.on_pool(&h, partial, 1);
        assert_eq!(
            drain(&mut r),
            vec![RelayAction::FetchTxs {
                peer: "p",
                block: h,
                indexes: vec![2, 3]
            }]
        );
        // The peer sends one of the two and a stray: penalised, then the full block.
        let stray = block(1).txs[0].clone();
        r.on_txs(&h, vec![b.txs[2].clone(), stray], 2);
        let a = drain(&mut r);
        assert!(matches!(a[0], RelayAction::Penalize { .. }), "{a:?}");
        assert_eq!(
            a[1],
            RelayAction::FetchBlock {
                peer: "p",
                block: h
            }
        );
        r.on_block(&h, Some(b.clone()));
        // A block fetched whole: every signature is checked.
        assert_eq!(
            drain(&mut r),
            vec![RelayAction::Import {
                block: b,
                unverified: vec![0, 1, 2, 3]
            }]
        );
        r.on_checked(&h, false);
        let a = drain(&mut r);
        assert!(matches!(a[0], RelayAction::Penalize { .. }));
        assert_eq!(
            a[1],
            RelayAction::Settled {
                tag: 1,
                verdict: Verdict::Reject
            }
        );
    }

    #[test]
    fn stalls_time_out_and_pending_work_is_bounded() {
        let cfg = RelayConfig {
            max_pending: 2,
            ..RelayConfig::default()
        };
        let mut r = CompactRelay::new(cfg.clone());
        let (b1, b2, b3) = (block(1), block(1), block(1));
        r.on_announcement("p", 1, CompactBlock::of(&b1), 0);
        r.on_announcement("p", 2, CompactBlock::of(&b2), 0);
        r.on_announcement("p", 3, CompactBlock::of(&b3), 0);
        let a = drain(&mut r);
        assert_eq!(
            a.last(),
            Some(&RelayAction::Settled {
                tag: 3,
                verdict: Verdict::Ignore
            })
        );
        r.on_pool(&b1.hash(), vec![None], 10);
        drain(&mut r);
        r.tick(10 + cfg.txs_timeout_ms + 1);
        assert_eq!(
            drain(&mut r),
            vec![RelayAction::FetchBlock {
                peer: "p",
                block: b1.hash()
            }]
        );
        r.tick(cfg.total_timeout_ms + 1);
        let a = drain(&mut r);
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(a.iter().all(|x| matches!(
            x,
            RelayAction::Settled {
                verdict: Verdict::Ignore,
                ..
            }
        )));
        assert_eq!(r.pending(), 0);
    }
}
