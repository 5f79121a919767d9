//! Gossip in the network task: publishing what the chain task reports, validating what
//! peers publish before gossipsub may forward it, and rebuilding compact blocks.
//!
//! Transactions from gossip are checked in batches (one per event-loop round) off the
//! event loop and forwarded on that check; the chain task adds them to the pool after. A compact block passes the cheap checks here (header signature
//! and slot, size) before the [`CompactRelay`] rebuilds it.

use chainmesh_behaviours::gossip::{self, GossipMessage};
use chainmesh_behaviours::peers::Fault;
use chainmesh_behaviours::sync::Request;
use chainmesh_chain_sync::relay::{RelayAction, Verdict};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chainmesh_chain_sync::rules::{tx_signatures, validate_header_alone};
use chainmesh_chain_sync::store::StoreReader;
use chainmesh_chain_sync::sync::ImportResult;
use chainmesh_mempool::{AddError, Pool, PoolConfig};
use chainmesh_proto::{Address, Block, CompactBlock, Hash, Tx, TxError, wire};
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance, MessageId};
use tokio::sync::oneshot;

use super::{Internal, Net, Outbound};
use crate::chain::{ChainEvent, Command, now_ms};

/// Most gossip transactions being validated at once; beyond it they are ignored (not
/// forwarded, no penalty): pool sync delivers them later if they matter.
pub(super) const MAX_VALIDATING: usize = 8_192;

/// Most transactions checked on the event loop itself (tens of µs each): a small batch
/// costs less there than two thread hand-offs; larger ones, as under a flood, go to a
/// blocking thread.
const INLINE_CHECK: usize = 4;

/// The tag a compact block carries through the relay: the gossip message to settle.
pub(super) type RelayTag = (MessageId, PeerId);

impl Net {
    pub(super) fn subscribe_gossip(&mut self) {
        if !self.cfg.gossip {
            tracing::info!("gossip is off (p2p.gossip = false): mempool by pool sync only");
            return;
        }
        let mina = self.cfg.profile == crate::config::Profile::Mina;
        let g = &mut self.swarm.behaviour_mut().gossip;
        let mina_topics = chainmesh_behaviours::mina::gossip::topics().filter(|_| mina);
        for t in [
            gossip::tx_topic(&self.network_id),
            gossip::block_topic(&self.network_id),
        ]
        .into_iter()
        .chain(mina_topics)
        {
            if let Err(e) = g.subscribe(&t) {
                tracing::error!(topic = %t, error = %e, "cannot subscribe");
            }
        }
    }

    pub(super) fn on_chain_event(&mut self, e: ChainEvent) {
        if !self.cfg.gossip {
            return;
        }
        let (topic, data) = match e {
            ChainEvent::NewTx(tx) => {
                self.stats.tx_published += 1;
                (gossip::tx_topic(&self.network_id), wire::encode_tx(&tx))
            }
            ChainEvent::Announce(block) => {
                self.stats.blocks_published += 1;
                let cb = CompactBlock::of(&block);
                (
                    gossip::block_topic(&self.network_id),
                    wire::encode_compact_block(&cb),
                )
            }
        };
        if let Err(e) = self.swarm.behaviour_mut().gossip.publish(topic, data) {
            // No peers yet, or a duplicate: pool sync and block sync cover it.
            tracing::debug!(error = %e, "gossip publish skipped");
        }
    }

