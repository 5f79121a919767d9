//! Refuses inbound connections from banned addresses before any handshake: a banned
//! host costs us an accept and a close, not a Noise handshake per attempt. The ban table
//! is [`IpBans`]; the node fills it as peers get banned.

use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

use super::ip::{IpBanConfig, IpBans};

#[derive(Debug, thiserror::Error)]
#[error("address {0} is banned")]
pub struct AddressBanned(pub IpAddr);

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
    refused: u64,
}

impl Behaviour {
    pub fn new(cfg: IpBanConfig) -> Self {
        Behaviour {
            bans: IpBans::new(cfg),
            refused: 0,
        }
    }

    /// Inbound connections refused for their address so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match ip_of(remote) {
            Some(ip) if self.bans.is_banned(&ip, now_ms()) => {
                self.refused += 1;
                Err(ConnectionDenied::new(AddressBanned(ip)))
            }
            _ => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
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

    fn on_swarm_event(&mut self, _: FromSwarm) {}

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
