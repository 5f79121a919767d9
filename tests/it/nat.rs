//! Discovery and NAT traversal through real NAT: nodes in network namespaces behind
//! masquerading routers (`scripts/netns-nat.sh`) with one public bootstrap/relay node;
//! mDNS on a LAN; and proof-of-work admission to a relay, driven by a bare libp2p client.

use std::path::Path;
use std::time::{Duration, Instant};

use chainmesh_behaviours::admission;
use chainmesh_node::config::{Config, KadMode};
use chainmesh_proto::Tx;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, noise, relay, request_response, tcp, yamux};
use serde_json::Value;

use crate::chains::TestNet;
use crate::common::{Node, wait_until};
use crate::hostile::{attacker, runtime};
use crate::netns::Topology;

const PORT: u16 = 7701;
const RELAY_IP: &str = "10.77.0.1";

fn listen_all(c: &mut Config) {
    listen_on(c, PORT);
}

fn listen_on(c: &mut Config, port: u16) {
    c.p2p.listen = vec![
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    ];
}

/// The public node: bootstrap, DHT server, relay with admission.
fn public_cfg(c: &mut Config) {
    public_cfg_at(c, PORT);
}

fn public_cfg_at(c: &mut Config, port: u16) {
    listen_on(c, port);
    c.p2p.discovery.kad_mode = KadMode::Server;
    c.p2p.nat.autonat_only_global = false;
    c.p2p.nat.external_addresses = vec![
        format!("/ip4/{RELAY_IP}/tcp/{port}"),
        format!("/ip4/{RELAY_IP}/udp/{port}/quic-v1"),
    ];
    c.p2p.nat.relay_server = true;
    c.p2p.admission.bits = 12;
    c.mempool.max_per_sender = 2_000;
}

/// A node behind NAT that knows only the bootstrap address.
fn private_cfg(c: &mut Config, bootstrap: &str) {
    listen_all(c);
    c.p2p.bootstrap = vec![bootstrap.to_string()];
    c.p2p.nat.autonat_only_global = false;
    c.p2p.nat.autonat_delay_secs = 1;
    c.p2p.discovery.walk_secs = 2;
    c.p2p.target_peers = 4;
    // Room for a burst of one sender's transactions.
    c.mempool.max_per_sender = 2_000;
}

fn peer_id_of(n: &Node) -> String {
    n.p2p_addr().rsplit("/p2p/").next().unwrap().to_string()
}

fn peer<'a>(peers: &'a [Value], id: &str) -> Option<&'a Value> {
    peers.iter().find(|p| p["peer_id"] == id)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Like `wait_until`, but a timeout shows what each node logged about NAT and discovery.