    pub(super) fn on_gossip_event(&mut self, ev: gossip::Event) {
        let (source, id, message) = match ev {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => (propagation_source, message_id, message),
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                return self.on_slow_peer(
                    peer_id,
                    failed_messages.priority + failed_messages.non_priority,
                );
            }
            _ => return,
        };
        if chainmesh_behaviours::mina::gossip::is_mina_topic(&message.topic) {
            return self.on_mina_message(source, id, &message);
        }
        match gossip::decode(&self.network_id, &message.topic, &message.data) {
            Err(e) => {
                // Bytes that are not a message of the topic count as rejected there.
                if message.topic == gossip::block_topic(&self.network_id).hash() {
                    self.stats.blocks_rejected += 1;
                } else {
                    self.stats.tx_rejected += 1;
                }
                self.report(&id, &source, MessageAcceptance::Reject);
                self.fault(source, Fault::InvalidMessage, format!("gossip: {e}"));
            }
            Ok(GossipMessage::Tx(tx)) => {
                self.stats.tx_received += 1;
                // Arrival before validation: with `chainmesh::seen`, splits a hop's time
                // into the wire and our own validation.
                tracing::trace!(target: "chainmesh::arrived", tx = %tx.id(), from = %source);
                if self.validating >= MAX_VALIDATING {
                    self.stats.tx_ignored += 1;
                    self.report(&id, &source, MessageAcceptance::Ignore);
                    return;
                }
                self.validating += 1;
                self.gossip_txs.push((id, source, tx));
            }
            Ok(GossipMessage::Block(cb)) => {
                self.stats.blocks_received += 1;
                self.stats.announcement_bytes += message.data.len() as u64;
                self.on_compact_block(source, id, cb);
            }
        }
    }

    /// Checks the transactions gathered this round as one batch, off the event loop:
    /// signatures (batch-verified) and what a pool at our confirmed state could admit.
    /// The verdict goes to gossipsub at once, so forwarding never waits for the chain
    /// task (which may be importing or producing a block); the pool gets them after.
    pub(super) fn flush_gossip_txs(&mut self) {
        if self.gossip_txs.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.gossip_txs);
        let (tags, txs): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|(id, p, tx)| ((id, p), tx)).unzip();
        if txs.len() <= INLINE_CHECK {
            let results = precheck(&self.genesis_hash, &self.reader, &self.pool_config, &txs);
            self.on_gossip_checked(tags, txs, results);
            return;
        }
        let (reader, pool, genesis) = (
            self.reader.clone(),
            self.pool_config.clone(),
            self.genesis_hash,
        );
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let checked = tokio::task::spawn_blocking(move || {
                let results = precheck(&genesis, &reader, &pool, &txs);
                (txs, results)
            })
            .await;
            // A check that died answers nothing: every transaction is ignored.
            let (txs, results) = checked.unwrap_or_default();
            let _ = internal
                .send(Internal::GossipChecked { tags, txs, results })
                .await;
        });
    }

    pub(super) fn on_gossip_checked(
        &mut self,
        tags: Vec<(MessageId, PeerId)>,
        txs: Vec<Tx>,
        results: Vec<Result<(), AddError>>,
    ) {
        let mut pool = Vec::new();
        for (((id, peer), tx), r) in tags.iter().zip(txs).zip(results) {
            let (acceptance, fault) = match &r {
                // One transaction per sender and nonce travels by gossip: conflicting
                // ones (replacements, or a sender spending its nonce many times over)
                // reach other pools through pool sync, if their pool takes them.
                Ok(()) if !self.forwarded.first(&tx) => (MessageAcceptance::Ignore, None),
                Ok(()) => (MessageAcceptance::Accept, None),
                Err(e) => precheck_verdict(e),
            };
            match acceptance {
                MessageAcceptance::Accept => self.stats.tx_accepted += 1,
                MessageAcceptance::Reject => self.stats.tx_rejected += 1,
                MessageAcceptance::Ignore => self.stats.tx_ignored += 1,
            }
            self.report(id, peer, acceptance);
            if let Some((f, why)) = fault {
                self.fault(*peer, f, format!("gossiped an invalid transaction: {why}"));
            }
            if r.is_ok() {
                pool.push(tx);
            }
        }
        self.validating = self.validating.saturating_sub(tags.len());
        if pool.is_empty() {
            return;
        }
        // The verdict is given; the pool takes them on a blocking thread (sled writes),
        // not through the chain task, which may be importing a block. Too many already
        // on their way: dropped here, and pool sync brings them later if they matter.
        let n = pool.len();
        if self.pooling + n > MAX_VALIDATING {
            self.stats.tx_pool_dropped += n as u64;
            tracing::debug!(txs = n, "pool busy: gossiped transactions not pooled");
            return;
        }
        // A few, with the pool free and none of ours on their way to it (they enter in
        // arrival order, so a sender's nonces do too): in it now, not after a blocking
        // thread wakes (most of a hop's time on a busy machine); only the sled write
        // goes there.
        let pool = if n <= INLINE_CHECK && self.pooling == 0 {
            match self.pool.try_add_verified(&self.reader, pool) {
                Ok((_, writes)) => {
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = writes.apply() {
                            tracing::error!(error = %e, "the mempool cannot be written");
                        }
                    });
                    self.service_held_permits();
                    return;
                }
                Err(busy) => busy,
            }
        } else {
            pool
        };
        self.pooling += n;
        let (shared, reader, internal) = (
            self.pool.clone(),
            self.reader.clone(),
            self.internal_tx.clone(),
        );
        tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || shared.add_verified(&reader, pool)).await;
            let _ = internal.send(Internal::Pooled { n }).await;
        });
    }

    /// Our gossip send queue to `peer` overflowed during a heartbeat. A peer that is
    /// merely slow catches up; one whose stream is stuck never does (a stream the
    /// remote closed on its side without our knowing: everything queued for it is lost,
    /// and it hears nothing from us). Several heartbeats in a row: the connection is
    /// closed, and the reconnection (redial, or the peer's) opens fresh streams.
    fn on_slow_peer(&mut self, peer: PeerId, failed: usize) {
        const STUCK_HEARTBEATS: u32 = 5;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.slow_heartbeats += 1;
        if p.slow_heartbeats < STUCK_HEARTBEATS {
            tracing::debug!(peer = %peer, failed, "gossip queue to peer full");
            return;
        }
        p.slow_heartbeats = 0;
        self.stats.gossip_stuck_disconnects += 1;
        tracing::info!(
            peer = %peer,
            failed,
            heartbeats = STUCK_HEARTBEATS,
            "closing the connection to a peer whose gossip queue stays full (stuck stream); it will reconnect"
        );
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn on_compact_block(&mut self, source: PeerId, id: MessageId, cb: CompactBlock) {
        let now = now_ms();
        let hash = cb.hash();
        // With `chainmesh::seen`, splits a block's hop into its stages (the relay's
        // lookups, verification, import).
        tracing::trace!(target: "chainmesh::relay", block = %hash, message = %id, from = %source, "announced");
        let invalid = if let Err(e) = validate_header_alone(&self.genesis, &cb.header, now) {
            Some(format!("block {hash}: {e}"))
        } else if cb.short_ids.len() > self.genesis.limits.max_block_txs as usize {
            Some(format!("block {hash}: {} transactions", cb.short_ids.len()))
        } else {
            None
        };
        if let Some(why) = invalid {
            self.stats.blocks_rejected += 1;
            self.report(&id, &source, MessageAcceptance::Reject);
            self.fault(source, Fault::InvalidMessage, why);
            return;
        }
        // Peers forward only blocks they validated and hold: the sender's tip is at least
        // this high (what `/peers` and the dashboard show between status rounds).
        if let Some(st) = self.peers.get_mut(&source).and_then(|p| p.status.as_mut())
            && cb.header.height > st.best_height
        {
            st.best_height = cb.header.height;
            st.best_hash = hash;
        }
        let (known, parent_known) = (
            self.reader.block(&hash).ok().flatten().is_some(),
            self.reader
                .block(&cb.header.parent)
                .ok()
                .flatten()
                .is_some(),
        );
        if known {
            // Valid and ours already (produced, synced or rebuilt): let it spread.
            self.stats.blocks_accepted += 1;
            self.block_delivered();
            self.report(&id, &source, MessageAcceptance::Accept);
            return;
        }
        if !parent_known {
            // Out of order or we are behind: fetch the missing parents through sync,
            // headers first from this peer's claimed tip.
            self.stats.blocks_ignored += 1;
            self.report(&id, &source, MessageAcceptance::Ignore);
            self.syncer.peer_tip(&source, cb.header.height, hash, now);
            return;
        }
        self.relay.on_announcement(source, (id, source), cb, now);
    }

    pub(super) fn drive_relay(&mut self) {
        while let Some(a) = self.relay.poll_action() {
            match a {
                RelayAction::LookupPool { block, short_ids } => {
                    let (pool, internal) = (self.pool.clone(), self.internal_tx.clone());
                    tokio::spawn(async move {
                        let found = pool
                            .read(move |p| p.by_short_ids(&block, &short_ids))
                            .await
                            .unwrap_or_default();
                        let _ = internal.send(Internal::RelayPool { block, found }).await;
                    });
                }
                RelayAction::FetchTxs {
                    peer,
                    block,
                    indexes,
                } => {
                    self.request(
                        peer,
                        Request::GetBlockTxs { block, indexes },
                        Outbound::RelayTxs(block),
                    );
                }
                RelayAction::FetchBlock { peer, block } => {
                    self.request(
                        peer,
                        Request::GetBlocks {
                            hashes: vec![block],
                        },
                        Outbound::RelayBlock(block),
                    );
                }
                RelayAction::Import { block, unverified } => {
                    self.stats.block_bytes += wire::encode_block(&block).len() as u64;
                    let hash = block.hash();
                    // Served to the peers we forward it to while it imports.
                    self.relaying
                        .insert(hash, std::sync::Arc::new(block.clone()));
                    let (chain, internal) = (self.chain.clone(), self.internal_tx.clone());
                    let genesis = self.genesis_hash;
                    tokio::spawn(async move {
                        // Transactions from our pool were verified on their way in;
                        // only fetched ones are checked, batched on all cores.
                        let good = if unverified.is_empty() {
                            true
                        } else {
                            let txs: Vec<Tx> = unverified
                                .iter()
                                .filter_map(|i| block.txs.get(*i as usize).cloned())
                                .collect();
                            tokio::task::spawn_blocking(move || {
                                tx_signatures(&genesis, &txs).into_iter().all(|ok| ok)
                            })
                            .await
                            .unwrap_or(false)
                        };
                        tracing::trace!(target: "chainmesh::relay", block = %hash, good, "verified");
                        let _ = internal
                            .send(Internal::RelayChecked { block: hash, good })
                            .await;
                        if !good {
                            return;
                        }
                        let (reply, rx) = oneshot::channel();
                        let r = match chain
                            .send(Command::ImportBlocks {
                                blocks: vec![block],
                                sigs_verified: true,
                                announce: false,
                                reply,
                            })
                            .await
                        {
                            Ok(()) => rx.await.ok(),
                            Err(_) => None,
                        };
                        let result = match r {
                            Some(ImportResult::Done) => Ok(()),
                            Some(ImportResult::Failed { invalid, .. }) => Err(invalid),
                            None => Err(false),
                        };
                        let _ = internal
                            .send(Internal::RelayImported {
                                block: hash,
                                result,
                            })
                            .await;
                    });
                }
                RelayAction::Settled {
                    tag: (id, peer),
                    verdict,
                } => {
                    tracing::trace!(target: "chainmesh::relay", message = %id, ?verdict, "settled");
                    let acceptance = match verdict {
                        Verdict::Accept => {
                            self.stats.blocks_accepted += 1;
                            self.block_delivered();
                            MessageAcceptance::Accept
                        }
                        Verdict::Reject => {
                            self.stats.blocks_rejected += 1;
                            MessageAcceptance::Reject
                        }
                        Verdict::Ignore => {
                            self.stats.blocks_ignored += 1;
                            MessageAcceptance::Ignore
                        }
                    };
                    self.report(&id, &peer, acceptance);
                }
                RelayAction::Penalize {
                    peer,
                    fault,
                    detail,
                } => self.fault(peer, super::fault_of(fault), detail),
            }
        }
    }

    /// The announcer's transactions (GetTxs) for a block being rebuilt.
    pub(super) fn on_relay_txs(&mut self, block: Hash, txs: Option<(Vec<Tx>, usize)>) {
        let now = now_ms();
        match txs {
            Some((txs, bytes)) => {
                self.stats.fetched_bytes += bytes as u64;
                self.relay.on_txs(&block, txs, now);
            }
            None => self.relay.on_txs_failed(&block, now),
        }
    }

    pub(super) fn on_relay_block(&mut self, block: Hash, got: Option<(Block, usize)>) {
        if let Some((_, bytes)) = &got {
            self.stats.fetched_bytes += *bytes as u64;
        }
        self.relay.on_block(&block, got.map(|(b, _)| b));
    }

    /// A gossiped block passed validation: what the mesh-delivery gate waits for.
    fn block_delivered(&mut self) {
        if let Some(g) = self.delivery_gate.as_mut() {
            g.block_accepted(Instant::now());
        }
    }

    /// Switches mesh-delivery scoring (P3) on the block topic when the gate says so.
    pub(super) fn tend_delivery_scoring(&mut self) {
        let Some(g) = self.delivery_gate.as_mut() else {
            return;
        };
        let Some(on) = g.poll(Instant::now()) else {
            return;
        };
        let sources = g.sources();
        let base = gossip::block_score_params();
        let params = if on {
            gossip::delivery::with_mesh_deliveries(&base, sources)
        } else {
            base
        };
        let topic = gossip::block_topic(&self.network_id);
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossip
            .set_topic_params(topic, params)
        {
            tracing::warn!(error = e, "cannot change the block topic's scoring");
            return;
        }
        if on {
            tracing::info!(
                producers = sources.producers,
                "blocks arrive by gossip: mesh peers that deliver none are now penalised (mesh-delivery scoring on)"
            );
        } else {
            tracing::info!(
                "no block by gossip for half a producer rotation: mesh-delivery scoring off until blocks flow again"
            );
        }
    }

    fn report(&mut self, id: &MessageId, peer: &PeerId, a: MessageAcceptance) {
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(id, peer, a);
    }
}

