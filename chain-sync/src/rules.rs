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

/// Fewest signatures worth a thread of their own: below this a batch stays on the
/// calling thread, which matters when many nodes share a machine or the node is busy.
const MIN_CHUNK: usize = 256;
/// Most signatures per batch. Batch verification gets cheaper per signature up to about
/// a thousand (on the reference machine, one core: 46k/s in batches of 64, 58k/s of
/// 256, 63k/s of 1,024); beyond that a forged signature, which sends its whole batch
/// to one-by-one verification, costs too much.
const MAX_CHUNK: usize = 1024;

/// How to spread `n` signatures: threads, and signatures per batch (each thread's share,
/// so that every core gets one large batch rather than several small ones).
fn split(n: usize) -> (usize, usize) {
    let threads = cores().min(n.div_ceil(MIN_CHUNK)).max(1);
    (threads, n.div_ceil(threads).clamp(1, MAX_CHUNK))
}

/// Verifies every transaction signature of `blocks` (for the network whose genesis hash
/// is `chain`) in batches spread over the machine's cores. `false` if any is invalid: the
/// import then verifies one by one and names the culprit.
pub fn tx_signatures_valid(chain: &Hash, blocks: &[Block]) -> bool {
    let items: Vec<(&chainmesh_proto::Tx, Vec<u8>)> = blocks
        .iter()
        .flat_map(|b| &b.txs)
        .map(|t| (t, t.signing_bytes(chain)))
        .collect();
    if items.is_empty() {
        return true;
    }
    let check = |chunk: &[(&chainmesh_proto::Tx, Vec<u8>)]| {
        let v: Vec<_> = chunk
            .iter()
            .map(|(t, m)| (&t.from, m.as_slice(), &t.signature))
            .collect();
        chainmesh_proto::crypto::verify_batch(&v)
    };
    let (threads, chunk) = split(items.len());
    if threads <= 1 {
        return items.chunks(chunk).all(check);
    }
    let per_thread = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|part| s.spawn(move || part.chunks(chunk).all(check)))
            .collect();
        handles.into_iter().all(|h| h.join().unwrap_or(false))
    })
}

/// The cores to verify on, asked once: on Linux the answer reads cgroup files, which
/// cost more than verifying a small batch.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Verifies each transaction's signature, in batches over every core; a batch that fails
/// is verified one by one so that honest transactions next to a forged one still pass.
pub fn tx_signatures(chain: &Hash, txs: &[chainmesh_proto::Tx]) -> Vec<bool> {
    let check = |chunk: &[chainmesh_proto::Tx]| batch_of_txs(chain, chunk);
    let (threads, chunk) = split(txs.len());
    if threads <= 1 {
        return txs.chunks(chunk).flat_map(check).collect();
    }
    let per_thread = txs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = txs
            .chunks(per_thread)
            .map(|part| s.spawn(move || part.chunks(chunk).flat_map(check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .zip(txs.chunks(per_thread))
            .flat_map(|(h, part)| h.join().unwrap_or_else(|_| vec![false; part.len()]))
            .collect()
    })
}

/// [`tx_signatures`] on the calling thread, in the largest batches: for a caller that
/// runs several such jobs at once (one per core) rather than splitting each one, so
/// that no job waits for its slowest share.
pub fn tx_signatures_here(chain: &Hash, txs: &[chainmesh_proto::Tx]) -> Vec<bool> {
    txs.chunks(MAX_CHUNK)
        .flat_map(|c| batch_of_txs(chain, c))
        .collect()
}

/// One batch; one by one only if the batch fails, to tell the forged from the rest.
fn batch_of_txs(chain: &Hash, chunk: &[chainmesh_proto::Tx]) -> Vec<bool> {
    let msgs: Vec<Vec<u8>> = chunk.iter().map(|t| t.signing_bytes(chain)).collect();
    let items: Vec<_> = chunk
        .iter()
        .zip(&msgs)
        .map(|(t, m)| (&t.from, m.as_slice(), &t.signature))
        .collect();
    if chainmesh_proto::crypto::verify_batch(&items) {
        vec![true; chunk.len()]
    } else {
        items
            .iter()
            .map(|(k, m, s)| chainmesh_proto::crypto::verify(k, m, s))
            .collect()
    }
}

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
