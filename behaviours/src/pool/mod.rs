//! `/chainmesh/<net>/pool/1`: pull-based mempool sync, as a request-response protocol.
//!
//! The request is a permit (cursor, max); the response carries at most `max` ids of the
//! server's pool log after the cursor and the next cursor. The server may hold a permit
//! until it has entries ([`HOLD`]), so the requester's timeout is the hold plus the usual
//! request timeout. Frames are tiny and capped: 64 bytes a permit, 64 KiB an answer.

use std::time::Duration;

use chainmesh_proto::limits::{MAX_POOL_ENTRIES, MAX_POOL_ENTRIES_BYTES, MAX_POOL_PERMIT_BYTES};
use chainmesh_proto::wire::{WireError, hash_field};
use chainmesh_proto::{Hash, pb_net};
use libp2p::request_response::{self, ProtocolSupport};

use crate::codec::{Inbound, ProtoCodec, WireMeter, protocol_name};

/// Longest a server holds a permit before answering with nothing new.
pub const HOLD: Duration = Duration::from_secs(5);

pub type Codec = ProtoCodec<pb_net::PoolPermit, pb_net::PoolEntries>;
pub type Behaviour = request_response::Behaviour<Codec>;
pub type Event = request_response::Event<Inbound<pb_net::PoolPermit>, pb_net::PoolEntries>;

pub fn new(network_id: &str, timeout: Duration, meter: WireMeter) -> Behaviour {
    request_response::Behaviour::with_codec(
        Codec::new(MAX_POOL_PERMIT_BYTES, MAX_POOL_ENTRIES_BYTES, meter),
        [(protocol_name(network_id, "pool", 1), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(HOLD + timeout)
            // One permit in flight per peer each way, plus slack for a permit that
            // overlaps the answer to the previous one.
            .with_max_concurrent_streams(4),
    )
}

/// A permit, checked.
pub fn permit_from_pb(p: &pb_net::PoolPermit) -> Result<(u64, u32), WireError> {
    if p.max == 0 || p.max > MAX_POOL_ENTRIES {
        return Err(WireError::BadLength {
            field: "pool_permit.max",
            expected: MAX_POOL_ENTRIES as usize,
            got: p.max as usize,
        });
    }
    Ok((p.cursor, p.max))
}

pub fn permit_to_pb(cursor: u64, max: u32) -> pb_net::PoolPermit {
    pb_net::PoolPermit { cursor, max }
}

pub fn entries_to_pb(ids: &[Hash], next_cursor: u64) -> pb_net::PoolEntries {
    pb_net::PoolEntries {
        ids: ids.iter().map(|h| h.0.to_vec()).collect(),
        next_cursor,
    }
}

/// An answer, checked against the permit's `max`.
pub fn entries_from_pb(e: pb_net::PoolEntries, max: u32) -> Result<(Vec<Hash>, u64), WireError> {
    if e.ids.len() > max as usize {
        return Err(WireError::BadLength {
            field: "pool_entries.ids",
            expected: max as usize,
            got: e.ids.len(),
        });
    }
    let ids = e
        .ids
        .iter()
        .map(|h| hash_field("pool_entries.ids", h))
        .collect::<Result<_, _>>()?;
    Ok((ids, e.next_cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_and_entries_are_checked() {
        assert!(permit_from_pb(&permit_to_pb(3, 0)).is_err());
        assert!(permit_from_pb(&permit_to_pb(3, MAX_POOL_ENTRIES + 1)).is_err());
        assert_eq!(permit_from_pb(&permit_to_pb(3, 10)).unwrap(), (3, 10));
        let ids = vec![Hash([1; 32]), Hash([2; 32])];
        let pb = entries_to_pb(&ids, 9);
        assert!(entries_from_pb(pb.clone(), 1).is_err());
        assert_eq!(entries_from_pb(pb, 2).unwrap(), (ids, 9));
        let bad = pb_net::PoolEntries {
            ids: vec![vec![0; 31]],
            next_cursor: 0,
        };
        assert!(entries_from_pb(bad, 2).is_err());
    }
}
