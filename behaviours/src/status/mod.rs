//! `/chainmesh/<net>/status/1`: each side sends its status as a request on every new
//! connection and periodically, and answers the other's request with its own. A node
//! learns from it whether the peer is on the same network and version, where its tip is,
//! and the serving limits it enforces (so that we throttle ourselves instead of being
//! penalised for asking too fast).

mod messages;

use std::time::Duration;

use chainmesh_proto::limits::MAX_STATUS_BYTES;
use chainmesh_proto::pb_net;
use libp2p::request_response::{self, ProtocolSupport};

pub use messages::{ChainStatus, Incompatible, ServeLimit, check_compatible};

use crate::codec::{Inbound, ProtoCodec, WireMeter, protocol_name};

/// The version of our protocol suite this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

pub type Codec = ProtoCodec<pb_net::Status, pb_net::Status>;
pub type Behaviour = request_response::Behaviour<Codec>;
pub type Event = request_response::Event<Inbound<pb_net::Status>, pb_net::Status>;

pub fn new(network_id: &str, timeout: Duration, meter: WireMeter) -> Behaviour {
    request_response::Behaviour::with_codec(
        Codec::new(MAX_STATUS_BYTES, MAX_STATUS_BYTES, meter),
        [(
            protocol_name(network_id, "status", 1),
            ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(16),
    )
}