/// Signature and pool precheck of each transaction, in order.
fn precheck(
    genesis: &Hash,
    reader: &StoreReader,
    pool: &PoolConfig,
    txs: &[Tx],
) -> Vec<Result<(), AddError>> {
    tx_signatures(genesis, txs)
        .into_iter()
        .zip(txs)
        .map(|(signed, tx)| {
            if !signed {
                return Err(AddError::Invalid(TxError::BadSignature));
            }
            let account = reader
                .account(&tx.from)
                .map_err(|e| AddError::State(e.to_string()))?;
            Pool::precheck(tx, account, pool)
        })
        .collect()
}

/// What a failed precheck means for a gossiped transaction: reject it (the sender sent
/// something no honest node would forward), or drop it quietly (it may be valid where
/// the state is newer or older than ours).
fn precheck_verdict(e: &AddError) -> (MessageAcceptance, Option<(Fault, String)>) {
    match e {
        AddError::Invalid(
            TxError::BadSignature
            | TxError::FeeTooLow { .. }
            | TxError::ZeroAmount
            | TxError::Overflow,
        )
        | AddError::TooLarge { .. } => (
            MessageAcceptance::Reject,
            Some((Fault::InvalidMessage, e.to_string())),
        ),
        _ => (MessageAcceptance::Ignore, None),
    }
}

