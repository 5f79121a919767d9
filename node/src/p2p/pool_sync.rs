//! Pull-based mempool sync in the network task: serving peers' permits from our pool
//! log (held until there is news, at most [`pool::HOLD`]), and granting permits to peers
//! through [`PullSync`], fetching only the transactions we lack and taking them in
//! through [`spawn_ingest`].

use std::sync::Arc;
use std::time::Instant;

use chainmesh_behaviours::codec::Malformed;
use chainmesh_behaviours::peers::Fault;
use chainmesh_behaviours::pool;
use chainmesh_behaviours::sync::Request;
use chainmesh_chain_sync::rules::tx_signatures_here;
use chainmesh_chain_sync::store::StoreReader;
use chainmesh_mempool::Ticket;
use chainmesh_proto::{Hash, Tx, pb_net};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use libp2p::PeerId;
use libp2p::request_response::{self, ResponseChannel};
use tokio::sync::{Semaphore, mpsc};

use super::{Internal, Net, Outbound};
use crate::chain::now_ms;
use crate::pool::SharedPool;

/// How long pulled ids wait for gossip before we look for them in our pool and fetch
/// the ones still missing. Gossip normally brings them within the wait and the fetch is
/// saved; when it does not (peers that join our meshes and forward nothing, or honest
/// mesh links crowded out), the wait only delays every transaction. So the wait halves
/// each time a fetch finds most of a batch still missing, grows back by a step when
/// gossip had them, and is tried at its longest again every few seconds.
#[derive(Debug)]
pub(super) struct Settle {
    wait_ms: u64,
    last_probe: Instant,
}

impl Settle {
    const MAX_MS: u64 = 300;
    const STEP_MS: u64 = 30;
    const PROBE: std::time::Duration = std::time::Duration::from_secs(10);
    /// Batches smaller than this say too little about gossip.
    const MIN_SAMPLE: usize = 4;

    pub(super) fn new(now: Instant) -> Settle {
        Settle {
            wait_ms: Self::MAX_MS,
            last_probe: now,
        }
    }

    pub(super) fn wait(&mut self, now: Instant) -> std::time::Duration {
        if now.saturating_duration_since(self.last_probe) >= Self::PROBE {
            self.last_probe = now;
            self.wait_ms = Self::MAX_MS;
        }
        std::time::Duration::from_millis(self.wait_ms)
    }

    /// After a wait: of `asked` pulled ids, `missing` had not come by gossip.
    pub(super) fn observe(&mut self, asked: usize, missing: usize) {
        if asked < Self::MIN_SAMPLE {
            return;
        }
        if missing * 2 >= asked {
            self.wait_ms /= 2;
        } else if missing * 10 <= asked {
            self.wait_ms = (self.wait_ms + Self::STEP_MS).min(Self::MAX_MS);
        }
    }
}

/// A permit we hold until our pool has entries past its cursor.
pub(super) struct Held {
    channel: ResponseChannel<pb_net::PoolEntries>,
    cursor: u64,
    max: u32,
    until: Instant,
}

impl Net {
    fn pool_head(&self) -> u64 {
        self.pool.gauges().log_head
    }

