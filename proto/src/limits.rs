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
