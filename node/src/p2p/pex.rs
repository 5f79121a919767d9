//! Peer exchange and the peer count in the network task: answering `GetPeers` from the
//! address book, learning from peers' answers, dialling known addresses while below
//! `p2p.target_peers`, and turning away peers beyond `p2p.max_peers` only after they had
//! time to ask us for addresses (so a newcomer still finds the network).

use std::time::{Duration, Instant};

use chainmesh_behaviours::codec::Malformed;
use chainmesh_behaviours::peers::Fault;
use chainmesh_behaviours::pex;
use chainmesh_proto::pb_net;
use libp2p::PeerId;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};

use super::Net;
use crate::chain::now_ms;

/// How long a peer beyond our limit stays connected to ask for addresses.
pub(super) const SURPLUS_GRACE: Duration = Duration::from_secs(3);
/// How often we ask a peer for more addresses while below the target.
const ASK_EVERY: Duration = Duration::from_secs(30);
/// Records asked for in one request.
const ASK_RECORDS: u32 = 32;
/// Dials in flight at once from the address book.
const MAX_DIALS: usize = 8;

impl Net {
    /// Peers that count towards our limits: connected, not on their way out.
    pub(super) fn peer_count(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.surplus_until.is_none())
            .count()
    }

    pub(super) fn ask_for_peers(&mut self, peer: &PeerId) {
        self.last_pex_ask = Some(Instant::now());
        self.swarm
            .behaviour_mut()
            .pex
            .send_request(peer, Ok(pex::request(ASK_RECORDS)));
        self.stats.pex_requests_sent += 1;
    }

    pub(super) fn on_pex_event(&mut self, ev: pex::Event) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_get_peers(peer, request, channel),
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => match pex::from_pb(response) {
                Ok(records) => {
                    let now = now_ms();
                    let me = *self.swarm.local_peer_id();
                    for r in records {
                        if r.peer != me && self.scores.banned_until(&r.peer, now).is_none() {
                            self.stats.pex_records_received += 1;
                            self.book.learn(r, now);
                        }
                    }
                    self.dial_known();
                }
                Err(e) => self.fault(peer, Fault::Malformed, format!("pex: {e}")),
            },
            Event::OutboundFailure { peer, error, .. } => {
                self.on_outbound_failure(peer, "pex", &error)
            }
            Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, "pex", &error)
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn on_get_peers(
        &mut self,
        peer: PeerId,
        request: Result<pb_net::GetPeers, Malformed>,
        channel: ResponseChannel<pb_net::Peers>,
    ) {
        let request = match request {
            Ok(r) => r,
            Err(Malformed(why)) => {
                drop(channel);
                self.fault(peer, Fault::Malformed, format!("pex: {why}"));
                return;
            }
        };
        if self.pex_limiter.check(&peer, 1, Instant::now()).is_err() {
            drop(channel);
            self.fault(peer, Fault::RateExceeded, "pex requests too often".into());
            return;
        }
        let records = self.book.records(pex::requested(&request), |p| *p == peer);
        self.stats.pex_requests_served += 1;
        let _ = self
            .swarm
            .behaviour_mut()
            .pex
            .send_response(channel, pex::to_pb(&records));
    }

    /// Dials addresses from the book while we are below the target peer count.
    pub(super) fn dial_known(&mut self) {
        let want = (self.cfg.target_peers as usize).saturating_sub(self.peer_count());
        let now = Instant::now();
        self.dialing
            .retain(|_, since| now.duration_since(*since) < Duration::from_secs(30));
        let room = want.saturating_sub(self.dialing.len()).min(MAX_DIALS);
        if room == 0 {
            return;
        }
        let now_ms = now_ms();
        let me = *self.swarm.local_peer_id();
        let candidates = self.book.candidates(now_ms, room, |p| {
            *p == me
                || self.swarm.is_connected(p)
                || self.dialing.contains_key(p)
                || self.scores.banned_until(p, now_ms).is_some()
        });
        for (peer, addrs) in candidates {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.stats.pex_dials += 1;
                    self.dialing.insert(peer, now);
                }
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "cannot dial a known peer");
                    self.book.dial_failed(&peer, now_ms);
                }
            }
        }
    }

    /// Once a tick: below the target, dial known peers and now and then ask a peer for
    /// more; peers beyond our limit leave when their grace is over.
    pub(super) fn tend_peers(&mut self) {
        let now = Instant::now();
        let leaving: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.surplus_until.is_some_and(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        for p in leaving {
            tracing::debug!(peer = %p, "disconnecting a peer beyond our limit");
            let _ = self.swarm.disconnect_peer_id(p);
        }
        if self.peer_count() >= self.cfg.target_peers as usize {
            return;
        }
        self.dial_known();
        if self.last_pex_ask.is_none_or(|t| t.elapsed() >= ASK_EVERY) {
            let ask = self
                .peers
                .iter()
                .filter(|(_, p)| p.status.is_some())
                .map(|(id, _)| *id)
                .nth((now_ms() % 7) as usize % self.peers.len().max(1));
            if let Some(p) = ask.or_else(|| self.peers.keys().next().copied()) {
                self.ask_for_peers(&p);
            }
        }
    }
}
