//! `/chainmesh/<net>/sync/1`: request-response for headers, blocks and transactions.
//! Requests are capped at 64 KiB and responses at 8 MiB before decoding; the counts
//! inside are capped again when converted to domain types.

mod messages;

use std::time::Duration;

use chainmesh_proto::limits::{MAX_SYNC_REQUEST_BYTES, MAX_SYNC_RESPONSE_BYTES};
use chainmesh_proto::pb_net;
use libp2p::request_response::{self, ProtocolSupport};

pub use messages::{
    MAX_BLOCKS_PER_REQUEST, MAX_LOCATOR, MAX_TXS_PER_REQUEST, Request, Response, ServeError,
};

use crate::codec::{Inbound, ProtoCodec, WireMeter, protocol_name};

pub type Codec = ProtoCodec<pb_net::SyncRequest, pb_net::SyncResponse>;
pub type Behaviour = request_response::Behaviour<Codec>;
pub type Event = request_response::Event<Inbound<pb_net::SyncRequest>, pb_net::SyncResponse>;

pub fn new(network_id: &str, timeout: Duration, meter: WireMeter) -> Behaviour {
    request_response::Behaviour::with_codec(
        Codec::new(MAX_SYNC_REQUEST_BYTES, MAX_SYNC_RESPONSE_BYTES, meter),
        [(protocol_name(network_id, "sync", 1), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(64),
    )
}
