//! The Mina profile's transport: what makes a connection to the libp2p layer of Mina's
//! nodes possible at all. A private network (pnet) whose pre-shared key is derived from
//! the chain id sits between TCP and Noise; the muxers are offered under Mina's names,
//! yamux first (OpenMina registers only yamux) and mplex second (the Go helper of the
//! OCaml node registers only mplex). Kademlia runs under `/coda/kad/1.0.0`.
//!
//! `SwarmBuilder::with_tcp` cannot insert pnet, so the transport is built by hand.

use std::iter;
use std::time::Duration;

use blake2::Digest;
use blake2::digest::consts::U32;
use chainmesh_behaviours::mina::gossip as mina_gossip;
use chainmesh_behaviours::mina::peer_exchange;
use chainmesh_behaviours::peers::Fault;
use futures::future::BoxFuture;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport};
use libp2p::core::upgrade::SelectUpgrade;
use libp2p::core::upgrade::{
    InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo, Version,
};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{PeerId, StreamProtocol, identity, noise, tcp, yamux};

pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/coda/kad/1.0.0");
pub const YAMUX_PROTOCOL: &str = "/coda/yamux/1.0.0";
pub const MPLEX_PROTOCOL: &str = "/coda/mplex/1.0.0";

/// A chain id as Mina writes it: 64 lowercase hex digits.
pub fn parse_chain_id(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(format!("a Mina chain id is 64 hex digits, got {s:?}"))
    }
}

/// The network's pre-shared key: BLAKE2b-256 (unkeyed) of `/coda/0.0.1/<chain id hex>`.
pub fn psk(chain_id_hex: &str) -> [u8; 32] {
    let mut h = blake2::Blake2b::<U32>::new();
    h.update(b"/coda/0.0.1/");
    h.update(chain_id_hex.as_bytes());
    h.finalize().into()
}

/// Upstream yamux, announced under Mina's protocol name.
#[derive(Clone, Default)]
pub struct CodaYamux(yamux::Config);

impl UpgradeInfo for CodaYamux {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once(YAMUX_PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for CodaYamux
where
    yamux::Config: InboundConnectionUpgrade<C, Info = &'static str>,
{
    type Output = <yamux::Config as InboundConnectionUpgrade<C>>::Output;
    type Error = <yamux::Config as InboundConnectionUpgrade<C>>::Error;
    type Future = <yamux::Config as InboundConnectionUpgrade<C>>::Future;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(io, "/yamux/1.0.0")
    }
}

impl<C> OutboundConnectionUpgrade<C> for CodaYamux
where
    yamux::Config: OutboundConnectionUpgrade<C, Info = &'static str>,
{
    type Output = <yamux::Config as OutboundConnectionUpgrade<C>>::Output;
    type Error = <yamux::Config as OutboundConnectionUpgrade<C>>::Error;
    type Future = <yamux::Config as OutboundConnectionUpgrade<C>>::Future;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(io, "/yamux/1.0.0")
    }
}

/// TCP → pnet → Noise → `/coda/yamux/1.0.0` or `/coda/mplex/1.0.0`.
pub fn transport(
    key: &identity::Keypair,
    psk_bytes: [u8; 32],
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let pnet = PnetConfig::new(PreSharedKey::new(psk_bytes));
    let mut mplex = libp2p_mplex::Config::new();
    mplex.set_protocol_name(MPLEX_PROTOCOL);
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| -> BoxFuture<'static, _> {
                Box::pin(pnet.handshake(socket))
            })
            .upgrade(Version::V1)
            .authenticate(noise::Config::new(key)?)
            .multiplex(SelectUpgrade::new(
                super::muxer::Watched(CodaYamux::default()),
                mplex,
            ))
            .timeout(Duration::from_secs(20))
            .boxed(),
    )
}

