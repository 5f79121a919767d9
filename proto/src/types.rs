//! Domain types and their canonical encoding.
//!
//! # Canonical encoding
//! Hashes and signatures commit to a fixed-layout byte string, never to protobuf bytes
//! (protobuf allows several encodings of one message). Integers are 8-byte big-endian,
//! keys and hashes their raw 32 bytes, signatures their raw 64 bytes. Each string starts
//! with a domain tag so that a signature over one kind of object can never be replayed as
//! another.
//!
//! - tx signing bytes: `"chainmesh/tx/v1\0" ‖ chain ‖ from ‖ to ‖ amount ‖ fee ‖ nonce`,
//!   where `chain` is the genesis hash, so a transaction signed for one network is
//!   invalid on every other (replay protection).
//! - tx id: `blake3("chainmesh/txid/v1\0" ‖ from ‖ to ‖ amount ‖ fee ‖ nonce ‖ signature)`
//!   (no chain: ids are computed without context, e.g. by gossip).
//! - header signing bytes: `"chainmesh/header/v1\0" ‖ parent ‖ height ‖ slot ‖
//!   timestamp_ms ‖ tx_root ‖ state_root ‖ producer`.
//! - block hash: `blake3(header signing bytes ‖ signature)`.
//! - tx root: `blake3("chainmesh/txroot/v1\0" ‖ count ‖ txid_0 ‖ … ‖ txid_n-1)`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto::{self, Keypair};

const TX_SIGN_TAG: &[u8] = b"chainmesh/tx/v1\0";
const TX_ID_TAG: &[u8] = b"chainmesh/txid/v1\0";
const HEADER_TAG: &[u8] = b"chainmesh/header/v1\0";
const TX_ROOT_TAG: &[u8] = b"chainmesh/txroot/v1\0";

/// Error for a hex string that is not a valid fixed-size value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} hex characters ({bytes} bytes), got {got:?}")]
pub struct ParseHexError {
    expected: usize,
    bytes: usize,
    got: String,
}

macro_rules! fixed_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Takes exactly `LEN` bytes; anything else is refused.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(b).ok().map(Self)
            }

            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Short form keeps logs readable; Display gives the whole value.
                write!(f, "{}({}…)", stringify!($name), &hex::encode(&self.0[..4]))
            }
        }

        impl FromStr for $name {
            type Err = ParseHexError;
            fn from_str(s: &str) -> Result<Self, ParseHexError> {
                let err = || ParseHexError {
                    expected: $len * 2,
                    bytes: $len,
                    got: s.chars().take(140).collect(),
                };
                let s = s.strip_prefix("0x").unwrap_or(s);
                if s.len() != $len * 2 {
                    return Err(err());
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fixed_bytes!(
    /// A blake3 hash.
    Hash,
    32
);
fixed_bytes!(
    /// An ed25519 public key. An account's address is its public key.
    PublicKey,
    32
);
fixed_bytes!(
    /// An ed25519 signature.
    Signature,
    64
);

/// An account is addressed by its owner's public key.
pub type Address = PublicKey;

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    pub fn digest(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }
}

impl Signature {
    pub const ZERO: Signature = Signature([0; 64]);
}

/// Account state: what the chain knows of an address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: u64,
    /// The nonce the account's next transaction must carry.
    pub nonce: u64,
}

impl Account {
    pub const ENCODED_LEN: usize = 16;

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.balance.to_be_bytes());
        b[8..].copy_from_slice(&self.nonce.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Account> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let (bal, non) = b.split_at(8);
        Some(Account {
            balance: u64::from_be_bytes(bal.try_into().ok()?),
            nonce: u64::from_be_bytes(non.try_into().ok()?),
        })
    }
}

/// Why a transaction is not valid against an account (or at all). The messages are shown
/// to API clients as they are, so each names the cause and the numbers involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("bad signature: the transaction is not signed by its sender for this network")]
    BadSignature,
    #[error("nonce already used: account nonce is {expected}, transaction has {got}")]
    NonceReused { expected: u64, got: u64 },
    #[error("nonce gap: the next acceptable nonce is {expected}, transaction has {got}")]
    NonceGap { expected: u64, got: u64 },
    #[error("insufficient balance: {needed} needed (amount + fee), {available} available")]
    InsufficientBalance { needed: u64, available: u64 },
    #[error("fee too low: minimum is {min}, transaction offers {got}")]
    FeeTooLow { min: u64, got: u64 },
    #[error("amount must be greater than zero")]
    ZeroAmount,
    #[error("arithmetic overflow: amount + fee or the receiver's balance exceeds u64")]
    Overflow,
}

