//! Floods of bad input on every protocol a node speaks, from in-process attacker swarms
//! against a real `chainmesh` process: malformed frames on our protocols and on the libp2p
//! protocols we run (gossipsub, Kademlia, identify).

use std::time::{Duration, Instant};

use chainmesh_node::config::KadMode;
use futures::StreamExt;
use libp2p::request_response;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, gossipsub};

use crate::chains::TestNet;
use crate::common::Node;
use crate::hostile::{Raw, attacker, field, raw, runtime, varint};

#[derive(NetworkBehaviour)]
struct Prober {
    /// Takes the node's own gossipsub stream: a peer that does not speak gossipsub has
    /// the node's gossipsub handler turned off, and then no meshsub stream of it is read.
    gossip: gossipsub::Behaviour,
    raw: request_response::Behaviour<Raw>,
}

fn prober(protocol: &StreamProtocol) -> libp2p::Swarm<Prober> {
    attacker(|key| Prober {
        gossip: gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub::Config::default(),
        )
        .unwrap(),
        raw: raw(protocol),
    })
}

/// Every fault the node has counted, of any class.
fn faults(node: &Node) -> f64 {
    chainmesh_behaviours::peers::Fault::ALL
        .iter()
        .filter_map(|f| node.metric("chainmesh_peer_faults_total", &[("fault", f.name())]))
        .sum()
}

fn peer_of(addr: &Multiaddr) -> PeerId {
    addr.iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
        .unwrap()
}

/// The bad frames, each sent on a stream of its own: length prefixes of 4 GiB − 1, 2 GiB
/// and 2^64 − 1, a varint that never ends, one cut short, a frame cut short, a frame that
/// is no protobuf, and a valid frame with invalid contents.
fn bad_frames(protocol: &str, topic: &str) -> Vec<Vec<u8>> {
    let junk = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(151).wrapping_add(7) | 0x80)
            .collect()
    };
    let contents = if protocol.starts_with("/meshsub") {
        // A published message whose author is no peer id (gossipsub's rpc.proto:
        // RPC.publish = 2; Message.from = 1, data = 2, seqno = 3, topic = 4).
        let msg = [
            field(0x0a, &[1, 2, 3, 4, 5]),
            field(0x12, b"x"),
            field(0x1a, &[0; 8]),
            field(0x22, topic.as_bytes()),
        ]
        .concat();
        field(0x12, &msg)
    } else {
        // Only a field number no message of ours or of identify's and Kademlia's has: it
        // decodes to an empty message, which none of them accepts.
        vec![0x78, 0x01]
    };
    vec![
        [varint(u64::from(u32::MAX)), junk(64)].concat(),
        [varint(1 << 31), junk(64)].concat(),
        [varint(u64::MAX), junk(64)].concat(),
        vec![0xff; 16],
        vec![0x80],
        [varint(300), junk(40)].concat(),
        [varint(64), junk(64)].concat(),
        [varint(contents.len() as u64), contents].concat(),
    ]
}

