//! Finding peers: Kademlia under our own protocol name (`/chainmesh/<net>/kad/1`, so that
//! our DHT never mixes with another network's) and, on LANs, mDNS.
//!
//! Two well-known keys live in the DHT as provider records:
//! - [`relays_key`]: public nodes that run a relay announce themselves there; a node
//!   behind NAT looks relays up there (auto-relay), not only in its config;
//! - [`members_key`]: every node that can be dialled (directly or through a relay)
//!   announces itself there. Nodes in client mode (behind NAT) are not in anyone's
//!   routing table, so this is how two of them find each other.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{PeerId, StreamProtocol, mdns};

use crate::codec::protocol_name;
use crate::guard::{Guarded, StreamBudget};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub kad: Toggle<Guarded<kad::Behaviour<MemoryStore>>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub kademlia: bool,
    /// Our `/chainmesh/<net>/kad/1`, or another network's name (the Mina profile's).
    pub kad_protocol: StreamProtocol,
    pub mdns: bool,
    pub query_timeout: Duration,
}

pub fn kad_protocol(network_id: &str) -> StreamProtocol {
    protocol_name(network_id, "kad", 1)
}

pub fn relays_key(network_id: &str) -> kad::RecordKey {
    kad::RecordKey::new(&format!("/chainmesh/{network_id}/relays"))
}

pub fn members_key(network_id: &str) -> kad::RecordKey {
    kad::RecordKey::new(&format!("/chainmesh/{network_id}/members"))
}

pub fn new(key: &Keypair, cfg: &Config) -> std::io::Result<Behaviour> {
    let me: PeerId = key.public().to_peer_id();
    let kad = cfg.kademlia.then(|| {
        let mut c = kad::Config::new(cfg.kad_protocol.clone());
        c.set_query_timeout(cfg.query_timeout);
        // Provider records are how relays and NATed members are found: republish them
        // often enough that a restarted server node has them again within minutes.
        c.set_provider_publication_interval(Some(Duration::from_secs(10 * 60)));
        c.set_provider_record_ttl(Some(Duration::from_secs(30 * 60)));
        // The store's defaults bound it (1,024 records, 20 providers per key).
        let store = MemoryStore::new(me);
        let mut k = kad::Behaviour::with_config(me, store, c);
        // The node decides the mode (server only when publicly reachable); see nat.
        k.set_mode(Some(kad::Mode::Client));
        Guarded::new(k, StreamBudget::KADEMLIA)
    });
    let mdns = if cfg.mdns {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), me)?)
    } else {
        None
    };
    Ok(Behaviour {
        kad: kad.into(),
        mdns: mdns.into(),
    })
}
