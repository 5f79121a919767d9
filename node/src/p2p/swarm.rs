//! Assembles the libp2p swarm: TCP and QUIC, Noise, Yamux, and the relay client
//! transport; identify, ping, connection limits, a block list for bans, discovery
//! (Kademlia, mDNS), NAT traversal (AutoNAT, relay v2, DCUtR), gossipsub, and our status,
//! sync, pool, pex and admission protocols.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chainmesh_behaviours::boxed::BoxedHandlers;
use chainmesh_behaviours::guard::{Guarded, StreamBudget};
use chainmesh_behaviours::{
    admission, discovery, gossip, mina, nat, peers, pex, pool, status, sync,
};
use chainmesh_proto::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    Swarm, allow_block_list, connection_limits, identify, identity, noise, ping, tcp, yamux,
};

use super::muxer::Watched;
use crate::config::{P2pConfig, Profile};
use prometheus_client::registry::Registry;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First: a banned address is refused before the other behaviours count it.
    pub ip_filter: peers::filter::Behaviour,
    pub limits: connection_limits::Behaviour,
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub identify: Guarded<identify::Behaviour>,
    pub ping: ping::Behaviour,
    pub status: status::Behaviour,
    pub sync: sync::Behaviour,
    pub gossip: Guarded<gossip::Behaviour>,
    pub pool: pool::Behaviour,
    pub pex: pex::Behaviour,
    pub discovery: discovery::Behaviour,
    pub nat: nat::Behaviour,
    pub admission: admission::Behaviour,
    /// `/mina/peer-exchange`, in the Mina profile.
    pub mina_px: libp2p::swarm::behaviour::toggle::Toggle<mina::peer_exchange::Behaviour>,
}

/// The node's swarm: its handlers boxed, which keeps each connection's task small
/// (`chainmesh_behaviours::boxed`).
pub type NodeSwarm = Swarm<BoxedHandlers<Behaviour>>;

pub fn agent() -> String {
    format!("chainmesh/{}", env!("CARGO_PKG_VERSION"))
}

/// The node's libp2p identity, kept in `<data_dir>/p2p.key` (same format as other key
/// files) so that its peer id survives restarts.
pub fn load_or_create_identity(data_dir: &Path) -> anyhow::Result<identity::Keypair> {
    let path = data_dir.join("p2p.key");
    let k = if path.exists() {
        Keypair::load(&path)?
    } else {
        let k = Keypair::generate();
        k.save_new(&path)?;
        k
    };
    identity::Keypair::ed25519_from_bytes(k.seed()).context("invalid p2p key")
}

/// Builds the swarm; libp2p's metrics (bytes per protocol, gossipsub) go to `registry`.
pub fn build(
    key: identity::Keypair,
    network_id: &str,
    cfg: &P2pConfig,
    registry: &mut Registry,
    admitted: nat::Admitted,
    wire: &super::metrics::WireMeters,
) -> anyhow::Result<NodeSwarm> {
    let timeout = Duration::from_secs(cfg.request_timeout_secs);
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(cfg.max_connections))
        .with_max_established_incoming(Some(cfg.max_inbound))
        .with_max_established_outgoing(Some(cfg.max_outbound))
        .with_max_established_per_peer(Some(cfg.max_per_peer))
        .with_max_pending_incoming(Some(cfg.max_pending))
        .with_max_pending_outgoing(Some(cfg.max_pending));
    let ip_bans = peers::IpBanConfig {
        after: cfg.ip_ban_after,
        exempt: cfg.ip_ban_exempt.iter().copied().collect(),
        max_pending_per_ip: cfg.max_pending_per_ip as usize,
        ..peers::IpBanConfig::default()
    };
    let net = network_id.to_string();
    let discovery_cfg = discovery::Config {
        kademlia: cfg.discovery.kademlia,
        kad_protocol: kad_protocol(network_id, cfg),
        mdns: cfg.discovery.mdns,
        query_timeout: Duration::from_secs(30),
    };
    let n = &cfg.nat;
    let nat_cfg = nat::Config {
        autonat: n.autonat,
        autonat_only_global: n.autonat_only_global,
        autonat_boot_delay: Duration::from_secs(n.autonat_delay_secs),
        autonat_refresh: Duration::from_secs(15 * 60),
        relay_server: n.relay_server.then(|| nat::RelayLimits {
            max_reservations: n.relay_max_reservations,
            max_reservations_per_peer: 1,
            reservation_duration: Duration::from_secs(n.relay_reservation_secs),
            max_circuits: n.relay_max_circuits,
            max_circuits_per_peer: n.relay_max_circuits_per_peer,
            max_circuit_duration: Duration::from_secs(n.relay_max_circuit_secs),
            max_circuit_bytes: n.relay_max_circuit_bytes,
        }),
        dcutr: n.dcutr,
    };
    let parts = Parts {
        limits,
        ip_bans,
        net,
        timeout,
        discovery: discovery_cfg,
        nat: nat_cfg,
        serve_admission: cfg.nat.relay_server || cfg.admission.bootstrap,
        admitted,
        mina: cfg.profile == Profile::Mina,
        wire: wire.clone(),
    };
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let swarm = match cfg.profile {
        Profile::Chainmesh => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                Watched::<yamux::Config>::default,
            )?
            .with_quic()
            .with_relay_client(noise::Config::new, Watched::<yamux::Config>::default)?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|key, relay_client| make(parts, key, relay_client, registry))?
            .with_swarm_config(idle)
            .build(),
        Profile::Mina => {
            let chain_id = cfg
                .chain_id
                .as_deref()
                .context("the mina profile needs a chain id")?;
            let psk = super::mina::psk(chain_id);
            builder
                .with_other_transport(|key| {
                    super::mina::transport(key, psk)
                        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                })?
                .with_relay_client(noise::Config::new, Watched::<yamux::Config>::default)?
                .with_bandwidth_metrics(registry)
                .with_behaviour(|key, relay_client| make(parts, key, relay_client, registry))?
                .with_swarm_config(idle)
                .build()
        }
    };
    Ok(swarm)
}

