//! Signature verification ahead of import, so that it overlaps with download and with
//! the chain task's writes: the transaction signatures of every batch of synced blocks
//! are batch-verified on all cores as soon as the batch arrives; when the syncer hands
//! the blocks to import, the chain task skips what was verified. Such a job takes every
//! verification slot (it uses every core itself).

use std::collections::HashSet;

use chainmesh_chain_sync::rules::tx_signatures_valid;
use chainmesh_chain_sync::sync::ImportResult;
use chainmesh_proto::{Block, Hash};
use tokio::sync::oneshot;

use super::{Internal, Net};
use crate::chain::Command;

/// Most block hashes remembered as verified or being verified; beyond it (the syncer
/// threw batches away) they are forgotten, which only costs a second verification.
const MAX_TRACKED: usize = 32_768;

#[derive(Default)]
pub(super) struct VerifyAhead {
    verifying: HashSet<Hash>,
    verified: HashSet<Hash>,
    /// An import waiting for its blocks' verification to finish.
    held: Option<Vec<Block>>,
}

impl Net {
    /// Starts verifying a batch of synced blocks.
    pub(super) fn verify_ahead(&mut self, blocks: &[Block]) {
        if blocks.iter().all(|b| b.txs.is_empty()) {
            return;
        }
        let v = &mut self.verify;
        if v.verifying.len() + v.verified.len() > MAX_TRACKED {
            v.verifying.clear();
            v.verified.clear();
        }
        let hashes: Vec<Hash> = blocks.iter().map(Block::hash).collect();
        v.verifying.extend(hashes.iter().copied());
        let blocks = blocks.to_vec();
        let (chain, slots, internal) = (
            self.genesis_hash,
            self.verify_slots.clone(),
            self.internal_tx.clone(),
        );
        tokio::spawn(async move {
            let all = chainmesh_chain_sync::rules::cores() as u32;
            let ok = match slots.acquire_many_owned(all).await {
                Ok(_permit) => {
                    tokio::task::spawn_blocking(move || tx_signatures_valid(&chain, &blocks))
                        .await
                        .unwrap_or(false)
                }
                Err(_) => false,
            };
            let _ = internal.send(Internal::Verified { hashes, ok }).await;
        });
    }

    pub(super) fn on_verified(&mut self, hashes: Vec<Hash>, ok: bool) {
        for h in hashes {
            if self.verify.verifying.remove(&h) && ok {
                self.verify.verified.insert(h);
            }
        }
        let ready = self
            .verify
            .held
            .as_ref()
            .is_some_and(|b| !b.iter().any(|b| self.verify.verifying.contains(&b.hash())));
        if ready && let Some(blocks) = self.verify.held.take() {
            self.import_synced(blocks);
        }
    }

    /// The syncer's next blocks to import: sent once their verification is done.
    pub(super) fn import_when_verified(&mut self, blocks: Vec<Block>) {
        if blocks
            .iter()
            .any(|b| self.verify.verifying.contains(&b.hash()))
        {
            self.verify.held = Some(blocks);
        } else {
            self.import_synced(blocks);
        }
    }

    fn import_synced(&mut self, blocks: Vec<Block>) {
        // Not `all`: every block's entry must go, verified or not.
        let sigs_verified = blocks
            .iter()
            .map(|b| b.txs.is_empty() || self.verify.verified.remove(&b.hash()))
            .fold(true, |a, b| a & b);
        let (chain, tx) = (self.chain.clone(), self.import_tx.clone());
        tokio::spawn(async move {
            let (reply, rx) = oneshot::channel();
            let cmd = Command::ImportBlocks {
                blocks,
                sigs_verified,
                announce: false,
                reply,
            };
            let stopped = || ImportResult::Failed {
                hash: Hash::ZERO,
                invalid: false,
                reason: "chain task stopped".into(),
            };
            let result = match chain.send(cmd).await {
                Ok(()) => rx.await.unwrap_or_else(|_| stopped()),
                Err(_) => stopped(),
            };
            let _ = tx.send(result).await;
        });
    }
}