fn wait_or_dump(n: &NatNet, secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() >= deadline {
            let keys = [
                "relay",
                "DHT",
                "hole",
                "reachab",
                "admission",
                "direct",
                "member",
                "external",
            ];
            let dump = |name: &str, node: &Node| {
                let lines: Vec<String> = node
                    .log()
                    .lines()
                    .filter(|l| keys.iter().any(|k| l.contains(k)))
                    .map(|l| l.chars().take(400).collect())
                    .collect();
                format!(
                    "--- {name}\n{}",
                    lines[lines.len().saturating_sub(40)..].join("\n")
                )
            };
            panic!(
                "timed out after {secs} s waiting for {what}\n{}\n{}\n{}\nA /net {}\nB /net {}\nA peers {:?}",
                dump("relay", &n.relay),
                dump("A", &n.a),
                dump("B", &n.b),
                n.a.get("/net"),
                n.b.get("/net"),
                n.a.peers()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct NatNet {
    // Dropped last: the nodes go first, then their namespaces.
    relay: Node,
    a: Node,
    b: Node,
    net: TestNet,
    _topo: Topology,
}

/// Topology, the public node producing blocks in `pub`, and nodes A (LAN A) and B (LAN B)
/// with empty stores and only the bootstrap address.
fn nat_net(root: &Path, symmetric: bool, relay_tweak: impl FnOnce(&mut Config)) -> NatNet {
    let topo = Topology::up(symmetric, 1);
    let net = TestNet::with_block_time("nattest", 0, 1, 1_000);
    let home = net.node_home_with(&root.join("relay"), Some(&net.authority), |c| {
        public_cfg(c);
        relay_tweak(c);
    });
    let relay = Node::start_run_in(Some(&topo.ns("pub")), &home, &[]);
    let bootstrap = format!("/ip4/{RELAY_IP}/tcp/{PORT}/p2p/{}", peer_id_of(&relay));
    wait_until(30, "the relay producing", || relay.height() >= 2);
    let start = |name: &str, ns: &str| {
        let home = net.node_home_with(&root.join(name), None, |c| private_cfg(c, &bootstrap));
        Node::start_run_in(Some(&topo.ns(ns)), &home, &[])
    };
    let a = start("a", "a1");
    let b = start("b", "b1");
    NatNet {
        relay,
        a,
        b,
        net,
        _topo: topo,
    }
}

#[test]
fn behind_two_cone_nats_nodes_meet_through_the_dht_and_relay_then_punch_a_direct_connection() {
    let root = tempfile::tempdir().unwrap();
    let n = nat_net(root.path(), false, |_| {});
    let (a_id, b_id) = (peer_id_of(&n.a), peer_id_of(&n.b));
    // The relay sees A at its router's address: A really is behind NAT.
    wait_until(30, "A connected to the relay", || {
        peer(&n.relay.peers(), &a_id).is_some()
    });
    let seen = peer(&n.relay.peers(), &a_id).unwrap()["address"].clone();
    assert!(
        seen.as_str().unwrap().contains("/ip4/10.77.0.11/"),
        "{seen}"
    );
    // AutoNAT finds both private; each reserves on the relay; B finds A as a member in the
    // DHT, dials it through the relay, and DCUtR makes the connection direct.
    wait_or_dump(&n, 120, "A and B connected directly", || {
        [(&n.a, &b_id), (&n.b, &a_id)].iter().all(|(node, other)| {
            peer(&node.peers(), other)
                .is_some_and(|p| !p["address"].as_str().unwrap_or("").contains("p2p-circuit"))
        })
    });
    let (sa, sb) = (n.a.get("/net"), n.b.get("/net"));
    for s in [&sa, &sb] {
        assert_eq!(s["reachability"], "private", "{s}");
        assert!(u(&s["relay_reservations"]) >= 1, "{s}");
        assert!(
            s["external_addresses"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a.as_str().unwrap().contains("p2p-circuit")),
            "{s}"
        );
    }
    assert!(
        u(&sa["holepunch_ok"]) + u(&sb["holepunch_ok"]) >= 1,
        "{sa}\n{sb}"
    );
    let relay_stats = n.relay.get("/net");
    assert!(u(&relay_stats["admissions_granted"]) >= 2, "{relay_stats}");
    assert!(
        u(&relay_stats["relay_circuits_accepted"]) >= 1,
        "{relay_stats}"
    );
    let direct = peer(&n.a.peers(), &b_id).unwrap()["address"].clone();
    assert!(
        direct.as_str().unwrap().contains("/ip4/10.77.0.12/"),
        "A reaches B at B's router: {direct}"
    );

    // A started with an empty store and only the bootstrap address: it syncs the chain
    // and receives transactions gossiped from the other side of the network.
    let h = n.relay.height();
    wait_until(60, "A synced", || n.a.height() >= h);
    let genesis = n.a.genesis_hash();
    let to = chainmesh_proto::PublicKey([5; 32]);
    let nonce = u(&n.b.account(&n.net.alice.public())["nonce"]);
    let tx = Tx::transfer(&n.net.alice, &genesis, to, 7, 1, nonce);
    let (code, body) = n.b.post_tx(&tx);
    assert_eq!(code, 202, "{body}");
    let path = format!("/txs/{}", tx.id());
    wait_until(30, "B's tx at A", || {
        matches!(
            n.a.get(&path)["status"].as_str(),
            Some("pending" | "included")
        )
    });
    wait_until(30, "B's tx in a block at A", || {
        n.a.get(&path)["status"] == "included"
    });
}

#[test]
fn behind_symmetric_nats_nodes_stay_relayed_within_the_relay_limits() {
    // Longer than DCUtR's three attempts (10 s connection timeout each), so that the
    // failure is reported on the circuit that tried.
    const CIRCUIT_SECS: u64 = 40;
    const CIRCUIT_BYTES: u64 = 64 * 1024;
    let root = tempfile::tempdir().unwrap();
    let n = nat_net(root.path(), true, |c| {
        c.p2p.nat.relay_max_circuit_secs = CIRCUIT_SECS;
        c.p2p.nat.relay_max_circuit_bytes = CIRCUIT_BYTES;
    });
    let (a_id, b_id) = (peer_id_of(&n.a), peer_id_of(&n.b));
    let relayed_pair = || {
        [(&n.a, &b_id), (&n.b, &a_id)].iter().all(|(node, other)| {
            peer(&node.peers(), other)
                .is_some_and(|p| p["address"].as_str().unwrap_or("").contains("p2p-circuit"))
        })
    };
    wait_or_dump(&n, 120, "A and B connected through the relay", relayed_pair);
    // Hole punching is tried and fails: a symmetric NAT maps each connection to a new port.
    wait_or_dump(&n, 75, "a failed hole punch", || {
        u(&n.a.get("/net")["holepunch_failed"]) + u(&n.b.get("/net")["holepunch_failed"]) >= 1
    });
    // The circuit ends at its time cap; the nodes come back through a new one.
    wait_or_dump(
        &n,
        CIRCUIT_SECS + 30,
        "a circuit ended at the time cap",
        || u(&n.relay.get("/net")["relay_circuits_over_time"]) >= 1,
    );
    wait_or_dump(&n, 60, "A and B relayed again", relayed_pair);
    // Transactions still flow both ways; a burst of them (about 150 bytes each, gossiped
    // over the circuit among others) takes the circuit past its byte cap.
    let genesis = n.a.genesis_hash();
    let nonce = u(&n.a.account(&n.net.alice.public())["nonce"]);
    let txs: Vec<Tx> = (0..1_000u64)
        .map(|i| {
            let to = chainmesh_proto::PublicKey([(i % 250) as u8 + 1; 32]);
            Tx::transfer(&n.net.alice, &genesis, to, 1 + i, 1, nonce + i)
        })
        .collect();
    for tx in &txs {
        let (code, body) = n.a.post_tx(tx);
        assert_eq!(code, 202, "{body}");
    }
    let last = format!("/txs/{}", txs[txs.len() - 1].id());
    wait_or_dump(&n, 60, "A's last tx at B", || {
        matches!(
            n.b.get(&last)["status"].as_str(),
            Some("pending" | "included")
        )
    });
    wait_or_dump(&n, 30, "a circuit ended at the byte cap", || {
        u(&n.relay.get("/net")["relay_circuits_over_bytes"]) >= 1
    });
    let s = n.relay.get("/net");
    let longest = u(&s["relay_longest_circuit_ms"]);
    assert!(
        longest <= (CIRCUIT_SECS + 2) * 1000,
        "a circuit lived {longest} ms, over the {CIRCUIT_SECS} s cap\n{s}"
    );
    // What A exchanged over relayed connections stays within the cap per circuit (the
    // relay stops after the read that crossed it: one buffer of slack each).
    let circuits = u(&s["relay_circuits_accepted"]).max(1);
    let metrics = n.a.get_text("/metrics");
    let relayed = relayed_bytes(&metrics);
    assert!(
        relayed <= circuits * (CIRCUIT_BYTES + 16 * 1024),
        "{relayed} bytes over {circuits} circuits, cap {CIRCUIT_BYTES} each"
    );
    eprintln!(
        "symmetric NAT: {circuits} circuits ({} at the time cap, {} at the byte cap), longest {longest} ms (cap {} ms), {relayed} relayed bytes at A",
        u(&s["relay_circuits_over_time"]),
        u(&s["relay_circuits_over_bytes"]),
        CIRCUIT_SECS * 1000,
    );
}

/// Bytes in both directions over relayed connections, from libp2p's bandwidth metrics,
/// labelled by the connection's protocol stack: a circuit we dialled has `p2p-circuit`
/// in it; one that reached us through our reservation is known by the peer id alone.
fn relayed_bytes(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("libp2p_bandwidth_bytes_total")
                && (l.contains("p2p-circuit") || l.contains("protocols=\"/p2p\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn two_nodes_on_one_lan_find_each_other_by_mdns() {
    let root = tempfile::tempdir().unwrap();
    let topo = Topology::up(false, 2);
    let net = TestNet::with_block_time("mdnstest", 0, 1, 1_000);
    let lan = |c: &mut Config| {
        listen_all(c);
        c.p2p.discovery.mdns = true;
        c.p2p.target_peers = 2;
    };
    let h1 = net.node_home_with(&root.path().join("n1"), Some(&net.authority), lan);
    let h2 = net.node_home_with(&root.path().join("n2"), None, lan);
    let n1 = Node::start_run_in(Some(&topo.ns("a1")), &h1, &[]);
    let n2 = Node::start_run_in(Some(&topo.ns("a2")), &h2, &[]);
    let (id1, id2) = (peer_id_of(&n1), peer_id_of(&n2));
    wait_until(60, "the two LAN nodes connected", || {
        peer(&n1.peers(), &id2).is_some() && peer(&n2.peers(), &id1).is_some()
    });
    let addr = peer(&n2.peers(), &id1).unwrap()["address"].clone();
    assert!(addr.as_str().unwrap().contains("10.77.1."), "{addr}");
    assert!(n2.log().contains("found on the local network (mDNS)"));
    wait_until(30, "n2 following n1's chain", || n2.height() >= 2);
    drop((n1, n2));
}

#[derive(NetworkBehaviour)]
pub struct Client {
    pub relay: relay::client::Behaviour,
    pub admission: admission::Behaviour,
}

/// A swarm that can reserve on a relay and prove its work to it (the caller is in a tokio
/// runtime).
pub fn relay_client() -> libp2p::Swarm<Client> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_, relay| Client {
            relay,
            admission: admission::new(false, Duration::from_secs(10), Default::default()),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// What a relay answered a listen-through-relay attempt.
pub enum Reserve {
    Accepted,
    Refused(String),
}

#[test]
fn a_relay_reserves_only_for_peers_with_a_fresh_unused_proof_of_work() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("admissiontest", 0);
    // A relay hands out its external addresses with each reservation: give it one, on a
    // port picked free just before.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = net.node_home_with(&root.path().join("relay"), None, |c| {
        c.p2p.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}")];
        c.p2p.nat.external_addresses = c.p2p.listen.clone();
        c.p2p.nat.relay_server = true;
        c.p2p.admission.bits = 10;
        c.p2p.admission.challenge_secs = 2;
    });
    let relay = Node::start_run(&home, &[]);
    let relay_addr: Multiaddr = relay.p2p_addr().parse().unwrap();
    let Some(Protocol::P2p(relay_id)) = relay_addr.iter().last() else {
        panic!("no peer id in {relay_addr}")
    };
    let rt = runtime();
    rt.block_on(async {
        let mut c = relay_client();
        let me = c.local_peer_id().to_bytes();
        c.dial(relay_addr.clone()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let SwarmEvent::ConnectionEstablished { .. } = c.select_next_some().await {
                    break;
                }
            }
        })
        .await
        .expect("connected to the relay");
        let circuit = relay_addr.clone().with(Protocol::P2pCircuit);

        // 1. No proof: refused.
        match reserve(&mut c, &circuit).await {
            Reserve::Refused(why) => eprintln!("without a proof: {why}"),
            Reserve::Accepted => panic!("the relay reserved without a proof"),
        }
        // 2. A proof of a challenge that has expired: refused.
        let late = challenge(&mut c, relay_id).await;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let n = late.solve(&me, 1 << 20).unwrap();
        let answer = prove(&mut c, relay_id, late.nonce, n).await;
        assert!(
            matches!(&answer, admission::Response::Refused(r) if r.contains("expired")),
            "{answer:?}"
        );
        // 3. A fresh proof: admitted, and the reservation goes through.
        let fresh = challenge(&mut c, relay_id).await;
        let t = Instant::now();
        let n = fresh.solve(&me, 1 << 20).unwrap();
        eprintln!("solved {} bits in {:?}", fresh.bits, t.elapsed());
        let answer = prove(&mut c, relay_id, fresh.nonce, n).await;
        assert!(
            matches!(answer, admission::Response::Granted { .. }),
            "{answer:?}"
        );
        if let Reserve::Refused(why) = reserve(&mut c, &circuit).await {
            panic!("refused after admission: {why}");
        }
        // 4. The same proof again: refused as a replay.
        let answer = prove(&mut c, relay_id, fresh.nonce, n).await;
        assert!(
            matches!(&answer, admission::Response::Refused(r) if r.contains("already used")),
            "{answer:?}"
        );
    });
    let s = relay.get("/net");
    let relay_log: String = relay
        .log()
        .lines()
        .filter(|l| l.contains("relay") || l.contains("admission"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(u(&s["relay_reservations_refused"]) >= 1, "{s}\n{relay_log}");
    assert_eq!(u(&s["admissions_granted"]), 1, "{s}");
    assert!(u(&s["admissions_refused"]) >= 2, "{s}");
    assert!(relay.log().contains("no admission proof"));
}

pub async fn reserve(c: &mut libp2p::Swarm<Client>, circuit: &Multiaddr) -> Reserve {
    let id = c.listen_on(circuit.clone()).unwrap();
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = c.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { listener_id, .. } if listener_id == id => {
                    return Reserve::Accepted;
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } if listener_id == id => {
                    return Reserve::Refused(format!("{reason:?}"));
                }
                SwarmEvent::ListenerError { listener_id, error } if listener_id == id => {
                    let _ = c.remove_listener(id);
                    return Reserve::Refused(error.to_string());
                }
                _ => {}
            },
            _ = &mut deadline => panic!("no answer to the reservation"),
        }
    }
}

