//! Pull-based mempool sync in the network task: serving peers' permits from our pool
//! log (held until there is news, at most [`pool::HOLD`]), and granting permits to peers
//! through [`PullSync`], fetching only the transactions we lack.

use std::time::Instant;

use chainmesh_behaviours::codec::Malformed;
use chainmesh_behaviours::peers::Fault;
use chainmesh_behaviours::pool;
use chainmesh_behaviours::sync::Request;
use chainmesh_proto::{Hash, Tx, TxError, pb_net};
use libp2p::PeerId;
use libp2p::request_response::{self, ResponseChannel};
use tokio::sync::oneshot;

use super::{Internal, Net, Outbound};
use crate::chain::{Command, SubmitError, now_ms};

/// How long pulled ids wait before we look for them in our pool, when gossip is on.
const PULL_SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// A permit we hold until our pool has entries past its cursor.
pub(super) struct Held {
    channel: ResponseChannel<pb_net::PoolEntries>,
    cursor: u64,
    max: u32,
    until: Instant,
}

impl Net {
    fn pool_head(&self) -> u64 {
        self.pool.lock().pool().log_head()
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
                    Ok(fresh) => {
                        self.stats.pool_entries_received += fresh.len() as u64;
                        self.stats.pool_bytes_received += bytes as u64;
                        self.fetch_missing(peer, fresh);
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
        let (chain, internal) = (self.chain.clone(), self.internal_tx.clone());
        tokio::spawn(async move {
            let (reply, rx) = oneshot::channel();
            let (cursor, max) = (held.cursor, held.max as usize);
            let r = match chain.send(Command::PoolLog { cursor, max, reply }).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            let (ids, next) = r.unwrap_or((Vec::new(), cursor));
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
    fn fetch_missing(&mut self, peer: PeerId, ids: Vec<Hash>) {
        if ids.is_empty() {
            self.pull.fetched(&peer, &[]);
            return;
        }
        let (chain, internal) = (self.chain.clone(), self.internal_tx.clone());
        // With gossip on, the freshest entries of an answer are usually still on their way
        // by gossip: looking them up a moment later saves fetching them twice.
        let settle = if self.cfg.gossip {
            PULL_SETTLE
        } else {
            std::time::Duration::ZERO
        };
        tokio::spawn(async move {
            tokio::time::sleep(settle).await;
            let (reply, rx) = oneshot::channel();
            let missing = match chain
                .send(Command::PoolTxs {
                    ids: ids.clone(),
                    reply,
                })
                .await
            {
                Ok(()) => rx.await.map(|(_, m)| m).ok(),
                Err(_) => None,
            };
            let _ = internal
                .send(Internal::PullMissing {
                    peer,
                    asked: ids,
                    missing,
                })
                .await;
        });
    }

    pub(super) fn on_pull_missing(
        &mut self,
        peer: PeerId,
        asked: Vec<Hash>,
        missing: Option<Vec<Hash>>,
    ) {
        match missing {
            Some(m) if !m.is_empty() && self.peers.contains_key(&peer) => {
                self.stats.pool_txs_fetched += m.len() as u64;
                self.request(
                    peer,
                    Request::GetTxs { ids: m },
                    Outbound::PullTxs { asked },
                );
            }
            _ => self.pull.fetched(&peer, &asked),
        }
    }

    /// The transactions a peer sent for its pool entries: into our pool, in nonce order.
    pub(super) fn on_pull_txs(&mut self, peer: PeerId, asked: Vec<Hash>, txs: Option<Vec<Tx>>) {
        let Some(mut txs) = txs else {
            self.pull.fetched(&peer, &asked);
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
        let (chain, internal) = (self.chain.clone(), self.internal_tx.clone());
        let (slots, genesis) = (self.verify_slots.clone(), self.genesis_hash);
        tokio::spawn(async move {
            let results = super::verify::submit_verified(chain, slots, genesis, txs)
                .await
                .unwrap_or_default();
            let _ = internal
                .send(Internal::PullAdded {
                    peer,
                    asked,
                    results,
                })
                .await;
        });
    }

    pub(super) fn on_pull_added(
        &mut self,
        peer: PeerId,
        asked: Vec<Hash>,
        results: Vec<Result<Hash, SubmitError>>,
    ) {
        self.pull.fetched(&peer, &asked);
        let mut invalid = 0;
        for r in &results {
            match r {
                Ok(_) => self.stats.pool_txs_added += 1,
                Err(SubmitError::Rejected(chainmesh_mempool::AddError::Invalid(
                    TxError::BadSignature,
                ))) => invalid += 1,
                Err(_) => {}
            }
        }
        if invalid > 0 {
            self.fault(
                peer,
                Fault::Invalid,
                format!("pool: {invalid} transactions with bad signatures"),
            );
        }
    }
}
