//! Inbound stream budgets for the libp2p protocols we run but did not write: gossipsub,
//! Kademlia and identify.
//!
//! Their handlers drop an inbound stream that carries a bad frame (over the size cap, a
//! cut varint, bytes that are no protobuf) and wait for the next one, without telling
//! their behaviour; a peer can send bad frames for ever at the cost of a new stream each.
//! [`Guarded`] wraps such a behaviour and counts, per connection, the inbound streams its
//! handler negotiates: once a connection is over its protocol's [`StreamBudget`] its new
//! streams are dropped unread, the connection is closed and the peer is reported
//! ([`Guarded::take_reports`]) for the node to score. Our own protocols need no guard: their
//! codec reports every bad frame as `Malformed`.

mod handler;

use std::collections::VecDeque;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

pub use handler::{GuardHandler, GuardOut};

use crate::peers::Fault;
use crate::rate_limit::Quota;

/// How many inbound streams one connection may open for a protocol, and what exceeding it
/// costs the peer.
#[derive(Debug, Clone, Copy)]
pub struct StreamBudget {
    /// The protocol's name in logs and reports.
    pub protocol: &'static str,
    pub quota: Quota,
    pub fault: Fault,
}

impl StreamBudget {
    /// Gossipsub keeps one inbound stream per connection for its whole life; a peer opens a
    /// new one only after the last ended, which on our side means it carried a bad frame
    /// (gossipsub itself gives up on a connection at its fifth inbound stream, silently).
    pub const GOSSIPSUB: StreamBudget = StreamBudget {
        protocol: "gossipsub",
        quota: Quota {
            per_second: 1.0 / 60.0,
            burst: 3,
        },
        fault: Fault::Malformed,
    };

    /// Kademlia opens a stream per request; a peer's queries reach us a few at a time
    /// (alpha = 3 per query), and its handler holds at most 32 at once anyway.
    pub const KADEMLIA: StreamBudget = StreamBudget {
        protocol: "kademlia",
        quota: Quota {
            per_second: 8.0,
            burst: 32,
        },
        fault: Fault::RateExceeded,
    };

    /// Identify: the peer's request when it connects, one every few minutes after, and a
    /// push when its addresses change.
    pub const IDENTIFY: StreamBudget = StreamBudget {
        protocol: "identify",
        quota: Quota {
            per_second: 1.0,
            burst: 8,
        },
        fault: Fault::RateExceeded,
    };
}

/// A connection over its budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub peer: PeerId,
    pub connection: ConnectionId,
    pub protocol: &'static str,
    /// Inbound streams the connection had opened for the protocol when it went over.
    pub streams: u64,
    pub fault: Fault,
}

/// Reports kept for the node between two drains; each connection reports at most once, so
/// more than this many at once means a connection storm, and the oldest are dropped.
const MAX_REPORTS: usize = 1024;

/// `B` with an inbound stream budget per connection. Derefs to `B`.
pub struct Guarded<B> {
    inner: B,
    budget: StreamBudget,
    reports: VecDeque<Report>,
    closing: VecDeque<(PeerId, ConnectionId)>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, budget: StreamBudget) -> Self {
        Guarded {
            inner,
            budget,
            reports: VecDeque::new(),
            closing: VecDeque::new(),
        }
    }

    pub fn budget(&self) -> StreamBudget {
        self.budget
    }

    /// The connections that went over their budget since the last call.
    pub fn take_reports(&mut self) -> impl Iterator<Item = Report> + '_ {
        self.reports.drain(..)
    }

    fn wrap<H>(&self, inner: H) -> GuardHandler<H> {
        GuardHandler::new(inner, self.budget)
    }
}

impl<B> std::ops::Deref for Guarded<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for Guarded<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Guarded<B> {
    type ConnectionHandler = GuardHandler<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let h = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        Ok(self.wrap(h))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let h = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        Ok(self.wrap(h))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            GuardOut::Inner(e) => self.inner.on_connection_handler_event(peer, connection, e),
            GuardOut::OverBudget { streams } => {
                tracing::info!(
                    %peer,
                    protocol = self.budget.protocol,
                    streams,
                    "closing a connection over its inbound stream budget"
                );
                if self.reports.len() == MAX_REPORTS {
                    self.reports.pop_front();
                }
                self.reports.push_back(Report {
                    peer,
                    connection,
                    protocol: self.budget.protocol,
                    streams,
                    fault: self.budget.fault,
                });
                self.closing.push_back((peer, connection));
            }
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer_id, connection)) = self.closing.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(connection),
            });
        }
        self.inner.poll(cx)
    }
}
