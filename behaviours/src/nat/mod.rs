//! Getting through NAT: AutoNAT (v1) to learn whether we are reachable, a circuit relay
//! v2 server on public nodes that are configured for it, the relay client on every node,
//! and DCUtR to turn a relayed connection into a direct one by hole punching.
//!
//! The relay server admits reservations only from peers the node's admission gate let in
//! (see [`crate::admission`]); the check is a predicate the node supplies.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, relay};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub autonat: Toggle<autonat::v1::Behaviour>,
    pub relay: Toggle<relay::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: Toggle<dcutr::Behaviour>,
}

/// Limits of a relay server. Relays carry coordination and small data (hole punching,
/// status, a few transactions), not bulk sync: a circuit ends at its byte or time cap.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    pub max_reservations: usize,
    pub max_reservations_per_peer: usize,
    pub reservation_duration: Duration,
    pub max_circuits: usize,
    pub max_circuits_per_peer: usize,
    pub max_circuit_duration: Duration,
    pub max_circuit_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub autonat: bool,
    /// AutoNAT ignores peers (as servers) and addresses (as clients) that are not global
    /// IPs; private test networks turn this off.
    pub autonat_only_global: bool,
    pub autonat_boot_delay: Duration,
    pub autonat_refresh: Duration,
    pub relay_server: Option<RelayLimits>,
    pub dcutr: bool,
}

/// Decides whether a peer may reserve a relay slot (the admission gate).
pub type Admitted = Box<dyn FnMut(PeerId) -> bool + Send>;

pub fn new(
    me: PeerId,
    relay_client: relay::client::Behaviour,
    cfg: &Config,
    mut admitted: Admitted,
) -> Behaviour {
    let autonat = cfg.autonat.then(|| {
        autonat::v1::Behaviour::new(
            me,
            autonat::v1::Config {
                only_global_ips: cfg.autonat_only_global,
                boot_delay: cfg.autonat_boot_delay,
                retry_interval: cfg.autonat_boot_delay.max(Duration::from_secs(5)) * 2,
                refresh_interval: cfg.autonat_refresh,
                // A probe answered by peers we happen to be connected to, a few at a time.
                use_connected: true,
                confidence_max: 2,
                ..Default::default()
            },
        )
    });
    let relay = cfg.relay_server.as_ref().map(|l| {
        let mut c = relay::Config {
            max_reservations: l.max_reservations,
            max_reservations_per_peer: l.max_reservations_per_peer,
            reservation_duration: l.reservation_duration,
            max_circuits: l.max_circuits,
            max_circuits_per_peer: l.max_circuits_per_peer,
            max_circuit_duration: l.max_circuit_duration,
            max_circuit_bytes: l.max_circuit_bytes,
            ..Default::default()
        };
        c.reservation_rate_limiters.push(Box::new(
            move |peer: PeerId, _: &Multiaddr, _: std::time::Instant| admitted(peer),
        ));
        let mut r = relay::Behaviour::new(me, c);
        // The operator configured a relay: serve even before an address is confirmed.
        r.set_status(Some(relay::Status::Enable));
        r
    });
    Behaviour {
        autonat: autonat.into(),
        relay: relay.into(),
        relay_client,
        dcutr: cfg.dcutr.then(|| dcutr::Behaviour::new(me)).into(),
    }
}
