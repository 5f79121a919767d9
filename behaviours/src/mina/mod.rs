//! What the Mina profile adds on top of the transport (which the node builds): Mina's
//! gossip topics, message ids and payload framing ([`gossip`]), and `/mina/peer-exchange`
//! ([`peer_exchange`]).

pub mod gossip;
pub mod peer_exchange;
