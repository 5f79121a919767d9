//! The block syncer: a state machine without I/O.
//!
//! The node feeds it peer statuses, responses, failures, import results and the time; it
//! answers with [`Action`]s: requests to send, blocks to import (in order), peers to
//! penalise. Headers come first, from the best peer, after a block locator; they are
//! checked cheaply (linkage, slot producer, signature) and split into batches of block
//! hashes; batches are fetched from every useful peer in parallel, a bounded number in
//! flight per peer (which grows for a peer that answers fast and full, and shrinks on
//! timeouts); a batch that times out or comes back wrong is reassigned to another peer.
//! Complete batches are handed to the node in height order. A fork shows up as headers
//! whose parent is below our tip: they are imported as a side chain, and the store's
//! fork choice reorganises when the fork becomes better.
//!
//! Memory is bounded by `max_buffered_blocks` (headers fetched ahead of import) and by
//! peers × in-flight requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash as StdHash;

use chainmesh_proto::{Block, Hash, Header};

use crate::genesis::Genesis;
use crate::rules::MAX_CLOCK_DRIFT_MS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub headers_per_request: u32,
    /// Blocks per batch.
    pub batch_blocks: usize,
    pub initial_in_flight: usize,
    pub max_in_flight: usize,
    pub request_timeout_ms: u64,
    /// Most blocks whose headers are fetched but not yet imported.
    pub max_buffered_blocks: usize,
    /// Most bytes of bodies received but not yet imported (beyond it only the lowest
    /// batch, the one import waits for, is fetched).
    pub max_buffered_bytes: usize,
    /// Most blocks in one `Import` action.
    pub max_import_blocks: usize,
    /// How long a peer whose header request came back empty or failed is not asked again.
    pub headers_backoff_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            headers_per_request: 512,
            batch_blocks: 128,
            initial_in_flight: 2,
            max_in_flight: 8,
            request_timeout_ms: 10_000,
            max_buffered_blocks: 8_192,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_import_blocks: 256,
            headers_backoff_ms: 5_000,
        }
    }
}

pub type RequestId = u64;

