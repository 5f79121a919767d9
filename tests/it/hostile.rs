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

/// As [`attacker`], dialling from `source` (a 127.0.0.x address of its own): a host of
/// its own, as the node sees it.
pub fn attacker_from<B: NetworkBehaviour>(
    source: std::net::Ipv4Addr,
    b: impl FnOnce(&identity::Keypair) -> B,
) -> Swarm<B> {
    use libp2p::core::Transport as _;
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            DialFrom(source)
                .upgrade(libp2p::core::upgrade::Version::V1)
                .authenticate(noise::Config::new(key).unwrap())
                .multiplex(yamux::Config::default())
        })
        .unwrap()
        .with_behaviour(|k| b(k))
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
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
pub struct Raw;

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

pub fn raw(p: &StreamProtocol) -> request_response::Behaviour<Raw> {
    request_response::Behaviour::new(
        [(p.clone(), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
    )
}

pub fn varint(mut v: u64) -> Vec<u8> {
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

/// Starts a node of `net` in `dir` whose log also carries gossipsub's debug lines.
fn node_with_gossip_debug(net: &TestNet, dir: &std::path::Path) -> Node {
    let home = net.node_home(dir);
    let args: Vec<String> = [
        "--log-level",
        "info,libp2p_gossipsub::behaviour=debug",
        "run",
        "--config",
    ]
    .into_iter()
    .map(String::from)
    .chain([home.join("config.toml").display().to_string()])
    .collect();
    Node::start(&home, &home.join("data"), &args)
}

/// A protobuf length-delimited field.
pub fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(varint(bytes.len() as u64));
    v.extend_from_slice(bytes);
    v
}

/// One gossipsub RPC frame: a PRUNE of `topic` with `backoff` seconds (gossipsub's
/// rpc.proto: RPC.control = 3; ControlMessage.prune = 4; ControlPrune.topic_id = 1,
/// .backoff = 3). The node stores the backoff of every PRUNE of a topic it is subscribed
/// to, mesh member or not. No GRAFT: grafting back during a backoff is penalised, and a
/// graylisted peer's RPCs are no longer read, which this test is not about.
fn prune(topic: &str, backoff: u64) -> Vec<u8> {
    let mut prune = field(0x0a, topic.as_bytes());
    prune.push(0x18);
    prune.extend(varint(backoff));
    let rpc = field(0x1a, &field(0x22, &prune));
    [varint(rpc.len() as u64), rpc].concat()
}

/// GHSA-gc42-3jg7-rxr2 and GHSA-xqmp-fxgv-xvq5 (gossipsub < 0.49.4 panicked on a PRUNE
/// whose backoff overflowed the clock): PRUNEs with backoffs of `u64::MAX` and near it,
/// on both of our topics, reach the node's gossipsub, which must handle every one and
/// go on.
#[test]
fn prune_with_huge_backoffs_is_handled_and_the_node_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("prunetest", 10);
    let mut node = node_with_gossip_debug(&net, &root.path().join("n"));
    let addr: Multiaddr = node.p2p_addr().parse().unwrap();
    let target = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .unwrap();
    let backoffs = [
        u64::MAX,
        u64::MAX - 1,
        u64::MAX / 2 + 1,
        u64::MAX / 1_000_000_000, // the largest whole seconds a nanosecond count can hold
        u64::MAX / 1_000_000_000 + 1,
        u32::MAX as u64 * 1_000,
    ];
    let topics = ["chainmesh/prunetest/tx/1", "chainmesh/prunetest/block/1"];
    let meshsub = StreamProtocol::new("/meshsub/1.1.0");
    let rt = runtime();
    let sent = topics.len() * backoffs.len();
    rt.block_on(async {
        let mut s = attacker(|_| RawPair {
            status: raw(&meshsub),
            sync: raw(&StreamProtocol::new("/meshsub/1.2.0")),
        });
        s.dial(addr.clone()).unwrap();
        let mut pending = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Ok(ev) = tokio::time::timeout_at(deadline, s.select_next_some()).await {
            match ev {
                SwarmEvent::ConnectionEstablished { .. } if pending == 0 => {
                    // One stream (gossipsub keeps one inbound stream per peer, a new one
                    // replaces the old), one RPC frame after the other.
                    let frames: Vec<u8> = topics
                        .iter()
                        .flat_map(|t| backoffs.map(|b| prune(t, b)))
                        .flatten()
                        .collect();
                    s.behaviour_mut().status.send_request(&target, frames);
                    pending += 1;
                }
                // The node never answers on a gossipsub stream: each request ends when
                // its stream is reset or times out; by then the RPC has been read.
                SwarmEvent::Behaviour(RawPairEvent::Status(
                    request_response::Event::OutboundFailure { .. }
                    | request_response::Event::Message { .. },
                )) => {
                    pending -= 1;
                    if pending == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let handled = loop {
        let handled = node.log().matches("Completed PRUNE handling").count();
        if handled >= sent || Instant::now() > deadline {
            break handled;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("prune: {handled} of {sent} PRUNEs with huge backoffs handled by the node");
    assert!(node.is_running(), "node died:\n{}", node.log_tail());
    assert!(!node.log().contains("panicked"), "{}", node.log_tail());
    assert_eq!(handled, sent, "PRUNEs handled\n{}", node.log_tail());
    assert_eq!(node.status()["height"].as_u64(), Some(0));
    node.kill9();
}

/// multistream-select 1.0 as the dialer, for one protocol: the header and the protocol
/// out, both echoed back (each a varint-length-prefixed line).
pub async fn select<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    protocol: &str,
) -> io::Result<()> {
    let line = |s: &str| {
        [
            varint(s.len() as u64 + 1),
            s.as_bytes().to_vec(),
            vec![b'\n'],
        ]
        .concat()
    };
    let header = "/multistream/1.0.0";
    io.write_all(&[line(header), line(protocol)].concat())
        .await?;
    io.flush().await?;
    for want in [header, protocol] {
        let mut len = [0u8; 1];
        io.read_exact(&mut len).await?;
        let mut got = vec![0u8; usize::from(len[0])];
        io.read_exact(&mut got).await?;
        if got != format!("{want}\n").as_bytes() {
            return Err(io::Error::other(format!("{protocol} refused: {got:?}")));
        }
    }
    Ok(())
}

/// A yamux frame header (version 0, big-endian): Data (type 0) with SYN (flag 1) opening
/// stream 1, announcing `len` bytes of body.
fn data_syn(len: u32) -> Vec<u8> {
    let mut h = vec![0u8, 0u8];
    h.extend(1u16.to_be_bytes());
    h.extend(1u32.to_be_bytes());
    h.extend(len.to_be_bytes());
    h
}

/// TCP to `addr` (no peer id), then Noise and `/yamux/1.0.0` negotiated by hand: what
/// follows is the caller's own yamux frames, not a muxer's. Within 10 s.
pub async fn yamux_by_hand(
    addr: &Multiaddr,
    key: &identity::Keypair,
) -> io::Result<libp2p::noise::Output<libp2p::tcp::tokio::TcpStream>> {
    use libp2p::Transport;
    use libp2p::core::Endpoint;
    use libp2p::core::transport::{DialOpts, PortUse};
    use libp2p::core::upgrade::OutboundConnectionUpgrade;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default())
        .dial(
            addr.clone(),
            DialOpts {
                role: Endpoint::Dialer,
                port_use: PortUse::New,
            },
        )
        .map_err(io::Error::other)?;
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut tcp = tcp.await?;
        select(&mut tcp, "/noise").await?;
        let (_, mut io) = noise::Config::new(key)
            .map_err(io::Error::other)?
            .upgrade_outbound(tcp, "/noise")
            .await
            .map_err(io::Error::other)?;
        select(&mut io, "/yamux/1.0.0").await?;
        io::Result::Ok(io)
    })
    .await?
}

/// GHSA-vxx9-2994-q338 (yamux < 0.13.10): a Data|SYN frame announcing far more than a
/// stream's receive window (256 KiB) must end the connection at once, without buffering
/// more than yamux's 1 MiB frame cap. 200 connections, each sending one such frame
/// (lengths up to 4 GiB − 1): every one closed within a second — at once over the cap;
/// within it after a GoAway, which the node follows with the close itself and scores
/// (`node/src/p2p/muxer.rs`) — and RSS flat.
#[test]
fn oversized_yamux_data_syn_frames_are_refused_at_once() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("yamuxtest", 10);
    let home = net.node_home(&root.path().join("n"));
    let mut node = Node::start_run(&home, &[]);
    let addr: Multiaddr = node
        .p2p_addr()
        .parse::<Multiaddr>()
        .unwrap()
        .into_iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    // Over yamux's 1 MiB frame cap (refused at the header), and within it but over a new
    // stream's 256 KiB window (refused once the body is read; the body is sent whole).
    const MIB: u32 = 1 << 20;
    let lengths = [
        u32::MAX,
        u32::MAX - 1,
        1 << 31,
        16 * MIB,
        MIB + 1,
        MIB,
        256 * 1024 + 1,
    ];
    const ATTEMPTS: usize = 200;
    let rt = runtime();
    let mut rss_after_warmup = 0;
    let mut took = Vec::new();
    let mut go_aways = 0;
    let malformed_before = node
        .metric("chainmesh_peer_faults_total", &[("fault", "malformed")])
        .unwrap_or(0.0) as usize;
    let started = Instant::now();
    for i in 0..ATTEMPTS {
        if started.elapsed() > Duration::from_secs(90) {
            break;
        }
        let key = identity::Keypair::generate_ed25519();
        let closed_in = rt.block_on(async {
            let mut io = yamux_by_hand(&addr, &key).await.expect("handshake");
            let sent_at = Instant::now();
            let len = lengths[i % lengths.len()];
            let body = if len <= MIB { len as usize } else { 64 * 1024 };
            let mut frame = data_syn(len);
            frame.extend(std::iter::repeat_n(0x5a, body));
            // The node may close while we write: that is the expected outcome too.
            let _ = io.write_all(&frame).await;
            let _ = io.flush().await;
            // Over the 1 MiB cap the node closes at once; within it, yamux answers with
            // a GoAway (protocol error), after which the node closes too (yamux alone
            // would wait for us to). Frames from the node are parsed to see the GoAway.
            let refused = async {
                let mut go_away = false;
                loop {
                    let mut h = [0u8; 12];
                    if io.read_exact(&mut h).await.is_err() {
                        return if go_away { "go away, closed" } else { "closed" };
                    }
                    let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as u64;
                    match h[1] {
                        3 => go_away = true,
                        0 => {
                            let mut body = (&mut io).take(len);
                            if futures::io::copy(&mut body, &mut futures::io::sink())
                                .await
                                .is_err()
                            {
                                return "closed";
                            }
                        }
                        _ => {}
                    }
                }
            };
            match tokio::time::timeout(Duration::from_secs(5), refused).await {
                Ok(how) => Some((sent_at.elapsed(), how)),
                Err(_) => None,
            }
        });
        let len = lengths[i % lengths.len()];
        match closed_in {
            Some((t, how)) => {
                assert!(
                    how == "closed" || len <= MIB,
                    "a {len}-byte frame was answered with a GoAway before the close"
                );
                go_aways += usize::from(how != "closed");
                took.push(t);
            }
            None => {
                eprintln!("yamux: frame of {len} bytes: neither refused nor closed 5 s later");
                took.push(Duration::MAX);
            }
        }
        if i == 20 {
            rss_after_warmup = node.rss_kib();
        }
    }
    let rss_end = node.rss_kib();
    took.sort();
    let n = took.len();
    let slowest = took[n - 1];
    eprintln!(
        "yamux: {n} oversized Data|SYN frames in {:.1} s; refused by the node in p50 {:?}, slowest {:?}; RSS {rss_after_warmup} KiB after 20 -> {rss_end} KiB",
        started.elapsed().as_secs_f64(),
        took[n / 2],
        slowest
    );
    // Each GoAway the node sent is a protocol error scored against the peer.
    let malformed = || {
        node.metric("chainmesh_peer_faults_total", &[("fault", "malformed")])
            .unwrap_or(0.0) as usize
    };
    // The fault is scored when the node's side of the connection ends, which can come a
    // moment after our side has seen the close: the last connections get a second.
    let mut scored = malformed() - malformed_before;
    let deadline = Instant::now() + Duration::from_secs(1);
    while scored < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        scored = malformed() - malformed_before;
    }
    eprintln!("yamux: {go_aways} GoAways before the close; {scored} malformed frames scored");
    assert!(node.is_running(), "node died:\n{}", node.log_tail());
    assert_eq!(n, ATTEMPTS, "only {n} attempts in the time bound");
    assert!(
        go_aways > 0,
        "no frame within the cap was answered with a GoAway"
    );
    assert!(
        scored >= n,
        "{scored} of {n} connections scored as malformed"
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "a connection went unrefused {slowest:?} after its oversized frame"
    );
    assert!(
        rss_end < rss_after_warmup + 10 * 1024,
        "RSS grew from {rss_after_warmup} KiB to {rss_end} KiB"
    );
    node.kill9();
}

/// TCP dials that leave from a chosen loopback address: libp2p's TCP transport lets the
/// kernel pick the source, which towards 127.0.0.1 is always 127.0.0.1.
pub struct DialFrom(pub std::net::Ipv4Addr);

impl libp2p::core::Transport for DialFrom {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = futures::future::Pending<io::Result<Self::Output>>;
    type Dial = futures::future::BoxFuture<'static, io::Result<Self::Output>>;

    fn listen_on(
        &mut self,
        _: libp2p::core::transport::ListenerId,
        a: Multiaddr,
    ) -> Result<(), libp2p::core::transport::TransportError<io::Error>> {
        Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(a))
    }

    fn remove_listener(&mut self, _: libp2p::core::transport::ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _: libp2p::core::transport::DialOpts,
    ) -> Result<Self::Dial, libp2p::core::transport::TransportError<io::Error>> {
        use libp2p::multiaddr::Protocol;
        let (mut ip, mut port) = (None, None);
        for p in addr.iter() {
            match p {
                Protocol::Ip4(a) => ip = Some(a),
                Protocol::Tcp(p) => port = Some(p),
                _ => {}
            }
        }
        let (Some(ip), Some(port)) = (ip, port) else {
            return Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(addr));
        };
        let source = self.0;
        Ok(Box::pin(async move {
            let s = tokio::net::TcpSocket::new_v4()?;
            s.bind((source, 0).into())?;
            Ok(libp2p::tcp::tokio::TcpStream(
                s.connect((ip, port).into()).await?,
            ))
        }))
    }

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::core::transport::TransportEvent<Self::ListenerUpgrade, io::Error>>
    {
        std::task::Poll::Pending
    }
}

