//! Which stored chunk holds which pending transaction (sans I/O).
//!
//! The pool is stored as chunks: every write of newly added transactions becomes one
//! sled value holding all of them (up to [`CHUNK_TXS`]), because sled's cost is per
//! key (about 10 µs an insert on the reference machine, whatever the value's size), and
//! a node pulling a peer's pool adds a thousand transactions at a time. A chunk is
//! deleted when its last transaction leaves the pool, and rewritten with the survivors
//! when more than half of it has left, so the store holds at most about twice the pool.

use std::collections::HashMap;

use chainmesh_proto::limits::MAX_TX_BYTES;
use chainmesh_proto::{Hash, Tx, wire};

/// Most transactions in one chunk.
pub const CHUNK_TXS: usize = 1024;

/// A chunk's sled key: big-endian, so chunks are read back in the order they were
/// written.
pub fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// A chunk's value: each transaction's encoding after its length (u16, little-endian).
pub fn encode<'a>(txs: impl IntoIterator<Item = &'a Tx>) -> Vec<u8> {
    let mut out = Vec::new();
    for tx in txs {
        let bytes = wire::encode_tx(tx);
        // The pool admits nothing longer than MAX_TX_BYTES (512), well within a u16.
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk truncated at byte {0}")]
    Truncated(usize),
    #[error("transaction of {0} bytes, beyond the limit of {MAX_TX_BYTES}")]
    TooLong(usize),
    #[error("more than {CHUNK_TXS} transactions in a chunk")]
    TooMany,
    #[error("transaction at byte {at}: {why}")]
    Tx { at: usize, why: String },
}

/// Decodes a chunk, checking every length before it is used.
pub fn decode(bytes: &[u8]) -> Result<Vec<Tx>, ChunkError> {
    let mut txs = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if txs.len() == CHUNK_TXS {
            return Err(ChunkError::TooMany);
        }
        let len_bytes = bytes.get(at..at + 2).ok_or(ChunkError::Truncated(at))?;
        let len = u16::from_le_bytes([len_bytes[0], len_bytes[1]]) as usize;
        if len > MAX_TX_BYTES {
            return Err(ChunkError::TooLong(len));
        }
        let body = bytes
            .get(at + 2..at + 2 + len)
            .ok_or(ChunkError::Truncated(at))?;
        let tx = wire::decode_tx(body).map_err(|e| ChunkError::Tx {
            at,
            why: e.to_string(),
        })?;
        txs.push(tx);
        at += 2 + len;
    }
    Ok(txs)
}

#[derive(Debug)]
struct Chunk {
    /// Every transaction written into the chunk, left or not.
    ids: Vec<Hash>,
    live: usize,
}

/// What to do with a chunk after removals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Delete(u64),
    /// Rewrite the chunk with these transactions, the ones still in the pool.
    Rewrite(u64, Vec<Hash>),
}

/// Where each stored transaction is.
#[derive(Debug, Default)]
pub struct ChunkIndex {
    next: u64,
    of_tx: HashMap<Hash, u64>,
    chunks: HashMap<u64, Chunk>,
}

impl ChunkIndex {
    /// An index whose new chunks are numbered from `next`.
    pub fn starting_at(next: u64) -> Self {
        ChunkIndex {
            next,
            ..ChunkIndex::default()
        }
    }

    /// Number of chunks stored.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Records a new chunk of `ids` (at most [`CHUNK_TXS`]) and returns its number.
    pub fn add(&mut self, ids: Vec<Hash>) -> u64 {
        let n = self.next;
        self.next += 1;
        for id in &ids {
            // A transaction stored again (re-added after a reorg) leaves its old chunk.
            if let Some(old) = self.of_tx.insert(*id, n)
                && let Some(c) = self.chunks.get_mut(&old)
            {
                c.live = c.live.saturating_sub(1);
            }
        }
        let live = ids.len();
        self.chunks.insert(n, Chunk { ids, live });
        n
    }

    /// Forgets `removed` transactions; returns what becomes of the chunks they were in.
    pub fn remove(&mut self, removed: &[Hash]) -> Vec<Fate> {
        let mut touched = Vec::new();
        for id in removed {
            if let Some(n) = self.of_tx.remove(id)
                && let Some(c) = self.chunks.get_mut(&n)
            {
                c.live = c.live.saturating_sub(1);
                touched.push(n);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let mut fates = Vec::new();
        for n in touched {
            let Some(c) = self.chunks.get_mut(&n) else {
                continue;
            };
            if c.live == 0 {
                self.chunks.remove(&n);
                fates.push(Fate::Delete(n));
            } else if c.live * 2 < c.ids.len() {
                let of_tx = &self.of_tx;
                c.ids.retain(|id| of_tx.get(id) == Some(&n));
                c.live = c.ids.len();
                fates.push(Fate::Rewrite(n, c.ids.clone()));
            }
        }
        fates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::{Keypair, PublicKey};

    fn h(i: u8) -> Hash {
        Hash([i; 32])
    }

    #[test]
    fn encode_decode_round_trip_and_garbage_is_refused() {
        let k = Keypair::generate();
        let chain = Hash::digest(b"chunks");
        let txs: Vec<Tx> = (0..3)
            .map(|n| Tx::transfer(&k, &chain, PublicKey([1; 32]), 5, 1, n))
            .collect();
        let bytes = encode(&txs);
        assert_eq!(decode(&bytes).unwrap(), txs);
        assert_eq!(
            decode(&bytes[..bytes.len() - 1])
                .err()
                .map(|e| matches!(e, ChunkError::Truncated(_))),
            Some(true)
        );
        assert_eq!(decode(&[0xff, 0xff]), Err(ChunkError::TooLong(0xffff)));
        assert!(matches!(
            decode(&[3, 0, 1, 2, 3]),
            Err(ChunkError::Tx { at: 0, .. })
        ));
        assert!(decode(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_chunk_goes_with_its_last_transaction_and_is_rewritten_when_mostly_gone() {
        let mut ix = ChunkIndex::starting_at(5);
        assert_eq!(ix.add(vec![h(1), h(2), h(3), h(4)]), 5);
        assert_eq!(ix.add(vec![h(5)]), 6);
        // Half gone: kept as it is.
        assert_eq!(ix.remove(&[h(1), h(2)]), vec![]);
        // Three of four gone: rewritten with the survivor.
        assert_eq!(ix.remove(&[h(3)]), vec![Fate::Rewrite(5, vec![h(4)])]);
        // Unknown ids change nothing; the last one deletes the chunk.
        assert_eq!(ix.remove(&[h(9), h(5)]), vec![Fate::Delete(6)]);
        assert_eq!(ix.remove(&[h(4)]), vec![Fate::Delete(5)]);
        assert!(ix.is_empty());
    }

    #[test]
    fn a_transaction_stored_again_leaves_its_old_chunk() {
        let mut ix = ChunkIndex::default();
        let a = ix.add(vec![h(1), h(2)]);
        let b = ix.add(vec![h(2)]);
        // h(2) lives in b now: removing h(1) empties a.
        assert_eq!(ix.remove(&[h(1)]), vec![Fate::Delete(a)]);
        assert_eq!(ix.remove(&[h(2)]), vec![Fate::Delete(b)]);
    }
}
