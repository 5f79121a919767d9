//! Gossip payloads as domain types: each topic carries exactly one kind, decoded with its
//! size bound checked first.

use chainmesh_proto::wire::{self, WireError};
use chainmesh_proto::{CompactBlock, Tx};
use libp2p::gossipsub::TopicHash;

use super::{block_topic, tx_topic};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipMessage {
    Tx(Tx),
    Block(CompactBlock),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message on a topic we do not serve: {0}")]
    UnknownTopic(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Decodes a payload by its topic.
pub fn decode(
    network_id: &str,
    topic: &TopicHash,
    data: &[u8],
) -> Result<GossipMessage, DecodeError> {
    if *topic == tx_topic(network_id).hash() {
        Ok(GossipMessage::Tx(wire::decode_tx(data)?))
    } else if *topic == block_topic(network_id).hash() {
        Ok(GossipMessage::Block(wire::decode_compact_block(data)?))
    } else {
        Err(DecodeError::UnknownTopic(topic.to_string()))
    }
}
