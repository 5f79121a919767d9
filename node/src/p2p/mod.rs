//! The network task: owns the swarm and the syncer, and is where peers meet the chain.
//!
//! - On every new connection both sides send their status; an incompatible peer (other
//!   network, genesis or version) is answered, logged with the reason, banned and
//!   dropped. Status is re-exchanged every `status_interval_secs`.
//! - Sync requests from peers are rate-limited per peer (the limits we advertise), served
//!   off this task, and answered within the protocol's size caps.
//! - Our own requests come from the sans-I/O [`Syncer`]; they are throttled to the rate
//!   each peer advertises, so an honest node never trips a peer's limiter. Blocks go to
//!   the chain task in order; its tip changes come back through the status channel.
//! - Faults lower a peer's score; low scores disconnect, very low ones ban (persisted in
//!   the `peers` tree, restored at start, enforced by the block list on redial).
//! - Gossip ([`gossip`]), pull-based mempool sync ([`pool_sync`]) and peer exchange with
//!   the address book ([`pex`], [`addr_book`]) each live in their own module.
//!
//! Work that must wait (the chain task, the store) runs in spawned tasks whose answers
//! come back on one bounded channel as [`Internal`] messages.

mod addr_book;
mod discovery;
pub use discovery::{DhtBucket, DhtEntry, DhtView};
mod gossip;
mod metrics;
pub mod mina;
mod muxer;
mod nat;
mod pex;
mod policing;
mod pool_sync;
pub mod serve;
pub mod swarm;
mod verify;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chainmesh_behaviours::codec::{Inbound, Malformed};
use chainmesh_behaviours::peers::{Fault, PeerScores, ScoreConfig, Verdict};
use chainmesh_behaviours::repeats::Repeats;
use chainmesh_behaviours::serve_queue::{ServeQueue, ServeQueueConfig};
use chainmesh_behaviours::status::{ChainStatus, PROTOCOL_VERSION, ServeLimit, check_compatible};
use chainmesh_behaviours::sync::{Request, Response};
use chainmesh_behaviours::{Quota, RateLimiter};
use chainmesh_chain_sync::Genesis;
use chainmesh_chain_sync::relay::{CompactRelay, RelayConfig};
use chainmesh_chain_sync::store::StoreReader;
use chainmesh_chain_sync::sync::{
    Action, ImportResult, RequestId, SyncConfig, SyncFault, Syncer, Want,
};
use chainmesh_mempool::{PullConfig, PullSync, Ticket};
use chainmesh_proto::{Hash, Tx, pb_net};
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::MessageId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::chain::{ChainEvent, Command, NodeStatus, now_ms};
use crate::config::P2pConfig;
use addr_book::AddrBook;
use libp2p::metrics::Recorder;
use prometheus_client::registry::Registry;
use prost::Message as _;
use swarm::BehaviourEvent;

/// Sync progress as `/status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncView {
    pub syncing: bool,
    pub target_height: u64,
    pub blocks_per_sec: f64,
    pub eta_secs: Option<u64>,
    pub peers: usize,
}

/// One row of `GET /peers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub peer_id: String,
    pub address: String,
    pub direction: String,
    pub agent: Option<String>,
    pub height: Option<u64>,
    pub tip: Option<Hash>,
    pub rtt_ms: Option<u64>,
    pub score: f64,
    /// Blocks this peer served us during sync.
    pub blocks_served: u64,
    pub batches_served: u64,
    pub timeouts: u64,
    /// Blocks per request and requests in flight the syncer currently allows this peer.
    pub request_size: usize,
    pub in_flight_limit: usize,
    /// The peer's gossipsub score as we see it (None: gossip off or no score yet).
    pub gossip_score: Option<f64>,
    /// The gossip topics in whose mesh we hold this peer (we forward it everything on
    /// them and expect it to forward).
    pub gossip_mesh: Vec<String>,
}

/// Counters of the network task, as `GET /net` shows them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetStats {
    pub peers: usize,
    pub tx_published: u64,
    pub tx_received: u64,
    pub tx_accepted: u64,
    pub tx_rejected: u64,
    pub tx_ignored: u64,
    /// Gossiped transactions forwarded but not offered to our pool: the chain task's
    /// queue was full.
    pub tx_pool_dropped: u64,
    /// Connections closed because our gossip queue to the peer stayed full.
    #[serde(default)]
    pub gossip_stuck_disconnects: u64,
    pub blocks_published: u64,
    pub blocks_received: u64,
    pub blocks_accepted: u64,
    pub blocks_rejected: u64,
    pub blocks_ignored: u64,
    /// Compact relay: announcements rebuilt from the pool alone, with some fetched
    /// transactions, or fetched whole.
    pub relay_from_pool: u64,
    pub relay_with_fetched_txs: u64,
    pub relay_txs_fetched: u64,
    pub relay_full_fetches: u64,
    pub relay_dropped: u64,
    /// Bytes of compact announcements received (first copies, as gossip hands them on).
    pub announcement_bytes: u64,
    /// Bytes of transactions and blocks fetched to complete announcements.
    pub fetched_bytes: u64,
    /// Encoded size of the blocks rebuilt from announcements.
    pub block_bytes: u64,
    pub permits_sent: u64,
    pub permits_served: u64,
    pub pool_entries_received: u64,
    pub pool_entries_served: u64,
    pub pool_txs_fetched: u64,
    /// Bytes of pool answers (ids) and of the transactions fetched for them.
    pub pool_bytes_received: u64,
    pub pool_txs_added: u64,
    pub known_addresses: usize,
    pub confirmed_addresses: usize,
    pub pex_requests_sent: u64,
    pub pex_requests_served: u64,
    pub pex_records_received: u64,
    pub pex_dials: u64,
    /// Dials of peers found by the DHT or mDNS.
    pub discovery_dials: u64,
    /// AutoNAT's verdict: "unknown", "public" or "private".
    pub reachability: String,
    /// Whether we answer DHT queries.
    pub dht_server: bool,
    /// Relay reservations we hold, and our addresses through them.
    pub relay_reservations: usize,
    pub external_addresses: Vec<String>,
    pub holepunch_ok: u64,
    pub holepunch_failed: u64,
    /// As a relay: reservations served and refused, circuits opened and closed, the
    /// longest a closed circuit lived.
    pub relay_reservations_served: u64,
    pub relay_reservations_refused: u64,
    pub relay_circuits_accepted: u64,
    pub relay_circuits_closed: u64,
    pub relay_circuits_over_bytes: u64,
    pub relay_circuits_over_time: u64,
    pub relay_longest_circuit_ms: u64,
    /// As an admission gate: proofs accepted and refused. As a client: how long the last
    /// challenge took us to solve.
    pub admissions_granted: u64,
    pub admissions_refused: u64,
    pub admission_last_solve_ms: u64,
    /// Inbound peers disconnected for not being admitted in time (`admission.bootstrap`).
    pub admission_disconnects: u64,
    /// Mina profile: messages on Mina's topics received (frame checked, not forwarded),
    /// refused (bad frame) and published; the id of the last received, as we compute it;
    /// `/mina/peer-exchange` answers served and peers learnt from it.
    pub mina_gossip_received: u64,
    pub mina_gossip_rejected: u64,
    pub mina_gossip_published: u64,
    pub mina_last_message_id: String,
    pub mina_px_served: u64,
    pub mina_px_received: u64,
}