/// The (sender, nonce) pairs this node has forwarded by gossip in the last
/// [`FORWARDED_FOR`], at most [`MAX_FORWARDED`]: a transaction is checked against
/// confirmed state only, so without this a sender could have any number of transactions
/// with one nonce spread by every node, though at most one of them can ever be included.
/// The window, not only the count, bounds it: a count alone fills up over hours at a
/// quiet pace and holds memory for transactions long since in blocks (whose nonces
/// confirmed state refuses anyway).
#[derive(Default)]
pub(super) struct Forwarded {
    ids: HashMap<(Address, u64), Hash>,
    order: VecDeque<(Instant, (Address, u64))>,
}

/// About a minute of transactions at a thousand per second.
const MAX_FORWARDED: usize = 65_536;
/// Far longer than a transaction takes to reach every pool; a second transaction with
/// the same nonce after that costs the network one more forward every five minutes.
const FORWARDED_FOR: Duration = Duration::from_secs(300);

impl Forwarded {
    /// Whether `tx` is the first of its sender and nonce (or that one again).
    fn first(&mut self, tx: &Tx) -> bool {
        self.first_at(tx, Instant::now())
    }

    fn first_at(&mut self, tx: &Tx, now: Instant) -> bool {
        while let Some(&(at, old)) = self.order.front() {
            if self.order.len() < MAX_FORWARDED && now.saturating_duration_since(at) < FORWARDED_FOR
            {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
        let key = (tx.from, tx.nonce);
        let id = tx.id();
        if let Some(seen) = self.ids.get(&key) {
            return *seen == id;
        }
        self.ids.insert(key, id);
        self.order.push_back((now, key));
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::{Keypair, PublicKey};

    #[test]
    fn forwarded_refuses_a_second_tx_per_nonce_and_forgets_after_its_window() {
        let (k, chain, to) = (Keypair::generate(), Hash([1; 32]), PublicKey([2; 32]));
        let t0 = Instant::now();
        let mut f = Forwarded::default();
        let tx = Tx::transfer(&k, &chain, to, 1, 1, 0);
        let other = Tx::transfer(&k, &chain, to, 2, 1, 0);
        assert!(f.first_at(&tx, t0));
        assert!(f.first_at(&tx, t0), "the same tx again is still the first");
        assert!(!f.first_at(&other, t0 + Duration::from_secs(10)));
        for nonce in 1..100 {
            assert!(f.first_at(&Tx::transfer(&k, &chain, to, 1, 1, nonce), t0));
        }
        assert_eq!(f.len(), 100);
        // At a steady pace only the last window stays: memory does not creep up with
        // the chain's age.
        let later = t0 + FORWARDED_FOR + Duration::from_secs(1);
        assert!(f.first_at(&other, later));
        assert_eq!(f.len(), 1);
    }
}