/// Blocks per request to a new peer, before its answers show what it can do.
const INITIAL_REQUEST_SIZE: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Headers { locator: Vec<Hash>, max: u32 },
    Blocks { hashes: Vec<Hash> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncFault {
    Timeout,
    /// Data that does not fit the request (unlinked headers, blocks we did not ask for).
    BadData,
    /// Data that fails validation (bad signature, wrong producer, body not matching).
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    Request {
        peer: P,
        id: RequestId,
        want: Want,
    },
    Import {
        blocks: Vec<Block>,
    },
    Penalize {
        peer: P,
        fault: SyncFault,
        detail: String,
    },
}

/// What the node reports about a batch it imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportResult {
    Done,
    /// Block `hash` was refused; `invalid` says whether its sender is at fault.
    Failed {
        hash: Hash,
        invalid: bool,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub syncing: bool,
    pub local_height: u64,
    pub target_height: u64,
    pub peers: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub blocks_served: u64,
    pub batches_served: u64,
    pub timeouts: u64,
    pub in_flight: usize,
    pub in_flight_limit: usize,
    /// Blocks asked per request: grows for a peer that answers fast and full, shrinks
    /// for a slow one, never above what the peer advertised.
    pub request_size: usize,
}

#[derive(Debug)]
struct Peer {
    height: u64,
    hash: Hash,
    /// Most blocks the peer said it serves per request.
    max_items: u32,
    stats: PeerStats,
    headers_backoff_until: u64,
    /// Whether bulk requests (bodies) may go to this peer; not over relayed connections,
    /// which are for coordination.
    bulk: bool,
    /// The peer sent bad or invalid data: it gets no more requests until its next
    /// status (the node's scores decide whether it stays connected at all).
    distrusted: bool,
}

#[derive(Debug)]
struct Batch<P> {
    hashes: Vec<Hash>,
    blocks: Vec<Block>,
    /// Encoded size of `blocks`.
    bytes: usize,
    in_flight: Option<RequestId>,
    excluded: Vec<P>,
}

impl<P> Batch<P> {
    fn complete(&self) -> bool {
        self.blocks.len() == self.hashes.len()
    }
    fn end_height(&self, start: u64) -> u64 {
        start + self.hashes.len() as u64 - 1
    }
}

#[derive(Debug)]
enum Kind {
    Headers { locator: Vec<(u64, Hash)> },
    Blocks { start: u64, asked: usize },
}

#[derive(Debug)]
struct InFlight<P> {
    peer: P,
    kind: Kind,
    sent_ms: u64,
}

pub struct Syncer<P> {
    cfg: SyncConfig,
    genesis: Genesis,
    local: (u64, Hash),
    locator: Vec<(u64, Hash)>,
    peers: HashMap<P, Peer>,
    header_tip: Option<Header>,
    header_req: Option<RequestId>,
    batches: BTreeMap<u64, Batch<P>>,
    importing: Vec<Hash>,
    served_by: HashMap<Hash, P>,
    requests: HashMap<RequestId, InFlight<P>>,
    next_id: RequestId,
    actions: VecDeque<Action<P>>,
}

impl<P: Clone + Eq + StdHash + std::fmt::Debug> Syncer<P> {
    /// `locator` is the local canonical chain's locator: `(height, hash)` pairs from the
    /// tip down to genesis.
    pub fn new(
        genesis: Genesis,
        cfg: SyncConfig,
        local: (u64, Hash),
        locator: Vec<(u64, Hash)>,
    ) -> Self {
        Syncer {
            cfg,
            genesis,
            local,
            locator,
            peers: HashMap::new(),
            header_tip: None,
            header_req: None,
            batches: BTreeMap::new(),
            importing: Vec::new(),
            served_by: HashMap::new(),
            requests: HashMap::new(),
            next_id: 1,
            actions: VecDeque::new(),
        }
    }

    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    pub fn progress(&self) -> Progress {
        let target = self.peers.values().map(|p| p.height).max().unwrap_or(0);
        Progress {
            syncing: self.is_syncing(),
            local_height: self.local.0,
            target_height: target.max(self.local.0),
            peers: self.peers.len(),
        }
    }

    pub fn is_syncing(&self) -> bool {
        !self.batches.is_empty()
            || !self.importing.is_empty()
            || self.header_req.is_some()
            || self
                .peers
                .values()
                .any(|p| better(p.height, &p.hash, self.local.0, &self.local.1))
    }

    pub fn peer_stats(&self, peer: &P) -> Option<PeerStats> {
        self.peers.get(peer).map(|p| p.stats.clone())
    }

    /// Our canonical tip moved (an import, our own block, a reorg).
    pub fn set_local(&mut self, height: u64, hash: Hash, locator: Vec<(u64, Hash)>, now_ms: u64) {
        self.local = (height, hash);
        self.locator = locator;
        if self.header_tip.as_ref().is_some_and(|h| h.height <= height) && self.batches.is_empty() {
            self.header_tip = None;
        }
        self.schedule(now_ms);
    }

    /// A peer's status (on connect or refreshed). `max_items` is the most blocks per
    /// request it serves.
    pub fn peer_status(&mut self, peer: P, height: u64, hash: Hash, max_items: u32, now_ms: u64) {
        let max_items = max_items.clamp(1, self.cfg.batch_blocks as u32);
        let e = self.peers.entry(peer).or_insert_with(|| Peer {
            height,
            hash,
            max_items,
            stats: PeerStats {
                in_flight_limit: self.cfg.initial_in_flight,
                request_size: INITIAL_REQUEST_SIZE.min(max_items as usize),
                ..PeerStats::default()
            },
            headers_backoff_until: 0,
            bulk: true,
            distrusted: false,
        });
        e.distrusted = false;
        e.height = height;
        e.hash = hash;
        e.max_items = max_items;
        e.stats.request_size = e.stats.request_size.clamp(1, max_items as usize);
        self.schedule(now_ms);
    }

    /// A peer showed that it holds block `hash` at `height` (it forwarded the block by
    /// gossip) whose parent we lack: a tip to sync towards. Unlike a status it neither
    /// introduces a peer nor lifts distrust, and it never lowers what the peer is known
    /// to hold. A block at the peer's known height with another hash is taken as the
    /// peer's new tip: after healing a partition the sides' chains have equal heights
    /// half of the time, and fork choice between them must still see the other one.
    pub fn peer_tip(&mut self, peer: &P, height: u64, hash: Hash, now_ms: u64) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if height < p.height || (height == p.height && hash == p.hash) {
            return;
        }
        p.height = height;
        p.hash = hash;
        self.schedule(now_ms);
    }

    /// Marks a peer reachable only through a relay: it still gets header requests, but
    /// no block bodies.
    pub fn set_relayed(&mut self, peer: &P, relayed: bool) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.bulk = !relayed;
        }
    }

    pub fn peer_gone(&mut self, peer: &P, now_ms: u64) {
        let ids: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| &r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.release(id);
        }
        self.peers.remove(peer);
        self.schedule(now_ms);
    }

    /// Undoes the bookkeeping of a request: frees the batch and the peer's slot.
    fn release(&mut self, id: RequestId) -> Option<InFlight<P>> {
        let r = self.requests.remove(&id)?;
        if let Some(p) = self.peers.get_mut(&r.peer) {
            p.stats.in_flight = p.stats.in_flight.saturating_sub(1);
        }
        match &r.kind {
            Kind::Headers { .. } => {
                if self.header_req == Some(id) {
                    self.header_req = None;
                }
            }
            Kind::Blocks { start, .. } => {
                if let Some(b) = self.batches.get_mut(start)
                    && b.in_flight == Some(id)
                {
                    b.in_flight = None;
                }
            }
        }
        Some(r)
    }

    fn penalize(&mut self, peer: &P, fault: SyncFault, detail: String) {
        if fault != SyncFault::Timeout
            && let Some(p) = self.peers.get_mut(peer)
        {
            p.distrusted = true;
        }
        self.actions.push_back(Action::Penalize {
            peer: peer.clone(),
            fault,
            detail,
        });
    }

    fn exclude(&mut self, start: u64, peer: &P) {
        if let Some(b) = self.batches.get_mut(&start)
            && !b.excluded.contains(peer)
        {
            b.excluded.push(peer.clone());
        }
    }

    /// A request failed (timeout, closed connection, an error answer).
    pub fn on_failure(&mut self, id: RequestId, timed_out: bool, now_ms: u64) {
        if let Some(r) = self.release(id) {
            let backoff = now_ms + self.cfg.headers_backoff_ms;
            if let Some(p) = self.peers.get_mut(&r.peer) {
                p.stats.in_flight_limit = (p.stats.in_flight_limit / 2).max(1);
                p.stats.request_size = (p.stats.request_size / 2).max(1);
                if timed_out {
                    p.stats.timeouts += 1;
                }
                if matches!(r.kind, Kind::Headers { .. }) {
                    p.headers_backoff_until = backoff;
                }
            }
            if let Kind::Blocks { start, .. } = r.kind {
                self.exclude(start, &r.peer);
            }
            if timed_out {
                self.penalize(&r.peer, SyncFault::Timeout, "request timed out".into());
            }
        }
        self.schedule(now_ms);
    }

    /// Expires requests past their deadline.
    pub fn tick(&mut self, now_ms: u64) {
        let late: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| now_ms.saturating_sub(r.sent_ms) >= self.cfg.request_timeout_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.on_failure(id, true, now_ms);
        }
        self.schedule(now_ms);
    }

    pub fn on_headers(&mut self, id: RequestId, headers: Vec<Header>, now_ms: u64) {
        let Some(r) = self.release(id) else { return };
        let Kind::Headers { locator } = r.kind else {
            self.penalize(
                &r.peer,
                SyncFault::BadData,
                "headers in answer to a block request".into(),
            );
            return;
        };
        if headers.is_empty() {
            tracing::debug!(peer = ?r.peer, "no headers past our locator");
            if let Some(p) = self.peers.get_mut(&r.peer) {
                p.headers_backoff_until = now_ms + self.cfg.headers_backoff_ms;
            }
            self.schedule(now_ms);
            return;
        }
        if let Err(e) = self.check_headers(&locator, &headers, now_ms) {
            let (fault, detail) = e;
            self.penalize(&r.peer, fault, detail);
            self.schedule(now_ms);
            return;
        }
        let first_parent = headers[0].parent;
        tracing::debug!(
            peer = ?r.peer,
            count = headers.len(),
            from = headers[0].height,
            "headers received"
        );
        // A chain that leaves ours below what we already fetched replaces that part.
        if self
            .header_tip
            .as_ref()
            .is_some_and(|t| t.hash() != first_parent)
        {
            let keep_below = headers[0].height;
            let dropped: Vec<u64> = self.batches.range(keep_below..).map(|(s, _)| *s).collect();
            for s in dropped {
                if let Some(b) = self.batches.remove(&s)
                    && let Some(rid) = b.in_flight
                {
                    self.release(rid);
                }
            }
        }
        let mut start = headers[0].height;
        for chunk in headers.chunks(self.cfg.batch_blocks) {
            self.batches.insert(
                start,
                Batch {
                    hashes: chunk.iter().map(Header::hash).collect(),
                    blocks: Vec::new(),
                    bytes: 0,
                    in_flight: None,
                    excluded: Vec::new(),
                },
            );
            start += chunk.len() as u64;
        }
        self.header_tip = headers.into_iter().last();
        self.schedule(now_ms);
    }

    /// Linkage to the locator and between headers, slot timing, producer and signature.
    fn check_headers(
        &self,
        locator: &[(u64, Hash)],
        headers: &[Header],
        now_ms: u64,
    ) -> Result<(), (SyncFault, String)> {
        if headers.len() > self.cfg.headers_per_request as usize {
            return Err((
                SyncFault::BadData,
                format!(
                    "{} headers, asked for at most {}",
                    headers.len(),
                    self.cfg.headers_per_request
                ),
            ));
        }
        let first = &headers[0];
        let Some((ph, _)) = locator.iter().find(|(_, h)| *h == first.parent) else {
            return Err((
                SyncFault::BadData,
                "first header does not follow any locator hash".into(),
            ));
        };
        if first.height != ph + 1 {
            return Err((
                SyncFault::BadData,
                format!(
                    "first header at height {} follows a block at {ph}",
                    first.height
                ),
            ));
        }
        let mut prev: Option<&Header> = None;
        for h in headers {
            if let Some(p) = prev
                && (h.parent != p.hash() || h.height != p.height + 1 || h.slot <= p.slot)
            {
                return Err((
                    SyncFault::BadData,
                    format!(
                        "header at height {} is not linked to its predecessor",
                        h.height
                    ),
                ));
            }
            if self.genesis.slot_start(h.slot) != Some(h.timestamp_ms)
                || h.timestamp_ms > now_ms.saturating_add(MAX_CLOCK_DRIFT_MS)
            {
                return Err((
                    SyncFault::Invalid,
                    format!("header at height {} has a bad slot time", h.height),
                ));
            }
            if &h.producer != self.genesis.producer_for(h.slot) {
                return Err((
                    SyncFault::Invalid,
                    format!(
                        "header at height {} has the wrong producer for slot {}",
                        h.height, h.slot
                    ),
                ));
            }
            if !h.verify_signature() {
                return Err((
                    SyncFault::Invalid,
                    format!("header at height {} has a bad signature", h.height),
                ));
            }
            prev = Some(h);
        }
        Ok(())
    }

    pub fn on_blocks(&mut self, id: RequestId, blocks: Vec<Block>, now_ms: u64) {
        let Some(r) = self.release(id) else { return };
        let Kind::Blocks { start, asked } = r.kind else {
            self.penalize(
                &r.peer,
                SyncFault::BadData,
                "blocks in answer to a header request".into(),
            );
            return;
        };
        let Some(batch) = self.batches.get_mut(&start) else {
            self.schedule(now_ms);
            return;
        };
        let have = batch.blocks.len();
        let expected = &batch.hashes[have..(have + asked).min(batch.hashes.len())];
        let mut fault = None;
        let mut accepted = 0;
        if blocks.len() > expected.len() {
            fault = Some((
                SyncFault::BadData,
                format!("{} blocks, asked for {}", blocks.len(), expected.len()),
            ));
        } else {
            for (b, want) in blocks.into_iter().zip(expected) {
                let h = b.hash();
                if &h != want {
                    fault = Some((
                        SyncFault::BadData,
                        format!("block {h} was not asked for (expected {want})"),
                    ));
                    break;
                }
                if Block::tx_root(&b.txs) != b.header.tx_root {
                    fault = Some((
                        SyncFault::Invalid,
                        format!("block {h}: transactions do not match the tx root"),
                    ));
                    break;
                }
                self.served_by.insert(h, r.peer.clone());
                batch.bytes += chainmesh_proto::wire::encode_block(&b).len();
                batch.blocks.push(b);
                accepted += 1;
            }
        }
        if accepted == 0 || fault.is_some() {
            self.exclude(start, &r.peer);
        }
        if let Some(p) = self.peers.get_mut(&r.peer) {
            if accepted > 0 {
                p.stats.blocks_served += accepted as u64;
                p.stats.batches_served += 1;
            }
            // A full answer well inside the timeout earns another slot; a slow one costs one.
            let took = now_ms.saturating_sub(r.sent_ms);
            if accepted == asked && took < self.cfg.request_timeout_ms / 4 {
                p.stats.in_flight_limit = (p.stats.in_flight_limit + 1).min(self.cfg.max_in_flight);
                if accepted >= p.stats.request_size {
                    p.stats.request_size = (p.stats.request_size * 2).min(p.max_items as usize);
                }
            } else if took > self.cfg.request_timeout_ms / 2 {
                p.stats.in_flight_limit = (p.stats.in_flight_limit.saturating_sub(1)).max(1);
                p.stats.request_size = (p.stats.request_size / 2).max(1);
            }
        }
        if let Some((f, d)) = fault {
            self.penalize(&r.peer, f, d);
        }
        self.schedule(now_ms);
    }

    /// The node finished importing the last `Import`.
    pub fn on_import_result(&mut self, result: ImportResult, now_ms: u64) {
        let imported = std::mem::take(&mut self.importing);
        match result {
            ImportResult::Done => {
                for h in &imported {
                    self.served_by.remove(h);
                }
            }
            ImportResult::Failed {
                hash,
                invalid,
                reason,
            } => {
                tracing::debug!(block = %hash, invalid, reason, "sync import failed");
                if invalid && let Some(p) = self.served_by.get(&hash).cloned() {
                    self.penalize(&p, SyncFault::Invalid, format!("block {hash}: {reason}"));
                }
                // Start over from our tip: what was fetched past the bad block is useless.
                let ids: Vec<RequestId> = self.requests.keys().copied().collect();
                for id in ids {
                    self.release(id);
                }
                self.batches.clear();
                self.served_by.clear();
                self.header_tip = None;
            }
        }
        self.schedule(now_ms);
    }

    fn buffered(&self) -> usize {
        self.batches.values().map(|b| b.hashes.len()).sum::<usize>() + self.importing.len()
    }

    fn send(&mut self, peer: P, kind: Kind, want: Want, now_ms: u64) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.stats.in_flight += 1;
        }
        self.requests.insert(
            id,
            InFlight {
                peer: peer.clone(),
                kind,
                sent_ms: now_ms,
            },
        );
        self.actions.push_back(Action::Request { peer, id, want });
        id
    }

    fn schedule(&mut self, now_ms: u64) {
        self.schedule_headers(now_ms);
        self.schedule_blocks(now_ms);
        self.schedule_import();
    }

    fn schedule_headers(&mut self, now_ms: u64) {
        if self.header_req.is_some()
            || self.buffered() + self.cfg.headers_per_request as usize
                > self.cfg.max_buffered_blocks
        {
            return;
        }
        let (base_h, base_hash) = match &self.header_tip {
            Some(t) => (t.height, t.hash()),
            None => self.local,
        };
        let best = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.headers_backoff_until <= now_ms
                    && !p.distrusted
                    && p.stats.in_flight < p.stats.in_flight_limit.max(1) + 1
            })
            .filter(|(_, p)| better(p.height, &p.hash, base_h, &base_hash))
            .max_by(|a, b| {
                a.1.height
                    .cmp(&b.1.height)
                    .then(b.1.hash.cmp(&a.1.hash))
                    .then(b.1.stats.timeouts.cmp(&a.1.stats.timeouts))
            })
            .map(|(k, _)| k.clone());
        let Some(peer) = best else { return };
        tracing::debug!(peer = ?peer, from = base_h, "asking for headers");
        let mut locator = self.locator.clone();
        if let Some(t) = &self.header_tip {
            locator.insert(0, (t.height, t.hash()));
        }
        let want = Want::Headers {
            locator: locator.iter().map(|(_, h)| *h).collect(),
            max: self.cfg.headers_per_request,
        };
        let id = self.send(peer, Kind::Headers { locator }, want, now_ms);
        self.header_req = Some(id);
    }

    fn schedule_blocks(&mut self, now_ms: u64) {
        let lowest = self.batches.keys().next().copied();
        let buffered_bytes: usize = self.batches.values().map(|b| b.bytes).sum();
        let starts: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, b)| b.in_flight.is_none() && !b.complete())
            .map(|(s, _)| *s)
            .collect();
        for start in starts {
            if buffered_bytes > self.cfg.max_buffered_bytes && Some(start) != lowest {
                continue;
            }
            let Some(batch) = self.batches.get_mut(&start) else {
                continue;
            };
            let end = batch.end_height(start);
            if batch.excluded.len() >= self.peers.len() {
                // Everyone failed it once: give them all another chance.
                batch.excluded.clear();
            }
            let pick = self
                .peers
                .iter()
                .filter(|(k, p)| {
                    p.bulk
                        && !p.distrusted
                        && p.height >= end
                        && p.stats.in_flight < p.stats.in_flight_limit
                        && !batch.excluded.contains(k)
                })
                .min_by(|a, b| {
                    a.1.stats
                        .in_flight
                        .cmp(&b.1.stats.in_flight)
                        .then(b.1.stats.blocks_served.cmp(&a.1.stats.blocks_served))
                })
                .map(|(k, p)| (k.clone(), p.stats.request_size.max(1)));
            let Some((peer, max_items)) = pick else {
                continue;
            };
            let have = batch.blocks.len();
            let hashes: Vec<Hash> = batch.hashes[have..]
                .iter()
                .take(max_items)
                .copied()
                .collect();
            let asked = hashes.len();
            let id = self.send(
                peer,
                Kind::Blocks { start, asked },
                Want::Blocks { hashes },
                now_ms,
            );
            if let Some(b) = self.batches.get_mut(&start) {
                b.in_flight = Some(id);
            }
        }
    }

    fn schedule_import(&mut self) {
        if !self.importing.is_empty() {
            return;
        }
        let mut blocks = Vec::new();
        while let Some(entry) = self.batches.first_entry() {
            let b = entry.get();
            if !b.complete()
                || (!blocks.is_empty()
                    && blocks.len() + b.hashes.len() > self.cfg.max_import_blocks)
            {
                break;
            }
            blocks.extend(entry.remove().blocks);
        }
        if !blocks.is_empty() {
            self.importing = blocks.iter().map(Block::hash).collect();
            self.actions.push_back(Action::Import { blocks });
        }
    }
}

/// Fork choice between a peer's tip and ours: greater height, then lower hash.
fn better(h: u64, hash: &Hash, base_h: u64, base_hash: &Hash) -> bool {
    h > base_h || (h == base_h && hash < base_hash)
}
