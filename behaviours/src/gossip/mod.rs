//! Gossip of transactions and compact blocks over gossipsub (v1.1 scoring; v1.2's
//! IDONTWANT with peers that speak it).
//!
//! - Topics: `chainmesh/<net>/tx/1` (one encoded transaction) and
//!   `chainmesh/<net>/block/1` (one compact block: header and tx ids).
//! - Message id: blake3 of the payload, so the same transaction published by two nodes is
//!   one message, and a replay is recognised whoever signs it.
//! - Strict signing and `validate_messages`: gossipsub forwards nothing until the node
//!   has validated it and reported Accept; Reject counts against the sender (P4).
//! - Sizes: a whole RPC is capped at the largest compact block plus room for control
//!   messages; each topic is capped at its own payload's bound.
//!
//! Scoring (see [`score_params`]) follows the gossipsub v1.1 paper's evaluation and
//! Lighthouse's choices: invalid messages (P4) weigh heavily and quadratically, first
//! deliveries (P2) earn a little; the application score (our own per-peer score of faults
//! on every protocol) carries weight 1. Mesh delivery deficits (P3) are off for
//! transactions, whose traffic is bursty (a quiet pool would punish honest peers), and on
//! for blocks only where [`delivery`] can tell a censor from an honest peer: many
//! producers, blocks arriving.

pub mod delivery;
mod messages;

use std::time::Duration;

use chainmesh_proto::limits::{MAX_COMPACT_BLOCK_BYTES, MAX_TX_BYTES};
use libp2p::gossipsub::{
    self, IdentTopic, MessageAuthenticity, MessageId, PeerScoreParams, PeerScoreThresholds,
    TopicScoreParams, ValidationMode,
};
use libp2p::identity::Keypair;

pub use delivery::{BlockSources, DeliveryGate};
pub use messages::{GossipMessage, decode};

pub type Behaviour = gossipsub::Behaviour;
pub type Event = gossipsub::Event;

/// Room for the protobuf envelope of one message (signature, key, seqno, topic) and for
/// control messages piggybacked on the same RPC.
const ENVELOPE: usize = 16 * 1024;

/// Message ids per IHAVE or IWANT we send. gossipsub's own default (5,000 ids, ~170 KB)
/// is far above the 16 KiB that the same version accepts: under load a node's IHAVE to a
/// peer outside its mesh was refused, the peer closed its side of the stream without the
/// sender learning it, and the sender's queue to that peer filled: the peer heard no more
/// gossip from anyone (seen in ten-node devnets at 200 tx/s). 400 ids of 32 bytes, each
/// with its field header, stay under 16 KiB with the topic name.
const MAX_CONTROL_IDS: usize = 400;
/// The most peers a mesh of ours takes before it refuses inbound GRAFTs (see
/// [`config`]).
const MESH_N_HIGH: usize = 32;
/// The control bytes we accept in one RPC: enough for a peer on gossipsub's defaults
/// (5,000 ids per IHAVE), still bounded.
const MAX_CONTROL_BYTES: usize = 256 * 1024;

pub fn tx_topic(network_id: &str) -> IdentTopic {
    IdentTopic::new(format!("chainmesh/{network_id}/tx/1"))
}

pub fn block_topic(network_id: &str) -> IdentTopic {
    IdentTopic::new(format!("chainmesh/{network_id}/block/1"))
}

/// blake3 of the payload.
pub fn message_id(data: &[u8]) -> MessageId {
    MessageId::from(blake3::hash(data).as_bytes().to_vec())
}

/// Our gossipsub configuration; fails only on inconsistent constants. In the Mina
/// profile (`mina`), message ids, the RPC size cap and the heartbeat are Mina's (see
/// [`crate::mina::gossip`]); our own topics keep their per-topic caps and meshes.
pub fn config(network_id: &str, mina: bool) -> Result<gossipsub::Config, String> {
    let mut b = gossipsub::ConfigBuilder::default();
    if mina {
        b.message_id_fn(|m: &gossipsub::Message| {
            crate::mina::gossip::message_id(m.topic.as_str(), &m.data)
        })
        .max_transmit_size(crate::mina::gossip::MAX_TRANSMIT)
        .heartbeat_interval(Duration::from_secs(1));
    } else {
        b.message_id_fn(|m: &gossipsub::Message| message_id(&m.data))
            .max_transmit_size(MAX_COMPACT_BLOCK_BYTES + ENVELOPE)
            .heartbeat_interval(Duration::from_millis(700));
    }
    b.validation_mode(ValidationMode::Strict)
        .validate_messages()
        .max_control_messages_sent(MAX_CONTROL_IDS)
        .max_control_message_size(MAX_CONTROL_BYTES)
        .max_transmit_size_for_topic(MAX_TX_BYTES + ENVELOPE, tx_topic(network_id).hash())
        .max_transmit_size_for_topic(
            MAX_COMPACT_BLOCK_BYTES + ENVELOPE,
            block_topic(network_id).hash(),
        )
        // A block must be judged within the history window to be forwarded: 5 heartbeats.
        .history_length(6)
        .duplicate_cache_time(Duration::from_secs(120))
        // IDONTWANT (gossipsub v1.2) for every message of ours, transactions included: a
        // node announces "I have it" to its mesh on receipt, before its own validation,
        // so on a sparse mesh most duplicate copies are never sent. 40 bytes of control
        // against a ~300-byte transaction envelope.
        .idontwant_message_size_threshold(128)
        // Transactions travel a thinner mesh than blocks: pool sync carries what the
        // thinner mesh misses, and every extra mesh link is another copy of every
        // transaction.
        .mesh_n_for_topic(2, tx_topic(network_id).hash())
        .mesh_n_low_for_topic(1, tx_topic(network_id).hash())
        .mesh_outbound_min_for_topic(1, tx_topic(network_id).hash())
        // A mesh refuses GRAFTs from inbound peers once it holds `mesh_n_high`, and the
        // refused peer backs off for a minute: peers that join every mesh at once (and
        // never forward) would fill small meshes and shut honest inbound peers out until
        // their mesh-delivery penalty prunes them. The cap leaves room for them all, and
        // mesh sizes stay near twice `mesh_n` anyway (our grafts plus our peers').
        .mesh_n_high_for_topic(MESH_N_HIGH, tx_topic(network_id).hash())
        .mesh_n_high_for_topic(MESH_N_HIGH, block_topic(network_id).hash())
        .idontwant_on_publish(true)
        .build()
        .map_err(|e| e.to_string())
}