async fn ask(
    c: &mut libp2p::Swarm<Client>,
    relay: PeerId,
    req: admission::Request,
) -> admission::Response {
    let id = c
        .behaviour_mut()
        .admission
        .send_request(&relay, Ok(req.to_pb()));
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = c.select_next_some() => {
                if let SwarmEvent::Behaviour(ClientEvent::Admission(e)) = ev {
                    match e {
                        request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        } if request_id == id => {
                            return admission::Response::from_pb(response).unwrap();
                        }
                        request_response::Event::OutboundFailure { request_id, error, .. }
                            if request_id == id => panic!("admission request failed: {error}"),
                        _ => {}
                    }
                }
            }
            _ = &mut deadline => panic!("no admission answer"),
        }
    }
}

pub async fn challenge(c: &mut libp2p::Swarm<Client>, relay: PeerId) -> admission::Challenge {
    match ask(c, relay, admission::Request::Challenge).await {
        admission::Response::Challenge(ch) => ch,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

pub async fn prove(
    c: &mut libp2p::Swarm<Client>,
    relay: PeerId,
    nonce: [u8; admission::NONCE_BYTES],
    counter: u64,
) -> admission::Response {
    ask(c, relay, admission::Request::Proof { nonce, counter }).await
}

#[test]
fn a_bootstrap_asking_for_admission_keeps_nodes_that_solve_and_drops_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("gatetest", 0);
    let gate_home = net.node_home_with(&root.path().join("gate"), None, |c| {
        c.p2p.admission.bootstrap = true;
        c.p2p.admission.bits = 8;
        c.p2p.admission.grace_secs = 2;
    });
    let gate = Node::start_run(&gate_home, &[]);
    let gate_addr: Multiaddr = gate.p2p_addr().parse().unwrap();
    let gate_id = peer_id_of(&gate);
    let node_home = net.node_home_with(&root.path().join("node"), None, |c| {
        c.p2p.bootstrap = vec![gate_addr.to_string()];
    });
    let node = Node::start_run(&node_home, &[]);
    wait_until(20, "the node admitted by the gate", || {
        u(&gate.get("/net")["admissions_granted"]) >= 1
    });
    // A bare libp2p peer that never proves anything is shown out after the grace time.
    let rt = runtime();
    let closed_after = rt.block_on(async {
        let mut c = attacker(|_| libp2p::ping::Behaviour::default());
        c.dial(gate_addr.clone()).unwrap();
        let t0 = Instant::now();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let SwarmEvent::ConnectionClosed { .. } = c.select_next_some().await {
                    return t0.elapsed();
                }
            }
        })
        .await
        .expect("the gate dropped the peer without a proof")
    });
    assert!(closed_after >= Duration::from_secs(2), "{closed_after:?}");
    // The node that solved stays.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        peer(&node.peers(), &gate_id).is_some(),
        "{:?}",
        node.peers()
    );
    let s = gate.get("/net");
    assert!(u(&s["admission_disconnects"]) >= 1, "{s}");
    assert!(gate.log().contains("not admitted in time"));
}