/// Connects to `addr` from `source` (a 127.0.0.x address of its own) with a new peer id
/// and, once connected, sends `garbage` bad frames on `protocol`. Returns whether the
/// connection was established.
fn connect_from(
    rt: &tokio::runtime::Runtime,
    source: &str,
    addr: &Multiaddr,
    protocol: &StreamProtocol,
    garbage: usize,
) -> bool {
    rt.block_on(async {
        use libp2p::core::Transport as _;
        let from = DialFrom(source.parse().unwrap());
        let mut s = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| {
                from.upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(noise::Config::new(key).unwrap())
                    .multiplex(yamux::Config::default())
            })
            .unwrap()
            .with_behaviour(|_| RawPair {
                status: raw(protocol),
                sync: raw(protocol),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let target = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        });
        s.dial(addr.clone()).unwrap();
        let mut established = false;
        loop {
            let ev = match tokio::time::timeout_at(deadline, s.select_next_some()).await {
                Ok(ev) => ev,
                Err(_) => return established,
            };
            match ev {
                SwarmEvent::ConnectionEstablished { .. } if !established => {
                    established = true;
                    if garbage == 0 {
                        return true;
                    }
                    let frames = bad_frames();
                    for i in 0..garbage {
                        let f = frames[i % (frames.len() - 1)].clone();
                        s.behaviour_mut().sync.send_request(&target.unwrap(), f);
                    }
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } => return established,
                SwarmEvent::OutgoingConnectionError { .. } if !established => return false,
                _ => {}
            }
        }
    })
}

