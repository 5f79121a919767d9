//! Hostile peers, as in-process libp2p swarms speaking to a real `chainmesh` process:
//! a peer that lies over the real sync protocol, and one that sends oversized, truncated
//! and garbage frames on every protocol of ours.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chainmesh_behaviours::status::{ChainStatus, PROTOCOL_VERSION};
use chainmesh_behaviours::sync::{Request, Response};
use chainmesh_behaviours::{status, sync};
use chainmesh_chain_sync::Store;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, Swarm, identity, noise, tcp, yamux};

use crate::chains::{TestNet, copy_dir};
use crate::common::Node;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn attacker<B: NetworkBehaviour>(b: impl FnOnce(&identity::Keypair) -> B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(b)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

#[derive(NetworkBehaviour)]
struct Liar {
    status: status::Behaviour,
    sync: sync::Behaviour,
}

/// Serves real headers and blocks of a copy of the chain, every signature broken, and
/// claims a tip far ahead so that it is the peer asked first.
#[test]
fn a_peer_serving_bad_signatures_is_banned_and_sync_completes_from_an_honest_one() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("liartest", 2_000);
    let honest_home = net.node_home(&root.path().join("honest"));
    net.build_chain(&honest_home, 1_000, 1);
    let liar_db = root.path().join("liar-db");
    copy_dir(&honest_home.join("data/db"), &liar_db);
    let store = Store::open(&liar_db, &net.genesis).unwrap();
    let reader = store.reader();
    let real_tip = store.tip().clone();

    let honest = Node::start_run(&honest_home, &[]);
    let claim = ChainStatus {
        version: PROTOCOL_VERSION,
        genesis: net.genesis.hash(),
        network_id: "liartest".into(),
        best_height: real_tip.height + 1_000,
        best_hash: chainmesh_proto::Hash::digest(b"made up"),
        cumulative_weight: u128::from(real_tip.height + 1_000),
        agent: "liar/1".into(),
        limits: vec![],
    };
    // The liar runs on a thread of its own; this thread watches the node over HTTP.
    let stop = Arc::new(AtomicBool::new(false));
    let lies = Arc::new(AtomicUsize::new(0));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let liar_thread = {
        let (stop, lies) = (stop.clone(), lies.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut liar = attacker(|_| Liar {
                    status: status::new("liartest", Duration::from_secs(10), Default::default()),
                    sync: sync::new("liartest", Duration::from_secs(10), Default::default()),
                });
                liar.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(ev) =
                        tokio::time::timeout(Duration::from_millis(100), liar.select_next_some())
                            .await
                    else {
                        continue;
                    };
                    let ev = match ev {
                        SwarmEvent::NewListenAddr { address, .. } => {
                            let _ = addr_tx.send(format!("{address}/p2p/{}", liar.local_peer_id()));
                            continue;
                        }
                        SwarmEvent::Behaviour(ev) => ev,
                        _ => continue,
                    };
                    match ev {
                        LiarEvent::Status(request_response::Event::Message {
                            message: request_response::Message::Request { channel, .. },
                            ..
                        }) => {
                            let _ = liar
                                .behaviour_mut()
                                .status
                                .send_response(channel, claim.to_pb());
                        }
                        LiarEvent::Sync(request_response::Event::Message {
                            message:
                                request_response::Message::Request {
                                    request: Ok(request),
                                    channel,
                                    ..
                                },
                            ..
                        }) => {
                            let resp = match Request::from_pb(request) {
                                Ok(Request::GetHeaders { locator, max }) => {
                                    let mut hs = reader.headers_after(&locator, max).unwrap();
                                    hs.iter_mut().for_each(|h| h.signature.0[7] ^= 0x10);
                                    Response::Headers(hs)
                                }
                                Ok(Request::GetBlocks { hashes }) => {
                                    let mut bs = reader.blocks_by_hash(&hashes, 4 << 20).unwrap();
                                    bs.iter_mut().for_each(|b| b.header.signature.0[7] ^= 0x10);
                                    Response::Blocks(bs)
                                }
                                _ => Response::Blocks(vec![]),
                            };
                            lies.fetch_add(1, Ordering::Relaxed);
                            let _ = liar
                                .behaviour_mut()
                                .sync
                                .send_response(channel, resp.to_pb());
                        }
                        _ => {}
                    }
                }
            })
        })
    };
    let liar_addr: String = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let liar_id = liar_addr.rsplit('/').next().unwrap().to_string();

    let dest_home = net.node_home(&root.path().join("dest"));
    let dest = Node::start_run(
        &dest_home,
        &[
            "--peer".into(),
            liar_addr.clone(),
            "--peer".into(),
            honest.p2p_addr(),
        ],
    );
    let target = honest.status()["tip"].clone();
    crate::common::wait_until(120, "sync from the honest peer", || {
        dest.status()["tip"] == target
    });
    stop.store(true, Ordering::Relaxed);
    liar_thread.join().unwrap();
    let lies = lies.load(Ordering::Relaxed);
    assert_eq!(
        dest.status()["tip"],
        target,
        "sync did not complete\n{}",
        dest.log_tail()
    );
    assert!(lies > 0, "the liar was never asked");
    // Its first lie is the last thing it is asked (requests already in flight aside).
    assert!(
        lies <= 3,
        "the liar answered {lies} requests before its ban"
    );
    let log = dest.log();
    assert!(
        log.lines()
            .any(|l| l.contains("banning peer") && l.contains(&liar_id)),
        "the liar was not banned:\n{}",
        dest.log_tail()
    );
    assert!(
        dest.peers()
            .iter()
            .all(|p| p["peer_id"] != liar_id.as_str())
    );
    eprintln!("liar answered {lies} request(s) before its ban");
}

