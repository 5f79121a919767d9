//! The connection handler of [`super::Guarded`]: the wrapped handler, with its inbound
//! streams counted against the budget.

use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{ConnectionHandler, ConnectionHandlerEvent, SubstreamProtocol};

use super::StreamBudget;
use crate::rate_limit::Bucket;

/// What the guard tells its behaviour: the wrapped handler's events, or that the
/// connection went over its budget (once per connection).
#[derive(Debug)]
pub enum GuardOut<E> {
    Inner(E),
    OverBudget { streams: u64 },
}

pub struct GuardHandler<H> {
    inner: H,
    budget: StreamBudget,
    bucket: Bucket,
    inbound: u64,
    over: bool,
    report: bool,
}

impl<H> GuardHandler<H> {
    pub(super) fn new(inner: H, budget: StreamBudget) -> Self {
        GuardHandler {
            inner,
            budget,
            bucket: Bucket::new(budget.quota, Instant::now()),
            inbound: 0,
            over: false,
            report: false,
        }
    }
}

impl<H: ConnectionHandler> ConnectionHandler for GuardHandler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = GuardOut<H::ToBehaviour>;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        !self.over && self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if self.report {
            self.report = false;
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                GuardOut::OverBudget {
                    streams: self.inbound,
                },
            ));
        }
        self.inner.poll(cx).map(|e| e.map_custom(GuardOut::Inner))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx).map(|e| e.map(GuardOut::Inner))
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.inner.on_behaviour_event(event)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(_) = &event {
            self.inbound += 1;
            if self.over {
                // Dropped unread: the connection is being closed.
                return;
            }
            if self
                .bucket
                .take(self.budget.quota, 1, Instant::now())
                .is_err()
            {
                self.over = true;
                self.report = true;
                return;
            }
        }
        self.inner.on_connection_event(event)
    }
}