#[test]
fn several_banned_peer_ids_from_one_address_ban_the_address_until_it_expires() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("ipbantest", 100);
    let home = net.node_home_with(&root.path().join("n"), None, |c| {
        c.p2p.ban_secs = 30;
    });
    net.build_chain(&home, 5, 1);
    let mut node = Node::start_run(&home, &[]);
    let addr: Multiaddr = node.p2p_addr().parse().unwrap();
    let sync = StreamProtocol::try_from_owned("/chainmesh/ipbantest/sync/1".into()).unwrap();
    let rt = runtime();
    let (bad, good) = ("127.0.0.7", "127.0.0.8");

    // Peer ids from 127.0.0.7 send garbage until the node bans the address (three banned
    // peer ids by default); each costs 40 points a frame, a ban is at -90.
    let started = Instant::now();
    let mut identities = 0;
    while !node.log().contains("banning an address") && identities < 10 {
        connect_from(&rt, bad, &addr, &sync, 12);
        identities += 1;
    }
    let log = node.log();
    let peer_bans = log.matches("banning peer").count();
    assert!(
        log.contains("banning an address") && log.contains(bad),
        "no address ban after {identities} peer ids ({peer_bans} peer bans)\n{}",
        node.log_tail()
    );
    eprintln!(
        "ip ban: address banned after {identities} peer ids from {bad} ({peer_bans} peer bans) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let banned_at = Instant::now();
    // A new peer id from the banned address is refused before any handshake; one from
    // another address is not, nor is the exempt 127.0.0.1.
    assert!(
        !connect_from(&rt, bad, &addr, &sync, 0),
        "a banned address got in"
    );
    assert!(
        connect_from(&rt, good, &addr, &sync, 0),
        "another address was refused"
    );
    assert!(
        connect_from(&rt, "127.0.0.1", &addr, &sync, 0),
        "loopback was refused"
    );

    // The address ban survives a restart (it is kept with the peer bans).
    node.kill9();
    let _ = std::fs::remove_file(home.join("data/p2p.addrs"));
    let mut node = Node::start_run(&home, &[]);
    let addr: Multiaddr = node.p2p_addr().parse().unwrap();
    assert!(
        !connect_from(&rt, bad, &addr, &sync, 0),
        "the address ban was lost on restart"
    );
    assert!(connect_from(&rt, good, &addr, &sync, 0));

    // And it expires with the latest of its peer bans (30 s).
    let mut back = false;
    while !back && banned_at.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(2));
        back = connect_from(&rt, bad, &addr, &sync, 0);
    }
    assert!(back, "the address ban did not expire\n{}", node.log_tail());
    eprintln!(
        "ip ban: lifted {:.1} s after it began (ban_secs = 30)",
        banned_at.elapsed().as_secs_f64()
    );
    assert!(
        node.log().contains("address ban expired") || node.log().contains("address still banned")
    );
    node.kill9();
}