/// Issue 9, item 5: 10,000 bad frames over fresh connections (a new peer id each), on
/// status, sync, pool, pex, identify push, gossipsub and Kademlia. Each connection sends its
/// frames at once, each on a stream of its own, as many as its protocol's defence needs
/// to act: ours and identify score every bad frame (`Malformed`, two end a connection);
/// gossipsub and Kademlia drop a bad stream silently, so the stream guards close a
/// connection opening more streams than the protocol's budget. Asserted: the node closes
/// every connection within a second of its first frame (p99; the slowest within 3 s),
/// every peer is penalised, RSS stays flat, the node lives and serves.
#[test]
fn malformed_frames_on_every_protocol_close_the_connection_and_cost_the_peer() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("framestest", 100);
    let home = net.node_home_with(&root.path().join("n"), None, |c| {
        c.p2p.discovery.kad_mode = KadMode::Server;
    });
    net.build_chain(&home, 10, 1);
    let mut node = Node::start_run(&home, &[]);
    let addr: Multiaddr = node.p2p_addr().parse().unwrap();
    let target = peer_of(&addr);
    let topic = "chainmesh/framestest/tx/1";
    let ours = |p: &str| format!("/chainmesh/framestest/{p}/1");
    // (protocol, frames a connection sends): ours and identify need 2 bad frames, gossipsub
    // 4 streams (its budget is 3), Kademlia 33 (budget 32).
    let protocols: Vec<(String, usize)> = vec![
        (ours("status"), 4),
        (ours("sync"), 4),
        (ours("pool"), 4),
        (ours("pex"), 4),
        ("/ipfs/id/push/1.0.0".into(), 4),
        ("/meshsub/1.1.0".into(), 8),
        (ours("kad"), 40),
    ];
    const TARGET_FRAMES: usize = 10_000;
    let rt = runtime();
    let faults_before = faults(&node);
    let started = Instant::now();
    let (mut sent, mut connections) = (0usize, 0usize);
    let mut rss_warm = None;
    // Per protocol: time from the first frame to the node's close, per connection.
    let mut closed_in: Vec<Vec<Duration>> = vec![Vec::new(); protocols.len()];
    let mut not_closed = Vec::new();
    while sent < TARGET_FRAMES && started.elapsed() < Duration::from_secs(240) {
        let which = connections % protocols.len();
        let (protocol, n) = &protocols[which];
        let protocol = StreamProtocol::try_from_owned(protocol.clone()).unwrap();
        let frames = bad_frames(protocol.as_ref(), topic);
        let mut s = rt.block_on(async { prober(&protocol) });
        let outcome = rt.block_on(async {
            s.dial(addr.clone()).unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let mut first = None;
            loop {
                let ev = match tokio::time::timeout_at(deadline, s.select_next_some()).await {
                    Ok(ev) => ev,
                    Err(_) => return first.map(|_: Instant| None),
                };
                match ev {
                    SwarmEvent::ConnectionEstablished { .. } if first.is_none() => {
                        first = Some(Instant::now());
                        for i in 0..*n {
                            let f =
                                frames[(i + connections / protocols.len()) % frames.len()].clone();
                            s.behaviour_mut().raw.send_request(&target, f);
                        }
                    }
                    SwarmEvent::ConnectionClosed {
                        num_established: 0, ..
                    } => return first.map(|t| Some(t.elapsed())),
                    SwarmEvent::OutgoingConnectionError { .. } if first.is_none() => {
                        return None;
                    }
                    _ => {}
                }
            }
        });
        match outcome {
            Some(Some(t)) => closed_in[which].push(t),
            Some(None) => not_closed.push(protocol.to_string()),
            None => panic!("connection {connections} failed:\n{}", node.log_tail()),
        }
        connections += 1;
        sent += n;
        if connections == 70 {
            rss_warm = Some(node.rss_kib());
        }
    }
    let elapsed = started.elapsed();
    assert!(node.is_running(), "node died:\n{}", node.log_tail());
    assert!(!node.log().contains("panicked"), "{}", node.log_tail());
    let rss_end = node.rss_kib();
    let rss_warm = rss_warm.unwrap();
    let penalised = faults(&node) - faults_before;
    let mut all: Vec<Duration> = closed_in.iter().flatten().copied().collect();
    all.sort();
    for ((p, n), times) in protocols.iter().zip(&mut closed_in) {
        times.sort();
        if let (Some(mid), Some(max)) = (times.get(times.len() / 2), times.last()) {
            eprintln!(
                "frames: {p}: {} connections of {n} frames, closed by the node in p50 {mid:?}, slowest {max:?}",
                times.len()
            );
        }
    }
    // Which defence acted: the stream guards log each connection they close.
    let log = node.log();
    let guarded = |p: &str| {
        log.lines()
            .filter(|l| l.contains("over its inbound stream budget") && l.contains(p))
            .count()
    };
    let (by_gossipsub, by_kad) = (guarded("gossipsub"), guarded("kademlia"));
    let identify = log.matches("identify: ").count();
    eprintln!(
        "frames: closed by the gossipsub guard {by_gossipsub}, by the Kademlia guard {by_kad}; identify frames scored {identify}"
    );
    assert!(
        by_gossipsub >= closed_in[5].len() * 9 / 10,
        "{by_gossipsub}"
    );
    assert!(by_kad >= closed_in[6].len() * 9 / 10, "{by_kad}");
    assert!(identify >= closed_in[4].len(), "{identify}");
    let p99 = all[all.len() * 99 / 100];
    eprintln!(
        "frames: {sent} bad frames over {connections} connections in {:.1} s; closed in p99 {p99:?}, slowest {:?}; {} left open; {penalised} faults scored; RSS {rss_warm} KiB after 70 connections -> {rss_end} KiB",
        elapsed.as_secs_f64(),
        all.last().unwrap(),
        not_closed.len()
    );
    assert!(
        sent >= TARGET_FRAMES,
        "only {sent} frames in the time bound"
    );
    assert!(
        not_closed.is_empty(),
        "connections left open 10 s after their bad frames: {not_closed:?}"
    );
    assert!(p99 <= Duration::from_secs(1), "p99 time to close {p99:?}");
    assert!(
        *all.last().unwrap() <= Duration::from_secs(3),
        "slowest close {:?}",
        all.last().unwrap()
    );
    assert!(
        penalised >= connections as f64,
        "{penalised} faults for {connections} attacking connections"
    );
    assert!(
        rss_end < rss_warm + 10 * 1024,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB"
    );
    assert!(node.status()["height"].as_u64().unwrap() >= 10);
    node.kill9();
}