/// The DHT's protocol name: ours, or Mina's in that profile.
pub fn kad_protocol(network_id: &str, cfg: &P2pConfig) -> libp2p::StreamProtocol {
    match cfg.profile {
        Profile::Chainmesh => discovery::kad_protocol(network_id),
        Profile::Mina => super::mina::KAD_PROTOCOL,
    }
}

/// What the behaviour is made of, decided before the transport is.
struct Parts {
    limits: connection_limits::ConnectionLimits,
    ip_bans: peers::IpBanConfig,
    net: String,
    timeout: Duration,
    discovery: discovery::Config,
    nat: nat::Config,
    serve_admission: bool,
    admitted: nat::Admitted,
    mina: bool,
    wire: super::metrics::WireMeters,
}

fn make(
    parts: Parts,
    key: &identity::Keypair,
    relay_client: libp2p::relay::client::Behaviour,
    registry: &mut Registry,
) -> Result<BoxedHandlers<Behaviour>, Box<dyn std::error::Error + Send + Sync>> {
    let Parts {
        limits,
        ip_bans,
        net,
        timeout,
        discovery: discovery_cfg,
        nat: nat_cfg,
        serve_admission,
        admitted,
        mina,
        wire,
    } = parts;
    let me = key.public().to_peer_id();
    Ok(BoxedHandlers(Behaviour {
        ip_filter: peers::filter::Behaviour::new(ip_bans),
        limits: connection_limits::Behaviour::new(limits),
        blocked: allow_block_list::Behaviour::default(),
        identify: Guarded::new(
            identify::Behaviour::new(
                identify::Config::new(format!("/chainmesh/{net}/1"), key.public())
                    .with_agent_version(agent())
                    // Its cache would offer every address a peer listens on,
                    // loopback included, to any dial of that peer; ours come
                    // from the address book and Kademlia, filtered.
                    .with_cache_size(0),
            ),
            StreamBudget::IDENTIFY,
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15))),
        status: status::new(&net, timeout, wire.status),
        sync: sync::new(&net, timeout, wire.sync),
        gossip: Guarded::new(
            gossip::new_for(key, &net, mina)?.with_metrics(
                registry.sub_registry_with_prefix("gossipsub"),
                Default::default(),
            ),
            StreamBudget::GOSSIPSUB,
        ),
        pool: pool::new(&net, timeout, wire.pool),
        pex: pex::new(&net, timeout, wire.pex),
        discovery: discovery::new(key, &discovery_cfg)?,
        nat: nat::new(me, relay_client, &nat_cfg, admitted),
        admission: admission::new(serve_admission, timeout, wire.admission),
        mina_px: mina.then(|| mina::peer_exchange::new(timeout)).into(),
    }))
}
