//! Discovery in the network task: Kademlia (random walks, the members and relays provider
//! records, addresses from identify), mDNS, and the DHT mode.
//!
//! Nodes behind NAT run the DHT in client mode, so nobody's routing table holds them;
//! they announce themselves instead as providers of the network's members key, with
//! their external addresses (a relayed one, once they hold a reservation). A node below
//! its target looks up that key and dials what it finds, which is how two NATed nodes
//! that only know a bootstrap address end up connected.

use std::time::{Duration, Instant};

use chainmesh_behaviours::discovery::{members_key, relays_key};
use libp2p::kad::{self, GetClosestPeersOk, GetProvidersOk, QueryResult};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, mdns};

use super::{Net, is_relayed};
use crate::chain::now_ms;
use crate::config::KadMode;

/// Most dials discovery starts at once.
const MAX_DIALS: usize = 8;
/// A provider record is republished this soon after our external addresses change.
const PROVIDE_DEBOUNCE: Duration = Duration::from_secs(2);
/// Addresses of one peer taken from identify.
const MAX_ADDRS_PER_PEER: usize = 8;

/// The DHT routing table, as `GET /net/dht` shows it.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct DhtView {
    /// "server", "client", or "off" when Kademlia is disabled.
    pub mode: String,
    pub entries: usize,
    /// Non-empty buckets, nearest first.
    pub buckets: Vec<DhtBucket>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct DhtBucket {
    /// log2 of the largest XOR distance the bucket covers (255 holds half the key space).
    pub index: u32,
    pub peers: Vec<DhtEntry>,
    /// A newcomer waits for an entry that went unreachable.
    pub pending: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct DhtEntry {
    pub peer: String,
    pub connected: bool,
}

pub(super) struct DiscoveryState {
    kad_protocol: StreamProtocol,
    last_walk: Option<Instant>,
    /// When to (re)announce ourselves as a member (and a relay).
    provide_at: Option<Instant>,
    pub(super) server: bool,
}

impl DiscoveryState {
    pub(super) fn new(kad_protocol: StreamProtocol) -> Self {
        DiscoveryState {
            kad_protocol,
            last_walk: None,
            provide_at: None,
            server: false,
        }
    }
}

impl Net {
    fn kad(&mut self) -> Option<&mut kad::Behaviour<kad::store::MemoryStore>> {
        self.swarm
            .behaviour_mut()
            .discovery
            .kad
            .as_mut()
            .map(|k| &mut **k)
    }

    pub(super) fn dht_view(&mut self) -> DhtView {
        let mode = if self.disco.server {
            "server"
        } else {
            "client"
        };
        let Some(k) = self.kad() else {
            return DhtView {
                mode: "off".into(),
                ..DhtView::default()
            };
        };
        let mut view = DhtView {
            mode: mode.into(),
            ..DhtView::default()
        };
        for b in k.kbuckets() {
            let peers: Vec<DhtEntry> = b
                .iter()
                .map(|e| DhtEntry {
                    peer: e.node.key.preimage().to_string(),
                    connected: e.status == kad::NodeStatus::Connected,
                })
                .collect();
            view.entries += peers.len();
            view.buckets.push(DhtBucket {
                index: b.range().1.ilog2().unwrap_or(0),
                peers,
                pending: b.has_pending(),
            });
        }
        view
    }

    /// Sets the DHT mode from the config and what we know of our reachability.
    pub(super) fn update_kad_mode(&mut self) {
        let server = match self.cfg.discovery.kad_mode {
            KadMode::Server => true,
            KadMode::Client => false,
            KadMode::Auto => !self.cfg.nat.external_addresses.is_empty() || self.nat.is_public(),
        };
        if server == self.disco.server && self.disco.last_walk.is_some() {
            return;
        }
        self.disco.server = server;
        let mode = if server {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        };
        if let Some(k) = self.kad() {
            k.set_mode(Some(mode));
            tracing::info!(?mode, "DHT mode");
        }
    }

    /// Our external addresses changed: announce ourselves again shortly.
    pub(super) fn external_addresses_changed(&mut self) {
        self.disco.provide_at = Some(Instant::now() + PROVIDE_DEBOUNCE);
    }

    /// Once a second: walks and lookups while below the target, announcements when due.
    pub(super) fn tend_discovery(&mut self) {
        if self.swarm.behaviour().discovery.kad.as_ref().is_none() {
            return;
        }
        let now = Instant::now();
        if self.disco.provide_at.is_some_and(|t| now >= t)
            && self.swarm.external_addresses().next().is_some()
        {
            self.disco.provide_at = None;
            let relay = self.cfg.nat.relay_server;
            let net = self.network_id.clone();
            if let Some(k) = self.kad() {
                if let Err(e) = k.start_providing(members_key(&net)) {
                    tracing::warn!(error = %e, "cannot announce ourselves in the DHT");
                }
                if relay && let Err(e) = k.start_providing(relays_key(&net)) {
                    tracing::warn!(error = %e, "cannot announce our relay in the DHT");
                }
            }
        }
        let every = Duration::from_secs(self.cfg.discovery.walk_secs);
        let below = self.peer_count() < self.cfg.target_peers as usize;
        let due = self
            .disco
            .last_walk
            .is_none_or(|t| now.duration_since(t) >= if below { every } else { every * 10 });
        if !due || self.peers.is_empty() {
            return;
        }
        self.disco.last_walk = Some(now);
        let net = self.network_id.clone();
        if let Some(k) = self.kad() {
            k.get_closest_peers(PeerId::random());
            k.get_providers(members_key(&net));
        }
    }

    /// A peer identified itself: a DHT server's listen addresses go into our routing
    /// table; a relay becomes a candidate for a reservation.
    pub(super) fn on_identified(&mut self, peer: PeerId, info: &identify::Info) {
        let kad_server = info.protocols.contains(&self.disco.kad_protocol);
        // Loopback addresses only mean something to a peer on this host.
        let local = self
            .peers
            .get(&peer)
            .is_some_and(|p| super::is_loopback(&p.address));
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter(|a| !is_relayed(a) && (local || !super::is_loopback(a)))
            .take(MAX_ADDRS_PER_PEER)
            .cloned()
            .collect();
        if kad_server && let Some(k) = self.kad() {
            for a in &addrs {
                k.add_address(&peer, a.clone());
            }
        }
        if info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME) {
            self.relay_candidate(peer, addrs);
        }
        if info
            .protocols
            .contains(&chainmesh_behaviours::mina::peer_exchange::PROTOCOL)
        {
            self.mina_px_ask(peer);
        }
        if info
            .protocols
            .contains(&chainmesh_behaviours::admission::PROTOCOL)
        {
            self.admit_at_bootstrap(peer);
        }
    }

    pub(super) fn on_kad_event(&mut self, ev: kad::Event) {
        let kad::Event::OutboundQueryProgressed { result, .. } = ev else {
            if let kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                ..
            } = ev
            {
                tracing::debug!(peer = %peer, "DHT routing table: new peer");
            }
            return;
        };
        let net = self.network_id.clone();
        match result {
            QueryResult::GetClosestPeers(Ok(GetClosestPeersOk { peers, .. })) => {
                for p in peers {
                    self.dial_discovered(p.peer_id, p.addrs, "DHT walk");
                }
            }
            QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { key, providers })) => {
                let me = *self.swarm.local_peer_id();
                for p in providers.into_iter().filter(|p| *p != me) {
                    if key == relays_key(&net) {
                        self.relay_candidate(p, Vec::new());
                    } else if key == members_key(&net) {
                        // The query still holds the provider's addresses: dial now.
                        self.dial_discovered(p, Vec::new(), "DHT members");
                    }
                }
            }
            QueryResult::StartProviding(Err(e)) => {
                tracing::debug!(error = %e, "DHT announcement reached no other server");
            }
            QueryResult::StartProviding(Ok(ok)) => {
                tracing::debug!(key = ?ok.key, "announced in the DHT");
            }
            QueryResult::GetClosestPeers(Err(e)) => tracing::debug!(error = %e, "DHT walk"),
            _ => {}
        }
    }

    pub(super) fn on_mdns_event(&mut self, ev: mdns::Event) {
        if let mdns::Event::Discovered(found) = ev {
            let mut by_peer: std::collections::HashMap<PeerId, Vec<Multiaddr>> = Default::default();
            for (p, a) in found {
                by_peer.entry(p).or_default().push(a);
            }
            for (p, addrs) in by_peer {
                if !self.swarm.is_connected(&p) {
                    tracing::info!(peer = %p, addrs = ?addrs, "found on the local network (mDNS)");
                }
                self.dial_discovered(p, addrs, "mDNS");
            }
        }
    }

    /// Dials a peer discovery found, while we are below the target peer count.
    fn dial_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, source: &str) {
        let now = Instant::now();
        let now_ms = now_ms();
        if peer == *self.swarm.local_peer_id()
            || self.swarm.is_connected(&peer)
            || self.dialing.contains_key(&peer)
            || self.scores.banned_until(&peer, now_ms).is_some()
            || self.peer_count() >= self.cfg.target_peers.max(1) as usize
            || self.dialing.len() >= MAX_DIALS
        {
            return;
        }
        // Kademlia adds what its queries learnt (a provider's relayed address).
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs.into_iter().take(MAX_ADDRS_PER_PEER).collect())
            .extend_addresses_through_behaviour()
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => {
                tracing::debug!(peer = %peer, source, "dialling a discovered peer");
                self.stats.discovery_dials += 1;
                self.dialing.insert(peer, now);
            }
            Err(e) => {
                tracing::debug!(peer = %peer, source, error = %e, "cannot dial a discovered peer")
            }
        }
    }
}