/// The spammer's side of the sync protocol: it frames requests as the node expects, and
/// reads each answer to its end without decoding it (an attacker spends no CPU on what it
/// asked for); only short answers, the refusals, are kept whole.
#[derive(Clone, Default)]
struct Skim;

/// A sync answer as the spammer sees it: its length, and the answer itself if short.
#[derive(Debug)]
struct Skimmed {
    len: usize,
    short: Option<chainmesh_proto::pb_net::SyncResponse>,
}

impl request_response::Codec for Skim {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Skimmed;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("the spammer serves nothing"))
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Skimmed> {
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            io.read_exact(&mut b).await?;
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 || shift > 28 {
                break;
            }
        }
        if len < 4096 {
            let mut v = vec![0; len];
            io.read_exact(&mut v).await?;
            let short = prost::Message::decode(v.as_slice()).ok();
            return Ok(Skimmed { len, short });
        }
        let got = futures::io::copy(io.take(len as u64), &mut futures::io::sink()).await?;
        Ok(Skimmed {
            len: got as usize,
            short: None,
        })
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&varint(req.len() as u64)).await?;
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Skimmed,
    ) -> io::Result<()> {
        Err(io::Error::other("the spammer serves nothing"))
    }
}

#[derive(NetworkBehaviour)]
struct Spammer {
    status: status::Behaviour,
    sync: request_response::Behaviour<Skim>,
    pool: chainmesh_behaviours::pool::Behaviour,
    pex: chainmesh_behaviours::pex::Behaviour,
}

