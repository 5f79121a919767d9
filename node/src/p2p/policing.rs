//! Faults the libp2p protocols we did not write make visible only indirectly: streams over
//! their budget (gossipsub, Kademlia, identify), identify answers that do not decode, and
//! connections yamux ended on a protocol error; and peers that never give their status.

use std::time::{Duration, Instant};

use chainmesh_behaviours::peers::Fault;
use libp2p::swarm::{ConnectionError, ConnectionId, StreamUpgradeError};
use libp2p::{PeerId, identify};

use super::Net;
use super::muxer;
use crate::config::Profile;

/// How long a connected peer has to give its status. Until then it holds a connection slot
/// and counts towards our peers while it can neither sync from us nor serve us; without a
/// deadline, silent peers could fill the inbound slots and keep us from looking for more.
pub(super) const STATUS_DEADLINE: Duration = Duration::from_secs(20);

impl Net {
    /// Scores the connections the stream guards closed since the last call.
    pub(super) fn police_streams(&mut self) {
        let b = self.swarm.behaviour_mut();
        let mut reports: Vec<_> = b.gossip.take_reports().collect();
        reports.extend(b.identify.take_reports());
        if let Some(kad) = b.discovery.kad.as_mut() {
            reports.extend(kad.take_reports());
        }
        for r in reports {
            self.fault(
                r.peer,
                r.fault,
                format!(
                    "{}: {} inbound streams on one connection, over its budget",
                    r.protocol, r.streams
                ),
            );
        }
    }

    /// An identify message that does not decode (over its size cap, not protobuf, a bad
    /// key) is a malformed frame: scored, and the connection closed, as on our protocols.
    /// Timeouts and unsupported protocols are not the peer's fault here.
    pub(super) fn on_identify_error(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        error: StreamUpgradeError<identify::UpgradeError>,
    ) {
        use identify::UpgradeError as U;
        match error {
            StreamUpgradeError::Apply(e @ (U::Codec(_) | U::Multiaddr(_) | U::PublicKey(_))) => {
                self.fault(peer, Fault::Malformed, format!("identify: {e}"));
                self.swarm.close_connection(connection);
            }
            e => tracing::debug!(%peer, error = %e, "identify failed"),
        }
    }

    /// A connection the muxer ended for the peer's fault (a GoAway we sent, a stream
    /// flood, a frame yamux could not decode).
    pub(super) fn police_close_cause(&mut self, peer: PeerId, cause: Option<&ConnectionError>) {
        if let Some(ConnectionError::IO(e)) = cause
            && let Some((fault, why)) = muxer::peer_fault(e)
        {
            self.fault(peer, fault, why);
        }
    }

    /// Disconnects the peers that gave no status within [`STATUS_DEADLINE`] (in our
    /// profile: Mina's nodes have no status protocol).
    pub(super) fn drop_silent_peers(&mut self) {
        if self.cfg.profile != Profile::Chainmesh {
            return;
        }
        let now = Instant::now();
        let silent: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.status.is_none() && now.duration_since(p.connected_at) >= STATUS_DEADLINE
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in silent {
            tracing::info!(%peer, deadline_secs = STATUS_DEADLINE.as_secs(), "disconnecting a peer that gave no status");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }
}