/// At or below this gossip score a peer's messages are ignored; the node also counts it
/// as a fault each second the peer stays connected (a graylisted peer only costs us).
pub const GRAYLIST_THRESHOLD: f64 = -80.0;

const IP_COLOCATION_WEIGHT: f64 = -5.0;
const IP_COLOCATION_THRESHOLD: f64 = 64.0;

/// The share of a peer's gossip score that comes from sharing its IP address with
/// `peers_at_ip` peer ids (gossipsub's P6, counted over every connection, whatever its
/// protocols). It says nothing of the peer's own behaviour: whoever opens many
/// connections from an address drags every peer behind it below the graylist, so the
/// node must not turn it into faults and bans.
pub fn colocation_penalty(peers_at_ip: usize) -> f64 {
    let surplus = peers_at_ip as f64 - IP_COLOCATION_THRESHOLD;
    if surplus > 0.0 {
        surplus * surplus * IP_COLOCATION_WEIGHT
    } else {
        0.0
    }
}

/// The transaction topic's scoring.
fn tx_score_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 0.5,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 100.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // One invalid transaction: -10 * 1² * 0.5 = -5; four: -80, graylisted.
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.5,
        ..TopicScoreParams::default()
    }
}

/// The block topic's scoring without mesh-delivery scoring, which
/// [`delivery::with_mesh_deliveries`] adds while [`DeliveryGate`] says so.
pub fn block_score_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_cap: 20.0,
        // An invalid block is signed garbage or a lie: one is enough to graylist.
        invalid_message_deliveries_weight: -100.0,
        ..tx_score_params()
    }
}

/// Peer scoring: thresholds and per-topic parameters (documented in the module header).
pub fn score_params(network_id: &str) -> (PeerScoreParams, PeerScoreThresholds) {
    let mut p = PeerScoreParams {
        app_specific_weight: 1.0,
        // Every test and devnet runs many nodes on one address: colocation must not
        // count against them. Operators on the public internet keep the default check
        // through `ip_colocation_factor_threshold` below.
        ip_colocation_factor_weight: IP_COLOCATION_WEIGHT,
        ip_colocation_factor_threshold: IP_COLOCATION_THRESHOLD,
        ..PeerScoreParams::default()
    };
    p.topics
        .insert(tx_topic(network_id).hash(), tx_score_params());
    p.topics
        .insert(block_topic(network_id).hash(), block_score_params());
    let t = PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -40.0,
        graylist_threshold: GRAYLIST_THRESHOLD,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 3.0,
    };
    (p, t)
}

/// A gossipsub behaviour with our configuration and scoring, signing with `key`.
pub fn new(key: &Keypair, network_id: &str) -> Result<Behaviour, String> {
    new_for(key, network_id, false)
}

/// As [`new`]; `mina` for the Mina profile's settings.
pub fn new_for(key: &Keypair, network_id: &str, mina: bool) -> Result<Behaviour, String> {
    let mut b = gossipsub::Behaviour::new(
        MessageAuthenticity::Signed(key.clone()),
        config(network_id, mina)?,
    )
    .map_err(str::to_string)?;
    let (params, thresholds) = score_params(network_id);
    b.with_peer_score(params, thresholds)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_and_scores_are_valid() {
        assert!(config("devnet", false).is_ok());
        assert!(config("devnet", true).is_ok());
        let (p, t) = score_params("devnet");
        p.validate().unwrap();
        t.validate().unwrap();
        let key = Keypair::generate_ed25519();
        assert!(new(&key, "devnet").is_ok());
        assert_eq!(tx_topic("devnet").to_string(), "chainmesh/devnet/tx/1");
        assert_eq!(message_id(b"x"), message_id(b"x"));
        assert_ne!(message_id(b"x"), message_id(b"y"));
    }

    /// What rust-libp2p's gossipsub (0.50) accepts by default as the control part of one
    /// RPC before it drops the whole stream; peers on defaults hold every sender to it.
    const DEFAULT_PEER_CONTROL_BYTES: usize = 16 * 1024;

    #[test]
    fn our_control_messages_fit_what_default_peers_accept_and_theirs_fit_ours() {
        // An IHAVE: topic field, then per id a field header (tag, length) and 32 bytes.
        let topic = format!("chainmesh/{}/block/1", "a".repeat(32));
        let ihave = |ids: usize| 2 + topic.len() + ids * (2 + 32) + 8;
        assert!(ihave(MAX_CONTROL_IDS) <= DEFAULT_PEER_CONTROL_BYTES);
        assert!(ihave(5_000) <= MAX_CONTROL_BYTES);
        let c = config("devnet", false).unwrap();
        assert_eq!(c.max_control_messages_sent(), MAX_CONTROL_IDS);
        assert_eq!(c.max_control_message_size(), MAX_CONTROL_BYTES);
    }
}
