//! Answers sync requests from the store and the mempool, off the network task (sled
//! reads block, and the pool's lock may be held by a new tip's pruning).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chainmesh_behaviours::sync::{Request, Response, ServeError};
use chainmesh_chain_sync::store::StoreReader;
use chainmesh_proto::limits::MAX_SYNC_RESPONSE_BYTES;
use chainmesh_proto::{Block, Hash};

use crate::pool::SharedPool;

/// Room left in a response frame for protobuf framing around the blocks.
const RESPONSE_BUDGET: usize = MAX_SYNC_RESPONSE_BYTES - 64 * 1024;

/// Most blocks held here at once: the compact relay rebuilds at most 32 at a time.
const MAX_RELAYING: usize = 64;

/// Blocks forwarded by gossip whose import has not finished: the peers we forwarded
/// them to ask us for their missing transactions (or the whole block) meanwhile, and
/// the store does not have them yet.
#[derive(Clone, Default)]
pub struct Relaying(Arc<Mutex<HashMap<Hash, Arc<Block>>>>);

impl Relaying {
    /// Holds `block` until [`Relaying::remove`]; refused (not served early) when full.
    pub fn insert(&self, hash: Hash, block: Arc<Block>) {
        if let Ok(mut m) = self.0.lock()
            && m.len() < MAX_RELAYING
        {
            m.insert(hash, block);
        }
    }

    pub fn remove(&self, hash: &Hash) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(hash);
        }
    }

    fn get(&self, hash: &Hash) -> Option<Arc<Block>> {
        self.0.lock().ok()?.get(hash).cloned()
    }
}

pub async fn serve(
    reader: StoreReader,
    pool: SharedPool,
    relaying: Relaying,
    req: Request,
    max_blocks: u32,
) -> Response {
    let unavailable = |e: String| Response::Error(ServeError::Unavailable(e));
    match req {
        Request::GetTxs { ids } => {
            let found = pool.read(move |p| {
                let (mut txs, mut missing) = (Vec::new(), Vec::new());
                for id in ids {
                    match p.get(&id) {
                        Some(t) => txs.push(t.clone()),
                        None => missing.push(id),
                    }
                }
                (txs, missing)
            });
            match found.await {
                Some((txs, missing)) => Response::Txs { txs, missing },
                None => unavailable("shutting down".into()),
            }
        }
        req => {
            let r = tokio::task::spawn_blocking(move || -> Result<Response, String> {
                let e = |e: chainmesh_chain_sync::StoreError| e.to_string();
                Ok(match req {
                    Request::GetHeaders { locator, max } => {
                        Response::Headers(reader.headers_after(&locator, max).map_err(e)?)
                    }
                    Request::GetBlocks { hashes } => {
                        let hashes: Vec<_> = hashes.into_iter().take(max_blocks as usize).collect();
                        let mut blocks =
                            reader.blocks_by_hash(&hashes, RESPONSE_BUDGET).map_err(e)?;
                        // The compact relay's fallback asks for the one block it was
                        // announced, which may still be importing here.
                        if let ([h], true) = (&hashes[..], blocks.is_empty())
                            && let Some(b) = relaying.get(h)
                        {
                            blocks.push(Block::clone(&b));
                        }
                        Response::Blocks(blocks)
                    }
                    Request::GetBlockRange { from, count } => Response::Blocks(
                        reader
                            .block_range(from, count.min(max_blocks), RESPONSE_BUDGET)
                            .map_err(e)?,
                    ),
                    Request::GetBlockTxs { block, indexes } => {
                        let found = match reader.block(&block).map_err(e)? {
                            Some(b) => Some(Arc::new(b)),
                            None => relaying.get(&block),
                        };
                        match found {
                            Some(b) => Response::Txs {
                                txs: indexes
                                    .iter()
                                    .filter_map(|i| b.txs.get(*i as usize).cloned())
                                    .collect(),
                                missing: Vec::new(),
                            },
                            None => Response::Error(ServeError::Unavailable(format!(
                                "block {block} is unknown here"
                            ))),
                        }
                    }
                    Request::GetTxs { .. } => {
                        Response::Error(ServeError::BadRequest("unreachable".into()))
                    }
                })
            })
            .await;
            match r {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => unavailable(e),
                Err(e) => unavailable(e.to_string()),
            }
        }
    }
}
