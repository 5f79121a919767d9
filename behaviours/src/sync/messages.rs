//! Sync requests and responses as domain types. Conversion from protobuf refuses
//! anything over the per-request counts, so a handler never sees an oversized list.

use chainmesh_proto::limits::MAX_HEADERS_PER_REQUEST;
use chainmesh_proto::pb_net::{self, get_blocks, sync_error::Code, sync_request, sync_response};
use chainmesh_proto::wire::{WireError, hash_field};
use chainmesh_proto::{Block, Hash, Header, Tx};

/// Most hashes in a block locator (exponential spacing reaches 2^60 heights with 64).
pub const MAX_LOCATOR: usize = 64;
pub const MAX_BLOCKS_PER_REQUEST: u32 = 512;
pub const MAX_TXS_PER_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Canonical headers after the highest locator hash the server knows.
    GetHeaders {
        locator: Vec<Hash>,
        max: u32,
    },
    /// Canonical blocks `from..from+count`.
    GetBlockRange {
        from: u64,
        count: u32,
    },
    /// Blocks by hash, in the order asked; unknown ones are skipped.
    GetBlocks {
        hashes: Vec<Hash>,
    },
    GetTxs {
        ids: Vec<Hash>,
    },
    /// Transactions of a block by position (completing a compact block).
    GetBlockTxs {
        block: Hash,
        indexes: Vec<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeError {
    BadRequest(String),
    RateLimited(String),
    Unavailable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Headers(Vec<Header>),
    Blocks(Vec<Block>),
    Txs { txs: Vec<Tx>, missing: Vec<Hash> },
    Error(ServeError),
}

fn too_many(field: &'static str, got: usize, max: usize) -> WireError {
    WireError::BadLength {
        field,
        expected: max,
        got,
    }
}

fn hashes(field: &'static str, v: Vec<Vec<u8>>, max: usize) -> Result<Vec<Hash>, WireError> {
    if v.len() > max {
        return Err(too_many(field, v.len(), max));
    }
    v.iter().map(|h| hash_field(field, h)).collect()
}

impl Request {
    pub fn to_pb(&self) -> pb_net::SyncRequest {
        let request = match self {
            Request::GetHeaders { locator, max } => {
                sync_request::Request::GetHeaders(pb_net::GetHeaders {
                    locator: locator.iter().map(|h| h.0.to_vec()).collect(),
                    max: *max,
                })
            }
            Request::GetBlockRange { from, count } => {
                sync_request::Request::GetBlocks(pb_net::GetBlocks {
                    by: Some(get_blocks::By::Range(pb_net::BlockRange {
                        from: *from,
                        count: *count,
                    })),
                })
            }
            Request::GetBlocks { hashes } => sync_request::Request::GetBlocks(pb_net::GetBlocks {
                by: Some(get_blocks::By::Hashes(pb_net::BlockHashes {
                    hashes: hashes.iter().map(|h| h.0.to_vec()).collect(),
                })),
            }),
            Request::GetTxs { ids } => sync_request::Request::GetTxs(pb_net::GetTxs {
                ids: ids.iter().map(|h| h.0.to_vec()).collect(),
            }),
            Request::GetBlockTxs { block, indexes } => {
                sync_request::Request::GetBlockTxs(pb_net::GetBlockTxs {
                    block: block.0.to_vec(),
                    indexes: indexes.clone(),
                })
            }
        };
        pb_net::SyncRequest {
            request: Some(request),
        }
    }

    pub fn from_pb(r: pb_net::SyncRequest) -> Result<Request, WireError> {
        match r
            .request
            .ok_or(WireError::Missing("sync_request.request"))?
        {
            sync_request::Request::GetHeaders(g) => Ok(Request::GetHeaders {
                locator: hashes("get_headers.locator", g.locator, MAX_LOCATOR)?,
                max: g.max.min(MAX_HEADERS_PER_REQUEST),
            }),
            sync_request::Request::GetBlocks(g) => {
                match g.by.ok_or(WireError::Missing("get_blocks.by"))? {
                    get_blocks::By::Range(r) => Ok(Request::GetBlockRange {
                        from: r.from,
                        count: r.count.min(MAX_BLOCKS_PER_REQUEST),
                    }),
                    get_blocks::By::Hashes(h) => Ok(Request::GetBlocks {
                        hashes: hashes(
                            "get_blocks.hashes",
                            h.hashes,
                            MAX_BLOCKS_PER_REQUEST as usize,
                        )?,
                    }),
                }
            }
            sync_request::Request::GetTxs(g) => Ok(Request::GetTxs {
                ids: hashes("get_txs.ids", g.ids, MAX_TXS_PER_REQUEST)?,
            }),
            sync_request::Request::GetBlockTxs(g) => {
                if g.indexes.len() > MAX_TXS_PER_REQUEST {
                    return Err(too_many(
                        "get_block_txs.indexes",
                        g.indexes.len(),
                        MAX_TXS_PER_REQUEST,
                    ));
                }
                Ok(Request::GetBlockTxs {
                    block: hash_field("get_block_txs.block", &g.block)?,
                    indexes: g.indexes,
                })
            }
        }
    }

    /// How many items the request asks for (what rate limits count).
    pub fn items(&self) -> u32 {
        match self {
            Request::GetHeaders { max, .. } => max.div_ceil(64).max(1),
            Request::GetBlockRange { count, .. } => *count,
            Request::GetBlocks { hashes } => hashes.len() as u32,
            Request::GetTxs { ids } => (ids.len() as u32).div_ceil(64).max(1),
            Request::GetBlockTxs { indexes, .. } => (indexes.len() as u32).div_ceil(64).max(1),
        }
    }
}

impl Response {
    pub fn to_pb(&self) -> pb_net::SyncResponse {
        let response = match self {
            Response::Headers(h) => sync_response::Response::Headers(pb_net::Headers {
                headers: h.iter().map(Into::into).collect(),
            }),
            Response::Blocks(b) => sync_response::Response::Blocks(pb_net::Blocks {
                blocks: b.iter().map(Into::into).collect(),
            }),
            Response::Txs { txs, missing } => sync_response::Response::Txs(pb_net::Txs {
                txs: txs.iter().map(Into::into).collect(),
                missing: missing.iter().map(|h| h.0.to_vec()).collect(),
            }),
            Response::Error(e) => {
                let (code, message) = match e {
                    ServeError::BadRequest(m) => (Code::BadRequest, m),
                    ServeError::RateLimited(m) => (Code::RateLimited, m),
                    ServeError::Unavailable(m) => (Code::Unavailable, m),
                };
                sync_response::Response::Error(pb_net::SyncError {
                    code: code as i32,
                    message: message.clone(),
                })
            }
        };
        pb_net::SyncResponse {
            response: Some(response),
        }
    }

    pub fn from_pb(r: pb_net::SyncResponse) -> Result<Response, WireError> {
        match r
            .response
            .ok_or(WireError::Missing("sync_response.response"))?
        {
            sync_response::Response::Headers(h) => {
                if h.headers.len() > MAX_HEADERS_PER_REQUEST as usize {
                    return Err(too_many(
                        "headers",
                        h.headers.len(),
                        MAX_HEADERS_PER_REQUEST as usize,
                    ));
                }
                Ok(Response::Headers(
                    h.headers
                        .into_iter()
                        .map(Header::try_from)
                        .collect::<Result<_, _>>()?,
                ))
            }
            sync_response::Response::Blocks(b) => {
                if b.blocks.len() > MAX_BLOCKS_PER_REQUEST as usize {
                    return Err(too_many(
                        "blocks",
                        b.blocks.len(),
                        MAX_BLOCKS_PER_REQUEST as usize,
                    ));
                }
                Ok(Response::Blocks(
                    b.blocks
                        .into_iter()
                        .map(Block::try_from)
                        .collect::<Result<_, _>>()?,
                ))
            }
            sync_response::Response::Txs(t) => {
                if t.txs.len() > MAX_TXS_PER_REQUEST {
                    return Err(too_many("txs", t.txs.len(), MAX_TXS_PER_REQUEST));
                }
                Ok(Response::Txs {
                    txs: t
                        .txs
                        .into_iter()
                        .map(Tx::try_from)
                        .collect::<Result<_, _>>()?,
                    missing: hashes("txs.missing", t.missing, MAX_TXS_PER_REQUEST)?,
                })
            }
            sync_response::Response::Error(e) => {
                let m: String = e.message.chars().take(256).collect();
                Ok(Response::Error(match Code::try_from(e.code) {
                    Ok(Code::RateLimited) => ServeError::RateLimited(m),
                    Ok(Code::Unavailable) => ServeError::Unavailable(m),
                    _ => ServeError::BadRequest(m),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_are_capped() {
        for r in [
            Request::GetHeaders {
                locator: vec![Hash::digest(b"a")],
                max: 100,
            },
            Request::GetBlockRange { from: 5, count: 10 },
            Request::GetBlocks {
                hashes: vec![Hash::digest(b"b")],
            },
            Request::GetTxs { ids: vec![] },
        ] {
            assert_eq!(Request::from_pb(r.to_pb()).unwrap(), r);
        }
        let r = Request::GetHeaders {
            locator: vec![],
            max: 100_000,
        };
        assert_eq!(
            Request::from_pb(r.to_pb()).unwrap(),
            Request::GetHeaders {
                locator: vec![],
                max: MAX_HEADERS_PER_REQUEST
            }
        );
        let r = Request::GetBlocks {
            hashes: vec![Hash::ZERO; 600],
        };
        assert!(Request::from_pb(r.to_pb()).is_err());
        assert!(Request::from_pb(pb_net::SyncRequest { request: None }).is_err());
        let e = Response::Error(ServeError::RateLimited("slow down".into()));
        assert_eq!(Response::from_pb(e.to_pb()).unwrap(), e);
    }
}
