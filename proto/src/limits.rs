//! Size bounds. Every decoder checks its bound before it allocates.

/// Encoded protobuf size of one transaction is ~150 bytes; anything far above is garbage.
pub const MAX_TX_BYTES: usize = 512;
/// Largest encoded block a node accepts, wherever it comes from.
pub const MAX_BLOCK_BYTES: usize = 4 * 1024 * 1024;
/// Largest status message.
pub const MAX_STATUS_BYTES: usize = 1024;
/// Largest sync response (a batch of blocks or headers).
pub const MAX_SYNC_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Largest sync request (a locator of at most 64 hashes, or 512 tx ids).
pub const MAX_SYNC_REQUEST_BYTES: usize = 64 * 1024;
/// Most headers one GetHeaders may ask for.
pub const MAX_HEADERS_PER_REQUEST: u32 = 512;
/// Largest compact block announcement: a header and 8 bytes per transaction
/// (`max_block_txs` is capped so that this holds).
pub const MAX_COMPACT_BLOCK_BYTES: usize = 128 * 1024;
/// Most transaction ids in one compact block.
pub const MAX_COMPACT_TX_IDS: usize = 15_000;
/// Most entries one pool permit may ask for.
pub const MAX_POOL_ENTRIES: u32 = 1024;
/// Largest pool permit and pool answer.
pub const MAX_POOL_PERMIT_BYTES: usize = 64;
pub const MAX_POOL_ENTRIES_BYTES: usize = 64 * 1024;
/// Most peer records in one pex answer, and addresses per record.
pub const MAX_PEX_PEERS: u32 = 64;
pub const MAX_PEX_ADDRS: usize = 8;
/// Largest pex request and answer.
pub const MAX_PEX_REQUEST_BYTES: usize = 16;
pub const MAX_PEX_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest admission request and answer (a nonce, a counter, a short reason).
pub const MAX_ADMISSION_BYTES: usize = 256;
