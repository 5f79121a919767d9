//! The status message as a domain type, and the compatibility rule.

use chainmesh_proto::Hash;
use chainmesh_proto::pb_net;
use chainmesh_proto::wire::{WireError, hash_field};

/// What one node enforces on one peer for one protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimit {
    pub protocol: String,
    pub requests_per_second: u32,
    pub max_items_per_request: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainStatus {
    pub version: u32,
    pub genesis: Hash,
    pub network_id: String,
    pub best_height: u64,
    pub best_hash: Hash,
    /// For proof of authority, the number of blocks: the same order as fork choice.
    pub cumulative_weight: u128,
    pub agent: String,
    pub limits: Vec<ServeLimit>,
}

/// Most serving limits one status may carry (the message is capped at 1 KiB anyway).
const MAX_LIMITS: usize = 8;

impl ChainStatus {
    pub fn to_pb(&self) -> pb_net::Status {
        let w = self.cumulative_weight.to_be_bytes();
        let first = w.iter().position(|b| *b != 0).unwrap_or(w.len());
        pb_net::Status {
            version: self.version,
            genesis_hash: self.genesis.0.to_vec(),
            network_id: self.network_id.clone(),
            best_height: self.best_height,
            best_hash: self.best_hash.0.to_vec(),
            cumulative_weight: w[first..].to_vec(),
            agent: self.agent.clone(),
            limits: self
                .limits
                .iter()
                .map(|l| pb_net::ServeLimit {
                    protocol: l.protocol.clone(),
                    requests_per_second: l.requests_per_second,
                    max_items_per_request: l.max_items_per_request,
                })
                .collect(),
        }
    }

    pub fn from_pb(s: pb_net::Status) -> Result<ChainStatus, WireError> {
        if s.cumulative_weight.len() > 16 {
            return Err(WireError::BadLength {
                field: "status.cumulative_weight",
                expected: 16,
                got: s.cumulative_weight.len(),
            });
        }
        let mut w = [0u8; 16];
        w[16 - s.cumulative_weight.len()..].copy_from_slice(&s.cumulative_weight);
        Ok(ChainStatus {
            version: s.version,
            genesis: hash_field("status.genesis_hash", &s.genesis_hash)?,
            network_id: s.network_id,
            best_height: s.best_height,
            best_hash: hash_field("status.best_hash", &s.best_hash)?,
            cumulative_weight: u128::from_be_bytes(w),
            agent: s.agent.chars().take(128).collect(),
            limits: s
                .limits
                .into_iter()
                .take(MAX_LIMITS)
                .map(|l| ServeLimit {
                    protocol: l.protocol.chars().take(64).collect(),
                    requests_per_second: l.requests_per_second,
                    max_items_per_request: l.max_items_per_request,
                })
                .collect(),
        })
    }

    /// The limit the peer declared for a protocol, if any.
    pub fn limit_for(&self, protocol: &str) -> Option<&ServeLimit> {
        self.limits.iter().find(|l| l.protocol == protocol)
    }
}

/// Why a peer cannot be on our network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error("network id mismatch: ours is {ours:?}, the peer's is {theirs:?}")]
    Network { ours: String, theirs: String },
    #[error("genesis mismatch: ours is {ours}, the peer's is {theirs}")]
    Genesis { ours: Hash, theirs: Hash },
    #[error("unsupported protocol version {theirs} (we speak {ours})")]
    Version { ours: u32, theirs: u32 },
}

pub fn check_compatible(ours: &ChainStatus, theirs: &ChainStatus) -> Result<(), Incompatible> {
    if ours.network_id != theirs.network_id {
        return Err(Incompatible::Network {
            ours: ours.network_id.clone(),
            theirs: theirs.network_id.clone(),
        });
    }
    if ours.genesis != theirs.genesis {
        return Err(Incompatible::Genesis {
            ours: ours.genesis,
            theirs: theirs.genesis,
        });
    }
    if ours.version != theirs.version {
        return Err(Incompatible::Version {
            ours: ours.version,
            theirs: theirs.version,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> ChainStatus {
        ChainStatus {
            version: 1,
            genesis: Hash::digest(b"g"),
            network_id: "devnet".into(),
            best_height: 10,
            best_hash: Hash::digest(b"t"),
            cumulative_weight: 10,
            agent: "chainmesh/0.1.0".into(),
            limits: vec![ServeLimit {
                protocol: "sync".into(),
                requests_per_second: 20,
                max_items_per_request: 128,
            }],
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let a = s();
        assert_eq!(ChainStatus::from_pb(a.to_pb()).unwrap(), a);
        assert_eq!(check_compatible(&a, &a), Ok(()));
        let mut b = s();
        b.genesis = Hash::digest(b"other");
        assert!(matches!(
            check_compatible(&a, &b),
            Err(Incompatible::Genesis { .. })
        ));
        let mut b = s();
        b.version = 9;
        assert!(
            check_compatible(&a, &b)
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );
        let mut p = a.to_pb();
        p.best_hash.truncate(3);
        assert!(ChainStatus::from_pb(p).is_err());
        let mut p = a.to_pb();
        p.cumulative_weight = vec![1; 17];
        assert!(ChainStatus::from_pb(p).is_err());
        assert_eq!(a.limit_for("sync").unwrap().max_items_per_request, 128);
    }
}
