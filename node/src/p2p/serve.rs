//! Answers sync requests from the store and the mempool, off the network task (sled
//! reads block, and the pool's lock may be held by a new tip's pruning), in the order
//! the serving queue gives: peers in good standing first (see
//! `chainmesh_behaviours::serve_queue`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chainmesh_behaviours::serve_queue::{Offer, Rank};
use chainmesh_behaviours::sync::{Request, Response, ServeError};
use chainmesh_chain_sync::store::StoreReader;
use chainmesh_proto::limits::MAX_SYNC_RESPONSE_BYTES;
use chainmesh_proto::{Block, Hash, pb_net};
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;

use super::{Net, PeerEntry};
use crate::chain::now_ms;
use crate::pool::SharedPool;
use chainmesh_behaviours::peers::PeerScores;

/// A sync request waiting for a serving slot.
pub(super) struct Pending {
    channel: ResponseChannel<pb_net::SyncResponse>,
    req: Request,
}

/// A request served off the network task, on its way back to be sent.
pub(super) struct Served {
    peer: PeerId,
    channel: ResponseChannel<pb_net::SyncResponse>,
    resp: Response,
}

/// Below this score a peer, or any peer from an address, is served nothing (two faults of
/// the request-abuse kind; an honest peer's odd timeout, -10, fades in 20 s). A host
/// cycling new ids would otherwise spend each id's budget anew.
const REFUSE_BELOW: f64 = -20.0;

/// Faults by IP address, so that a host cycling peer ids is known by the next id: what a
/// new id from an address at fault is served is nothing. Loopback's 127.0.0.1 and ::1 (a
/// local devnet's nodes all share them) and relayed peers are not scored by address.
/// Bounded: `MAX_ADDRESSES` addresses, the least recently at fault forgotten first; a
/// score recovers as a peer's does and never sinks below `ADDRESS_FLOOR`, so an address
/// that stops is served again within minutes.
pub(super) struct AddressScores {
    scores: hashlink::LruCache<std::net::IpAddr, (f64, u64)>,
}

const MAX_ADDRESSES: usize = 4096;
const ADDRESS_FLOOR: f64 = -120.0;

impl AddressScores {
    pub(super) fn new() -> Self {
        AddressScores {
            scores: hashlink::LruCache::new(MAX_ADDRESSES),
        }
    }

    pub(super) fn score(&self, ip: &std::net::IpAddr, now_ms: u64) -> f64 {
        self.scores.peek(ip).map_or(0.0, |(s, at)| {
            let recovered = now_ms.saturating_sub(*at) as f64 / 1000.0 * RECOVERY_PER_SEC;
            (s + recovered).min(0.0)
        })
    }

    pub(super) fn penalize(&mut self, ip: std::net::IpAddr, cost: f64, now_ms: u64) {
        let s = (self.score(&ip, now_ms) - cost).max(ADDRESS_FLOOR);
        self.scores.insert(ip, (s, now_ms));
    }
}

/// As a peer's score recovers (`ScoreConfig::recovery_per_sec`).
const RECOVERY_PER_SEC: f64 = 0.5;

/// How a peer's requests are ordered for serving: a peer with faults against it (score
/// below zero) or that has not given its status is in bad standing (a couple of slots
/// for all such peers); otherwise the peer connected longest goes first. Peer ids cost
/// nothing, so the age of a connection is what a flood of new ids cannot fake.
fn standing(
    peers: &HashMap<PeerId, PeerEntry>,
    scores: &PeerScores<PeerId>,
    peer: &PeerId,
) -> Rank<Instant> {
    match peers.get(peer) {
        Some(p) => Rank {
            bad: p.status.is_none() || scores.score(peer, now_ms()) < 0.0,
            order: p.connected_at,
        },
        None => Rank {
            bad: true,
            order: Instant::now(),
        },
    }
}

impl Net {
    /// Serves `req` now if the queue gives it a slot, or leaves it waiting.
    pub(super) fn queue_sync_request(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<pb_net::SyncResponse>,
        req: Request,
    ) {
        let now = now_ms();
        let from_bad_address = self
            .peer_ips
            .peek(&peer)
            .is_some_and(|ip| self.address_scores.score(ip, now) < REFUSE_BELOW);
        if self.scores.score(&peer, now) < REFUSE_BELOW || from_bad_address {
            let why = "too many faults of late from this peer or its address: ask again when they have faded";
            let resp = Response::Error(ServeError::RateLimited(why.into()));
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, resp.to_pb());
            return;
        }
        let (peers, scores) = (&self.peers, &self.scores);
        let rank = |p: &PeerId| standing(peers, scores, p);
        let offer = self
            .serve_queue
            .offer(peer, Pending { channel, req }, Instant::now(), rank);
        match offer {
            Offer::Run(p) => self.start_serving(peer, p),
            Offer::Queued => {}
            Offer::Displaced(other, p) => {
                tracing::debug!(peer = %other, by = %peer, "a waiting sync request gave way to a better-ranked peer");
                self.answer_busy(p);
            }
            Offer::Refused(p) => self.answer_busy(p),
        }
    }

    pub(super) fn on_served(&mut self, served: Served) {
        let Served {
            peer,
            channel,
            resp,
        } = served;
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, resp.to_pb());
        let (peers, scores) = (&self.peers, &self.scores);
        let rank = |p: &PeerId| standing(peers, scores, p);
        for (p, pending) in self.serve_queue.done(&peer, rank) {
            self.start_serving(p, pending);
        }
    }

    /// Requests that waited too long for a slot are answered "busy": the asker tries
    /// another peer before its own timeout.
    pub(super) fn expire_waiting_serves(&mut self) {
        for (_, p) in self.serve_queue.expire(Instant::now()) {
            self.answer_busy(p);
        }
    }

    fn answer_busy(&mut self, p: Pending) {
        let resp = Response::Error(ServeError::Unavailable("busy".into()));
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(p.channel, resp.to_pb());
    }

    fn start_serving(&mut self, peer: PeerId, p: Pending) {
        let Pending { channel, req } = p;
        let (reader, pool, relaying, tx, max) = (
            self.reader.clone(),
            self.pool.clone(),
            self.relaying.clone(),
            self.served_tx.clone(),
            self.cfg.sync_max_blocks,
        );
        tokio::spawn(async move {
            let resp = serve(reader, pool, relaying, req, max).await;
            let _ = tx
                .send(Served {
                    peer,
                    channel,
                    resp,
                })
                .await;
        });
    }
}

