//! Refuses inbound connections before any handshake when they come from a banned address
//! (a banned host costs us an accept and a close, not a Noise handshake per attempt), or
//! from an address that already has `max_pending_per_ip` handshakes under way: connections
//! that never finish their handshake hold a pending slot until the transport's timeout,
//! and without a cap per address one host could take every pending slot and keep everyone
//! else out. The ban table is [`IpBans`]; the node fills it as peers get banned.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

use super::ip::{IpBanConfig, IpBans};

#[derive(Debug, thiserror::Error)]
#[error("address {0} is banned")]
pub struct AddressBanned(pub IpAddr);

#[derive(Debug, thiserror::Error)]
#[error("address {ip} already has {pending} handshakes under way")]
pub struct TooManyPending {
    pub ip: IpAddr,
    pub pending: usize,
}

/// The IP address a connection comes from; none for a relayed circuit (whose address is
/// the relay's, which the peer's misdeeds must not ban).
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Behaviour {
    pub bans: IpBans<PeerId>,
    max_pending_per_ip: usize,
    /// Inbound connections still in their handshake, and their address; as many as the
    /// swarm's pending cap lets through (an entry leaves when its connection is
    /// established or fails).
    pending: HashMap<ConnectionId, IpAddr>,
    pending_per_ip: HashMap<IpAddr, usize>,
    refused: u64,
}

impl Behaviour {
    pub fn new(cfg: IpBanConfig) -> Self {
        Behaviour {
            max_pending_per_ip: cfg.max_pending_per_ip,
            bans: IpBans::new(cfg),
            pending: HashMap::new(),
            pending_per_ip: HashMap::new(),
            refused: 0,
        }
    }

    /// Inbound connections refused for their address so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Handshakes under way from `ip`.
    pub fn pending_from(&self, ip: &IpAddr) -> usize {
        self.pending_per_ip.get(ip).copied().unwrap_or(0)
    }

    fn pending_done(&mut self, id: ConnectionId) {
        if let Some(ip) = self.pending.remove(&id)
            && let Some(n) = self.pending_per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.pending_per_ip.remove(&ip);
            }
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        if self.bans.is_banned(&ip, now_ms()) {
            self.refused += 1;
            return Err(ConnectionDenied::new(AddressBanned(ip)));
        }
        if self.max_pending_per_ip == 0 || self.bans.is_exempt(&ip) {
            return Ok(());
        }
        let pending = self.pending_from(&ip);
        if pending >= self.max_pending_per_ip {
            self.refused += 1;
            return Err(ConnectionDenied::new(TooManyPending { ip, pending }));
        }
        self.pending.insert(id, ip);
        *self.pending_per_ip.entry(ip).or_insert(0) += 1;
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending_done(id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A handshake that failed, timed out, or was refused by another behaviour.
        if let FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) = event {
            self.pending_done(connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_from_one_address_are_capped_until_they_finish() {
        let mut b = Behaviour::new(IpBanConfig {
            max_pending_per_ip: 2,
            ..IpBanConfig::default()
        });
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/7701".parse().unwrap();
        let from = |ip: &str| -> Multiaddr { format!("/ip4/{ip}/tcp/5000").parse().unwrap() };
        let id = ConnectionId::new_unchecked;
        let pending = |b: &mut Behaviour, n: usize, ip: &str| {
            b.handle_pending_inbound_connection(id(n), &local, &from(ip))
                .is_ok()
        };
        assert!(pending(&mut b, 1, "127.0.0.7"));
        assert!(pending(&mut b, 2, "127.0.0.7"));
        assert!(!pending(&mut b, 3, "127.0.0.7"));
        assert!(pending(&mut b, 4, "127.0.0.8"));
        // Exempt addresses (loopback's own) are not capped.
        assert!((10..30).all(|n| pending(&mut b, n, "127.0.0.1")));
        assert_eq!(b.refused(), 1);
        // One handshake finished: room for one more.
        b.handle_established_inbound_connection(
            id(1),
            PeerId::random(),
            &local,
            &from("127.0.0.7"),
        )
        .unwrap();
        assert_eq!(b.pending_from(&"127.0.0.7".parse().unwrap()), 1);
        assert!(pending(&mut b, 5, "127.0.0.7"));
        assert!(!pending(&mut b, 6, "127.0.0.7"));
        // A relayed connection has no address of its own to count.
        let relayed: Multiaddr = "/ip4/127.0.0.7/tcp/5000/p2p-circuit".parse().unwrap();
        assert!(
            b.handle_pending_inbound_connection(id(7), &local, &relayed)
                .is_ok()
        );
    }
}
