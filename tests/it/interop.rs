//! Interop with js-libp2p: a js peer (`tests/interop/peer.mjs`, npm packages pinned by
//! its `package-lock.json`) runs as a child process, driven over stdin/stdout JSON lines.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Once;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use chainmesh_node::config::{Config, KadMode};
use serde_json::{Value, json};

use crate::chains::TestNet;
use crate::common::{Node, wait_until};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// `npm ci` once per test run if the packages are not there yet (CI runs it too).
fn ensure_packages() {
    static NPM: Once = Once::new();
    NPM.call_once(|| {
        let dir = interop_dir();
        if dir.join("node_modules/libp2p").exists() {
            return;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("run npm (Node.js 20 and npm are needed for the interop tests)");
        assert!(
            out.status.success(),
            "npm ci in tests/interop failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

pub struct JsPeer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<Value>,
    /// Events seen while waiting for answers.
    events: Vec<Value>,
    next_id: u64,
    pub peer_id: String,
    pub addr: String,
}

impl JsPeer {
    pub fn start(network_id: &str) -> JsPeer {
        JsPeer::start_with(&["--net", network_id])
    }

    pub fn start_with(args: &[&str]) -> JsPeer {
        ensure_packages();
        let mut child = Command::new("node")
            .arg(interop_dir().join("peer.mjs"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node peer.mjs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("js peer: {line}"),
                }
            }
        });
        let stdin = child.stdin.take().unwrap();
        let mut p = JsPeer {
            child,
            stdin,
            lines,
            events: Vec::new(),
            next_id: 1,
            peer_id: String::new(),
            addr: String::new(),
        };
        let ready = p.wait_event(30, "the js peer ready", |e| e["event"] == "ready");
        p.peer_id = ready["peer_id"].as_str().unwrap().to_string();
        p.addr = ready["addrs"][0].as_str().unwrap().to_string();
        p
    }

    /// Sends a command and waits for its answer: `Ok(value)` or the js error text.
    pub fn call(&mut self, mut cmd: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        writeln!(self.stdin, "{cmd}").expect("write to the js peer");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["id"] == json!(id) => {
                    return match v.get("error") {
                        Some(e) => Err(e.as_str().unwrap_or("?").to_string()),
                        None => Ok(v["ok"].clone()),
                    };
                }
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) => panic!("js peer: no answer to {cmd}"),
                Err(RecvTimeoutError::Disconnected) => panic!("js peer exited during {cmd}"),
            }
        }
    }

    /// Waits for an event matching `f` (seen before or arriving within `secs`).
    pub fn wait_event(&mut self, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.events.iter().position(&f) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if f(&v) => return v,
                Ok(v) => self.events.push(v),
                Err(_) => panic!(
                    "timed out after {secs} s waiting for {what}; saw {:?}",
                    self.events
                ),
            }
        }
    }
}

