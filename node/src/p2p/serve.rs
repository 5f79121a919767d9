//! Answers sync requests from the store and the mempool, off the network task (sled
//! reads block, and the pool's lock may be held by a new tip's pruning).

use chainmesh_behaviours::sync::{Request, Response, ServeError};
use chainmesh_chain_sync::store::StoreReader;
use chainmesh_proto::limits::MAX_SYNC_RESPONSE_BYTES;

use crate::pool::SharedPool;

/// Room left in a response frame for protobuf framing around the blocks.
const RESPONSE_BUDGET: usize = MAX_SYNC_RESPONSE_BYTES - 64 * 1024;

pub async fn serve(
    reader: StoreReader,
    pool: SharedPool,
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
                        Response::Blocks(
                            reader.blocks_by_hash(&hashes, RESPONSE_BUDGET).map_err(e)?,
                        )
                    }
                    Request::GetBlockRange { from, count } => Response::Blocks(
                        reader
                            .block_range(from, count.min(max_blocks), RESPONSE_BUDGET)
                            .map_err(e)?,
                    ),
                    Request::GetBlockTxs { block, indexes } => {
                        match reader.block(&block).map_err(e)? {
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
