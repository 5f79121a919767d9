//! `/chainmesh/admission/1`: proof-of-work admission to a relay (and, if its operator
//! asks for it, a bootstrap node). The client asks for a challenge, solves it off the
//! event loop ([`pow::Challenge::solve`]) and sends the proof; the gate answers with how
//! long the peer is admitted, or why not. The protocol name carries no network id: a
//! relay may serve several networks.

pub mod pow;

use std::time::Duration;

use chainmesh_proto::limits::MAX_ADMISSION_BYTES;
use chainmesh_proto::pb_net;
use libp2p::StreamProtocol;
use libp2p::request_response::{self, ProtocolSupport};

use crate::codec::{Inbound, ProtoCodec, WireMeter};
pub use pow::{Challenge, Gate, GateConfig, NONCE_BYTES, Refusal};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/chainmesh/admission/1");

pub type Codec = ProtoCodec<pb_net::AdmissionRequest, pb_net::AdmissionResponse>;
pub type Behaviour = request_response::Behaviour<Codec>;
pub type Event =
    request_response::Event<Inbound<pb_net::AdmissionRequest>, pb_net::AdmissionResponse>;

/// `serve`: answer challenges (a gate); every node can be a client.
pub fn new(serve: bool, timeout: Duration, meter: WireMeter) -> Behaviour {
    let support = if serve {
        ProtocolSupport::Full
    } else {
        ProtocolSupport::Outbound
    };
    request_response::Behaviour::with_codec(
        Codec::new(MAX_ADMISSION_BYTES, MAX_ADMISSION_BYTES, meter),
        [(PROTOCOL, support)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(8),
    )
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Challenge,
    Proof {
        nonce: [u8; NONCE_BYTES],
        counter: u64,
    },
}

/// What a gate answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Challenge(Challenge),
    Granted { until_ms: u64 },
    Refused(String),
}

/// Longest refusal reason sent or kept.
const MAX_REASON: usize = 160;

fn nonce_of(b: &[u8]) -> Result<[u8; NONCE_BYTES], String> {
    <[u8; NONCE_BYTES]>::try_from(b).map_err(|_| format!("nonce of {} bytes", b.len()))
}

impl Request {
    pub fn to_pb(&self) -> pb_net::AdmissionRequest {
        use pb_net::admission_request::Request as R;
        let r = match self {
            Request::Challenge => R::Challenge(pb_net::ChallengeRequest {}),
            Request::Proof { nonce, counter } => R::Proof(pb_net::AdmissionProof {
                nonce: nonce.to_vec(),
                counter: *counter,
            }),
        };
        pb_net::AdmissionRequest { request: Some(r) }
    }

    pub fn from_pb(p: pb_net::AdmissionRequest) -> Result<Request, String> {
        use pb_net::admission_request::Request as R;
        match p.request {
            Some(R::Challenge(_)) => Ok(Request::Challenge),
            Some(R::Proof(p)) => Ok(Request::Proof {
                nonce: nonce_of(&p.nonce)?,
                counter: p.counter,
            }),
            None => Err("empty admission request".into()),
        }
    }
}

impl Response {
    pub fn to_pb(&self) -> pb_net::AdmissionResponse {
        use pb_net::admission_response::Response as R;
        let r = match self {
            Response::Challenge(c) => R::Challenge(pb_net::AdmissionChallenge {
                nonce: c.nonce.to_vec(),
                bits: c.bits,
                expires_ms: c.expires_ms,
            }),
            Response::Granted { until_ms } => R::Granted(pb_net::AdmissionGranted {
                until_ms: *until_ms,
            }),
            Response::Refused(why) => R::Refused(pb_net::AdmissionRefused {
                reason: why.chars().take(MAX_REASON).collect(),
            }),
        };
        pb_net::AdmissionResponse { response: Some(r) }
    }

    pub fn from_pb(p: pb_net::AdmissionResponse) -> Result<Response, String> {
        use pb_net::admission_response::Response as R;
        match p.response {
            Some(R::Challenge(c)) => Ok(Response::Challenge(Challenge {
                nonce: nonce_of(&c.nonce)?,
                bits: c.bits,
                expires_ms: c.expires_ms,
            })),
            Some(R::Granted(g)) => Ok(Response::Granted {
                until_ms: g.until_ms,
            }),
            Some(R::Refused(r)) => Ok(Response::Refused(
                r.reason
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_REASON)
                    .collect(),
            )),
            None => Err("empty admission response".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_nonces_are_refused() {
        let reqs = [
            Request::Challenge,
            Request::Proof {
                nonce: [7; NONCE_BYTES],
                counter: u64::MAX,
            },
        ];
        for r in reqs {
            assert_eq!(Request::from_pb(r.to_pb()), Ok(r));
        }
        let c = Challenge {
            nonce: [1; NONCE_BYTES],
            bits: 20,
            expires_ms: 99,
        };
        for r in [
            Response::Challenge(c),
            Response::Granted { until_ms: 5 },
            Response::Refused("expired".into()),
        ] {
            assert_eq!(Response::from_pb(r.to_pb()), Ok(r));
        }
        let short = pb_net::AdmissionRequest {
            request: Some(pb_net::admission_request::Request::Proof(
                pb_net::AdmissionProof {
                    nonce: vec![1; 3],
                    counter: 0,
                },
            )),
        };
        assert!(Request::from_pb(short).is_err());
        assert!(Request::from_pb(pb_net::AdmissionRequest { request: None }).is_err());
    }

    #[test]
    fn the_largest_messages_fit_the_frame_cap() {
        use prost::Message;
        let r = Request::Proof {
            nonce: [0xff; NONCE_BYTES],
            counter: u64::MAX,
        };
        assert!(r.to_pb().encoded_len() <= MAX_ADMISSION_BYTES);
        let long = Response::Refused("x".repeat(10_000));
        assert!(long.to_pb().encoded_len() <= MAX_ADMISSION_BYTES);
    }
}