/// A transfer of `amount` from `from` to `to`, paying `fee` to the block's producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tx {
    pub from: Address,
    pub to: Address,
    pub amount: u64,
    pub fee: u64,
    pub nonce: u64,
    pub signature: Signature,
}

impl Tx {
    /// Builds and signs a transfer for the network whose genesis hash is `chain`.
    pub fn transfer(
        key: &Keypair,
        chain: &Hash,
        to: Address,
        amount: u64,
        fee: u64,
        nonce: u64,
    ) -> Tx {
        let mut tx = Tx {
            from: key.public(),
            to,
            amount,
            fee,
            nonce,
            signature: Signature::ZERO,
        };
        tx.signature = key.sign(&tx.signing_bytes(chain));
        tx
    }

    fn body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.from.0);
        out.extend_from_slice(&self.to.0);
        out.extend_from_slice(&self.amount.to_be_bytes());
        out.extend_from_slice(&self.fee.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
    }

    pub fn signing_bytes(&self, chain: &Hash) -> Vec<u8> {
        let mut out = Vec::with_capacity(TX_SIGN_TAG.len() + 32 + 88);
        out.extend_from_slice(TX_SIGN_TAG);
        out.extend_from_slice(&chain.0);
        self.body(&mut out);
        out
    }

    pub fn id(&self) -> Hash {
        let mut out = Vec::with_capacity(TX_ID_TAG.len() + 88 + 64);
        out.extend_from_slice(TX_ID_TAG);
        self.body(&mut out);
        out.extend_from_slice(&self.signature.0);
        Hash::digest(&out)
    }

    pub fn verify_signature(&self, chain: &Hash) -> Result<(), TxError> {
        if crypto::verify(&self.from, &self.signing_bytes(chain), &self.signature) {
            Ok(())
        } else {
            Err(TxError::BadSignature)
        }
    }

    /// `amount + fee`, the most the sender's balance goes down by.
    pub fn cost(&self) -> Result<u64, TxError> {
        self.amount.checked_add(self.fee).ok_or(TxError::Overflow)
    }

    /// Checks that need no state: amount, fee floor, overflow, signature.
    pub fn check_stateless(&self, chain: &Hash, min_fee: u64) -> Result<(), TxError> {
        self.check_stateless_unsigned(min_fee)?;
        self.verify_signature(chain)
    }

    /// [`Tx::check_stateless`] but for the signature, for transactions whose signatures
    /// were verified already (in a batch).
    pub fn check_stateless_unsigned(&self, min_fee: u64) -> Result<(), TxError> {
        if self.amount == 0 {
            return Err(TxError::ZeroAmount);
        }
        if self.fee < min_fee {
            return Err(TxError::FeeTooLow {
                min: min_fee,
                got: self.fee,
            });
        }
        self.cost()?;
        Ok(())
    }
}

/// A block header. Its hash is the block's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub parent: Hash,
    pub height: u64,
    pub slot: u64,
    pub timestamp_ms: u64,
    pub tx_root: Hash,
    pub state_root: Hash,
    pub producer: PublicKey,
    pub signature: Signature,
}

impl Header {
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_TAG.len() + 32 * 4 + 24);
        out.extend_from_slice(HEADER_TAG);
        out.extend_from_slice(&self.parent.0);
        out.extend_from_slice(&self.height.to_be_bytes());
        out.extend_from_slice(&self.slot.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.tx_root.0);
        out.extend_from_slice(&self.state_root.0);
        out.extend_from_slice(&self.producer.0);
        out
    }

    pub fn hash(&self) -> Hash {
        let mut b = self.signing_bytes();
        b.extend_from_slice(&self.signature.0);
        Hash::digest(&b)
    }

    pub fn sign(&mut self, key: &Keypair) {
        self.producer = key.public();
        self.signature = key.sign(&self.signing_bytes());
    }

    pub fn verify_signature(&self) -> bool {
        crypto::verify(&self.producer, &self.signing_bytes(), &self.signature)
    }
}

/// A header and the transactions it commits to through `tx_root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub header: Header,
    pub txs: Vec<Tx>,
}

