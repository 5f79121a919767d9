//! The genesis document: network id, time origin, slot length, authorities, initial
//! balances and chain limits. Its hash is folded into the genesis block, so two networks
//! that differ in any of these never share a genesis hash.

use std::collections::BTreeSet;

use chainmesh_proto::limits::{MAX_BLOCK_BYTES, MAX_COMPACT_TX_IDS};
use chainmesh_proto::{Account, Address, Block, Hash, Header, PublicKey, Signature};
use serde::{Deserialize, Serialize};

use crate::state::StateHash;

const GENESIS_TAG: &[u8] = b"chainmesh/genesis/v1\0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    pub address: Address,
    pub balance: u64,
}

/// Consensus limits: every node of a network must agree on them, so they are part of
/// the genesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainLimits {
    pub max_block_txs: u32,
    pub max_block_bytes: u64,
    pub min_fee: u64,
}

impl Default for ChainLimits {
    fn default() -> Self {
        ChainLimits {
            max_block_txs: 5_000,
            max_block_bytes: 2 * 1024 * 1024,
            min_fee: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// Lowercase letters, digits and '-', at most 32: it appears in protocol names.
    pub network_id: String,
    /// Unix time in milliseconds at which slot 0 starts.
    pub timestamp_ms: u64,
    pub block_time_ms: u64,
    /// Slot `s` belongs to `authorities[s % len]`.
    pub authorities: Vec<PublicKey>,
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    #[serde(default)]
    pub limits: ChainLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    #[error("network_id {0:?} is invalid: use 1 to 32 characters from a-z, 0-9 and '-'")]
    NetworkId(String),
    #[error("block_time_ms must be between 100 and 600000, got {0}")]
    BlockTime(u64),
    #[error("authorities must not be empty")]
    NoAuthorities,
    #[error("authority {0} is listed twice")]
    DuplicateAuthority(PublicKey),
    #[error("address {0} has more than one allocation")]
    DuplicateAllocation(Address),
    #[error("allocation to {0} is zero; leave the address out instead")]
    ZeroAllocation(Address),
    #[error("allocations add up to more than u64::MAX")]
    SupplyOverflow,
    #[error("limits.max_block_bytes must be between 1024 and {MAX_BLOCK_BYTES}, got {0}")]
    BlockBytes(u64),
    #[error(
        "limits.max_block_txs must be between 1 and {MAX_COMPACT_TX_IDS} (a compact block announcement carries every id), got {0}"
    )]
    BlockTxs(u32),
}

