//! The store: block import into sled against sled's own batch write rate for values of
//! the same size (measured in the same run), and the time to reopen a long chain.
//!
//! Import takes blocks that were built and signed beforehand and feeds them to a fresh
//! store as sync does (`Store::extend`, runs of 64, signatures already verified: their
//! cost is the verify benchmark's), flushing at the end. What it writes beyond the
//! blocks (accounts, undo records, indexes) is the store's overhead. The reopen measures
//! a chain of empty blocks (their number is what the open depends on).

use std::path::Path;
use std::time::Instant;

use chainmesh_chain_sync::Store;
use chainmesh_chain_sync::state::SigCheck;
use chainmesh_proto::{Block, Header, Signature, wire};
use serde::Serialize;

use crate::{Workload, build_chain, calibrate_sled, net, now_ms};

#[derive(Serialize, Clone)]
pub struct StoreResult {
    pub blocks: u64,
    pub txs_per_block: u64,
    pub mb: f64,
    pub import_seconds: f64,
    pub import_mb_s: f64,
    pub import_blocks_s: f64,
    /// sled `apply_batch` with values of the average block's size, same run.
    pub sled_mb_s: f64,
    pub ratio: f64,
    pub reopen_blocks: u64,
    pub reopen_ms: f64,
}

/// Runs of this many blocks per `extend`, as the node's chain task writes synced runs.
const RUN: usize = 64;

pub fn bench_store(import_blocks: u64, reopen_blocks: u64) -> anyhow::Result<StoreResult> {
    let root = tempfile::tempdir()?;
    let w = Workload {
        name: "store import",
        blocks: import_blocks,
        txs_per_block: 100,
        peers: &[],
    };
    let n = net(import_blocks.max(reopen_blocks));
    let src = root.path().join("src");
    let bytes = build_chain(&n, &src, &w)?;
    let blocks: Vec<Block> = {
        let s = Store::open(&src, &n.genesis)?;
        let r = s.reader();
        (1..=import_blocks)
            .map(|h| {
                r.block_at(h)?
                    .ok_or_else(|| anyhow::anyhow!("block {h} missing from the source"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let encoded: u64 = blocks
        .iter()
        .map(|b| wire::encode_block(b).len() as u64)
        .sum();
    debug_assert_eq!(encoded, bytes);
    let mut dest = Store::open(&root.path().join("dest"), &n.genesis)?;
    let t = Instant::now();
    for run in blocks.chunks(RUN) {
        let (done, err) = dest.extend(run, now_ms(), SigCheck::AlreadyVerified)?;
        if let Some(e) = err {
            anyhow::bail!("import stopped at block {}: {e}", done + 1);
        }
        anyhow::ensure!(done == run.len(), "a run did not extend the tip");
    }
    dest.flush()?;
    let secs = t.elapsed().as_secs_f64();
    drop(dest);
    let avg = (encoded / import_blocks.max(1)) as usize;
    let sled_mb_s = calibrate_sled(avg.max(64), (encoded as usize).max(64 << 20))?;
    let import_mb_s = encoded as f64 / 1e6 / secs;
    let (reopen_blocks, reopen_ms) = reopen(root.path(), reopen_blocks)?;
    Ok(StoreResult {
        blocks: import_blocks,
        txs_per_block: w.txs_per_block,
        mb: encoded as f64 / 1e6,
        import_seconds: secs,
        import_mb_s,
        import_blocks_s: import_blocks as f64 / secs,
        sled_mb_s,
        ratio: import_mb_s / sled_mb_s,
        reopen_blocks,
        reopen_ms,
    })
}

/// Builds a chain of `blocks` empty blocks, closes it, and times the open.
fn reopen(root: &Path, blocks: u64) -> anyhow::Result<(u64, f64)> {
    let n = net(blocks);
    let db = root.join("long");
    let t = Instant::now();
    build_empty_chain(&n, &db, blocks)?;
    eprintln!(
        "  built {blocks} blocks for the reopen in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let s = Store::open(&db, &n.genesis)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        s.tip().height == blocks,
        "reopened at height {}, not {blocks}",
        s.tip().height
    );
    Ok((blocks, ms))
}

/// Blocks per `extend` while building the long chain.
const BUILD_RUN: usize = 1_024;

/// A chain of empty blocks, one per slot, imported in long runs: the store's reopen
/// depends on how many blocks it holds, and building a million one at a time (a sled
/// transaction each, as `build_chain` does) took eight minutes of the full suite.
fn build_empty_chain(n: &crate::Net, db: &Path, blocks: u64) -> anyhow::Result<()> {
    let mut store = Store::open(db, &n.genesis)?;
    // An empty block leaves the state as it is: the first block's state root is every
    // block's.
    let first = store.build_block(&n.authority, 1, Vec::new())?.block;
    let state_root = first.header.state_root;
    let tx_root = Block::tx_root(&[]);
    let mut parent = store.tip().hash;
    let mut run = Vec::with_capacity(BUILD_RUN);
    for height in 1..=blocks {
        let mut header = Header {
            parent,
            height,
            slot: height,
            timestamp_ms: n
                .genesis
                .slot_start(height)
                .ok_or_else(|| anyhow::anyhow!("slot {height} is out of range"))?,
            tx_root,
            state_root,
            producer: n.authority.public(),
            signature: Signature::ZERO,
        };
        header.sign(&n.authority);
        let block = Block {
            header,
            txs: Vec::new(),
        };
        parent = block.hash();
        run.push(block);
        if run.len() == BUILD_RUN || height == blocks {
            let (done, err) = store.extend(&run, now_ms(), SigCheck::AlreadyVerified)?;
            if let Some(e) = err {
                anyhow::bail!("building the long chain stopped: {e}");
            }
            anyhow::ensure!(done == run.len(), "a run did not extend the tip");
            run.clear();
        }
    }
    store.flush()?;
    Ok(())
}