/// Writes its request bytes as they are (no framing), reads whatever comes back.
#[derive(Clone, Default)]
struct Raw;

impl request_response::Codec for Raw {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("attacker serves nothing"))
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(64 * 1024).read_to_end(&mut v).await?;
        Ok(v)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Err(io::Error::other("attacker serves nothing"))
    }
}

#[derive(NetworkBehaviour)]
struct RawPair {
    status: request_response::Behaviour<Raw>,
    sync: request_response::Behaviour<Raw>,
}

fn raw(p: &StreamProtocol) -> request_response::Behaviour<Raw> {
    request_response::Behaviour::new(
        [(p.clone(), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
    )
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// The bad frames: announced far over the cap, cut short, endless varint, valid length
/// with bytes that are no protobuf message, and nothing at all.
fn bad_frames() -> Vec<Vec<u8>> {
    let mut over = varint(512 * 1024 * 1024);
    over.extend([0xAB; 64]);
    let mut cut = varint(300);
    cut.extend([1u8; 40]);
    let mut garbage = varint(64);
    garbage.extend((0..64u8).map(|i| i.wrapping_mul(151).wrapping_add(7) | 0x80));
    vec![over, cut, vec![0xff; 16], garbage, vec![]]
}

#[test]
fn garbage_frames_close_the_connection_and_memory_stays_flat() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("garbagetest", 100);
    let home = net.node_home(&root.path().join("n"));
    net.build_chain(&home, 20, 1);
    let mut node = Node::start_run(&home, &[]);
    let addr: Multiaddr = node.p2p_addr().parse().unwrap();
    let protocols = ["status", "sync"]
        .map(|p| StreamProtocol::try_from_owned(format!("/chainmesh/garbagetest/{p}/1")).unwrap());
    let frames = bad_frames();
    let rt = runtime();

    const TARGET_FRAMES: usize = 3_000;
    const PER_CONNECTION: usize = 20;
    let (mut sent, mut connections, mut closed_by_node) = (0usize, 0usize, 0usize);
    let mut rss_warm = None;
    let started = Instant::now();
    while sent < TARGET_FRAMES && started.elapsed() < Duration::from_secs(120) {
        let mut s = rt.block_on(async {
            attacker(|_| RawPair {
                status: raw(&protocols[0]),
                sync: raw(&protocols[1]),
            })
        });
        let peer_id = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        });
        let closed = rt.block_on(async {
            s.dial(addr.clone()).unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut pending = 0usize;
            let mut established = false;
            loop {
                let ev = match tokio::time::timeout_at(deadline, s.select_next_some()).await {
                    Ok(ev) => ev,
                    Err(_) => return false,
                };
                match ev {
                    SwarmEvent::ConnectionEstablished { .. } if !established => {
                        established = true;
                        let target = peer_id.unwrap();
                        for i in 0..PER_CONNECTION {
                            let f = frames[(i / 2 + connections) % frames.len()].clone();
                            if i % 2 == 0 {
                                s.behaviour_mut().status.send_request(&target, f);
                            } else {
                                s.behaviour_mut().sync.send_request(&target, f);
                            }
                            pending += 1;
                        }
                    }
                    SwarmEvent::ConnectionClosed {
                        num_established: 0, ..
                    } => return true,
                    SwarmEvent::OutgoingConnectionError { .. } => return false,
                    SwarmEvent::Behaviour(
                        RawPairEvent::Status(
                            request_response::Event::Message { .. }
                            | request_response::Event::OutboundFailure { .. },
                        )
                        | RawPairEvent::Sync(
                            request_response::Event::Message { .. }
                            | request_response::Event::OutboundFailure { .. },
                        ),
                    ) => {
                        pending = pending.saturating_sub(1);
                        if pending == 0 && established {
                            // Everything answered or failed; give the node a moment to
                            // close on us.
                            if let Ok(Some(SwarmEvent::ConnectionClosed {
                                num_established: 0,
                                ..
                            })) = tokio::time::timeout(Duration::from_secs(2), s.next()).await
                            {
                                return true;
                            }
                            return false;
                        }
                    }
                    _ => {}
                }
            }
        });
        connections += 1;
        sent += PER_CONNECTION;
        closed_by_node += usize::from(closed);
        if connections == 10 {
            rss_warm = Some(node.rss_kib());
        }
    }
    assert!(node.is_running(), "node died:\n{}", node.log_tail());
    let status = node.status();
    assert!(status["height"].as_u64().unwrap() >= 20);
    let rss_end = node.rss_kib();
    let rss_warm = rss_warm.unwrap();
    let bans = node.log().matches("banning peer").count()
        + node
            .log()
            .matches("disconnecting a misbehaving peer")
            .count();
    eprintln!(
        "garbage: {sent} frames over {connections} connections in {:.1} s; {closed_by_node} closed by the node; {bans} disconnects/bans logged; RSS {rss_warm} KiB after 10 connections -> {rss_end} KiB",
        started.elapsed().as_secs_f64()
    );
    assert!(
        sent >= TARGET_FRAMES,
        "only {sent} frames sent in the time bound"
    );
    assert!(
        closed_by_node * 10 >= connections * 9,
        "node closed {closed_by_node} of {connections} connections"
    );
    assert!(
        rss_end < rss_warm + 30 * 1024,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    node.kill9();
}