    pub(super) fn on_pool_event(&mut self, ev: pool::Event) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_permit(peer, request, channel),
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some(max) = self.permits_out.remove(&request_id) else {
                    return;
                };
                let bytes = prost::Message::encoded_len(&response);
                let parsed = pool::entries_from_pb(response, max)
                    .map_err(|e| e.to_string())
                    .and_then(|(ids, next)| {
                        self.pull
                            .on_entries(&peer, ids, next)
                            .map_err(|e| e.to_string())
                    });
                match parsed {
                    Ok((ticket, fresh)) => {
                        self.stats.pool_entries_received += fresh.len() as u64;
                        self.stats.pool_bytes_received += bytes as u64;
                        self.fetch_missing(peer, ticket, fresh);
                    }
                    Err(e) => {
                        self.pull.on_failure(&peer, now_ms());
                        self.fault(peer, Fault::BadData, format!("pool: {e}"));
                    }
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.permits_out.remove(&request_id);
                self.pull.on_failure(&peer, now_ms());
                self.on_outbound_failure(peer, "pool", &error);
            }
            Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, "pool", &error)
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_permit(
        &mut self,
        peer: PeerId,
        request: Result<pb_net::PoolPermit, Malformed>,
        channel: ResponseChannel<pb_net::PoolEntries>,
    ) {
        let (cursor, max) = match request
            .map_err(|Malformed(why)| why)
            .and_then(|p| pool::permit_from_pb(&p).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(why) => {
                drop(channel);
                self.fault(peer, Fault::Malformed, format!("pool permit: {why}"));
                return;
            }
        };
        if let Some(old) = self.held.remove(&peer) {
            // One permit in flight per peer: answer the older one and count the breach.
            self.answer_permit(old.channel, Vec::new(), old.cursor);
            self.fault(
                peer,
                Fault::RateExceeded,
                "a second pool permit while one was held".into(),
            );
        }
        self.stats.permits_served += 1;
        let held = Held {
            channel,
            cursor,
            max,
            until: Instant::now() + pool::HOLD,
        };
        if self.pool_head() > cursor {
            self.read_log(held);
        } else {
            self.held.insert(peer, held);
        }
    }

    /// Reads our log for a permit off the event loop; the answer comes back as
    /// [`Internal::PoolLog`].
    fn read_log(&mut self, held: Held) {
        let (pool, internal) = (self.pool.clone(), self.internal_tx.clone());
        tokio::spawn(async move {
            let (cursor, max) = (held.cursor, held.max as usize);
            let (ids, next) = pool
                .read(move |p| p.log_since(cursor, max))
                .await
                .unwrap_or((Vec::new(), cursor));
            let _ = internal
                .send(Internal::PoolLog {
                    channel: held.channel,
                    ids,
                    next,
                })
                .await;
        });
    }

    pub(super) fn on_pool_log(
        &mut self,
        channel: ResponseChannel<pb_net::PoolEntries>,
        ids: Vec<Hash>,
        next: u64,
    ) {
        self.stats.pool_entries_served += ids.len() as u64;
        self.answer_permit(channel, ids, next);
    }

    fn answer_permit(
        &mut self,
        channel: ResponseChannel<pb_net::PoolEntries>,
        ids: Vec<Hash>,
        next: u64,
    ) {
        let _ = self
            .swarm
            .behaviour_mut()
            .pool
            .send_response(channel, pool::entries_to_pb(&ids, next));
    }

    /// Answers held permits whose cursor our log has passed, or whose hold is over.
    pub(super) fn service_held_permits(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let head = self.pool_head();
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .held
            .iter()
            .filter(|(_, h)| head > h.cursor || now >= h.until)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let Some(h) = self.held.remove(&peer) else {
                continue;
            };
            if head > h.cursor {
                self.read_log(h);
            } else {
                self.answer_permit(h.channel, Vec::new(), h.cursor);
            }
        }
    }

    /// Grants permits to every peer that may have one now.
    pub(super) fn grant_permits(&mut self) {
        if !self.cfg.pool_sync {
            return;
        }
        for (peer, p) in self.pull.permits(now_ms()) {
            let id = self
                .swarm
                .behaviour_mut()
                .pool
                .send_request(&peer, Ok(pool::permit_to_pb(p.cursor, p.max)));
            self.permits_out.insert(id, p.max);
            self.stats.permits_sent += 1;
        }
    }

    /// Looks up which of a peer's announced ids we lack, then fetches those from it.
    fn fetch_missing(&mut self, peer: PeerId, ticket: Ticket, ids: Vec<Hash>) {
        if ids.is_empty() {
            let ready = self.pull.fetched(&peer, ticket, &[]);
            self.take_in(ready);
            return;
        }
        let (pool, internal) = (self.pool.clone(), self.internal_tx.clone());
        // With gossip on, the freshest entries of an answer are usually still on their way
        // by gossip: looking them up a moment later saves fetching them twice.
        let settle = if self.cfg.gossip {
            self.settle.wait(Instant::now())
        } else {
            std::time::Duration::ZERO
        };
        tokio::spawn(async move {
            tokio::time::sleep(settle).await;
            let asked = ids.clone();
            let missing = pool
                .read(move |p| ids.into_iter().filter(|id| !p.contains(id)).collect())
                .await;
            let _ = internal
                .send(Internal::PullMissing {
                    peer,
                    ticket,
                    asked,
                    missing,
                })
                .await;
        });
    }

    pub(super) fn on_pull_missing(
        &mut self,
        peer: PeerId,
        ticket: Ticket,
        asked: Vec<Hash>,
        missing: Option<Vec<Hash>>,
    ) {
        if let Some(m) = &missing {
            self.settle.observe(asked.len(), m.len());
        }
        match missing {
            Some(m) if !m.is_empty() && self.peers.contains_key(&peer) => {
                self.stats.pool_txs_fetched += m.len() as u64;
                self.request(
                    peer,
                    Request::GetTxs { ids: m },
                    Outbound::PullTxs { ticket, asked },
                );
            }
            _ => {
                let ready = self.pull.fetched(&peer, ticket, &asked);
                self.take_in(ready);
            }
        }
    }

    /// The transactions a peer sent for one of its answers: on to the ingest queue, in
    /// nonce order, once the answers before it are there too; the peer's next permit
    /// may go out meanwhile.
    pub(super) fn on_pull_txs(
        &mut self,
        peer: PeerId,
        ticket: Ticket,
        asked: Vec<Hash>,
        txs: Option<Vec<Tx>>,
    ) {
        let Some(mut txs) = txs else {
            let ready = self.pull.fetched(&peer, ticket, &asked);
            self.take_in(ready);
            return;
        };
        let wanted: std::collections::HashSet<&Hash> = asked.iter().collect();
        let before = txs.len();
        txs.retain(|t| wanted.contains(&t.id()));
        if txs.len() < before {
            self.fault(
                peer,
                Fault::BadData,
                "pool: transactions that were not asked for".into(),
            );
        }
        txs.sort_by_key(|t| (t.from, t.nonce));
        self.pulled.insert(ticket, Pulled { peer, asked, txs });
        let ready = self.pull.received(&peer, ticket);
        self.take_in(ready);
    }

    /// Sends answers released by [`PullSync`] to the ingest queue, in the order given.
    pub(super) fn take_in(&mut self, ready: Vec<Ticket>) {
        for ticket in ready {
            let Some(p) = self.pulled.remove(&ticket) else {
                continue;
            };
            if let Err(e) = self.ingest.try_send(p) {
                // Not expected: the queue holds every answer PullSync lets be in
                // progress (a peer that reconnects with answers still on their way
                // could pass it briefly). Then the transactions are dropped; gossip or
                // another peer's log may still bring them.
                let p = e.into_inner();
                tracing::warn!(
                    txs = p.txs.len(),
                    "pool ingest queue full: pulled transactions dropped"
                );
                self.pull.taken_in(&p.peer, &p.asked);
            }
        }
    }

    pub(super) fn on_pull_added(
        &mut self,
        peer: PeerId,
        asked: Vec<Hash>,
        added: usize,
        forged: usize,
    ) {
        self.pull.taken_in(&peer, &asked);
        self.stats.pool_txs_added += added as u64;
        if forged > 0 {
            self.fault(
                peer,
                Fault::Invalid,
                format!("pool: {forged} transactions with bad signatures"),
            );
        }
        self.service_held_permits();
    }
}