/// Room left in a response frame for protobuf framing around the blocks.
const RESPONSE_BUDGET: usize = MAX_SYNC_RESPONSE_BYTES - 64 * 1024;

/// Most blocks held here at once: the compact relay rebuilds at most 32 at a time.
const MAX_RELAYING: usize = 64;

/// Blocks forwarded by gossip whose import has not finished: the peers we forwarded
/// them to ask us for their missing transactions (or the whole block) meanwhile, and
/// the store does not have them yet.
#[derive(Clone, Default)]
pub struct Relaying(Arc<Mutex<HashMap<Hash, Arc<Block>>>>);

impl Relaying {
    /// Holds `block` until [`Relaying::remove`]; refused (not served early) when full.
    pub fn insert(&self, hash: Hash, block: Arc<Block>) {
        if let Ok(mut m) = self.0.lock()
            && m.len() < MAX_RELAYING
        {
            m.insert(hash, block);
        }
    }

    pub fn remove(&self, hash: &Hash) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(hash);
        }
    }

    fn get(&self, hash: &Hash) -> Option<Arc<Block>> {
        self.0.lock().ok()?.get(hash).cloned()
    }
}

pub async fn serve(
    reader: StoreReader,
    pool: SharedPool,
    relaying: Relaying,
    req: Request,
    max_blocks: u32,
) -> Response {
    let unavailable = |e: String| Response::Error(ServeError::Unavailable(e));
    match req {
        Request::GetTxs { ids } => {
            let found = pool.read(move |p| {
                let (mut txs, mut missing) = (Vec::new(), Vec::new());
                for id in ids {
                    match p.get(&id) {
                        Some(t) => txs.push(t.clone()),
                        None => missing.push(id),
                    }
                }
                (txs, missing)
            });
            match found.await {
                Some((txs, missing)) => Response::Txs { txs, missing },
                None => unavailable("shutting down".into()),
            }
        }
        req => {
            let r = tokio::task::spawn_blocking(move || -> Result<Response, String> {
                let e = |e: chainmesh_chain_sync::StoreError| e.to_string();
                Ok(match req {
                    Request::GetHeaders { locator, max } => {
                        Response::Headers(reader.headers_after(&locator, max).map_err(e)?)
                    }
                    Request::GetBlocks { hashes } => {
                        let hashes: Vec<_> = hashes.into_iter().take(max_blocks as usize).collect();
                        let mut blocks =
                            reader.blocks_by_hash(&hashes, RESPONSE_BUDGET).map_err(e)?;
                        // The compact relay's fallback asks for the one block it was
                        // announced, which may still be importing here.
                        if let ([h], true) = (&hashes[..], blocks.is_empty())
                            && let Some(b) = relaying.get(h)
                        {
                            blocks.push(Block::clone(&b));
                        }
                        Response::Blocks(blocks)
                    }
                    Request::GetBlockRange { from, count } => Response::Blocks(
                        reader
                            .block_range(from, count.min(max_blocks), RESPONSE_BUDGET)
                            .map_err(e)?,
                    ),
                    Request::GetBlockTxs { block, indexes } => {
                        let found = match reader.block(&block).map_err(e)? {
                            Some(b) => Some(Arc::new(b)),
                            None => relaying.get(&block),
                        };
                        match found {
                            Some(b) => Response::Txs {
                                txs: indexes
                                    .iter()
                                    .filter_map(|i| b.txs.get(*i as usize).cloned())
                                    .collect(),
                                missing: Vec::new(),
                            },
                            None => Response::Error(ServeError::Unavailable(format!(
                                "block {block} is unknown here"
                            ))),
                        }
                    }
                    Request::GetTxs { .. } => {
                        Response::Error(ServeError::BadRequest("unreachable".into()))
                    }
                })
            })
            .await;
            match r {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => unavailable(e),
                Err(e) => unavailable(e.to_string()),
            }
        }
    }
}