pub enum NetCommand {
    Peers(oneshot::Sender<Vec<PeerView>>),
    Stats(oneshot::Sender<NetStats>),
    Dht(oneshot::Sender<discovery::DhtView>),
    /// Publish a body on a Mina topic (Mina profile); answers the message id in hex.
    MinaPublish {
        topic: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

pub struct NetworkHandle {
    pub commands: mpsc::Sender<NetCommand>,
    pub sync: watch::Receiver<SyncView>,
}

pub struct NetworkParams {
    pub cfg: P2pConfig,
    pub data_dir: PathBuf,
    pub genesis: Genesis,
    pub db: sled::Db,
    pub reader: StoreReader,
    pub status: watch::Receiver<NodeStatus>,
    pub chain: mpsc::Sender<Command>,
    /// What the chain task asks us to spread.
    pub events: mpsc::Receiver<ChainEvent>,
    /// The mempool: gossiped transactions go in from here.
    pub pool: crate::pool::SharedPool,
}

const TICK: Duration = Duration::from_millis(100);

struct PeerEntry {
    address: Multiaddr,
    inbound: bool,
    agent: Option<String>,
    rtt: Option<Duration>,
    status: Option<ChainStatus>,
    /// Token bucket for our requests to this peer, at the rate it advertised.
    out_quota: Option<RateLimiter<()>>,
    /// Set for a peer beyond `max_peers`: it may ask for addresses until then.
    surplus_until: Option<Instant>,
    connected_at: Instant,
    /// Consecutive gossipsub heartbeats in which our send queue to this peer overflowed.
    slow_heartbeats: u32,
}

/// Why we sent a sync-protocol request, so that its answer finds its way back.
enum Outbound {
    Sync(RequestId),
    RelayTxs(Hash),
    RelayBlock(Hash),
    PullTxs { ticket: Ticket, asked: Vec<Hash> },
}

impl Outbound {
    /// The request's kind, as the latency metrics label it.
    fn kind(&self) -> &'static str {
        match self {
            Outbound::Sync(_) => "sync",
            Outbound::RelayTxs(_) => "relay_txs",
            Outbound::RelayBlock(_) => "relay_block",
            Outbound::PullTxs { .. } => "pull_txs",
        }
    }
}

struct Deferred {
    peer: PeerId,
    req: Request,
    tag: Outbound,
}

/// Answers of work spawned off the event loop.
enum Internal {
    /// Gossiped transactions the pool took or refused.
    Pooled {
        n: usize,
    },
    GossipChecked {
        tags: Vec<(MessageId, PeerId)>,
        txs: Vec<Tx>,
        results: Vec<Result<(), chainmesh_mempool::AddError>>,
    },
    RelayPool {
        block: Hash,
        found: Vec<Option<Tx>>,
    },
    /// The signatures of a rebuilt block's fetched transactions were checked.
    RelayChecked {
        block: Hash,
        good: bool,
    },
    RelayImported {
        block: Hash,
        result: Result<(), bool>,
    },
    PoolLog {
        channel: ResponseChannel<pb_net::PoolEntries>,
        ids: Vec<Hash>,
        next: u64,
    },
    PullMissing {
        peer: PeerId,
        ticket: Ticket,
        asked: Vec<Hash>,
        missing: Option<Vec<Hash>>,
    },
    PullAdded {
        peer: PeerId,
        asked: Vec<Hash>,
        added: usize,
        forged: usize,
    },
    Verified {
        hashes: Vec<Hash>,
        ok: bool,
    },
    /// A relay's admission challenge, solved (or not) on a blocking thread.
    Solved {
        relay: PeerId,
        challenge: chainmesh_behaviours::admission::Challenge,
        counter: Option<u64>,
        took: Duration,
    },
}

const INTERNAL_QUEUE: usize = 1024;

struct Net {
    swarm: swarm::NodeSwarm,
    metrics: libp2p::metrics::Metrics,
    cfg: P2pConfig,
    genesis: Genesis,
    genesis_hash: Hash,
    network_id: String,
    status: watch::Receiver<NodeStatus>,
    chain: mpsc::Sender<Command>,
    reader: StoreReader,
    syncer: Syncer<PeerId>,
    scores: PeerScores<PeerId>,
    peers: HashMap<PeerId, PeerEntry>,
    /// Requests in flight on the sync protocol, with when they were sent.
    outbound: HashMap<OutboundRequestId, (Outbound, Instant)>,
    deferred: VecDeque<Deferred>,
    relay: CompactRelay<PeerId, gossip::RelayTag>,
    /// Blocks forwarded and still importing, served to peers from here meanwhile.
    relaying: serve::Relaying,
    pull: PullSync<PeerId>,
    /// Pulled answers that arrived before an earlier answer of the same peer; bounded by
    /// `PullConfig::max_in_hand` per peer.
    pulled: HashMap<Ticket, pool_sync::Pulled>,
    permits_out: HashMap<OutboundRequestId, u32>,
    held: HashMap<PeerId, pool_sync::Held>,
    settle: pool_sync::Settle,
    gossip_txs: Vec<(MessageId, PeerId, Tx)>,
    validating: usize,
    forwarded: gossip::Forwarded,
    /// Whether mesh-delivery scoring (P3) is on for the block topic; `None` where it
    /// never is (few producers, gossip off, or turned off in the config).
    delivery_gate: Option<chainmesh_behaviours::gossip::DeliveryGate>,
    pool_config: chainmesh_mempool::PoolConfig,
    pool: crate::pool::SharedPool,
    /// Gossiped transactions being added to the pool.
    pooling: usize,
    internal_tx: mpsc::Sender<Internal>,
    stats: NetStats,
    book: AddrBook,
    dialing: HashMap<PeerId, Instant>,
    last_pex_ask: Option<Instant>,
    pex_limiter: RateLimiter<PeerId>,
    last_tend: Instant,
    verify: verify::VerifyAhead,
    verify_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Pulled transactions on their way into the pool.
    ingest: mpsc::Sender<pool_sync::Pulled>,
    limiter: RateLimiter<PeerId>,
    /// Sync requests repeated within a short window, per peer.
    repeats: Repeats<PeerId>,
    /// Sync requests being served or waiting for a serving slot.
    serve_queue: ServeQueue<PeerId, serve::Pending>,
    served_tx: mpsc::Sender<serve::Served>,
    import_tx: mpsc::Sender<ImportResult>,
    bans: sled::Tree,
    bootstrap: Vec<Multiaddr>,
    bootstrap_peers: HashMap<Multiaddr, PeerId>,
    last_redial: Option<Instant>,
    last_status_round: Instant,
    /// When our tip last moved: a tip that stands still for several slots while peers
    /// are connected means news stopped reaching us, and peers are asked again.
    tip_moved: Instant,
    last_tip: Hash,
    pending_bans: Vec<(PeerId, Instant)>,
    /// The IP address each recent peer came from, kept past its disconnection: frames
    /// still in flight can get a peer banned after it is gone, and its address counts.
    peer_ips: hashlink::LruCache<PeerId, std::net::IpAddr>,
    /// Faults by address, for serving (see `serve::AddressScores`).
    address_scores: serve::AddressScores,
    sync_view: watch::Sender<SyncView>,
    samples: VecDeque<(Instant, u64)>,
    last_progress_log: Instant,
    listen_addrs: Vec<Multiaddr>,
    addrs_file: PathBuf,
    disco: discovery::DiscoveryState,
    nat: nat::NatState,
    node_metrics: std::sync::Arc<metrics::NodeMetrics>,
}

fn fault_of(f: SyncFault) -> Fault {
    match f {
        SyncFault::Timeout => Fault::Timeout,
        SyncFault::BadData => Fault::BadData,
        SyncFault::Invalid => Fault::Invalid,
    }
}

/// Starts the swarm: listens, dials bootstrap peers, and spawns the event loop. libp2p's
/// metrics are registered in `registry`.
pub fn start(
    p: NetworkParams,
    extra_bootstrap: Vec<Multiaddr>,
    registry: &mut Registry,
) -> anyhow::Result<NetworkHandle> {
    let key = swarm::load_or_create_identity(&p.data_dir)?;
    let gate = nat::gate(&p.cfg.admission);
    let node_metrics = metrics::NodeMetrics::register(registry);
    let mut swarm = swarm::build(
        key,
        &p.genesis.network_id,
        &p.cfg,
        registry,
        nat::admitted_check(&gate),
        &node_metrics.wire,
    )?;
    for a in &p.cfg.nat.external_addresses {
        let addr: Multiaddr = a
            .parse()
            .with_context(|| format!("p2p.nat.external_addresses: {a:?}"))?;
        swarm.add_external_address(addr);
    }
    let metrics = libp2p::metrics::Metrics::new(registry);
    let book = AddrBook::open(p.db.open_tree("addrs")?, ADDR_BOOK_SIZE)?;
    for a in &p.cfg.listen {
        let addr: Multiaddr = a
            .parse()
            .with_context(|| format!("p2p listen address {a:?}"))?;
        if p.cfg.profile == crate::config::Profile::Mina
            && addr
                .iter()
                .any(|x| matches!(x, Protocol::QuicV1 | Protocol::Udp(_)))
        {
            tracing::info!(address = %addr, "the mina profile speaks TCP only: not listening on this address");
            continue;
        }
        swarm
            .listen_on(addr.clone())
            .with_context(|| format!("cannot listen on {addr}"))?;
    }
    let mut bootstrap: Vec<Multiaddr> = p
        .cfg
        .bootstrap
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("p2p.bootstrap")?;
    bootstrap.extend(extra_bootstrap);

    let bans = p.db.open_tree("peers")?;
    let mut scores = PeerScores::new(ScoreConfig {
        ban_ms: p.cfg.ban_secs.saturating_mul(1000),
        ..ScoreConfig::default()
    });
    let now = now_ms();
    for r in bans.iter() {
        let (k, v) = r?;
        let (Ok(peer), Some((until, ip))) = (PeerId::from_bytes(&k), decode_ban(&v)) else {
            continue;
        };
        if until > now {
            if let Some(old) = scores.ban(&peer, until) {
                swarm.behaviour_mut().blocked.unblock_peer(old);
            }
            swarm.behaviour_mut().blocked.block_peer(peer);
            if let Some(ip) = ip {
                let b = &mut swarm.behaviour_mut().ip_filter.bans;
                if let Some(until) = b.peer_banned(ip, peer, until, now) {
                    tracing::info!(address = %ip, ban_secs = (until - now) / 1000, "address still banned");
                }
            }
        } else {
            bans.remove(k)?;
        }
    }

    let tip = p.status.borrow().clone();
    let locator = p.reader.locator(tip.height)?;
    let syncer = Syncer::new(
        p.genesis.clone(),
        SyncConfig {
            request_timeout_ms: p.cfg.request_timeout_secs * 1000,
            ..SyncConfig::default()
        },
        (tip.height, tip.tip),
        locator,
    );
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let serve_config = ServeQueueConfig::default();
    let (served_tx, served_rx) = mpsc::channel(serve_config.slots * 2);
    let (import_tx, import_rx) = mpsc::channel(4);
    let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
    let (sync_tx, sync_rx) = watch::channel(SyncView::default());
    let rps = p.cfg.sync_requests_per_second;
    let pool_config = p.pool.lock().pool().config().clone();
    // One slot per core: a synced batch's verification takes them all (it spreads over
    // every core), an answer of pulled transactions one (several run side by side).
    let verify_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
        chainmesh_chain_sync::rules::cores(),
    ));
    let ingest = pool_sync::spawn_ingest(
        tip.genesis,
        verify_slots.clone(),
        p.pool.clone(),
        p.reader.clone(),
        internal_tx.clone(),
        p.cfg.max_connections as usize * PullConfig::default().max_in_hand,
    );
    let mut net = Net {
        swarm,
        metrics,
        genesis: p.genesis.clone(),
        genesis_hash: tip.genesis,
        network_id: p.genesis.network_id.clone(),
        status: p.status,
        chain: p.chain,
        reader: p.reader,
        syncer,
        scores,
        peers: HashMap::new(),
        outbound: HashMap::new(),
        deferred: VecDeque::new(),
        relay: CompactRelay::new(RelayConfig::default()),
        relaying: serve::Relaying::default(),
        pull: PullSync::new(PullConfig::default()),
        pulled: HashMap::new(),
        permits_out: HashMap::new(),
        held: HashMap::new(),
        settle: pool_sync::Settle::new(Instant::now()),
        gossip_txs: Vec::new(),
        validating: 0,
        forwarded: gossip::Forwarded::default(),
        delivery_gate: (p.cfg.gossip && p.cfg.mesh_delivery_scoring)
            .then(|| {
                chainmesh_behaviours::gossip::DeliveryGate::new(
                    chainmesh_behaviours::gossip::BlockSources {
                        producers: p.genesis.authorities.len(),
                        block_time: Duration::from_millis(p.genesis.block_time_ms),
                    },
                )
            })
            .flatten(),
        pool_config: pool_config.clone(),
        pool: p.pool,
        pooling: 0,
        internal_tx,
        stats: NetStats::default(),
        book,
        dialing: HashMap::new(),
        last_pex_ask: None,
        // A peer asks for addresses now and then; once a second is plenty.
        pex_limiter: RateLimiter::new(Quota::new(1, 3), p.cfg.max_connections as usize * 2),
        last_tend: Instant::now(),
        verify: verify::VerifyAhead::default(),
        verify_slots,
        ingest,
        limiter: RateLimiter::new(
            Quota::new(rps, rps.saturating_mul(2)),
            p.cfg.max_connections as usize * 2,
        ),
        // An honest node asks once and retries once after a timeout (10 s, outside the
        // window); a third identical request within 2 s is spam.
        repeats: Repeats::new(
            Duration::from_secs(2),
            1,
            32,
            p.cfg.max_connections as usize * 2,
        ),
        serve_queue: ServeQueue::new(serve_config),
        served_tx,
        import_tx,
        bans,
        bootstrap,
        bootstrap_peers: HashMap::new(),
        last_redial: None,
        last_status_round: Instant::now(),
        tip_moved: Instant::now(),
        last_tip: Hash::ZERO,
        pending_bans: Vec::new(),
        peer_ips: hashlink::LruCache::new(4096),
        address_scores: serve::AddressScores::new(),
        sync_view: sync_tx,
        samples: VecDeque::new(),
        last_progress_log: Instant::now(),
        listen_addrs: Vec::new(),
        addrs_file: p.data_dir.join("p2p.addrs"),
        disco: discovery::DiscoveryState::new(swarm::kad_protocol(&p.genesis.network_id, &p.cfg)),
        nat: nat::NatState::new(&p.cfg.nat, gate),
        node_metrics,
        cfg: p.cfg,
    };
    net.update_kad_mode();
    net.subscribe_gossip();
    tokio::spawn(net.run(cmd_rx, served_rx, import_rx, p.events, internal_rx));
    Ok(NetworkHandle {
        commands: cmd_tx,
        sync: sync_rx,
    })
}