#[derive(Debug, Default)]
struct SpamStats {
    identities: u64,
    refused_connections: u64,
    sync_sent: u64,
    sync_served: u64,
    sync_limited: u64,
    sync_failed: u64,
    pool_sent: u64,
    pool_answered: u64,
    pex_sent: u64,
    pex_answered: u64,
    /// How long the spam lasted, in seconds.
    secs: f64,
}

/// Peer after peer from one host, 127.0.0.2 (a new peer id each time the last one is cut
/// off), each giving a true
/// status as an honest newcomer would, asking `addr` for 500 sync requests a second (10
/// times the 50 it advertises), every tenth the same one again, and 10 pool permits and
/// 10 peer-exchange requests a second (10 times theirs).
fn spam(addr: Multiaddr, net: &str, claim: ChainStatus, stop: Arc<AtomicBool>) -> SpamStats {
    use chainmesh_behaviours::codec::WireMeter;
    use chainmesh_behaviours::sync::ServeError;
    use libp2p::request_response::{Event, Message};
    let target = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .unwrap();
    let mut st = SpamStats::default();
    runtime().block_on(async {
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed)
            && st.identities < 300
            && started.elapsed() < Duration::from_secs(120)
        {
            let t = Duration::from_secs(5);
            let mut s = attacker_from([127, 0, 0, 2].into(), |_| Spammer {
                status: status::new(net, t, Default::default()),
                sync: request_response::Behaviour::new(
                    [(
                        chainmesh_behaviours::codec::protocol_name(net, "sync", 1),
                        ProtocolSupport::Outbound,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(t)
                        .with_max_concurrent_streams(64),
                ),
                pool: chainmesh_behaviours::pool::new(net, t, WireMeter::default()),
                pex: chainmesh_behaviours::pex::new(net, t, WireMeter::default()),
            });
            st.identities += 1;
            s.dial(addr.clone()).unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let life = tokio::time::sleep(Duration::from_secs(20));
            tokio::pin!(life);
            let (mut connected, mut n) = (false, 0u64);
            loop {
                tokio::select! {
                    ev = s.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { .. } => connected = true,
                        SwarmEvent::ConnectionClosed { num_established: 0, .. } => break,
                        SwarmEvent::OutgoingConnectionError { .. } => {
                            st.refused_connections += 1;
                            break;
                        }
                        SwarmEvent::Behaviour(SpammerEvent::Sync(ev)) => match ev {
                            Event::Message { message: Message::Response { response, .. }, .. } => {
                                match response.short.map(Response::from_pb) {
                                    Some(Ok(Response::Error(ServeError::RateLimited(_)))) => st.sync_limited += 1,
                                    Some(Ok(Response::Error(_))) | Some(Err(_)) => st.sync_failed += 1,
                                    Some(Ok(_)) | None if response.len > 0 => st.sync_served += 1,
                                    _ => st.sync_failed += 1,
                                }
                            }
                            Event::OutboundFailure { .. } => st.sync_failed += 1,
                            _ => {}
                        },
                        SwarmEvent::Behaviour(SpammerEvent::Status(Event::Message {
                            message: Message::Request { channel, .. },
                            ..
                        })) => {
                            let _ = s.behaviour_mut().status.send_response(channel, claim.to_pb());
                        }
                        SwarmEvent::Behaviour(SpammerEvent::Pool(Event::Message { .. })) => st.pool_answered += 1,
                        SwarmEvent::Behaviour(SpammerEvent::Pex(Event::Message { .. })) => st.pex_answered += 1,
                        _ => {}
                    },
                    _ = tick.tick(), if connected => {
                        n += 1;
                        let req = if n % 10 == 0 {
                            Request::GetBlockRange { from: 1, count: 256 }
                        } else {
                            Request::GetBlockRange { from: 1 + (n * 7) % 1_500, count: 256 }
                        };
                        s.behaviour_mut().sync.send_request(&target, prost::Message::encode_to_vec(&req.to_pb()));
                        st.sync_sent += 1;
                        if n % 50 == 0 {
                            s.behaviour_mut().pex.send_request(&target, Ok(chainmesh_behaviours::pex::request(64)));
                            st.pex_sent += 1;
                        }
                        if n % 50 == 25 {
                            s.behaviour_mut().pool.send_request(&target, Ok(chainmesh_behaviours::pool::permit_to_pb(0, 256)));
                            st.pool_sent += 1;
                        }
                    }
                    _ = &mut life => break,
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        st.secs = started.elapsed().as_secs_f64();
    });
    st
}

/// Issue 9, item 7: requests above the advertised rates are refused (answered, not
/// queued), the same request repeated is penalised, spammers are banned, and an honest
/// node syncing meanwhile keeps its pace.
#[test]
fn request_spam_is_refused_and_honest_sync_keeps_its_pace() {
    const BLOCKS: u64 = 2_000;
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("spamsync", BLOCKS + 100);
    let src_home = net.node_home(&root.path().join("src"));
    net.build_chain(&src_home, BLOCKS, 2);
    let src = Node::start_run(&src_home, &[]);
    let src_addr = src.p2p_addr();
    let sync_from_src = |name: &str| {
        let home = net.node_home(&root.path().join(name));
        let started = Instant::now();
        let mut dest = Node::start_run(&home, &["--peer".into(), src_addr.clone()]);
        crate::common::wait_until(180, "the source's tip", || {
            dest.status()["height"].as_u64() == Some(BLOCKS)
        });
        let took = started.elapsed();
        dest.kill9();
        took
    };
    // Three syncs each way, compared by their medians: one sync takes about two seconds,
    // and on a shared machine one alone varies by a third.
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let unloaded = median((0..3).map(|i| sync_from_src(&format!("calm{i}"))).collect());
    let rss_before = src.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let spammer = {
        let (addr, stop) = (src_addr.parse().unwrap(), stop.clone());
        let claim = ChainStatus {
            version: PROTOCOL_VERSION,
            genesis: net.genesis.hash(),
            network_id: "spamsync".into(),
            best_height: 0,
            best_hash: net.genesis.hash(),
            cumulative_weight: 0,
            agent: "spammer/1".into(),
            limits: vec![],
        };
        std::thread::spawn(move || spam(addr, "spamsync", claim, stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    let loaded = median(
        (0..3)
            .map(|i| sync_from_src(&format!("loaded{i}")))
            .collect(),
    );
    stop.store(true, Ordering::Relaxed);
    let st = spammer.join().unwrap();
    let rss_after = src.rss_kib();
    let faults = |f: &str| {
        src.metric("chainmesh_peer_faults_total", &[("fault", f)])
            .unwrap_or(0.0)
    };
    let (rate_faults, repeat_faults) = (faults("rate_exceeded"), faults("repeated"));
    let bans = src.log().matches("banning peer").count();
    let ratio = unloaded.as_secs_f64() / loaded.as_secs_f64();
    eprintln!(
        "request spam: honest sync of {BLOCKS} blocks (median of 3) {:.2} s unloaded, {:.2} s under spam: {ratio:.2} of the unloaded pace; \
         spam {st:?}; at the source: {rate_faults} rate faults, {repeat_faults} repeat faults, {bans} bans logged, RSS {rss_before} -> {rss_after} KiB",
        unloaded.as_secs_f64(),
        loaded.as_secs_f64(),
    );
    assert!(
        st.identities >= 2 && st.sync_sent >= 500,
        "the spam did not get going: {st:?}"
    );
    // Answered or cut off, never queued: nothing beyond each peer id's budget (a burst
    // of 100, then 50 a second) was served.
    let budget = 100.0 * st.identities as f64 + 50.0 * st.secs;
    assert!(
        st.sync_served as f64 <= budget,
        "served beyond the budget of {budget:.0}: {st:?}"
    );
    assert!(
        st.sync_served < st.sync_sent,
        "everything was served: {st:?}"
    );
    assert!(
        rate_faults + repeat_faults >= st.identities as f64,
        "{rate_faults} rate and {repeat_faults} repeat faults for {st:?}"
    );
    assert!(repeat_faults > 0.0, "no repeat fault counted");
    let dropped = src
        .log()
        .matches("disconnecting a misbehaving peer")
        .count()
        + bans;
    assert!(
        dropped as u64 + 1 >= st.identities,
        "{dropped} spammers dropped of {st:?}"
    );
    // One host's ids are served one id's budget between them: the first id's faults
    // mark its address, and what the next ones ask is refused at once.
    assert!(
        st.sync_served <= 150,
        "{} requests of one host served: {st:?}",
        st.sync_served
    );
    // The bar is 0.9 (the figures are in docs/security.md); a timing asserted here
    // must leave room for a loaded CI machine, so this only catches starvation: what is
    // served to the spammer, asserted above, is the mechanism.
    assert!(ratio >= 0.6, "honest sync kept only {ratio:.2} of its pace");
    assert!(
        rss_after < rss_before + 50 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
}
