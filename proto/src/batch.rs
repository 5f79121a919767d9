//! Transaction signatures checked in batches spread over the machine's cores: what block
//! import, gossip, the API, pulled pool answers and the pool's reopening share.

use crate::{Block, Hash, Tx};

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
    let items: Vec<(&Tx, Vec<u8>)> = blocks
        .iter()
        .flat_map(|b| &b.txs)
        .map(|t| (t, t.signing_bytes(chain)))
        .collect();
    if items.is_empty() {
        return true;
    }
    let check = |chunk: &[(&Tx, Vec<u8>)]| {
        let v: Vec<_> = chunk
            .iter()
            .map(|(t, m)| (&t.from, m.as_slice(), &t.signature))
            .collect();
        crate::crypto::verify_batch(&v)
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
pub fn tx_signatures(chain: &Hash, txs: &[Tx]) -> Vec<bool> {
    let check = |chunk: &[Tx]| batch_of_txs(chain, chunk);
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
pub fn tx_signatures_here(chain: &Hash, txs: &[Tx]) -> Vec<bool> {
    txs.chunks(MAX_CHUNK)
        .flat_map(|c| batch_of_txs(chain, c))
        .collect()
}

/// One batch; one by one only if the batch fails, to tell the forged from the rest.
fn batch_of_txs(chain: &Hash, chunk: &[Tx]) -> Vec<bool> {
    let msgs: Vec<Vec<u8>> = chunk.iter().map(|t| t.signing_bytes(chain)).collect();
    let items: Vec<_> = chunk
        .iter()
        .zip(&msgs)
        .map(|(t, m)| (&t.from, m.as_slice(), &t.signature))
        .collect();
    if crate::crypto::verify_batch(&items) {
        vec![true; chunk.len()]
    } else {
        items
            .iter()
            .map(|(k, m, s)| crate::crypto::verify(k, m, s))
            .collect()
    }
}