#[test]
fn behind_nat_a_node_keeps_two_relays_found_in_the_dht_and_replaces_one_that_goes() {
    let root = tempfile::tempdir().unwrap();
    let topo = Topology::up(false, 1);
    let net = TestNet::with_block_time("autorelay", 0, 1, 1_000);
    let pub_ns = topo.ns("pub");
    let home1 = net.node_home_with(&root.path().join("r1"), Some(&net.authority), public_cfg);
    let r1 = Node::start_run_in(Some(&pub_ns), &home1, &[]);
    let bootstrap = format!("/ip4/{RELAY_IP}/tcp/{PORT}/p2p/{}", peer_id_of(&r1));
    // Other relays know only the first; they announce themselves in the DHT.
    let relay = |name: &str, port: u16| {
        let home = net.node_home_with(&root.path().join(name), None, |c| {
            public_cfg_at(c, port);
            c.p2p.bootstrap = vec![bootstrap.clone()];
        });
        Node::start_run_in(Some(&pub_ns), &home, &[])
    };
    let mut r2 = relay("r2", PORT + 1);
    let a_home = net.node_home_with(&root.path().join("a"), None, |c| private_cfg(c, &bootstrap));
    let a = Node::start_run_in(Some(&topo.ns("a1")), &a_home, &[]);
    let reservations = || u(&a.get("/net")["relay_reservations"]);
    let relayed_via = |r: &Node| {
        let id = peer_id_of(r);
        a.get("/net")["external_addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| {
                x.as_str()
                    .unwrap()
                    .contains(&format!("/p2p/{id}/p2p-circuit"))
            })
    };
    wait_until(90, "reservations on both relays", || {
        reservations() == 2 && relayed_via(&r1) && relayed_via(&r2)
    });
    // The second relay goes away; a third one appears, found in the DHT only.
    r2.stop();
    wait_until(30, "the lost reservation noticed", || reservations() == 1);
    let r3 = relay("r3", PORT + 2);
    wait_until(90, "a reservation on the new relay", || {
        reservations() == 2 && relayed_via(&r3)
    });
    assert!(!relayed_via(&r2), "{}", a.get("/net"));
    assert!(a.log().contains("relay reservation ended"));
    drop((a, r1, r3));
}
