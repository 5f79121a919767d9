//! Answers sync requests from the store (off the network task: sled reads block) and
//! the mempool (through the chain task).

use chainmesh_behaviours::sync::{Request, Response, ServeError};
use chainmesh_chain_sync::store::StoreReader;
use chainmesh_proto::limits::MAX_SYNC_RESPONSE_BYTES;
use tokio::sync::{mpsc, oneshot};

use crate::chain::Command;

/// Room left in a response frame for protobuf framing around the blocks.
const RESPONSE_BUDGET: usize = MAX_SYNC_RESPONSE_BYTES - 64 * 1024;

pub async fn serve(
    reader: StoreReader,
    chain: mpsc::Sender<Command>,
    req: Request,
    max_blocks: u32,
) -> Response {
    let unavailable = |e: String| Response::Error(ServeError::Unavailable(e));
    match req {
        Request::GetTxs { ids } => {
            let (reply, rx) = oneshot::channel();
            if chain.try_send(Command::PoolTxs { ids, reply }).is_err() {
                return unavailable("busy".into());
            }
            match rx.await {
                Ok((txs, missing)) => Response::Txs { txs, missing },
                Err(_) => unavailable("shutting down".into()),
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