impl Block {
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    pub fn tx_root(txs: &[Tx]) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(TX_ROOT_TAG);
        h.update(&(txs.len() as u64).to_be_bytes());
        for tx in txs {
            h.update(&tx.id().0);
        }
        Hash(*h.finalize().as_bytes())
    }
}

/// A block as announced on gossip: its header and short ids of its transactions in block
/// order. Short ids keep announcements small (8 bytes a transaction against ~150); they
/// are salted with the block hash so nobody can precompute colliding transactions, and a
/// rebuilt body is checked against the header's tx root, which commits to full ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactBlock {
    pub header: Header,
    pub short_ids: Vec<u64>,
}

/// Domain tag of short ids.
const SHORT_ID_TAG: &[u8] = b"chainmesh/short-id/v1\0";

/// The short id of transaction `tx` in the block `block`: the first 8 bytes (big-endian)
/// of blake3(tag ‖ block hash ‖ tx id).
pub fn short_id(block: &Hash, tx: &Hash) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(SHORT_ID_TAG);
    h.update(&block.0);
    h.update(&tx.0);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_be_bytes(b)
}

impl CompactBlock {
    pub fn of(block: &Block) -> CompactBlock {
        let hash = block.hash();
        CompactBlock {
            header: block.header.clone(),
            short_ids: block.txs.iter().map(|t| short_id(&hash, &t.id())).collect(),
        }
    }

    pub fn hash(&self) -> Hash {
        self.header.hash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash::digest(b"x");
        assert_eq!(h.to_string().parse::<Hash>().unwrap(), h);
        assert_eq!(format!("0x{h}").parse::<Hash>().unwrap(), h);
        let e = "abc".parse::<Hash>().unwrap_err().to_string();
        assert!(e.contains("64 hex characters"), "{e}");
        assert!("zz".repeat(32).parse::<Hash>().is_err());
    }

    #[test]
    fn tx_signature_binds_chain_and_fields() {
        let k = Keypair::generate();
        let chain = Hash::digest(b"net-a");
        let tx = Tx::transfer(&k, &chain, PublicKey([7; 32]), 10, 1, 0);
        assert_eq!(tx.verify_signature(&chain), Ok(()));
        assert_eq!(
            tx.verify_signature(&Hash::digest(b"net-b")),
            Err(TxError::BadSignature)
        );
        let mut t2 = tx.clone();
        t2.amount = 11;
        assert_eq!(t2.verify_signature(&chain), Err(TxError::BadSignature));
        assert_ne!(t2.id(), tx.id());
    }

    #[test]
    fn stateless_checks() {
        let k = Keypair::generate();
        let c = Hash::ZERO;
        let to = PublicKey([1; 32]);
        assert_eq!(
            Tx::transfer(&k, &c, to, 0, 5, 0).check_stateless(&c, 1),
            Err(TxError::ZeroAmount)
        );
        assert_eq!(
            Tx::transfer(&k, &c, to, 5, 0, 0).check_stateless(&c, 1),
            Err(TxError::FeeTooLow { min: 1, got: 0 })
        );
        assert_eq!(
            Tx::transfer(&k, &c, to, u64::MAX, 1, 0).check_stateless(&c, 1),
            Err(TxError::Overflow)
        );
        assert_eq!(
            Tx::transfer(&k, &c, to, 5, 1, 0).check_stateless(&c, 1),
            Ok(())
        );
    }

    #[test]
    fn header_hash_covers_signature_and_fields() {
        let k = Keypair::generate();
        let mut h = Header {
            parent: Hash::ZERO,
            height: 1,
            slot: 1,
            timestamp_ms: 1000,
            tx_root: Block::tx_root(&[]),
            state_root: Hash::ZERO,
            producer: k.public(),
            signature: Signature::ZERO,
        };
        let unsigned = h.hash();
        h.sign(&k);
        assert!(h.verify_signature());
        assert_ne!(h.hash(), unsigned);
        let mut forged = h.clone();
        forged.slot = 2;
        assert!(!forged.verify_signature());
    }

    #[test]
    fn account_encoding() {
        let a = Account {
            balance: 42,
            nonce: 7,
        };
        assert_eq!(Account::decode(&a.encode()), Some(a));
        assert_eq!(Account::decode(&[0; 15]), None);
    }
}
