//! Conversions between prost messages and domain types. Decoding checks the size bound
//! first, then every fixed-length field: a malformed message becomes an error, never a
//! panic or a silently truncated value.

use prost::Message;

use crate::limits::{MAX_BLOCK_BYTES, MAX_COMPACT_BLOCK_BYTES, MAX_COMPACT_TX_IDS, MAX_TX_BYTES};
use crate::pb_chain as pb;
use crate::pb_net;
use crate::types::{Block, CompactBlock, Hash, Header, PublicKey, Signature, Tx};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("not a valid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("field `{field}` must be {expected} bytes, got {got}")]
    BadLength {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("field `{0}` is missing")]
    Missing(&'static str),
}

fn fixed<T>(
    field: &'static str,
    b: &[u8],
    len: usize,
    f: impl Fn(&[u8]) -> Option<T>,
) -> Result<T, WireError> {
    f(b).ok_or(WireError::BadLength {
        field,
        expected: len,
        got: b.len(),
    })
}

pub fn hash_field(field: &'static str, b: &[u8]) -> Result<Hash, WireError> {
    fixed(field, b, Hash::LEN, Hash::from_slice)
}

fn key_field(field: &'static str, b: &[u8]) -> Result<PublicKey, WireError> {
    fixed(field, b, PublicKey::LEN, PublicKey::from_slice)
}

fn sig_field(field: &'static str, b: &[u8]) -> Result<Signature, WireError> {
    fixed(field, b, Signature::LEN, Signature::from_slice)
}

impl From<&Tx> for pb::Tx {
    fn from(t: &Tx) -> Self {
        pb::Tx {
            from: t.from.0.to_vec(),
            to: t.to.0.to_vec(),
            amount: t.amount,
            fee: t.fee,
            nonce: t.nonce,
            signature: t.signature.0.to_vec(),
        }
    }
}

impl TryFrom<pb::Tx> for Tx {
    type Error = WireError;
    fn try_from(t: pb::Tx) -> Result<Self, WireError> {
        Ok(Tx {
            from: key_field("tx.from", &t.from)?,
            to: key_field("tx.to", &t.to)?,
            amount: t.amount,
            fee: t.fee,
            nonce: t.nonce,
            signature: sig_field("tx.signature", &t.signature)?,
        })
    }
}

impl From<&Header> for pb::Header {
    fn from(h: &Header) -> Self {
        pb::Header {
            parent: h.parent.0.to_vec(),
            height: h.height,
            slot: h.slot,
            timestamp_ms: h.timestamp_ms,
            tx_root: h.tx_root.0.to_vec(),
            state_root: h.state_root.0.to_vec(),
            producer: h.producer.0.to_vec(),
            signature: h.signature.0.to_vec(),
        }
    }
}

impl TryFrom<pb::Header> for Header {
    type Error = WireError;
    fn try_from(h: pb::Header) -> Result<Self, WireError> {
        Ok(Header {
            parent: hash_field("header.parent", &h.parent)?,
            height: h.height,
            slot: h.slot,
            timestamp_ms: h.timestamp_ms,
            tx_root: hash_field("header.tx_root", &h.tx_root)?,
            state_root: hash_field("header.state_root", &h.state_root)?,
            producer: key_field("header.producer", &h.producer)?,
            signature: sig_field("header.signature", &h.signature)?,
        })
    }
}

impl From<&Block> for pb::Block {
    fn from(b: &Block) -> Self {
        pb::Block {
            header: Some((&b.header).into()),
            txs: b.txs.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::Block> for Block {
    type Error = WireError;
    fn try_from(b: pb::Block) -> Result<Self, WireError> {
        Ok(Block {
            header: b
                .header
                .ok_or(WireError::Missing("block.header"))?
                .try_into()?,
            txs: b
                .txs
                .into_iter()
                .map(Tx::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Decodes a protobuf message after checking its size against `max`.
pub fn decode_capped<M: Message + Default>(bytes: &[u8], max: usize) -> Result<M, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(M::decode(bytes)?)
}

pub fn encode_block(b: &Block) -> Vec<u8> {
    pb::Block::from(b).encode_to_vec()
}

pub fn decode_block(bytes: &[u8]) -> Result<Block, WireError> {
    decode_capped::<pb::Block>(bytes, MAX_BLOCK_BYTES)?.try_into()
}

pub fn encode_tx(t: &Tx) -> Vec<u8> {
    pb::Tx::from(t).encode_to_vec()
}

pub fn decode_tx(bytes: &[u8]) -> Result<Tx, WireError> {
    decode_capped::<pb::Tx>(bytes, MAX_TX_BYTES)?.try_into()
}

impl From<&CompactBlock> for pb_net::CompactBlock {
    fn from(c: &CompactBlock) -> Self {
        pb_net::CompactBlock {
            header: Some((&c.header).into()),
            short_ids: c.short_ids.iter().flat_map(|s| s.to_be_bytes()).collect(),
        }
    }
}

impl TryFrom<pb_net::CompactBlock> for CompactBlock {
    type Error = WireError;
    fn try_from(c: pb_net::CompactBlock) -> Result<Self, WireError> {
        if !c.short_ids.len().is_multiple_of(8) || c.short_ids.len() / 8 > MAX_COMPACT_TX_IDS {
            return Err(WireError::BadLength {
                field: "compact_block.short_ids",
                expected: MAX_COMPACT_TX_IDS * 8,
                got: c.short_ids.len(),
            });
        }
        Ok(CompactBlock {
            header: c
                .header
                .ok_or(WireError::Missing("compact_block.header"))?
                .try_into()?,
            short_ids: c
                .short_ids
                .chunks_exact(8)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    u64::from_be_bytes(a)
                })
                .collect(),
        })
    }
}

pub fn encode_compact_block(c: &CompactBlock) -> Vec<u8> {
    pb_net::CompactBlock::from(c).encode_to_vec()
}

pub fn decode_compact_block(bytes: &[u8]) -> Result<CompactBlock, WireError> {
    decode_capped::<pb_net::CompactBlock>(bytes, MAX_COMPACT_BLOCK_BYTES)?.try_into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    fn sample_block() -> Block {
        let k = Keypair::generate();
        let txs: Vec<Tx> = (0..3)
            .map(|n| Tx::transfer(&k, &Hash::ZERO, PublicKey([2; 32]), 5, 1, n))
            .collect();
        let mut header = Header {
            parent: Hash::digest(b"p"),
            height: 9,
            slot: 12,
            timestamp_ms: 12_000,
            tx_root: Block::tx_root(&txs),
            state_root: Hash::digest(b"s"),
            producer: k.public(),
            signature: Signature::ZERO,
        };
        header.sign(&k);
        Block { header, txs }
    }

    #[test]
    fn block_round_trip() {
        let b = sample_block();
        let bytes = encode_block(&b);
        assert_eq!(decode_block(&bytes).unwrap(), b);
        let t = &b.txs[1];
        assert_eq!(&decode_tx(&encode_tx(t)).unwrap(), t);
        assert!(encode_tx(t).len() < MAX_TX_BYTES);
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(matches!(
            decode_block(&[0xff; 40]),
            Err(WireError::Decode(_))
        ));
        let mut t = pb::Tx::from(&sample_block().txs[0]);
        t.signature.pop();
        let e = Tx::try_from(t).unwrap_err();
        assert!(e.to_string().contains("tx.signature"), "{e}");
        let no_header = pb::Block {
            header: None,
            txs: vec![],
        }
        .encode_to_vec();
        assert!(matches!(
            decode_block(&no_header),
            Err(WireError::Missing(_))
        ));
        assert!(matches!(
            decode_tx(&[0u8; MAX_TX_BYTES + 1]),
            Err(WireError::TooLarge { .. })
        ));
        // Truncated block bytes.
        let bytes = encode_block(&sample_block());
        assert!(decode_block(&bytes[..bytes.len() - 10]).is_err());
    }

    #[test]
    fn compact_blocks_round_trip_and_are_capped() {
        use crate::types::CompactBlock;
        let k = Keypair::generate();
        let chain = Hash::digest(b"net");
        let txs: Vec<Tx> = (0..3)
            .map(|n| Tx::transfer(&k, &chain, PublicKey([1; 32]), 1, 1, n))
            .collect();
        let mut header = Header {
            parent: Hash::ZERO,
            height: 1,
            slot: 1,
            timestamp_ms: 0,
            tx_root: Block::tx_root(&txs),
            state_root: Hash::ZERO,
            producer: k.public(),
            signature: Signature([0; 64]),
        };
        header.sign(&k);
        let cb = CompactBlock::of(&Block { header, txs });
        let bytes = encode_compact_block(&cb);
        assert_eq!(decode_compact_block(&bytes).unwrap(), cb);
        let ragged = pb_net::CompactBlock {
            header: Some((&cb.header).into()),
            short_ids: vec![0; 12],
        };
        assert!(decode_compact_block(&ragged.encode_to_vec()).is_err());
        let too_many = pb_net::CompactBlock {
            header: Some((&cb.header).into()),
            short_ids: vec![0; (MAX_COMPACT_TX_IDS + 1) * 8],
        };
        assert!(decode_compact_block(&too_many.encode_to_vec()).is_err());
        assert!(decode_compact_block(&vec![0u8; MAX_COMPACT_BLOCK_BYTES + 1]).is_err());
    }
}