impl Drop for JsPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// FIND_NODE from the js peer. A lookup can come back empty while the routing tables
/// are still filling (identify, then the DHT's own bookkeeping, on a loaded machine):
/// five tries, a second apart.
fn find_peer(js: &mut JsPeer, peer: &str, protocol: &str) -> Value {
    let mut last = String::new();
    for _ in 0..5 {
        match js.call(json!({"cmd": "find_peer", "peer": peer})) {
            Ok(v) => return v,
            Err(e) => {
                eprintln!("FIND_NODE over {protocol}: {e} (retrying)");
                last = e
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("FIND_NODE over {protocol}: {last}")
}

fn peer_id_of(n: &Node) -> String {
    n.p2p_addr().rsplit("/p2p/").next().unwrap().to_string()
}

fn js_agent(n: &Node, js: &str) -> Option<String> {
    n.peers()
        .iter()
        .find(|p| p["peer_id"] == js)
        .and_then(|p| p["agent"].as_str().map(String::from))
}

#[test]
fn a_js_peer_and_a_node_dial_each_other_identify_and_ping() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("interop", 0);
    let n1 = Node::start_run(&net.node_home(&root.path().join("n1")), &[]);
    let mut js = JsPeer::start("interop");
    // The js peer dials the node.
    let n1_id = peer_id_of(&n1);
    let dialled = js
        .call(json!({"cmd": "dial", "addr": n1.p2p_addr()}))
        .unwrap();
    assert_eq!(dialled["peer"], json!(n1_id));
    let id = js.wait_event(20, "identify of the node", |e| {
        e["event"] == "identify" && e["peer"] == json!(n1_id)
    });
    assert!(
        id["agent"].as_str().unwrap().starts_with("chainmesh/"),
        "{id}"
    );
    let rtt = js.call(json!({"cmd": "ping", "peer": n1_id})).unwrap();
    assert!(rtt["rtt_ms"].as_f64().is_some(), "{rtt}");
    wait_until(20, "the node's view of the js agent", || {
        js_agent(&n1, &js.peer_id).is_some_and(|a| a.contains("js-libp2p"))
    });
    let log = n1.log();
    assert!(
        log.contains("chainmesh-interop-js/1 (js-libp2p)"),
        "{}",
        log.lines()
            .filter(|l| l.contains("identif"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The node dials the js peer.
    let n2 = Node::start_run(
        &net.node_home(&root.path().join("n2")),
        &["--peer".into(), js.addr.clone()],
    );
    let n2_id = peer_id_of(&n2);
    js.wait_event(30, "identify of the dialling node", |e| {
        e["event"] == "identify" && e["peer"] == json!(n2_id)
    });
    let rtt = js.call(json!({"cmd": "ping", "peer": n2_id})).unwrap();
    assert!(rtt["rtt_ms"].as_f64().is_some(), "{rtt}");
    // libp2p's ping from the node's side: its first round trip lands in /peers.
    wait_until(30, "the node's ping of the js peer", || {
        n2.peers()
            .iter()
            .any(|p| p["peer_id"] == json!(js.peer_id) && p["rtt_ms"].as_u64().is_some())
    });
    assert!(js_agent(&n2, &js.peer_id).is_some_and(|a| a.contains("js-libp2p")));
    assert!(
        n2.peers()
            .iter()
            .any(|p| p["peer_id"] == json!(js.peer_id) && p["direction"] == "outbound")
    );
}

#[test]
fn a_js_peer_finds_a_third_node_through_the_first_over_our_kademlia() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("interopkad", 0);
    // On loopback nobody is publicly reachable: the nodes are DHT servers by config.
    let server = |c: &mut Config| c.p2p.discovery.kad_mode = KadMode::Server;
    let n1 = Node::start_run(
        &net.node_home_with(&root.path().join("n1"), None, server),
        &[],
    );
    let n3 = Node::start_run(
        &net.node_home_with(&root.path().join("n3"), None, server),
        &["--peer".into(), n1.p2p_addr()],
    );
    let n3_id = peer_id_of(&n3);
    wait_until(20, "n3 connected to n1", || {
        n1.peers().iter().any(|p| p["peer_id"] == json!(n3_id))
    });
    let mut js = JsPeer::start("interopkad");
    js.call(json!({"cmd": "dial", "addr": n1.p2p_addr()}))
        .unwrap();
    // The js DHT adds n1 once identify shows our protocol name.
    let n1_id = peer_id_of(&n1);
    let id = js.wait_event(20, "identify of n1", |e| {
        e["event"] == "identify" && e["peer"] == json!(n1_id)
    });
    assert!(
        id["protocols"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/chainmesh/interopkad/kad/1"),
        "{id}"
    );
    let found = find_peer(&mut js, &n3_id, "/chainmesh/interopkad/kad/1");
    assert_eq!(found["peer"], json!(n3_id));
    let n3_port = n3
        .p2p_addr()
        .split("/tcp/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        found["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str().unwrap().contains(&format!("/tcp/{n3_port}"))),
        "{found}"
    );
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn gossip_with_a_js_peer_carries_valid_txs_both_ways_and_stops_its_garbage() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::with_block_time("interopgossip", 0, 1, 2_000);
    let n1 = Node::start_run(
        &net.node_home_with(&root.path().join("n1"), Some(&net.authority), |_| {}),
        &[],
    );
    let n2 = Node::start_run(
        &net.node_home(&root.path().join("n2")),
        &["--peer".into(), n1.p2p_addr()],
    );
    let mut js = JsPeer::start("interopgossip");
    let tx_topic = "chainmesh/interopgossip/tx/1";
    js.call(json!({"cmd": "subscribe", "topic": tx_topic}))
        .unwrap();
    js.call(json!({"cmd": "dial", "addr": n1.p2p_addr()}))
        .unwrap();
    wait_until(20, "n2 connected", || !n2.peers().is_empty());
    // Gossipsub builds its meshes on its heartbeat.
    std::thread::sleep(Duration::from_secs(3));
    let genesis = n1.genesis_hash();
    let to = chainmesh_proto::PublicKey([9; 32]);

    // A valid signed transaction published by the js peer: in the node's pool, then in a
    // block, and forwarded to n2.
    let tx = chainmesh_proto::Tx::transfer(&net.alice, &genesis, to, 11, 1, 0);
    let data = hex_of(&chainmesh_proto::wire::encode_tx(&tx));
    js.call(json!({"cmd": "publish", "topic": tx_topic, "data_hex": data}))
        .unwrap();
    let path = format!("/txs/{}", tx.id());
    wait_until(20, "the js tx at n2", || {
        matches!(
            n2.get(&path)["status"].as_str(),
            Some("pending" | "included")
        )
    });
    wait_until(30, "the js tx in a block", || {
        n1.get(&path)["status"] == "included"
    });

    // A transaction submitted at n2 reaches the js peer, byte for byte.
    let tx2 = chainmesh_proto::Tx::transfer(&net.alice, &genesis, to, 12, 1, 1);
    assert_eq!(n2.post_tx(&tx2).0, 202);
    let want = hex_of(&chainmesh_proto::wire::encode_tx(&tx2));
    js.wait_event(20, "n2's tx at the js peer", |e| {
        e["event"] == "message" && e["topic"] == tx_topic && e["data_hex"] == json!(want)
    });

    // Garbage from the js peer: rejected at n1, never forwarded to n2, and the js peer's
    // score falls until n1 drops it (−20 per invalid message, disconnect at −50).
    let n1_id = peer_id_of(&n1);
    let rejected_before = n1.get("/net")["tx_rejected"].as_u64().unwrap();
    for i in 0..5u8 {
        let junk = hex_of(&[0xab, i, 0xff, 0x00, 0x13, 0x37]);
        // Once n1 has dropped the peer, publishing fails or reaches nobody: fine.
        let _ = js.call(json!({"cmd": "publish", "topic": tx_topic, "data_hex": junk}));
    }
    wait_until(20, "the garbage rejected at n1", || {
        n1.get("/net")["tx_rejected"].as_u64().unwrap() >= rejected_before + 3
    });
    js.wait_event(20, "n1 dropping the js peer", |e| {
        e["event"] == "disconnected" && e["peer"] == json!(n1_id)
    });
    assert!(
        n1.log().contains("gossiped an invalid")
            || n1.log().contains("disconnecting a misbehaving peer")
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        n2.get("/net")["tx_rejected"],
        json!(0),
        "garbage reached a second hop"
    );
    assert!(!n1.peers().iter().any(|p| p["peer_id"] == json!(js.peer_id)));
}

#[test]
fn a_js_peer_speaks_status_and_sync_and_a_js_peer_of_another_genesis_is_refused() {
    let root = tempfile::tempdir().unwrap();
    // Twenty blocks in the past, with transactions in them.
    let net = TestNet::new("interopsync", 30);
    let home = net.node_home(&root.path().join("n1"));
    let tip = net.build_chain(&home, 20, 3);
    let n1 = Node::start_run(&home, &[]);
    let n1_id = peer_id_of(&n1);
    let genesis = n1.genesis_hash();
    let mut js = JsPeer::start("interopsync");
    js.call(json!({"cmd": "dial", "addr": n1.p2p_addr()}))
        .unwrap();

    let theirs = js
        .call(json!({"cmd": "status", "peer": n1_id, "genesis": genesis.to_string()}))
        .unwrap();
    assert_eq!(theirs["genesis"], json!(genesis.to_string()));
    assert_eq!(theirs["best_height"], json!(20));
    assert_eq!(theirs["best_hash"], json!(tip.to_string()));

    // Headers after the genesis: hashes computed in JS match the node's chain.
    let headers = js
        .call(json!({"cmd": "headers", "peer": n1_id, "locator": [genesis.to_string()], "max": 64}))
        .unwrap();
    let headers = headers.as_array().unwrap();
    assert_eq!(headers.len(), 20);
    for h in headers {
        let height = h["height"].as_u64().unwrap();
        let node_hash = n1.get(&format!("/blocks/{height}"))["hash"].clone();
        assert_eq!(h["hash"], node_hash, "height {height}");
    }
    assert_eq!(headers[19]["hash"], json!(tip.to_string()));
    // Bodies: the tx root computed in JS from the transactions matches each header.
    let hashes: Vec<Value> = headers.iter().map(|h| h["hash"].clone()).collect();
    let blocks = js
        .call(json!({"cmd": "blocks", "peer": n1_id, "hashes": hashes}))
        .unwrap();
    let blocks = blocks.as_array().unwrap();
    assert_eq!(blocks.len(), 20);
    for (b, h) in blocks.iter().zip(headers) {
        assert_eq!(b["hash"], h["hash"]);
        assert_eq!(b["txs"], json!(3));
        assert_eq!(b["tx_root_ok"], json!(true), "{b}");
    }

    // Another genesis: the node answers with its own status, logs why, and drops the peer.
    let mut other = JsPeer::start("interopsync");
    other
        .call(json!({"cmd": "dial", "addr": n1.p2p_addr()}))
        .unwrap();
    let wrong = "ab".repeat(32);
    let answer = other
        .call(json!({"cmd": "status", "peer": n1_id, "genesis": wrong}))
        .unwrap();
    assert_eq!(answer["genesis"], json!(genesis.to_string()));
    other.wait_event(
        10,
        "the node dropping the js peer of another genesis",
        |e| e["event"] == "disconnected" && e["peer"] == json!(n1_id),
    );
    let log = n1.log();
    assert!(
        log.lines()
            .any(|l| l.contains("refusing peer") && l.contains(&other.peer_id)),
        "{log}"
    );
    // The compatible js peer is still there.
    assert!(n1.peers().iter().any(|p| p["peer_id"] == json!(js.peer_id)));
}

/// Mina's devnet chain id (the PSK test vector's).
const MINA_DEVNET: &str = "29936104443aaf264a7f0192ac64b1c7173198c1ed404c1bcff5e562e05eb7f6";

#[test]
fn in_the_mina_profile_a_js_peer_with_the_chain_psk_connects_and_one_without_cannot() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("minaprofile", 0);
    let mina = |c: &mut Config| {
        c.p2p.profile = chainmesh_node::config::Profile::Mina;
        c.p2p.chain_id = Some(MINA_DEVNET.into());
        c.p2p.discovery.kad_mode = KadMode::Server;
    };
    let n1 = Node::start_run(
        &net.node_home_with(&root.path().join("n1"), None, mina),
        &[],
    );
    let n3 = Node::start_run(
        &net.node_home_with(&root.path().join("n3"), None, mina),
        &["--peer".into(), n1.p2p_addr()],
    );
    // n4 is connected to n1 only and runs no DHT, so no lookup leads to it or from it:
    // what it receives on a Mina topic, n1 forwarded.
    let n4 = Node::start_run(
        &net.node_home_with(&root.path().join("n4"), None, |c| {
            mina(c);
            // No DHT at all: its own lookups would connect it to the js peer.
            c.p2p.discovery.kademlia = false;
            c.p2p.target_peers = 1;
        }),
        &["--peer".into(), n1.p2p_addr()],
    );
    let (n1_id, n3_id) = (peer_id_of(&n1), peer_id_of(&n3));
    wait_until(20, "two mina-profile nodes connected", || {
        n1.peers().iter().any(|p| p["peer_id"] == json!(n3_id))
    });
    assert!(
        n1.log().contains("the mina profile speaks TCP only") || !n1.p2p_addr().contains("quic")
    );

    let mut js = JsPeer::start_with(&["--net", "minaprofile", "--mina", MINA_DEVNET]);
    js.call(json!({"cmd": "dial", "addr": n1.p2p_addr()}))
        .unwrap_or_else(|e| panic!("a peer with the chain's PSK could not connect: {e}"));
    let id = js.wait_event(20, "identify over pnet", |e| {
        e["event"] == "identify" && e["peer"] == json!(n1_id)
    });
    assert!(
        id["protocols"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/coda/kad/1.0.0"),
        "{id}"
    );
    let rtt = js.call(json!({"cmd": "ping", "peer": n1_id})).unwrap();
    assert!(rtt["rtt_ms"].as_f64().is_some(), "{rtt}");
    wait_until(20, "the node's view of the js peer", || {
        js_agent(&n1, &js.peer_id).is_some_and(|a| a.contains("js-libp2p"))
    });

    // Gossip on Mina's topics, message ids computed the Mina way on both sides.
    let topic = "mina/tx/1.0.0";
    js.call(json!({"cmd": "subscribe", "topic": topic}))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let body = b"opaque bin_prot bytes";
    let mut framed = (body.len() as u64).to_le_bytes().to_vec();
    framed.extend_from_slice(body);
    let sent = js
        .call(json!({"cmd": "publish", "topic": topic, "data_hex": hex_of(&framed)}))
        .unwrap();
    wait_until(20, "the js peer's Mina message at n1", || {
        n1.get("/net")["mina_gossip_received"].as_u64() == Some(1)
    });
    assert_eq!(n1.get("/net")["mina_last_message_id"], sent["id_hex"]);
    // What we cannot validate we do not forward.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(n4.get("/net")["mina_gossip_received"], json!(0));
    // The node publishes from its API; the js peer gets the framed body, same id.
    let http = reqwest::blocking::Client::new();
    let r: Value = http
        .post(format!("{}/mina/publish", n1.api))
        .json(&json!({"topic": topic, "data_hex": hex_of(b"from the node")}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let got = js.wait_event(20, "the node's Mina message at the js peer", |e| {
        e["event"] == "message" && e["topic"] == topic
    });
    let mut want = 13u64.to_le_bytes().to_vec();
    want.extend_from_slice(b"from the node");
    assert_eq!(got["data_hex"], json!(hex_of(&want)));
    assert_eq!(got["id_hex"], r["message_id"], "{r}");
    // A bad frame is refused.
    js.call(json!({"cmd": "publish", "topic": topic, "data_hex": "ff00"}))
        .unwrap();
    wait_until(20, "the bad frame refused", || {
        n1.get("/net")["mina_gossip_rejected"].as_u64() == Some(1)
    });
    // Kademlia under Mina's name: the js peer finds n3 through n1 (and connects to it).
    let found = find_peer(&mut js, &n3_id, "/coda/kad/1.0.0");
    assert_eq!(found["peer"], json!(n3_id));
    // /mina/peer-exchange: n1 lists the peers it reached (n3 dialled n1, so n1 has no
    // confirmed address yet; n3 dialled n1 and lists it).
    let mut errors = Vec::new();
    let listed = (0..3)
        .find_map(
            |_| match js.call(json!({"cmd": "mina_px", "peer": n3_id})) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(e);
                    std::thread::sleep(Duration::from_secs(1));
                    None
                }
            },
        )
        .unwrap_or_else(|| panic!("/mina/peer-exchange: {errors:?}"));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["ID"] == json!(n1_id) && !p["Addrs"].as_array().unwrap().is_empty()),
        "{listed}"
    );

    // Without the PSK (or with another chain's) nothing gets through.
    let mut plain = JsPeer::start("minaprofile");
    let e = plain.call(json!({"cmd": "dial", "addr": n1.p2p_addr()}));
    assert!(e.is_err(), "a peer without the PSK connected: {e:?}");
    let other_chain = "00".repeat(32);
    let mut other = JsPeer::start_with(&["--net", "minaprofile", "--mina", &other_chain]);
    let e = other.call(json!({"cmd": "dial", "addr": n1.p2p_addr()}));
    assert!(e.is_err(), "a peer of another chain connected: {e:?}");
    assert!(
        !n1.peers()
            .iter()
            .any(|p| p["peer_id"] == json!(plain.peer_id))
    );
}
