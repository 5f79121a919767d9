//! Wire and domain types shared by every chainmesh crate.
//!
//! - [`types`]: hashes, keys, transactions, headers, blocks and their canonical encoding
//!   (what hashes and signatures commit to).
//! - [`crypto`]: ed25519 key handling.
//! - [`batch`]: transaction signatures verified in batches on every core.
//! - [`wire`]: the prost-generated protobuf messages and conversions to the domain types,
//!   refusing anything malformed.
//! - [`codec`]: unsigned-varint length-prefixed framing with a maximum checked before any
//!   allocation.
//! - [`limits`]: every size bound in one place.

pub mod batch;
pub mod codec;
pub mod crypto;
pub mod limits;
pub mod types;
pub mod wire;

pub use crypto::Keypair;
pub use types::{
    Account, Address, Block, CompactBlock, Hash, Header, PublicKey, Signature, Tx, TxError,
    short_id,
};

/// Generated protobuf messages, nested as their protobuf packages so that cross-file
/// references (`chainmesh.chain.v1.Block` inside `net.proto`) resolve.
pub mod pb {
    pub mod chainmesh {
        pub mod chain {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/chainmesh.chain.v1.rs"));
            }
        }
        pub mod net {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/chainmesh.net.v1.rs"));
            }
        }
    }
}

/// Chain messages (`schemas/chain.proto`).
pub use pb::chainmesh::chain::v1 as pb_chain;
/// Peer-to-peer messages (`schemas/net.proto`).
pub use pb::chainmesh::net::v1 as pb_net;