/// Pulled transactions on their way into the pool.
pub(super) struct Pulled {
    peer: PeerId,
    asked: Vec<Hash>,
    txs: Vec<Tx>,
}

/// Verifies one answer's signatures on a blocking thread, holding one verification slot.
/// A panic in verification, or a node shutting down, takes nothing of the answer.
async fn verify_pulled(genesis: Hash, slots: Arc<Semaphore>, p: Pulled) -> (Pulled, Vec<bool>) {
    let Pulled { peer, asked, txs } = p;
    let nothing = |peer, asked| {
        (
            Pulled {
                peer,
                asked,
                txs: Vec::new(),
            },
            Vec::new(),
        )
    };
    let Ok(_slot) = slots.acquire_owned().await else {
        return nothing(peer, asked);
    };
    let verified = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let ok = tx_signatures_here(&genesis, &txs);
        tracing::debug!(
            target: "chainmesh::ingest",
            txs = txs.len(),
            us = t.elapsed().as_micros() as u64,
            "pulled transactions verified"
        );
        (txs, ok)
    })
    .await;
    match verified {
        Ok((txs, ok)) => (Pulled { peer, asked, txs }, ok),
        Err(_) => nothing(peer, asked),
    }
}

/// Takes pulled transactions into the pool in two stages, each in arrival order so that
/// a sender's nonces enter in sequence: batch signature verification, then the pool on a
/// blocking thread. Up to one answer per core is verified at once, each on one thread in
/// full batches (one verification slot each; a synced batch of blocks takes them all),
/// while the answer before them is added. Each answer's outcome comes back as
/// [`Internal::PullAdded`].
///
/// `queue` is how many answers can wait to be verified: every answer [`PullSync`] can
/// have in progress (`max_in_hand` per peer, for every connection we allow), so none is
/// ever dropped; their transactions are bounded by `max_fetching` ids in all.
pub(super) fn spawn_ingest(
    genesis: Hash,
    slots: Arc<Semaphore>,
    pool: SharedPool,
    reader: StoreReader,
    internal: mpsc::Sender<Internal>,
    queue: usize,
) -> mpsc::Sender<Pulled> {
    let (tx, mut rx) = mpsc::channel::<Pulled>(queue.max(1));
    let (verified_tx, mut verified_rx) = mpsc::channel::<(Pulled, Vec<bool>)>(1);
    let done = internal.clone();
    let width = chainmesh_chain_sync::rules::cores();
    tokio::spawn(async move {
        let mut verifying = FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                next = rx.recv(), if open && verifying.len() < width => match next {
                    Some(p) => verifying.push_back(verify_pulled(genesis, slots.clone(), p)),
                    None => open = false,
                },
                Some(v) = verifying.next(), if !verifying.is_empty() => {
                    if verified_tx.send(v).await.is_err() {
                        break;
                    }
                }
                else => break,
            }
        }
    });
    tokio::spawn(async move {
        while let Some((Pulled { peer, asked, txs }, ok)) = verified_rx.recv().await {
            let forged = ok.iter().filter(|v| !**v).count();
            let valid: Vec<Tx> = txs
                .into_iter()
                .zip(&ok)
                .filter(|(_, v)| **v)
                .map(|(t, _)| t)
                .collect();
            let (pool, reader) = (pool.clone(), reader.clone());
            let added = tokio::task::spawn_blocking(move || {
                let (t, n) = (Instant::now(), valid.len());
                let added = pool
                    .add_verified(&reader, valid)
                    .iter()
                    .filter(|r| r.is_ok())
                    .count();
                tracing::debug!(
                    target: "chainmesh::ingest",
                    txs = n,
                    added,
                    us = t.elapsed().as_micros() as u64,
                    "pulled transactions pooled"
                );
                added
            })
            .await
            .unwrap_or(0);
            let msg = Internal::PullAdded {
                peer,
                asked,
                added,
                forged,
            };
            if done.send(msg).await.is_err() {
                break;
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::Settle;
    use std::time::{Duration, Instant};

    #[test]
    fn the_wait_for_gossip_shrinks_while_gossip_fails_and_comes_back() {
        let t0 = Instant::now();
        let mut s = Settle::new(t0);
        assert_eq!(s.wait(t0), Duration::from_millis(300));
        // Gossip brought nothing of five batches: no wait left.
        for _ in 0..9 {
            s.observe(8, 6);
        }
        assert_eq!(s.wait(t0), Duration::ZERO);
        // Tiny batches say nothing.
        s.observe(2, 0);
        assert_eq!(s.wait(t0), Duration::ZERO);
        // Gossip delivers again: the wait grows back step by step...
        s.observe(10, 0);
        assert_eq!(s.wait(t0), Duration::from_millis(30));
        // ...and is probed at its longest every ten seconds.
        s.observe(8, 8);
        assert_eq!(
            s.wait(t0 + Duration::from_secs(10)),
            Duration::from_millis(300)
        );
        for _ in 0..20 {
            s.observe(10, 0);
        }
        assert_eq!(
            s.wait(t0 + Duration::from_secs(11)),
            Duration::from_millis(300)
        );
    }
}