impl super::Net {
    /// A message on a Mina topic: frame-checked and counted, never forwarded, since we
    /// cannot validate Mina's blocks, transactions or snark work.
    pub(super) fn on_mina_message(
        &mut self,
        source: PeerId,
        id: libp2p::gossipsub::MessageId,
        message: &libp2p::gossipsub::Message,
    ) {
        use libp2p::gossipsub::MessageAcceptance;
        let acceptance = match mina_gossip::check_frame(&message.data) {
            Ok(len) => {
                self.stats.mina_gossip_received += 1;
                self.stats.mina_last_message_id = hex::encode(&id.0);
                tracing::debug!(topic = %message.topic, bytes = len, from = %source, "Mina gossip received (not forwarded: not validated)");
                MessageAcceptance::Ignore
            }
            Err(why) => {
                self.stats.mina_gossip_rejected += 1;
                self.fault(
                    source,
                    Fault::InvalidMessage,
                    format!("Mina gossip on {}: {why}", message.topic),
                );
                MessageAcceptance::Reject
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(&id, &source, acceptance);
    }

    /// Publishes a body on a Mina topic, framed; returns the message id (hex).
    pub(super) fn publish_mina(&mut self, topic: &str, body: &[u8]) -> Result<String, String> {
        if !mina_gossip::TOPICS.contains(&topic) {
            return Err(format!(
                "not a Mina topic: {topic:?} (one of {:?})",
                mina_gossip::TOPICS
            ));
        }
        if self.cfg.profile != crate::config::Profile::Mina {
            return Err("the node does not run the mina profile".into());
        }
        let data = mina_gossip::frame(body);
        let id = mina_gossip::message_id(topic, &data);
        self.swarm
            .behaviour_mut()
            .gossip
            .publish(libp2p::gossipsub::IdentTopic::new(topic), data)
            .map_err(|e| e.to_string())?;
        self.stats.mina_gossip_published += 1;
        Ok(hex::encode(&id.0))
    }

    /// A peer that speaks `/mina/peer-exchange`: ask it for peers while below target.
    pub(super) fn mina_px_ask(&mut self, peer: PeerId) {
        if self.peer_count() < self.cfg.target_peers as usize
            && let Some(px) = self.swarm.behaviour_mut().mina_px.as_mut()
        {
            px.send_request(&peer, ());
        }
    }

    pub(super) fn on_mina_px_event(&mut self, ev: peer_exchange::Event) {
        use libp2p::request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message: Message::Request { channel, .. },
                ..
            } => {
                // Peers we dialled and reached, as Go's AddrInfo.
                let list: Vec<peer_exchange::AddrInfo> = self
                    .book
                    .records(64, |p| *p == peer)
                    .into_iter()
                    .map(|r| peer_exchange::AddrInfo {
                        id: r.peer.to_string(),
                        addrs: r.addrs.iter().map(ToString::to_string).collect(),
                    })
                    .collect();
                self.stats.mina_px_served += 1;
                if let Some(px) = self.swarm.behaviour_mut().mina_px.as_mut() {
                    let _ = px.send_response(channel, list);
                }
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => {
                let now = crate::chain::now_ms();
                let me = *self.swarm.local_peer_id();
                for info in response
                    .into_iter()
                    .take(chainmesh_proto::limits::MAX_PEX_PEERS as usize)
                {
                    let Ok(id) = info.id.parse::<PeerId>() else {
                        self.fault(
                            peer,
                            Fault::BadData,
                            format!("peer exchange: bad peer id {:?}", info.id),
                        );
                        return;
                    };
                    let addrs: Vec<libp2p::Multiaddr> = info
                        .addrs
                        .iter()
                        .filter_map(|a| a.parse().ok())
                        .take(chainmesh_proto::limits::MAX_PEX_ADDRS)
                        .collect();
                    if id != me && !addrs.is_empty() {
                        self.stats.mina_px_received += 1;
                        self.book.learn(
                            chainmesh_behaviours::pex::PeerRecord {
                                peer: id,
                                addrs,
                                last_seen_ms: now,
                            },
                            now,
                        );
                    }
                }
                self.dial_known();
            }
            Event::OutboundFailure { peer, error, .. } => {
                self.on_outbound_failure(peer, "mina peer exchange", &error)
            }
            Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(peer, "mina peer exchange", &error)
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_devnet_chain_id_gives_minas_psk() {
        let id = "29936104443aaf264a7f0192ac64b1c7173198c1ed404c1bcff5e562e05eb7f6";
        let k: String = psk(id).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            k,
            "45818b1ab9bc781268800a92ee9f1155d4c779861924d99354c7cba83cb9d874"
        );
        // Another chain, another network.
        let other = id.replace('2', "3");
        assert_ne!(psk(&other), psk(id));
    }

    #[test]
    fn chain_ids_are_64_hex_digits() {
        let id = "29936104443AAF264A7F0192AC64B1C7173198C1ED404C1BCFF5E562E05EB7F6";
        assert_eq!(parse_chain_id(id).unwrap(), id.to_ascii_lowercase());
        assert!(parse_chain_id("29936104").is_err());
        assert!(parse_chain_id(&"g".repeat(64)).is_err());
    }
}