impl Genesis {
    pub fn validate(&self) -> Result<(), GenesisError> {
        let id_ok = !self.network_id.is_empty()
            && self.network_id.len() <= 32
            && self
                .network_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(GenesisError::NetworkId(self.network_id.clone()));
        }
        if !(100..=600_000).contains(&self.block_time_ms) {
            return Err(GenesisError::BlockTime(self.block_time_ms));
        }
        if self.authorities.is_empty() {
            return Err(GenesisError::NoAuthorities);
        }
        let mut seen = BTreeSet::new();
        for a in &self.authorities {
            if !seen.insert(a) {
                return Err(GenesisError::DuplicateAuthority(*a));
            }
        }
        let mut seen = BTreeSet::new();
        let mut total: u64 = 0;
        for al in &self.allocations {
            if !seen.insert(al.address) {
                return Err(GenesisError::DuplicateAllocation(al.address));
            }
            if al.balance == 0 {
                return Err(GenesisError::ZeroAllocation(al.address));
            }
            total = total
                .checked_add(al.balance)
                .ok_or(GenesisError::SupplyOverflow)?;
        }
        if !(1024..=MAX_BLOCK_BYTES as u64).contains(&self.limits.max_block_bytes) {
            return Err(GenesisError::BlockBytes(self.limits.max_block_bytes));
        }
        if !(1..=MAX_COMPACT_TX_IDS as u32).contains(&self.limits.max_block_txs) {
            return Err(GenesisError::BlockTxs(self.limits.max_block_txs));
        }
        Ok(())
    }

    /// Hash of the canonical encoding of every field (layout: tag, then each field in
    /// declaration order, strings and lists length-prefixed with a u64 BE count).
    pub fn config_hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(GENESIS_TAG);
        h.update(&(self.network_id.len() as u64).to_be_bytes());
        h.update(self.network_id.as_bytes());
        h.update(&self.timestamp_ms.to_be_bytes());
        h.update(&self.block_time_ms.to_be_bytes());
        h.update(&(self.authorities.len() as u64).to_be_bytes());
        for a in &self.authorities {
            h.update(&a.0);
        }
        h.update(&(self.allocations.len() as u64).to_be_bytes());
        for al in &self.allocations {
            h.update(&al.address.0);
            h.update(&al.balance.to_be_bytes());
        }
        h.update(&u64::from(self.limits.max_block_txs).to_be_bytes());
        h.update(&self.limits.max_block_bytes.to_be_bytes());
        h.update(&self.limits.min_fee.to_be_bytes());
        Hash(*h.finalize().as_bytes())
    }

    pub fn initial_accounts(&self) -> impl Iterator<Item = (Address, Account)> + '_ {
        self.allocations.iter().map(|a| {
            (
                a.address,
                Account {
                    balance: a.balance,
                    nonce: 0,
                },
            )
        })
    }

    pub fn initial_state_hash(&self) -> StateHash {
        let mut s = StateHash::empty();
        for (addr, acct) in self.initial_accounts() {
            s.add(&addr, &acct);
        }
        s
    }

    /// The genesis block: height 0, slot 0, no producer and no signature; its parent
    /// field carries the config hash.
    pub fn block(&self) -> Block {
        Block {
            header: Header {
                parent: self.config_hash(),
                height: 0,
                slot: 0,
                timestamp_ms: self.timestamp_ms,
                tx_root: Block::tx_root(&[]),
                state_root: self.initial_state_hash().root(),
                producer: PublicKey([0; 32]),
                signature: Signature::ZERO,
            },
            txs: Vec::new(),
        }
    }

    pub fn hash(&self) -> Hash {
        self.block().hash()
    }

    /// The slot in progress at `now_ms` (0 before the genesis time).
    pub fn slot_at(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.timestamp_ms) / self.block_time_ms
    }

    /// When `slot` starts; `None` if that lies beyond u64 milliseconds.
    pub fn slot_start(&self, slot: u64) -> Option<u64> {
        slot.checked_mul(self.block_time_ms)?
            .checked_add(self.timestamp_ms)
    }

    pub fn producer_for(&self, slot: u64) -> &PublicKey {
        // validate() guarantees a non-empty list; the modulo keeps the index in range.
        &self.authorities[(slot % self.authorities.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Genesis {
        Genesis {
            network_id: "devnet".into(),
            timestamp_ms: 1_000,
            block_time_ms: 1_000,
            authorities: vec![PublicKey([1; 32]), PublicKey([2; 32])],
            allocations: vec![Allocation {
                address: PublicKey([3; 32]),
                balance: 100,
            }],
            limits: ChainLimits::default(),
        }
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(g().validate(), Ok(()));
        let mut x = g();
        x.network_id = "Dev Net".into();
        assert!(matches!(x.validate(), Err(GenesisError::NetworkId(_))));
        let mut x = g();
        x.authorities.clear();
        assert_eq!(x.validate(), Err(GenesisError::NoAuthorities));
        let mut x = g();
        x.authorities.push(PublicKey([1; 32]));
        assert!(matches!(
            x.validate(),
            Err(GenesisError::DuplicateAuthority(_))
        ));
        let mut x = g();
        x.allocations.push(Allocation {
            address: PublicKey([4; 32]),
            balance: u64::MAX,
        });
        assert_eq!(x.validate(), Err(GenesisError::SupplyOverflow));
        let mut x = g();
        x.block_time_ms = 5;
        assert_eq!(x.validate(), Err(GenesisError::BlockTime(5)));
    }

    #[test]
    fn any_change_changes_the_genesis_hash() {
        let base = g().hash();
        let mut x = g();
        x.network_id = "other".into();
        assert_ne!(x.hash(), base);
        let mut x = g();
        x.authorities.swap(0, 1);
        assert_ne!(x.hash(), base);
        let mut x = g();
        x.limits.min_fee = 2;
        assert_ne!(x.hash(), base);
        assert_eq!(g().hash(), base);
    }

    #[test]
    fn slots_and_producers() {
        let x = g();
        assert_eq!(x.slot_at(0), 0);
        assert_eq!(x.slot_at(1_999), 0);
        assert_eq!(x.slot_at(2_000), 1);
        assert_eq!(x.slot_start(3), Some(4_000));
        assert_eq!(x.slot_start(u64::MAX), None);
        assert_eq!(x.producer_for(0), &PublicKey([1; 32]));
        assert_eq!(x.producer_for(7), &PublicKey([2; 32]));
    }
}
