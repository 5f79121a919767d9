//! `/chainmesh/<net>/pex/1`: peer exchange. `GetPeers(max)` is answered with peers we
//! have dialled successfully, their addresses and when we last saw them. At most 64
//! records of at most 8 addresses, 64 KiB in all.

use std::time::Duration;

use chainmesh_proto::limits::{
    MAX_PEX_ADDRS, MAX_PEX_PEERS, MAX_PEX_REQUEST_BYTES, MAX_PEX_RESPONSE_BYTES,
};
use chainmesh_proto::pb_net;
use chainmesh_proto::wire::WireError;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::{Multiaddr, PeerId};

use crate::codec::{Inbound, ProtoCodec, WireMeter, protocol_name};

pub type Codec = ProtoCodec<pb_net::GetPeers, pb_net::Peers>;
pub type Behaviour = request_response::Behaviour<Codec>;
pub type Event = request_response::Event<Inbound<pb_net::GetPeers>, pb_net::Peers>;

pub fn new(network_id: &str, timeout: Duration, meter: WireMeter) -> Behaviour {
    request_response::Behaviour::with_codec(
        Codec::new(MAX_PEX_REQUEST_BYTES, MAX_PEX_RESPONSE_BYTES, meter),
        [(protocol_name(network_id, "pex", 1), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(4),
    )
}

/// One peer as exchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub last_seen_ms: u64,
}

pub fn request(max: u32) -> pb_net::GetPeers {
    pb_net::GetPeers {
        max: max.min(MAX_PEX_PEERS),
    }
}

/// How many records a request may have: what it asks, within our cap.
pub fn requested(r: &pb_net::GetPeers) -> usize {
    r.max.min(MAX_PEX_PEERS) as usize
}

pub fn to_pb(records: &[PeerRecord]) -> pb_net::Peers {
    pb_net::Peers {
        peers: records
            .iter()
            .take(MAX_PEX_PEERS as usize)
            .map(|r| pb_net::PeerRecord {
                peer_id: r.peer.to_bytes(),
                addrs: r
                    .addrs
                    .iter()
                    .take(MAX_PEX_ADDRS)
                    .map(|a| a.to_vec())
                    .collect(),
                last_seen_ms: r.last_seen_ms,
            })
            .collect(),
    }
}

/// Decodes an answer, refusing more records or addresses than the caps allow and any
/// peer id or address that does not parse.
pub fn from_pb(p: pb_net::Peers) -> Result<Vec<PeerRecord>, WireError> {
    if p.peers.len() > MAX_PEX_PEERS as usize {
        return Err(WireError::BadLength {
            field: "peers.peers",
            expected: MAX_PEX_PEERS as usize,
            got: p.peers.len(),
        });
    }
    p.peers
        .into_iter()
        .map(|r| {
            if r.addrs.len() > MAX_PEX_ADDRS {
                return Err(WireError::BadLength {
                    field: "peer_record.addrs",
                    expected: MAX_PEX_ADDRS,
                    got: r.addrs.len(),
                });
            }
            let peer = PeerId::from_bytes(&r.peer_id).map_err(|_| WireError::BadLength {
                field: "peer_record.peer_id",
                expected: 38,
                got: r.peer_id.len(),
            })?;
            let addrs = r
                .addrs
                .into_iter()
                .map(|a| {
                    let len = a.len();
                    Multiaddr::try_from(a).map_err(|_| WireError::BadLength {
                        field: "peer_record.addrs",
                        expected: 0,
                        got: len,
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(PeerRecord {
                peer,
                addrs,
                last_seen_ms: r.last_seen_ms,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_caps_hold() {
        let r = PeerRecord {
            peer: PeerId::random(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
            last_seen_ms: 42,
        };
        assert_eq!(from_pb(to_pb(std::slice::from_ref(&r))).unwrap(), vec![r]);
        let many = pb_net::Peers {
            peers: vec![pb_net::PeerRecord::default(); MAX_PEX_PEERS as usize + 1],
        };
        assert!(from_pb(many).is_err());
        let garbage = pb_net::Peers {
            peers: vec![pb_net::PeerRecord {
                peer_id: vec![1, 2, 3],
                ..Default::default()
            }],
        };
        assert!(from_pb(garbage).is_err());
        assert_eq!(requested(&request(1_000)), MAX_PEX_PEERS as usize);
    }
}