/// A yamux frame header (version 0, big-endian).
fn yamux_header(kind: u8, flags: u16, stream: u32, length: u32) -> Vec<u8> {
    let mut h = vec![0, kind];
    h.extend(flags.to_be_bytes());
    h.extend(stream.to_be_bytes());
    h.extend(length.to_be_bytes());
    h
}

/// multistream-select's header and a proposal of `protocol`, as one stream's first bytes.
fn propose(protocol: &str) -> Vec<u8> {
    let line = |s: &str| {
        [
            varint(s.len() as u64 + 1),
            s.as_bytes().to_vec(),
            vec![b'\n'],
        ]
        .concat()
    };
    [line("/multistream/1.0.0"), line(protocol)].concat()
}

#[derive(Debug, Default)]
pub(crate) struct StreamFlood {
    pub(crate) connections: usize,
    pub(crate) opened: u64,
    /// Streams the node reset (refused or dropped).
    resets: u64,
    go_aways: u64,
    closed_by_node: usize,
    /// Streams written on each connection before the attacker saw it closed (most of
    /// them still in the socket buffers, never read by the node).
    closed_after: Vec<u64>,
}

/// Connection after connection (a new peer id each), streams opened as fast as the socket
/// takes them: a third bare (a SYN and nothing), a third proposing ping (negotiated, then
/// silent), a third proposing a protocol nobody speaks (refused, then silent). Until
/// `stop`, 60 s, or 200,000 streams.
pub(crate) fn flood_streams(addr: &Multiaddr, stop: &std::sync::atomic::AtomicBool) -> StreamFlood {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let bare: Multiaddr = addr
        .iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    let mut st = StreamFlood::default();
    let started = Instant::now();
    runtime().block_on(async {
        while !stop.load(Ordering::Relaxed)
            && started.elapsed() < Duration::from_secs(60)
            && st.opened < 200_000
        {
            let key = libp2p::identity::Keypair::generate_ed25519();
            let Ok(io) = crate::hostile::yamux_by_hand(&bare, &key).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            st.connections += 1;
            let (mut rd, mut wr) = io.split();
            // The node's frames: counted and drained, so that its writes never stall.
            let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
            let mut reader = tokio::spawn({
                let counts = counts.clone();
                async move {
                    let mut h = [0u8; 12];
                    while rd.read_exact(&mut h).await.is_ok() {
                        let flags = u16::from_be_bytes([h[2], h[3]]);
                        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
                        if flags & 0x8 != 0 {
                            counts[0].fetch_add(1, Ordering::Relaxed);
                        }
                        match h[1] {
                            0 => {
                                let mut body = (&mut rd).take(u64::from(len));
                                if futures::io::copy(&mut body, &mut futures::io::sink())
                                    .await
                                    .is_err()
                                {
                                    break;
                                }
                            }
                            3 => {
                                counts[1].fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                    counts[2].store(1, Ordering::Relaxed);
                }
            });
            let mut id = 1u32;
            let mut on_this = 0u64;
            let ping = propose("/ipfs/ping/1.0.0");
            let nobody = propose("/nobody/speaks/this/1");
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let mut batch = Vec::new();
                for _ in 0..50 {
                    match id % 3 {
                        0 => batch.extend(yamux_header(1, 1, id, 0)),
                        1 => {
                            batch.extend(yamux_header(0, 1, id, ping.len() as u32));
                            batch.extend(&ping);
                        }
                        _ => {
                            batch.extend(yamux_header(0, 1, id, nobody.len() as u32));
                            batch.extend(&nobody);
                        }
                    }
                    id += 2;
                }
                if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
                on_this += 50;
                st.opened += 50;
                if counts[2].load(Ordering::Relaxed) == 1 || id > 2_000_000 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            // Give the node a moment to close on its own, then hang up.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut reader).await;
            reader.abort();
            st.resets += counts[0].load(Ordering::Relaxed);
            st.go_aways += counts[1].load(Ordering::Relaxed);
            st.closed_by_node += counts[2].load(Ordering::Relaxed) as usize;
            st.closed_after.push(on_this);
        }
    });
    st
}

#[derive(NetworkBehaviour)]
struct Honest {
    sync: chainmesh_behaviours::sync::Behaviour,
}

/// `n` sync requests (16 blocks each) at 40 a second, within the node's advertised rate,
/// one at a time: the time each took to be answered.
fn request_latencies(addr: &Multiaddr, net: &str, n: usize) -> Vec<Duration> {
    use chainmesh_behaviours::codec::WireMeter;
    use chainmesh_behaviours::sync::Request;
    use libp2p::request_response::{Event, Message};
    let target = peer_of(addr);
    runtime().block_on(async {
        let mut s = attacker(|_| Honest {
            sync: chainmesh_behaviours::sync::new(
                net,
                Duration::from_secs(10),
                WireMeter::default(),
            ),
        });
        s.dial(addr.clone()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, s.select_next_some()).await {
                Ok(SwarmEvent::ConnectionEstablished { .. }) => break,
                Ok(_) => {}
                Err(_) => panic!("the honest peer could not connect"),
            }
        }
        let mut took = Vec::with_capacity(n);
        let mut pace = tokio::time::interval(Duration::from_millis(25));
        for i in 0..n as u64 {
            pace.tick().await;
            let req = Request::GetBlockRange {
                from: 1 + (i * 16) % 180,
                count: 16,
            };
            let sent = Instant::now();
            let id = s
                .behaviour_mut()
                .sync
                .send_request(&target, Ok(req.to_pb()));
            loop {
                match tokio::time::timeout(Duration::from_secs(15), s.select_next_some()).await {
                    Ok(SwarmEvent::Behaviour(HonestEvent::Sync(Event::Message {
                        message: Message::Response { request_id, .. },
                        ..
                    }))) if request_id == id => break,
                    Ok(SwarmEvent::Behaviour(HonestEvent::Sync(Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    }))) if request_id == id => panic!("honest request {i} failed: {error}"),
                    Ok(_) => {}
                    Err(_) => panic!("honest request {i} unanswered"),
                }
            }
            took.push(sent.elapsed());
        }
        took
    })
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Issue 9, item 6 (streams): streams opened on one connection as fast as the socket
/// takes them, connection after connection, at least 10,000 in all. The caps hold: the
/// node closes a connection whose peer opens streams beyond 512 at once or 128 a second
/// (`node/src/p2p/muxer.rs`) and scores it; below that, yamux keeps at most 512 streams
/// a connection, libp2p-yamux buffers 256 not yet taken and libp2p negotiates 128 at once
/// (the rest are reset), negotiation times out after 10 s. An honest peer's sync requests
/// meanwhile keep their p99 within 2x of the same requests without the flood; the node's
/// RSS stays flat.
#[test]
fn stream_floods_hit_the_caps_and_honest_requests_keep_their_latency() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("streamtest", 300);
    let home = net.node_home(&root.path().join("n"));
    net.build_chain(&home, 200, 1);
    let mut node = Node::start_run(&home, &[]);
    let addr: Multiaddr = node.p2p_addr().parse().unwrap();
    const REQUESTS: usize = 200;
    let quiet = request_latencies(&addr, "streamtest", REQUESTS);
    let rss_before = node.rss_kib();
    let floods_before = node
        .metric("chainmesh_peer_faults_total", &[("fault", "rate_exceeded")])
        .unwrap_or(0.0);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || flood_streams(&addr, &stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let loaded = request_latencies(&addr, "streamtest", REQUESTS);
    stop.store(true, Ordering::Relaxed);
    let st = flood.join().unwrap();
    let rss_after = node.rss_kib();
    let scored = node
        .metric("chainmesh_peer_faults_total", &[("fault", "rate_exceeded")])
        .unwrap_or(0.0)
        - floods_before;
    let (quiet_p99, loaded_p99) = (p99(quiet), p99(loaded));
    let mut after = st.closed_after.clone();
    after.sort();
    eprintln!(
        "streams: {} opened over {} connections ({} closed by the node, {scored} scored as floods; {} resets by the node, {} GoAways; streams written before the close was seen: p50 {}, max {}); honest sync p99 {quiet_p99:?} quiet, {loaded_p99:?} under the flood ({:.2}x); RSS {rss_before} KiB -> {rss_after} KiB",
        st.opened,
        st.connections,
        st.closed_by_node,
        st.resets,
        st.go_aways,
        after[after.len() / 2],
        after[after.len() - 1],
        loaded_p99.as_secs_f64() / quiet_p99.as_secs_f64()
    );
    assert!(node.is_running(), "node died:\n{}", node.log_tail());
    assert!(st.opened >= 10_000, "only {} streams opened", st.opened);
    // The last connection may have been cut short by the end of the test.
    assert!(
        st.closed_by_node + 1 >= st.connections && st.closed_by_node >= 1,
        "{} of {} connections closed by the node",
        st.closed_by_node,
        st.connections
    );
    assert!(
        scored >= st.closed_by_node as f64,
        "{scored} stream floods scored for {} closed connections",
        st.closed_by_node
    );
    assert!(
        loaded_p99 <= quiet_p99 * 2,
        "honest p99 {loaded_p99:?} under the flood against {quiet_p99:?}"
    );
    assert!(
        rss_after < rss_before + 20 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    node.kill9();
}

/// What the connection flood saw.
#[derive(Debug, Default)]
struct ConnFlood {
    dials: usize,
    established: usize,
    /// Connections the node closed at once (over a cap) and later (no status in time).
    closed_at_once: usize,
    closed_later: usize,
    /// The most connections one peer id held at the sampling instants.
    max_per_id: usize,
    /// How long connections that were kept lived before the node closed them.
    kept_for: Vec<Duration>,
}

/// `ids` peer ids, each dialling `addr` `dials` times, 1.25 s apart (the first 20 all at
/// once), that speak nothing after the transport handshake: all their connections and how the node ended them, until every
/// one is closed or `secs` pass.
fn flood_connections(addr: &Multiaddr, ids: usize, dials: usize, secs: u64) -> ConnFlood {
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    use std::sync::{Arc, Mutex};
    let target = peer_of(addr);
    let out = Arc::new(Mutex::new(ConnFlood::default()));
    runtime().block_on(async {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..ids {
            let (addr, out) = (addr.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                // Each peer id from an address of its own (127.0.1.x), as a botnet would
                // dial: one address for all would have gossipsub's colocation penalty
                // cut them off before anything else is seen.
                let source = std::net::Ipv4Addr::new(127, 0, 1, 1 + (i % 250) as u8);
                let mut s = libp2p::SwarmBuilder::with_new_identity()
                    .with_tokio()
                    .with_other_transport(|key| {
                        use libp2p::core::Transport as _;
                        crate::hostile::DialFrom(source)
                            .upgrade(libp2p::core::upgrade::Version::V1)
                            .authenticate(libp2p::noise::Config::new(key).unwrap())
                            .multiplex(libp2p::yamux::Config::default())
                    })
                    .unwrap()
                    .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
                    .unwrap()
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                    .build();
                // Dials spread over 5 s (about 160 a second), so that they pass the
                // pending cap and reach the established ones.
                let first = Duration::from_millis(5 * i as u64);
                let mut next_dial = tokio::time::Instant::now() + first;
                let mut dialled = 0;
                let mut open: std::collections::HashMap<_, Instant> = Default::default();
                let (mut finished, mut max_open) = (0usize, 0usize);
                let mut sample = tokio::time::interval(Duration::from_millis(500));
                let end = tokio::time::sleep(Duration::from_secs(secs));
                tokio::pin!(end);
                while finished < dials {
                    tokio::select! {
                        _ = tokio::time::sleep_until(next_dial), if dialled < dials => {
                            let opts = DialOpts::peer_id(target)
                                .addresses(vec![addr.clone()])
                                .condition(PeerCondition::Always)
                                .build();
                            let _ = s.dial(opts);
                            dialled += 1;
                            // The first 20 ids dial all at once: the per-peer cap.
                            if i >= 20 {
                                next_dial += Duration::from_millis(1250);
                            }
                        }
                        ev = s.select_next_some() => match ev {
                            SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                                open.insert(connection_id, Instant::now());
                                out.lock().unwrap().established += 1;
                            }
                            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                                finished += 1;
                                if let Some(at) = open.remove(&connection_id) {
                                    let lived = at.elapsed();
                                    let mut o = out.lock().unwrap();
                                    if lived < Duration::from_millis(500) {
                                        o.closed_at_once += 1;
                                    } else {
                                        o.closed_later += 1;
                                        o.kept_for.push(lived);
                                    }
                                }
                            }
                            SwarmEvent::OutgoingConnectionError { .. } => finished += 1,
                            _ => {}
                        },
                        // Connections over a cap are closed at once; what is still open
                        // half a second after it opened is what the node kept.
                        _ = sample.tick() => {
                            let kept = open.values().filter(|t| t.elapsed() >= Duration::from_millis(500)).count();
                            max_open = max_open.max(kept);
                        }
                        _ = &mut end => break,
                    }
                }
                let mut o = out.lock().unwrap();
                o.dials += dials;
                o.max_per_id = o.max_per_id.max(max_open);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        eprintln!(
            "connections: flood over in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    });
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}

/// TCP connections from `sources` (in turn) that never begin the handshake: how long each
/// stayed open before the node closed it (`None`: still open after `secs`).
fn silent_sockets(
    addr: &Multiaddr,
    sources: &[std::net::Ipv4Addr],
    n: usize,
    secs: u64,
) -> Vec<Option<Duration>> {
    let (mut ip, mut port) = (None, None);
    for p in addr.iter() {
        match p {
            libp2p::multiaddr::Protocol::Ip4(a) => ip = Some(a),
            libp2p::multiaddr::Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    let to = std::net::SocketAddr::from((ip.unwrap(), port.unwrap()));
    runtime().block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let from = sources[i % sources.len()];
                tokio::spawn(async move {
                    let sock = tokio::net::TcpSocket::new_v4().ok()?;
                    sock.bind((from, 0).into()).ok()?;
                    let s = sock.connect(to).await.ok()?;
                    let at = Instant::now();
                    // The node speaks first only after the dialer proposes; any byte or
                    // the end means it has let go.
                    let closed = async {
                        let mut buf = [0u8; 64];
                        loop {
                            if s.readable().await.is_err() {
                                return;
                            }
                            match s.try_read(&mut buf) {
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                _ => return,
                            }
                        }
                    };
                    match tokio::time::timeout(Duration::from_secs(secs), closed).await {
                        Ok(()) => Some(at.elapsed()),
                        Err(_) => None,
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.ok().flatten());
        }
        out
    })
}

/// Issue 9, item 6 (connections): 1,000 dials: 200 peer ids dialling 4 times each (about
/// 160 dials a second) and saying nothing after the transport handshake, and 200 TCP connections from two
/// addresses (127.0.0.9 and .10) that never begin it. The caps hold (`p2p.max_inbound` 96,
/// `max_pending` 32, `max_pending_per_ip` 8, `max_per_peer` 2, sampled from the node's
/// `chainmesh_connections` gauge and from each attacker);
/// connections that never finish the transport handshake are dropped after its 10 s
/// timeout, peers that never give their status after 20 s; and while the inbound slots are
/// full, the node still dials a peer it chose (its bootstrap peer, started during the flood)
/// and serves it the chain.
#[test]
fn connection_floods_hit_the_caps_and_outbound_slots_stay_for_peers_we_chose() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("connflood", 100);
    // The peer the node chose: its key and port fixed up front, started later.
    let free_port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let b_key = chainmesh_proto::Keypair::generate();
    let b_id = libp2p::identity::Keypair::ed25519_from_bytes(b_key.seed())
        .unwrap()
        .public()
        .to_peer_id();
    let home_b = net.node_home_with(&root.path().join("b"), None, |c| {
        c.p2p.listen = vec![format!("/ip4/127.0.0.2/tcp/{free_port}")];
    });
    std::fs::create_dir_all(home_b.join("data")).unwrap();
    b_key.save_new(&home_b.join("data/p2p.key")).unwrap();
    let b_addr = format!("/ip4/127.0.0.2/tcp/{free_port}/p2p/{b_id}");
    let home = net.node_home_with(&root.path().join("a"), None, |c| {
        c.p2p.bootstrap = vec![b_addr.clone()];
    });
    net.build_chain(&home, 30, 1);
    let cfg = chainmesh_node::config::Config::load(&home.join("config.toml")).unwrap();
    let (max_in, max_pending, max_per_peer, pending_per_ip) = (
        cfg.p2p.max_inbound as f64,
        cfg.p2p.max_pending as f64,
        cfg.p2p.max_per_peer as usize,
        cfg.p2p.max_pending_per_ip as usize,
    );
    let mut node = Node::start_run(&home, &[]);
    let addr: Multiaddr = node.p2p_addr().parse().unwrap();
    let rss_before = node.rss_kib();

    let flood = {
        let addr = addr.clone();
        std::thread::spawn(move || flood_connections(&addr, 200, 4, 35))
    };
    let silent = {
        let addr = addr.clone();
        let sources = ["127.0.0.9".parse().unwrap(), "127.0.0.10".parse().unwrap()];
        std::thread::spawn(move || silent_sockets(&addr, &sources, 200, 20))
    };
    // The node's own view, sampled while the flood lasts; B starts once the slots are full.
    let gauge = |state: &str| {
        node.metric("chainmesh_connections", &[("state", state)])
            .unwrap_or(0.0)
    };
    let (mut peak_in, mut peak_pending) = (0f64, 0f64);
    let mut b = None;
    let started = Instant::now();
    let mut b_synced = None;
    while started.elapsed() < Duration::from_secs(50)
        && !(flood.is_finished() && silent.is_finished() && b_synced.is_some())
    {
        peak_in = peak_in.max(gauge("established_in"));
        peak_pending = peak_pending.max(gauge("pending_in"));
        if b.is_none() && started.elapsed() >= Duration::from_secs(3) {
            b = Some(Node::start_run(&home_b, &[]));
        }
        if b_synced.is_none()
            && let Some(b) = &b
            && b.status()["height"].as_u64() == Some(30)
        {
            b_synced = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let st = flood.join().unwrap();
    let silent = silent.join().unwrap();
    let rss_after = node.rss_kib();
    let mut kept = st.kept_for.clone();
    kept.sort();
    let silent_closed_at_once = silent
        .iter()
        .filter(|t| t.is_some_and(|t| t < Duration::from_millis(500)))
        .count();
    let mut silent_later: Vec<Duration> = silent
        .iter()
        .flatten()
        .filter(|t| **t >= Duration::from_millis(500))
        .copied()
        .collect();
    silent_later.sort();
    let silent_open = silent.iter().filter(|t| t.is_none()).count();
    eprintln!(
        "connections: {} dials from 200 peer ids: {} established, {} closed at once (over a cap), {} kept then closed (after {:?} to {:?}); at most {} a peer id; node's peaks: {peak_in} established inbound, {peak_pending} pending inbound",
        st.dials,
        st.established,
        st.closed_at_once,
        st.closed_later,
        kept.first(),
        kept.last(),
        st.max_per_id
    );
    eprintln!(
        "connections: 200 silent sockets from two addresses: {silent_closed_at_once} closed at once, {} after {:?} to {:?}, {silent_open} still open; the chosen peer synced {b_synced:?} after the flood began; RSS {rss_before} KiB -> {rss_after} KiB",
        silent_later.len(),
        silent_later.first(),
        silent_later.last()
    );
    assert!(node.is_running(), "node died:\n{}", node.log_tail());
    assert!(peak_in <= max_in, "{peak_in} established inbound");
    assert!(
        peak_pending <= max_pending,
        "{peak_pending} pending inbound"
    );
    assert!(
        st.max_per_id >= 1 && st.max_per_id <= max_per_peer,
        "{} a peer id",
        st.max_per_id
    );
    assert!(st.closed_later > 0 && st.closed_at_once > 0);
    // Kept connections end at the status deadline (20 s; checked each second), those
    // beyond `p2p.max_peers` after the 3 s they have to ask for addresses.
    let at_deadline = kept
        .iter()
        .filter(|t| **t >= Duration::from_secs(19))
        .count();
    assert!(
        kept.last().is_some_and(|t| *t <= Duration::from_secs(23)) && at_deadline > 0,
        "silent peers kept {:?} to {:?}",
        kept.first(),
        kept.last()
    );
    assert_eq!(
        silent_open, 0,
        "sockets that never began a handshake still open"
    );
    assert!(
        !silent_later.is_empty() && silent_later.len() <= 2 * pending_per_ip,
        "{} silent sockets from two addresses held",
        silent_later.len()
    );
    assert!(
        silent_later
            .iter()
            .all(|t| *t >= Duration::from_secs(9) && *t <= Duration::from_secs(12)),
        "silent sockets closed after {silent_later:?}"
    );
    assert!(b_synced.is_some(), "the chosen peer never synced");
    let b = b.unwrap();
    let peers = node.get("/peers");
    assert!(
        peers.to_string().contains(&b_id.to_string()),
        "the chosen peer is not among the node's peers"
    );
    drop(b);
    node.kill9();
}
