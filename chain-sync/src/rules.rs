//! Devnet consensus rules: what makes a header and a block valid on top of its parent.
//! Pure functions of their inputs (the current time is a parameter), so every rule is
//! tested without a clock, a disk or a network.

use chainmesh_proto::{Block, Hash, Header, PublicKey, TxError, wire};

use crate::genesis::Genesis;
use crate::state::{AccountReader, ApplyError, Overlay, SigCheck, UndoRecord, apply_tx};

/// How far ahead of our clock a block's slot may start (clock skew between nodes).
pub const MAX_CLOCK_DRIFT_MS: u64 = 2_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("height {got} does not follow the parent's height {parent}")]
    BadHeight { parent: u64, got: u64 },
    #[error("slot {got} is not after the parent's slot {parent}")]
    SlotNotAfterParent { parent: u64, got: u64 },
    #[error("timestamp {got} ms is not the start of slot {slot} ({expected} ms)")]
    BadTimestamp { slot: u64, expected: u64, got: u64 },
    #[error("slot {slot} starts at {starts_ms} ms, later than now ({now_ms} ms) plus drift")]
    FromTheFuture {
        slot: u64,
        starts_ms: u64,
        now_ms: u64,
    },
    #[error("wrong producer for slot {slot}: expected {expected}, got {got}")]
    WrongProducer {
        slot: u64,
        expected: PublicKey,
        got: PublicKey,
    },
    #[error("bad header signature")]
    BadSignature,
    #[error("tx root mismatch: header says {header}, transactions give {computed}")]
    BadTxRoot { header: Hash, computed: Hash },
    #[error("state root mismatch: header says {header}, execution gives {computed}")]
    BadStateRoot { header: Hash, computed: Hash },
    #[error("{count} transactions exceed the limit of {max}")]
    TooManyTxs { count: usize, max: u32 },
    #[error("block of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: u64 },
    #[error("transaction {index} ({id}): {error}")]
    Tx {
        index: usize,
        id: Hash,
        error: TxError,
    },
}

// Batched, multi-core signature checks of transactions live with the types (the mempool
// checks its stored transactions with them too).
pub use chainmesh_proto::batch::{cores, tx_signatures, tx_signatures_here, tx_signatures_valid};

/// Header rules against the parent: linkage, slot order and timing, proof of authority.
/// With [`SigCheck::AlreadyVerified`] the producer's signature is taken as checked (the
/// syncer verifies headers before it fetches bodies; gossip verifies announcements).
pub fn validate_header(
    genesis: &Genesis,
    parent: &Header,
    h: &Header,
    now_ms: u64,
    sig: SigCheck,
) -> Result<(), BlockError> {
    if Some(h.height) != parent.height.checked_add(1) {
        return Err(BlockError::BadHeight {
            parent: parent.height,
            got: h.height,
        });
    }
    if h.slot <= parent.slot {
        return Err(BlockError::SlotNotAfterParent {
            parent: parent.slot,
            got: h.slot,
        });
    }
    slot_rules(genesis, h, now_ms)?;
    if sig == SigCheck::Verify && !h.verify_signature() {
        return Err(BlockError::BadSignature);
    }
    Ok(())
}

/// The header rules that need no parent: slot timing, the slot's producer and its
/// signature. Cheap enough to run on every announcement before any other work.
pub fn validate_header_alone(genesis: &Genesis, h: &Header, now_ms: u64) -> Result<(), BlockError> {
    slot_rules(genesis, h, now_ms)?;
    if !h.verify_signature() {
        return Err(BlockError::BadSignature);
    }
    Ok(())
}

fn slot_rules(genesis: &Genesis, h: &Header, now_ms: u64) -> Result<(), BlockError> {
    let starts = genesis.slot_start(h.slot);
    if starts != Some(h.timestamp_ms) {
        return Err(BlockError::BadTimestamp {
            slot: h.slot,
            expected: starts.unwrap_or(u64::MAX),
            got: h.timestamp_ms,
        });
    }
    if h.timestamp_ms > now_ms.saturating_add(MAX_CLOCK_DRIFT_MS) {
        return Err(BlockError::FromTheFuture {
            slot: h.slot,
            starts_ms: h.timestamp_ms,
            now_ms,
        });
    }
    let expected = genesis.producer_for(h.slot);
    if &h.producer != expected {
        return Err(BlockError::WrongProducer {
            slot: h.slot,
            expected: *expected,
            got: h.producer,
        });
    }
    Ok(())
}

/// Body rules that need no state: limits and the tx root.
pub fn validate_body(genesis: &Genesis, b: &Block) -> Result<(), BlockError> {
    let max = genesis.limits.max_block_txs;
    if b.txs.len() > max as usize {
        return Err(BlockError::TooManyTxs {
            count: b.txs.len(),
            max,
        });
    }
    let size = wire::encode_block(b).len();
    if size as u64 > genesis.limits.max_block_bytes {
        return Err(BlockError::TooLarge {
            size,
            max: genesis.limits.max_block_bytes,
        });
    }
    let computed = Block::tx_root(&b.txs);
    if computed != b.header.tx_root {
        return Err(BlockError::BadTxRoot {
            header: b.header.tx_root,
            computed,
        });
    }
    Ok(())
}

/// Executes a block's transactions on the overlay and checks the resulting state root.
/// Returns the undo record. On error the overlay may hold partial changes: callers
/// discard it.
pub fn execute_block<R: AccountReader>(
    genesis: &Genesis,
    chain: &Hash,
    ov: &mut Overlay<'_, R>,
    b: &Block,
    sig: SigCheck,
) -> Result<Result<UndoRecord, BlockError>, R::Error> {
    let mut undo = UndoRecord::default();
    for (index, tx) in b.txs.iter().enumerate() {
        match apply_tx(
            ov,
            tx,
            chain,
            genesis.limits.min_fee,
            &b.header.producer,
            &mut undo,
            sig,
        ) {
            Ok(()) => {}
            Err(ApplyError::Store(e)) => return Err(e),
            Err(ApplyError::Tx(error)) => {
                return Ok(Err(BlockError::Tx {
                    index,
                    id: tx.id(),
                    error,
                }));
            }
        }
    }
    let computed = ov.hash().root();
    if computed != b.header.state_root {
        return Ok(Err(BlockError::BadStateRoot {
            header: b.header.state_root,
            computed,
        }));
    }
    Ok(Ok(undo))
}