impl Net {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<NetCommand>,
        mut served: mpsc::Receiver<serve::Served>,
        mut imports: mpsc::Receiver<ImportResult>,
        mut events: mpsc::Receiver<ChainEvent>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        tracing::info!(peer_id = %self.swarm.local_peer_id(), "p2p started");
        self.redial();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                Some(served) = served.recv() => self.on_served(served),
                Some(result) = imports.recv() => {
                    if let ImportResult::Failed { hash, reason, .. } = &result {
                        tracing::warn!(block = %hash, %reason, "a synced block was refused");
                    }
                    self.syncer.on_import_result(result, now_ms());
                }
                changed = self.status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.on_local_tip();
                    self.service_held_permits();
                }
                Some(e) = events.recv() => self.on_chain_event(e),
                Some(m) = internal.recv() => self.on_internal(m),
                cmd = commands.recv() => match cmd {
                    Some(NetCommand::Peers(reply)) => { let _ = reply.send(self.peer_views()); }
                    Some(NetCommand::Stats(reply)) => { let _ = reply.send(self.net_stats()); }
                    Some(NetCommand::Dht(reply)) => { let _ = reply.send(self.dht_view()); }
                    Some(NetCommand::MinaPublish { topic, body, reply }) => {
                        let _ = reply.send(self.publish_mina(&topic, &body));
                    }
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
            self.police_streams();
            self.drive_syncer();
            self.flush_gossip_txs();
            self.drive_relay();
            self.grant_permits();
            self.send_deferred();
        }
        tracing::info!("p2p stopped");
    }

    fn on_internal(&mut self, m: Internal) {
        let now = now_ms();
        match m {
            Internal::Pooled { n } => {
                self.pooling = self.pooling.saturating_sub(n);
                self.service_held_permits();
            }
            Internal::GossipChecked { tags, txs, results } => {
                self.on_gossip_checked(tags, txs, results)
            }
            Internal::RelayPool { block, found } => {
                tracing::trace!(target: "chainmesh::relay", block = %block, "pool looked up");
                self.relay.on_pool(&block, found, now)
            }
            Internal::RelayChecked { block, good } => {
                tracing::trace!(target: "chainmesh::relay", block = %block, good, "checked");
                if !good {
                    self.relaying.remove(&block);
                }
                self.relay.on_checked(&block, good)
            }
            Internal::RelayImported { block, result } => {
                tracing::trace!(target: "chainmesh::relay", block = %block, "imported");
                self.relaying.remove(&block);
                if result == Err(true) {
                    // Its body was whole and well signed (or it would not have been
                    // imported): the producer signed an invalid state transition.
                    tracing::warn!(block = %block, "a block from gossip failed its import as invalid");
                }
                self.relay.on_imported(&block, result)
            }
            Internal::PoolLog { channel, ids, next } => self.on_pool_log(channel, ids, next),
            Internal::PullMissing {
                peer,
                ticket,
                asked,
                missing,
            } => self.on_pull_missing(peer, ticket, asked, missing),
            Internal::PullAdded {
                peer,
                asked,
                added,
                forged,
            } => self.on_pull_added(peer, asked, added, forged),
            Internal::Verified { hashes, ok } => self.on_verified(hashes, ok),
            Internal::Solved {
                relay,
                challenge,
                counter,
                took,
            } => self.on_solved(relay, challenge, counter, took),
        }
    }

    fn net_stats(&self) -> NetStats {
        let r = self.relay.stats();
        let n = &self.nat.stats;
        NetStats {
            peers: self.peer_count(),
            relay_from_pool: r.from_pool,
            relay_with_fetched_txs: r.with_fetched_txs,
            relay_txs_fetched: r.txs_fetched,
            relay_full_fetches: r.full_fetches,
            relay_dropped: r.dropped,
            known_addresses: self.book.len(),
            confirmed_addresses: self.book.confirmed(),
            reachability: self.nat.reach_name().into(),
            dht_server: self.disco.server,
            relay_reservations: self.nat.reservations(),
            external_addresses: self
                .swarm
                .external_addresses()
                .map(|a| a.to_string())
                .collect(),
            holepunch_ok: n.holepunch_ok,
            holepunch_failed: n.holepunch_failed,
            relay_reservations_served: n.reservations_served,
            relay_reservations_refused: n.reservations_refused,
            relay_circuits_accepted: n.circuits_accepted,
            relay_circuits_closed: n.circuits_closed,
            relay_circuits_over_bytes: n.circuits_over_bytes,
            relay_circuits_over_time: n.circuits_over_time,
            relay_longest_circuit_ms: n.longest_circuit_ms,
            admissions_granted: n.admissions_granted,
            admissions_refused: n.admissions_refused,
            admission_last_solve_ms: n.last_solve_ms,
            admission_disconnects: n.admission_disconnects,
            ..self.stats.clone()
        }
    }

    /// Queues a sync-protocol request; it leaves as the peer's advertised rate allows.
    fn request(&mut self, peer: PeerId, req: Request, tag: Outbound) {
        self.deferred.push_back(Deferred { peer, req, tag });
    }

    /// A request that will get no answer: tell whoever waits for it.
    fn fail_outbound(&mut self, peer: PeerId, tag: Outbound, timed_out: bool) {
        let now = now_ms();
        match tag {
            Outbound::Sync(id) => self.syncer.on_failure(id, timed_out, now),
            Outbound::RelayTxs(block) => self.on_relay_txs(block, None),
            Outbound::RelayBlock(block) => self.on_relay_block(block, None),
            Outbound::PullTxs { ticket, asked } => self.on_pull_txs(peer, ticket, asked, None),
        }
    }

    fn our_status(&self) -> ChainStatus {
        let s = self.status.borrow();
        ChainStatus {
            version: PROTOCOL_VERSION,
            genesis: self.genesis_hash,
            network_id: self.network_id.clone(),
            best_height: s.height,
            best_hash: s.tip,
            // Proof of authority: weight is the number of blocks, ordered like fork choice.
            cumulative_weight: u128::from(s.height),
            agent: swarm::agent(),
            limits: vec![ServeLimit {
                protocol: "sync".into(),
                requests_per_second: self.cfg.sync_requests_per_second,
                max_items_per_request: self.cfg.sync_max_blocks,
            }],
        }
    }

    fn send_status(&mut self, peer: &PeerId) {
        let s = self.our_status().to_pb();
        self.swarm.behaviour_mut().status.send_request(peer, Ok(s));
    }

    fn on_local_tip(&mut self) {
        let (height, tip) = {
            let s = self.status.borrow_and_update();
            (s.height, s.tip)
        };
        if tip != self.last_tip {
            self.last_tip = tip;
            self.tip_moved = Instant::now();
        }
        match self.reader.locator(height) {
            Ok(loc) => self.syncer.set_local(height, tip, loc, now_ms()),
            Err(e) => tracing::error!(error = %e, "cannot read the locator"),
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&ev);
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                // Relayed listen addresses already end with our id.
                let me = *self.swarm.local_peer_id();
                let full = match address.iter().last() {
                    Some(Protocol::P2p(p)) if p == me => address.clone(),
                    _ => address.clone().with(Protocol::P2p(me)),
                };
                tracing::info!(address = %full, "p2p listening");
                self.listen_addrs.push(full);
                let text: String = self.listen_addrs.iter().map(|a| format!("{a}\n")).collect();
                if let Err(e) = std::fs::write(&self.addrs_file, text) {
                    tracing::warn!(error = %e, file = %self.addrs_file.display(), "cannot write the p2p address file");
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let (address, inbound) = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => (address.clone(), false),
                    // A circuit through a relay we listen on: the peer has no address of
                    // its own here, the circuit is what it came through.
                    ConnectedPoint::Listener { local_addr, .. } if endpoint.is_relayed() => {
                        (local_addr.clone(), true)
                    }
                    ConnectedPoint::Listener { send_back_addr, .. } => {
                        (send_back_addr.clone(), true)
                    }
                };
                if !inbound
                    && let Some(b) = self
                        .bootstrap
                        .iter()
                        .find(|b| **b == address || without_p2p(b) == address)
                {
                    self.bootstrap_peers.insert(b.clone(), peer_id);
                }
                self.nat_on_connected(peer_id, connection_id, &address, inbound);
                if let Some(ip) = chainmesh_behaviours::peers::ip_of(&address) {
                    self.peer_ips.insert(peer_id, ip);
                }
                if let Some(p) = self.peers.get_mut(&peer_id)
                    && is_relayed(&p.address)
                    && !is_relayed(&address)
                {
                    tracing::info!(peer = %peer_id, %address, "direct connection to a peer we reached through a relay");
                    p.address = address.clone();
                    p.inbound = inbound;
                }
                if !inbound {
                    // We dialled it and it answered: an address worth keeping and sharing.
                    self.dialing.remove(&peer_id);
                    if !is_relayed(&address) {
                        self.book.confirm(peer_id, without_p2p(&address), now_ms());
                    }
                }
                if num_established.get() == 1 {
                    tracing::debug!(peer = %peer_id, %address, inbound, "connected");
                    let surplus_until = (inbound
                        && self.peer_count() >= self.cfg.max_peers as usize)
                        .then(|| {
                            tracing::info!(peer = %peer_id, limit = self.cfg.max_peers, "at the peer limit: the new peer may ask for addresses, then goes");
                            Instant::now() + pex::SURPLUS_GRACE
                        });
                    self.peers.insert(
                        peer_id,
                        PeerEntry {
                            address,
                            inbound,
                            agent: None,
                            rtt: None,
                            status: None,
                            out_quota: None,
                            surplus_until,
                            connected_at: Instant::now(),
                            slow_heartbeats: 0,
                        },
                    );
                    self.send_status(&peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } if num_established > 0 => {
                self.nat_on_closed(peer_id, connection_id);
                self.police_close_cause(peer_id, cause.as_ref());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                self.nat_on_closed(peer_id, connection_id);
                self.nat_on_peer_gone(&peer_id);
                tracing::debug!(peer = %peer_id, cause = ?cause, "disconnected");
                self.police_close_cause(peer_id, cause.as_ref());
                self.peers.remove(&peer_id);
                self.syncer.peer_gone(&peer_id, now_ms());
                self.limiter.remove(&peer_id);
                self.repeats.remove(&peer_id);
                self.pex_limiter.remove(&peer_id);
                self.relay.peer_gone(&peer_id);
                let waiting = self.pull.remove_peer(&peer_id);
                self.take_in(waiting);
                self.held.remove(&peer_id);
                self.serve_queue.remove_peer(&peer_id);
            }
            SwarmEvent::IncomingConnectionError {
                peer_id,
                error,
                send_back_addr,
                ..
            } => {
                if let libp2p::swarm::ListenError::Denied { .. } = error
                    && let Some(p) = peer_id
                    && self.scores.banned_until(&p, now_ms()).is_some()
                {
                    tracing::info!(peer = %p, address = %send_back_addr, "refused a connection from a banned peer");
                } else {
                    tracing::debug!(address = %send_back_addr, error = %error, "incoming connection failed");
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
                if let Some(p) = peer_id
                    && self.dialing.remove(&p).is_some()
                {
                    self.book.dial_failed(&p, now_ms());
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let why = match &reason {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e.to_string(),
                };
                self.nat_on_listener_closed(listener_id, &why);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.external_addresses_changed();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.external_addresses_changed();
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match &ev {
            BehaviourEvent::Identify(e) => self.metrics.record(e),
            BehaviourEvent::Ping(e) => self.metrics.record(e),
            BehaviourEvent::Gossip(e) => self.metrics.record(e),
            BehaviourEvent::Discovery(chainmesh_behaviours::discovery::BehaviourEvent::Kad(e)) => {
                self.metrics.record(e)
            }
            BehaviourEvent::Nat(chainmesh_behaviours::nat::BehaviourEvent::Relay(e)) => {
                self.metrics.record(e)
            }
            BehaviourEvent::Nat(chainmesh_behaviours::nat::BehaviourEvent::Dcutr(e)) => {
                self.metrics.record(e)
            }
            _ => {}
        }
        match ev {
            BehaviourEvent::Identify(libp2p::identify::Event::Received {
                peer_id, info, ..
            }) => {
                let agent: String = info
                    .agent_version
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(128)
                    .collect();
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    if p.agent.is_none() {
                        tracing::info!(peer = %peer_id, %agent, protocols = info.protocols.len(), "peer identified");
                    }
                    p.agent = Some(agent);
                }
                self.on_identified(peer_id, &info);
            }
            BehaviourEvent::Identify(libp2p::identify::Event::Error {
                peer_id,
                connection_id,
                error,
            }) => self.on_identify_error(peer_id, connection_id, error),
            BehaviourEvent::Ping(libp2p::ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.rtt = Some(rtt);
                }
            }
            BehaviourEvent::Status(ev) => self.on_status_event(ev),
            BehaviourEvent::Sync(ev) => self.on_sync_event(ev),
            BehaviourEvent::Gossip(ev) => self.on_gossip_event(ev),
            BehaviourEvent::Pool(ev) => self.on_pool_event(ev),
            BehaviourEvent::Pex(ev) => self.on_pex_event(ev),
            BehaviourEvent::Discovery(chainmesh_behaviours::discovery::BehaviourEvent::Kad(e)) => {
                self.on_kad_event(e)
            }
            BehaviourEvent::Discovery(chainmesh_behaviours::discovery::BehaviourEvent::Mdns(e)) => {
                self.on_mdns_event(e)
            }
            BehaviourEvent::Nat(e) => self.on_nat_event(e),
            BehaviourEvent::Admission(e) => self.on_admission_event(e),
            BehaviourEvent::MinaPx(e) => self.on_mina_px_event(e),
            _ => {}
        }
    }

    fn on_status_event(&mut self, ev: chainmesh_behaviours::status::Event) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let request = match request {
                    Ok(r) => r,
                    Err(Malformed(why)) => {
                        drop(channel);
                        self.fault(peer, Fault::Malformed, format!("status: {why}"));
                        return;
                    }
                };
                // Answer first, so that a refused peer learns our side too.
                let ours = self.our_status().to_pb();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .status
                    .send_response(channel, ours);
                self.on_peer_status(peer, request);
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => {
                self.on_peer_status(peer, response);
            }
            Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, "status", &error)
            }
            Event::OutboundFailure { peer, error, .. } => {
                self.on_outbound_failure(peer, "status", &error)
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_peer_status(&mut self, peer: PeerId, raw: pb_net::Status) {
        let theirs = match ChainStatus::from_pb(raw) {
            Ok(s) => s,
            Err(e) => {
                self.fault(peer, Fault::Malformed, format!("malformed status: {e}"));
                return;
            }
        };
        if let Err(why) = check_compatible(&self.our_status(), &theirs) {
            if self.scores.banned_until(&peer, now_ms()).is_none() {
                tracing::info!(peer = %peer, reason = %why, agent = %theirs.agent, "refusing peer: not on our network");
            }
            self.fault(peer, Fault::Incompatible, why.to_string());
            return;
        }
        let max_items = theirs
            .limit_for("sync")
            .map_or(self.cfg.sync_max_blocks, |l| l.max_items_per_request);
        let rps = theirs.limit_for("sync").map(|l| l.requests_per_second);
        let (height, hash) = (theirs.best_height, theirs.best_hash);
        let mut joined = false;
        let mut surplus = false;
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.status.is_none() && p.surplus_until.is_none() {
                tracing::info!(peer = %peer, height, agent = %theirs.agent, rtt_ms = ?p.rtt.map(|r| r.as_millis()), "peer joined");
                joined = true;
            }
            surplus = p.surplus_until.is_some();
            p.status = Some(theirs);
            // Keep 20% headroom under what the peer enforces.
            p.out_quota = rps.map(|r| {
                let r = (r.saturating_mul(4) / 5).max(1);
                RateLimiter::new(Quota::new(r, r), 1)
            });
        }
        if surplus {
            return;
        }
        if joined {
            self.pull.add_peer(peer);
            if self.peer_count() < self.cfg.target_peers as usize {
                self.ask_for_peers(&peer);
            }
        }
        self.syncer
            .peer_status(peer, height, hash, max_items, now_ms());
    }

    fn on_sync_event(&mut self, ev: chainmesh_behaviours::sync::Event) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                self.on_sync_request(peer, request, channel);
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some((tag, sent)) = self.outbound.remove(&request_id) else {
                    return;
                };
                self.node_metrics.answered(tag.kind(), sent.elapsed());
                let id = match tag {
                    Outbound::Sync(id) => id,
                    tag => return self.on_other_response(peer, tag, response),
                };
                let now = now_ms();
                match Response::from_pb(response) {
                    Ok(Response::Headers(h)) => self.syncer.on_headers(id, h, now),
                    Ok(Response::Blocks(b)) => {
                        self.verify_ahead(&b);
                        self.syncer.on_blocks(id, b, now)
                    }
                    Ok(Response::Error(e)) => {
                        tracing::debug!(peer = %peer, error = ?e, "peer declined a sync request");
                        self.syncer.on_failure(id, false, now);
                    }
                    Ok(Response::Txs { .. }) => {
                        self.syncer.on_failure(id, false, now);
                        self.fault(
                            peer,
                            Fault::BadData,
                            "transactions in answer to a block request".into(),
                        );
                    }
                    Err(e) => {
                        self.syncer.on_failure(id, false, now);
                        self.fault(
                            peer,
                            Fault::Malformed,
                            format!("malformed sync response: {e}"),
                        );
                    }
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((tag, _)) = self.outbound.remove(&request_id) {
                    let timed_out = matches!(error, request_response::OutboundFailure::Timeout);
                    self.node_metrics.failed(tag.kind(), timed_out);
                    self.fail_outbound(peer, tag, timed_out);
                }
                self.on_outbound_failure(peer, "sync", &error);
            }
            Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, "sync", &error);
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Answers to requests made for the relay and pool sync.
    fn on_other_response(&mut self, peer: PeerId, tag: Outbound, response: pb_net::SyncResponse) {
        let bytes = response.encoded_len();
        match (tag, Response::from_pb(response)) {
            (Outbound::RelayTxs(block), Ok(Response::Txs { txs, .. })) => {
                self.on_relay_txs(block, Some((txs, bytes)))
            }
            (Outbound::RelayBlock(block), Ok(Response::Blocks(mut b))) if b.len() <= 1 => {
                self.on_relay_block(block, b.pop().map(|b| (b, bytes)))
            }
            (Outbound::PullTxs { ticket, asked }, Ok(Response::Txs { txs, .. })) => {
                self.stats.pool_bytes_received += bytes as u64;
                self.on_pull_txs(peer, ticket, asked, Some(txs))
            }
            (tag, Ok(Response::Error(e))) => {
                tracing::debug!(peer = %peer, error = ?e, "peer declined a request");
                self.fail_outbound(peer, tag, false);
            }
            (tag, Ok(_)) => {
                self.fail_outbound(peer, tag, false);
                self.fault(peer, Fault::BadData, "an answer of the wrong kind".into());
            }
            (tag, Err(e)) => {
                self.fail_outbound(peer, tag, false);
                self.fault(
                    peer,
                    Fault::Malformed,
                    format!("malformed sync response: {e}"),
                );
            }
        }
    }

    fn on_sync_request(
        &mut self,
        peer: PeerId,
        raw: Inbound<pb_net::SyncRequest>,
        channel: ResponseChannel<pb_net::SyncResponse>,
    ) {
        use chainmesh_behaviours::sync::ServeError;
        let raw = match raw {
            Ok(r) => r,
            Err(Malformed(why)) => {
                drop(channel);
                self.fault(peer, Fault::Malformed, format!("sync: {why}"));
                return;
            }
        };
        let digest = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            raw.encode_to_vec().hash(&mut h);
            h.finish()
        };
        let req = match Request::from_pb(raw) {
            Ok(r) => r,
            Err(e) => {
                let resp = Response::Error(ServeError::BadRequest(e.to_string()));
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, resp.to_pb());
                self.fault(
                    peer,
                    Fault::Malformed,
                    format!("malformed sync request: {e}"),
                );
                return;
            }
        };
        let now = Instant::now();
        let refusal = if self.limiter.check(&peer, 1, now).is_err() {
            Some((
                Fault::RateExceeded,
                format!(
                    "more than {} requests per second",
                    self.cfg.sync_requests_per_second
                ),
            ))
        } else if self.repeats.repeated(&peer, digest, now) {
            Some((
                Fault::Repeated,
                "the same request three times within 2 s: ask once, retry once".to_string(),
            ))
        } else {
            None
        };
        if let Some((fault, why)) = refusal {
            let resp = Response::Error(ServeError::RateLimited(why.clone()));
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, resp.to_pb());
            self.fault(peer, fault, format!("sync: {why}"));
            return;
        }
        self.queue_sync_request(peer, channel, req);
    }

    fn on_inbound_failure(
        &mut self,
        peer: PeerId,
        protocol: &str,
        e: &request_response::InboundFailure,
    ) {
        self.on_stream_failure(peer, protocol, &e.to_string(), is_garbage_in(e));
    }

    fn on_outbound_failure(
        &mut self,
        peer: PeerId,
        protocol: &str,
        e: &request_response::OutboundFailure,
    ) {
        self.on_stream_failure(peer, protocol, &e.to_string(), is_garbage_out(e));
    }

    fn on_stream_failure(&mut self, peer: PeerId, protocol: &str, error: &str, garbage: bool) {
        if garbage {
            self.fault(peer, Fault::Malformed, format!("{protocol}: {error}"));
        } else {
            tracing::debug!(peer = %peer, protocol, error, "stream failed");
        }
    }

    /// Scores a fault and acts on the verdict.
    fn fault(&mut self, peer: PeerId, fault: Fault, detail: String) {
        let now = now_ms();
        if self.scores.banned_until(&peer, now).is_some() {
            // Already banned: frames still in flight add nothing.
            return;
        }
        self.node_metrics.fault(fault);
        let (verdict, evicted) = self.scores.penalize_evicting(&peer, fault, now);
        // Abuse only: a wrong network or a slow link says nothing of the host's intent.
        let abuse = !matches!(
            fault,
            Fault::Incompatible | Fault::Timeout | Fault::Graylisted
        );
        if abuse
            && let Some(ip) = self.peer_ips.peek(&peer).copied()
            && !self.swarm.behaviour().ip_filter.bans.is_exempt(&ip)
        {
            self.address_scores.penalize(ip, fault.cost(), now);
        }
        // Gossipsub weighs our score in its own (application score, weight 1), so a peer
        // at fault here loses its mesh places and is graylisted there too.
        let ours = self.scores.score(&peer, now);
        self.swarm
            .behaviour_mut()
            .gossip
            .set_application_score(&peer, ours);
        if let Some(old) = evicted {
            // The ban table is full: the ban expiring first made room, lift it everywhere.
            self.swarm.behaviour_mut().blocked.unblock_peer(old);
            let _ = self.bans.remove(old.to_bytes());
        }
        match verdict {
            Verdict::Keep => tracing::debug!(peer = %peer, ?fault, %detail, "peer penalised"),
            Verdict::Disconnect => {
                tracing::info!(peer = %peer, ?fault, %detail, "disconnecting a misbehaving peer");
                self.syncer.peer_gone(&peer, now);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Verdict::Ban { until_ms } => {
                if fault != Fault::Incompatible {
                    tracing::info!(peer = %peer, ?fault, %detail, ban_secs = (until_ms - now) / 1000, "banning peer");
                }
                let ip = self.peer_ips.get(&peer).copied();
                if let Err(e) = self.bans.insert(peer.to_bytes(), encode_ban(until_ms, ip)) {
                    tracing::warn!(error = %e, "cannot persist a ban");
                }
                // Durable at once, off the event loop: a crash must not free a banned
                // peer (sled coalesces flushes asked for at the same time).
                let tree = self.bans.clone();
                tokio::spawn(async move {
                    if let Err(e) = tree.flush_async().await {
                        tracing::warn!(error = %e, "cannot flush a ban to disk");
                    }
                });
                if let Some(ip) = ip {
                    self.ban_address(ip, peer, until_ms, now);
                }
                self.syncer.peer_gone(&peer, now);
                if fault == Fault::Incompatible {
                    // Give our status answer a moment to leave, so the peer learns why.
                    self.pending_bans
                        .push((peer, Instant::now() + Duration::from_millis(500)));
                } else {
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                }
            }
        }
    }

    /// A peer gossipsub has graylisted gains nothing from staying (its messages are
    /// dropped unread) and costs us its traffic: a fault each second it stays. Our score is
    /// gossipsub's application score (weight 1); it is refreshed here first, so that it
    /// recovers there as it does here (it was only set at each fault before, so a peer
    /// kept its worst score in gossipsub for as long as it stayed connected).
    fn police_graylisted(&mut self) {
        use chainmesh_behaviours::gossip::{GRAYLIST_THRESHOLD, colocation_penalty};
        let now = now_ms();
        // Peer ids per address as gossipsub counts them (a circuit counts at its relay).
        let mut at_ip: HashMap<std::net::IpAddr, usize> = HashMap::new();
        let ip_of = |a: &Multiaddr| {
            a.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
                libp2p::multiaddr::Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            })
        };
        for e in self.peers.values() {
            if let Some(ip) = ip_of(&e.address) {
                *at_ip.entry(ip).or_default() += 1;
            }
        }
        let peers: Vec<(PeerId, Option<std::net::IpAddr>)> = self
            .peers
            .iter()
            .map(|(p, e)| (*p, ip_of(&e.address)))
            .collect();
        let mut graylisted = Vec::new();
        for (p, ip) in peers {
            let ours = self.scores.score(&p, now);
            let gossip = &mut self.swarm.behaviour_mut().gossip;
            gossip.set_application_score(&p, ours);
            let Some(total) = gossip.peer_score(&p) else {
                continue;
            };
            let colocation = ip.map_or(0.0, |ip| {
                colocation_penalty(at_ip.get(&ip).copied().unwrap_or(0))
            });
            if total - colocation <= GRAYLIST_THRESHOLD {
                graylisted.push((p, total, colocation));
            }
        }
        for (peer, score, colocation) in graylisted {
            self.fault(
                peer,
                Fault::Graylisted,
                format!(
                    "gossip score {score:.0} ({colocation:.0} of it for its address), at or below the graylist threshold {GRAYLIST_THRESHOLD} without it"
                ),
            );
        }
    }

    /// Counts a banned peer against its IP address; enough of them ban the address, and
    /// every peer still connected from it is dropped.
    fn ban_address(&mut self, ip: std::net::IpAddr, peer: PeerId, until_ms: u64, now: u64) {
        let bans = &mut self.swarm.behaviour_mut().ip_filter.bans;
        let Some(until) = bans.peer_banned(ip, peer, until_ms, now) else {
            return;
        };
        let after = bans.config().after;
        let others: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(p, e)| {
                **p != peer && chainmesh_behaviours::peers::ip_of(&e.address) == Some(ip)
            })
            .map(|(p, _)| *p)
            .collect();
        tracing::warn!(
            address = %ip,
            banned_peers = after,
            ban_secs = until.saturating_sub(now) / 1000,
            disconnected = others.len(),
            "banning an address: its peer ids keep getting banned"
        );
        for p in others {
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    fn drive_syncer(&mut self) {
        while let Some(a) = self.syncer.poll_action() {
            match a {
                Action::Request { peer, id, want } => {
                    let req = match want {
                        Want::Headers { locator, max } => Request::GetHeaders { locator, max },
                        Want::Blocks { hashes } => Request::GetBlocks { hashes },
                    };
                    self.request(peer, req, Outbound::Sync(id));
                }
                Action::Import { blocks } => self.import_when_verified(blocks),
                Action::Penalize {
                    peer,
                    fault,
                    detail,
                } => self.fault(peer, fault_of(fault), detail),
            }
        }
        self.send_deferred();
    }

    /// Sends queued requests as each peer's advertised rate allows.
    fn send_deferred(&mut self) {
        let now = Instant::now();
        let mut keep = VecDeque::new();
        while let Some(d) = self.deferred.pop_front() {
            let Some(p) = self.peers.get_mut(&d.peer) else {
                self.fail_outbound(d.peer, d.tag, false);
                continue;
            };
            if let Some(q) = &mut p.out_quota
                && q.check(&(), 1, now).is_err()
            {
                keep.push_back(d);
                continue;
            }
            let oid = self
                .swarm
                .behaviour_mut()
                .sync
                .send_request(&d.peer, Ok(d.req.to_pb()));
            self.outbound.insert(oid, (d.tag, Instant::now()));
        }
        self.deferred = keep;
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        self.syncer.tick(now);
        self.relay.tick(now);
        self.expire_waiting_serves();
        self.service_held_permits();
        if self.last_tend.elapsed() >= Duration::from_secs(1) {
            self.last_tend = Instant::now();
            self.police_graylisted();
            self.tend_delivery_scoring();
            self.drop_silent_peers();
            self.tend_peers();
            self.tend_discovery();
            self.tend_relays();
            self.tend_hole_punches();
            self.tend_admission();
            self.update_metrics();
        }
        let due: Vec<PeerId> = {
            let t = Instant::now();
            let (due, rest): (Vec<_>, Vec<_>) =
                self.pending_bans.drain(..).partition(|(_, at)| *at <= t);
            self.pending_bans = rest;
            due.into_iter().map(|(p, _)| p).collect()
        };
        for p in due {
            self.swarm.behaviour_mut().blocked.block_peer(p);
        }
        for ip in self.swarm.behaviour_mut().ip_filter.bans.expire(now) {
            tracing::info!(address = %ip, "address ban expired");
        }
        for p in self.scores.expire_bans(now) {
            tracing::info!(peer = %p, "ban expired");
            self.swarm.behaviour_mut().blocked.unblock_peer(p);
            let _ = self.bans.remove(p.to_bytes());
        }
        // Gossip normally tells us of every new tip; if ours has not moved for three slots
        // (a missed block, or gossip from our peers stalled), their status tells us
        // whether they are ahead, and sync takes over. At most every ten seconds.
        let slot = Duration::from_millis(self.genesis.block_time_ms);
        let stalled = self.tip_moved.elapsed() >= slot * 3
            && self.last_status_round.elapsed() >= Duration::from_secs(10)
            && !self.peers.is_empty();
        if stalled
            || self.last_status_round.elapsed()
                >= Duration::from_secs(self.cfg.status_interval_secs)
        {
            self.last_status_round = Instant::now();
            let peers: Vec<PeerId> = self.peers.keys().copied().collect();
            for p in peers {
                self.send_status(&p);
            }
        }
        if self
            .last_redial
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.redial_secs))
        {
            self.redial();
        }
        self.update_progress();
    }

    fn redial(&mut self) {
        self.last_redial = Some(Instant::now());
        for addr in self.bootstrap.clone() {
            let connected = self
                .bootstrap_peers
                .get(&addr)
                .is_some_and(|p| self.swarm.is_connected(p));
            if !connected && let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(address = %addr, error = %e, "cannot dial bootstrap peer");
            }
        }
    }

    fn update_progress(&mut self) {
        let p = self.syncer.progress();
        let now = Instant::now();
        self.samples.push_back((now, p.local_height));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10))
        {
            self.samples.pop_front();
        }
        let rate = match (self.samples.front(), self.samples.back()) {
            (Some((t0, h0)), Some((t1, h1))) if t1 > t0 => {
                (h1.saturating_sub(*h0)) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        let remaining = p.target_height.saturating_sub(p.local_height);
        let eta = (rate > 0.0 && remaining > 0).then(|| (remaining as f64 / rate).ceil() as u64);
        let view = SyncView {
            syncing: p.syncing,
            target_height: p.target_height,
            blocks_per_sec: (rate * 10.0).round() / 10.0,
            eta_secs: eta,
            peers: p.peers,
        };
        if p.syncing
            && !crate::progress::bar_shown()
            && self.last_progress_log.elapsed() >= Duration::from_secs(5)
        {
            self.last_progress_log = now;
            tracing::info!(
                height = p.local_height,
                target = p.target_height,
                blocks_per_sec = view.blocks_per_sec,
                eta_secs = ?eta,
                peers = p.peers,
                "syncing"
            );
        }
        if !p.syncing && self.sync_view.borrow().syncing {
            tracing::info!(height = p.local_height, peers = p.peers, "sync complete");
        }
        self.sync_view.send_if_modified(|v| {
            let changed = *v != view;
            *v = view;
            changed
        });
    }

    fn update_metrics(&self) {
        let now = now_ms();
        let progress = self.syncer.progress();
        let p = self.pool.gauges();
        let (mempool_txs, mempool_bytes, mempool_orphans) = (p.txs, p.bytes, p.orphans);
        let scores: Vec<f64> = self
            .peers
            .keys()
            .map(|p| self.scores.score(p, now))
            .collect();
        let inbound = self.peers.values().filter(|p| p.inbound).count();
        let stats = self.net_stats();
        let c = self.swarm.network_info().connection_counters().clone();
        let connections = [
            ("established_in", c.num_established_incoming()),
            ("established_out", c.num_established_outgoing()),
            ("pending_in", c.num_pending_incoming()),
            ("pending_out", c.num_pending_outgoing()),
        ];
        self.node_metrics.update(&metrics::Snapshot {
            height: self.status.borrow().height,
            sync_target: progress.target_height,
            syncing: progress.syncing,
            mempool_txs,
            mempool_bytes,
            mempool_orphans,
            inbound,
            outbound: self.peers.len() - inbound,
            connections,
            scores: &scores,
            stats: &stats,
        });
    }

    fn peer_views(&self) -> Vec<PeerView> {
        let now = now_ms();
        let gossip = &self.swarm.behaviour().gossip;
        let mut mesh: HashMap<&PeerId, Vec<String>> = HashMap::new();
        for topic in gossip.topics() {
            for peer in gossip.mesh_peers(topic) {
                mesh.entry(peer).or_default().push(topic.to_string());
            }
        }
        self.peers
            .iter()
            .map(|(id, p)| {
                let stats = self.syncer.peer_stats(id).unwrap_or_default();
                PeerView {
                    peer_id: id.to_string(),
                    address: p.address.to_string(),
                    direction: if p.inbound { "inbound" } else { "outbound" }.into(),
                    agent: p.agent.clone(),
                    height: p.status.as_ref().map(|s| s.best_height),
                    tip: p.status.as_ref().map(|s| s.best_hash),
                    rtt_ms: p.rtt.map(|r| r.as_millis() as u64),
                    score: self.scores.score(id, now),
                    blocks_served: stats.blocks_served,
                    batches_served: stats.batches_served,
                    timeouts: stats.timeouts,
                    request_size: stats.request_size,
                    in_flight_limit: stats.in_flight_limit,
                    gossip_score: self.swarm.behaviour().gossip.peer_score(id),
                    gossip_mesh: mesh.get(id).cloned().unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// Most peers the address book keeps.
const ADDR_BOOK_SIZE: usize = 1024;

/// A persisted ban: its expiry (unix ms, big-endian) and, when known, the IP address the
/// peer came from (4 or 16 bytes), so that address bans survive restarts too.
fn encode_ban(until_ms: u64, ip: Option<std::net::IpAddr>) -> Vec<u8> {
    let mut v = until_ms.to_be_bytes().to_vec();
    match ip {
        Some(std::net::IpAddr::V4(a)) => v.extend(a.octets()),
        Some(std::net::IpAddr::V6(a)) => v.extend(a.octets()),
        None => {}
    }
    v
}

fn decode_ban(v: &[u8]) -> Option<(u64, Option<std::net::IpAddr>)> {
    let (until, ip) = v.split_first_chunk::<8>()?;
    let ip = match ip.len() {
        0 => None,
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(ip).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(ip).ok()?)),
        _ => return None,
    };
    Some((u64::from_be_bytes(*until), ip))
}

fn is_relayed(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn without_p2p(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// A stream that failed on bytes that are not our protocol (oversized, truncated, garbage).
fn is_garbage_in(e: &request_response::InboundFailure) -> bool {
    matches!(e, request_response::InboundFailure::Io(io) if io.kind() == std::io::ErrorKind::InvalidData)
}

fn is_garbage_out(e: &request_response::OutboundFailure) -> bool {
    matches!(e, request_response::OutboundFailure::Io(io) if io.kind() == std::io::ErrorKind::InvalidData)
}
