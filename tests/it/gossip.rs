//! Live propagation between real nodes: gossip of transactions and compact blocks, pull
//! sync of the mempool, peer exchange, and a peer that gossips invalid transactions.

use std::path::Path;
use std::time::Duration;

use chainmesh_behaviours::gossip;
use chainmesh_node::config::Config;
use chainmesh_proto::{Tx, wire};
use futures::StreamExt;
use libp2p::Multiaddr;
use serde_json::Value;

use crate::chains::TestNet;
use crate::common::{Node, wait_until};
use crate::hostile::{attacker, runtime};

fn peer_id_of(n: &Node) -> String {
    n.p2p_addr().rsplit("/p2p/").next().unwrap().to_string()
}

fn peer_ids(n: &Node) -> Vec<String> {
    n.peers()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap().to_string())
        .collect()
}

fn net_stats(n: &Node) -> Value {
    n.get("/net")
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Waits until `n` produces its next block, so that what follows has a whole slot.
fn after_next_block(n: &Node) {
    let h = n.height();
    wait_until(30, "the next block", || n.height() > h);
}

fn peer_args(addrs: &[String]) -> Vec<String> {
    addrs
        .iter()
        .flat_map(|a| ["--peer".to_string(), a.clone()])
        .collect()
}

#[test]
fn ten_sparse_nodes_get_a_tx_into_every_mempool_then_into_a_block_on_all() {
    let root = tempfile::tempdir().unwrap();
    // Four-second slots: time for the transaction to reach all mempools before a block.
    let net = TestNet::with_block_time("gossiptest", 0, 1, 4_000);
    let sparse = |c: &mut Config| c.p2p.target_peers = 0;
    // A ring of ten with a chord from each of nodes 5..9 to the node five back: every node
    // has exactly three peers. Node 5 produces; transactions enter at node 0.
    let mut nodes: Vec<Node> = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..10 {
        let producer = (i == 5).then_some(&net.authority);
        let home = net.node_home_with(&root.path().join(format!("n{i}")), producer, sparse);
        let mut dial = Vec::new();
        if i >= 1 {
            dial.push(addrs[i - 1].clone());
        }
        if i >= 5 {
            dial.push(addrs[i - 5].clone());
        }
        if i == 9 {
            dial.push(addrs[0].clone());
        }
        let n = Node::start_run(&home, &peer_args(&dial));
        addrs.push(n.p2p_addr());
        nodes.push(n);
    }
    wait_until(30, "three peers each", || {
        nodes.iter().all(|n| n.peers().len() == 3)
    });
    // Gossipsub builds its meshes on its heartbeat.
    std::thread::sleep(Duration::from_secs(2));

    after_next_block(&nodes[5]);
    let chain = nodes[0].genesis_hash();
    let tx = Tx::transfer(&net.alice, &chain, net.authority.public(), 4_242, 1, 0);
    let (code, body) = nodes[0].post_tx(&tx);
    assert_eq!(code, 202, "{body}");
    let path = format!("/txs/{}", tx.id());
    wait_until(3, "the tx in all ten mempools", || {
        nodes.iter().all(|n| n.get(&path)["status"] == "pending")
    });
    wait_until(15, "the tx in a block on all ten", || {
        nodes.iter().all(|n| n.get(&path)["status"] == "included")
    });
    let block = nodes[0].get(&path)["block"].clone();
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            n.get(&path)["block"],
            block,
            "node {i} included it elsewhere"
        );
        let s = net_stats(n);
        assert_eq!(u(&s["tx_rejected"]), 0, "node {i}: {s}");
        if i != 5 {
            // Blocks reach it as announcements rebuilt from its own mempool.
            assert!(u(&s["relay_from_pool"]) >= 1, "node {i}: {s}");
        }
    }
}

#[test]
fn compact_announcements_cost_under_a_tenth_of_the_block() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::with_block_time("compacttest", 0, 1, 8_000);
    let roomy = |c: &mut Config| {
        c.mempool.max_per_sender = 1_000;
        c.p2p.target_peers = 0;
    };
    let p_home = net.node_home_with(&root.path().join("p"), Some(&net.authority), roomy);
    let a_home = net.node_home_with(&root.path().join("a"), None, roomy);
    let b_home = net.node_home_with(&root.path().join("b"), None, roomy);
    let p = Node::start_run(&p_home, &[]);
    let a = Node::start_run(&a_home, &peer_args(&[p.p2p_addr()]));
    let b = Node::start_run(&b_home, &peer_args(&[a.p2p_addr()]));
    wait_until(20, "a line of three", || {
        a.peers().len() == 2 && b.peers().len() == 1
    });
    std::thread::sleep(Duration::from_secs(2));

    after_next_block(&p);
    let chain = p.genesis_hash();
    let n = 300;
    for nonce in 0..n {
        let tx = Tx::transfer(&net.alice, &chain, net.authority.public(), 1, 1, nonce);
        let (code, body) = p.post_tx(&tx);
        assert_eq!(code, 202, "{body}");
    }
    wait_until(5, "all txs in b's mempool", || {
        b.status()["mempool_txs"] == n
    });
    wait_until(20, "the block at b", || b.status()["mempool_txs"] == 0);
    let s = net_stats(&b);
    let received = u(&s["announcement_bytes"]) + u(&s["fetched_bytes"]);
    let block = u(&s["block_bytes"]);
    assert!(block > 40_000, "{s}");
    assert!(
        (received as f64) < 0.1 * block as f64,
        "announcements cost {received} bytes for {block} bytes of blocks: {s}"
    );
    assert_eq!(u(&s["relay_full_fetches"]), 0, "{s}");
    // Gossipsub's own byte counters are exported too (every copy received, duplicates
    // included), per topic.
    let m = b.get_text("/metrics");
    let line = m
        .lines()
        .find(|l| {
            l.starts_with("gossipsub_topic_msg_recv_bytes_unfiltered") && l.contains("/block/1")
        })
        .unwrap_or_else(|| panic!("no gossipsub byte counter in /metrics:\n{m}"));
    let counted: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        counted >= u(&s["announcement_bytes"]) as f64,
        "{line} vs {s}"
    );
    eprintln!(
        "compact relay: {received} bytes received for {block} bytes of blocks ({:.1}%)",
        100.0 * received as f64 / block as f64
    );
}

#[test]
fn a_late_node_without_gossip_pulls_the_whole_pool_and_keeps_it_across_a_restart() {
    let root = tempfile::tempdir().unwrap();
    // Nobody produces: the transactions stay pending.
    let net = TestNet::new("pooltest", 0);
    let roomy = |c: &mut Config| c.mempool.max_per_sender = 1_000;
    let a_home = net.node_home_with(&root.path().join("a"), None, roomy);
    let c_home = net.node_home_with(&root.path().join("c"), None, |c| {
        roomy(c);
        c.p2p.gossip = false;
    });
    let a = Node::start_run(&a_home, &[]);
    let chain = a.genesis_hash();
    let n = 500u64;
    for nonce in 0..n {
        let tx = Tx::transfer(&net.alice, &chain, net.authority.public(), 1, 1, nonce);
        let (code, body) = a.post_tx(&tx);
        assert_eq!(code, 202, "{body}");
    }
    let mut c = Node::start_run(&c_home, &peer_args(&[a.p2p_addr()]));
    wait_until(30, "the whole pool at c", || c.status()["mempool_txs"] == n);
    wait_until(5, "pool sync's counters", || {
        u(&net_stats(&c)["pool_txs_added"]) == n
    });
    let s = net_stats(&c);
    assert_eq!(u(&s["tx_received"]), 0, "gossip is off: {s}");
    // Same transactions, not just the same count.
    let alice = net.alice.public();
    assert_eq!(c.account(&alice)["next_nonce"], n);

    c.stop();
    let c = Node::start_run(&c_home, &[]);
    assert_eq!(c.status()["mempool_txs"], n, "the pool survives a restart");
}

#[test]
fn invalid_gossip_stops_at_the_first_hop_and_its_sender_is_dropped() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("spamtest", 0);
    let a_home = net.node_home(&root.path().join("a"));
    let b_home = net.node_home(&root.path().join("b"));
    let a = Node::start_run(&a_home, &[]);
    let b = Node::start_run(&b_home, &peer_args(&[a.p2p_addr()]));
    wait_until(20, "a and b connected", || b.peers().len() == 1);
    let target: Multiaddr = a.p2p_addr().parse().unwrap();
    let chain = a.genesis_hash();
    let topic = gossip::tx_topic("spamtest");

    // The attacker runs on its own thread; after each invalid transaction it tells the
    // test, which reads the attacker's score at `a`.
    let (published_tx, published) = std::sync::mpsc::sync_channel::<String>(1);
    let alice = net.alice.clone();
    let to = net.authority.public();
    let attack = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut s = attacker(|k| gossip::new(k, "spamtest").unwrap());
            let me = s.local_peer_id().to_string();
            s.behaviour_mut().subscribe(&topic).unwrap();
            s.dial(target).unwrap();
            let mut pause = Duration::from_secs(2); // connection and subscriptions settle
            for i in 0..12u64 {
                let t = tokio::time::sleep(pause);
                tokio::pin!(t);
                loop {
                    tokio::select! {
                        _ = s.select_next_some() => {}
                        _ = &mut t => break,
                    }
                }
                let mut tx = Tx::transfer(&alice, &chain, to, 1 + i, 1, 0);
                tx.signature.0[0] ^= 0xff;
                let _ = s
                    .behaviour_mut()
                    .publish(topic.clone(), wire::encode_tx(&tx));
                pause = Duration::from_millis(300);
                if published_tx.send(me.clone()).is_err() {
                    break;
                }
            }
        })
    });
    let mut scores = Vec::new();
    let mut attacker_id = String::new();
    while let Ok(me) = published.recv() {
        std::thread::sleep(Duration::from_millis(150));
        scores.push(
            a.peers()
                .iter()
                .find(|p| p["peer_id"] == me.as_str())
                .map(|p| p["score"].as_f64().unwrap()),
        );
        attacker_id = me;
    }
    attack.join().unwrap();
    eprintln!("attacker score at a after each invalid tx: {scores:?}");
    // The score went down while it was connected, then it was gone.
    let seen: Vec<f64> = scores.iter().flatten().copied().collect();
    assert!(
        !seen.is_empty(),
        "the attacker was never listed: {scores:?}"
    );
    assert!(seen.windows(2).all(|w| w[1] <= w[0]), "{scores:?}");
    assert!(seen[0] < 0.0, "{scores:?}");
    assert!(
        scores.last().unwrap().is_none(),
        "still connected: {scores:?}"
    );
    assert!(
        a.log().contains("disconnecting a misbehaving peer") || a.log().contains("banning peer"),
        "no disconnect logged"
    );
    assert!(!peer_ids(&a).contains(&attacker_id));
    let (sa, sb) = (net_stats(&a), net_stats(&b));
    assert!(u(&sa["tx_rejected"]) >= 1, "{sa}");
    assert_eq!(
        u(&sb["tx_received"]),
        0,
        "an invalid tx reached a second hop: {sb}"
    );
    assert_eq!(a.status()["mempool_txs"], 0);
}

#[test]
fn a_node_at_its_limit_hands_out_addresses_which_survive_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("pextest", 0);
    let home = |name: &str, tweak: &dyn Fn(&mut Config)| -> std::path::PathBuf {
        net.node_home_with(&root.path().join(name), None, tweak)
    };
    let a = Node::start_run(&home("a", &|_| {}), &[]);
    let b = Node::start_run(&home("b", &|_| {}), &[]);
    let full = |c: &mut Config| {
        c.p2p.max_peers = 2;
        c.p2p.target_peers = 2;
    };
    let f = Node::start_run(&home("f", &full), &peer_args(&[a.p2p_addr(), b.p2p_addr()]));
    wait_until(20, "f with its two peers", || f.peers().len() == 2);

    let n_home: &Path = &home("n", &|_| {});
    let mut n = Node::start_run(n_home, &peer_args(&[f.p2p_addr()]));
    let (ida, idb) = (peer_id_of(&a), peer_id_of(&b));
    wait_until(30, "n connected to a and b", || {
        let p = peer_ids(&n);
        p.contains(&ida) && p.contains(&idb)
    });
    assert!(f.log().contains("at the peer limit"));
    let s = net_stats(&n);
    assert!(u(&s["pex_records_received"]) >= 2, "{s}");

    // Restarted with no peers given, n finds them again from its address book.
    std::thread::sleep(Duration::from_millis(500));
    n.stop();
    let n = Node::start_run(n_home, &[]);
    assert!(u(&net_stats(&n)["known_addresses"]) >= 2);
    wait_until(30, "n reconnected from its address book", || {
        let p = peer_ids(&n);
        p.contains(&ida) && p.contains(&idb)
    });
}

/// Issue 9, item 3: a peer publishes 10,000 invalid transactions as fast as it can while
/// honest transactions are submitted. The honest ones all arrive everywhere, the attacker
/// is cut off after a handful, and memory does not follow the flood.
#[test]
fn a_flood_of_invalid_txs_is_cut_off_and_honest_txs_still_reach_every_node() {
    const FLOOD: u64 = 10_000;
    const HONEST: u64 = 200;
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("floodtest", 0);
    let tweak = |c: &mut Config| c.mempool.max_per_sender = 1_000;
    let homes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| net.node_home_with(&root.path().join(n), None, tweak))
        .collect();
    let a = Node::start_run(&homes[0], &[]);
    let b = Node::start_run(&homes[1], &peer_args(&[a.p2p_addr()]));
    let c = Node::start_run(&homes[2], &peer_args(&[a.p2p_addr(), b.p2p_addr()]));
    let nodes = [&a, &b, &c];
    wait_until(20, "a, b and c connected", || {
        nodes.iter().all(|n| n.peers().len() == 2)
    });
    let rss_before: Vec<u64> = nodes.iter().map(|n| n.rss_kib()).collect();
    let targets: Vec<Multiaddr> = [&a, &b]
        .iter()
        .map(|n| n.p2p_addr().parse().unwrap())
        .collect();
    let chain = a.genesis_hash();
    let topic = gossip::tx_topic("floodtest");
    let (alice, to) = (net.alice.clone(), net.authority.public());

    let started = std::time::Instant::now();
    let flood = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut s = attacker(|k| gossip::new(k, "floodtest").unwrap());
            s.behaviour_mut().subscribe(&topic).unwrap();
            for t in &targets {
                s.dial(t.clone()).unwrap();
            }
            // Connections and subscriptions settle.
            let settle = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    _ = s.select_next_some() => {}
                    _ = &mut settle => break,
                }
            }
            let (mut published, mut refused, mut redials) = (0u64, 0u64, 0u64);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let mut last_dial = tokio::time::Instant::now();
            let mut i = 0;
            while i < FLOOD && tokio::time::Instant::now() < deadline {
                // A persistent attacker: dropped, it comes back (until it is banned).
                if s.connected_peers().count() < targets.len()
                    && last_dial.elapsed() >= Duration::from_millis(200)
                {
                    for t in &targets {
                        let _ = s.dial(t.clone());
                        redials += 1;
                    }
                    last_dial = tokio::time::Instant::now();
                }
                for _ in 0..50 {
                    let mut tx = Tx::transfer(&alice, &chain, to, 1 + i, 1, i);
                    tx.signature.0[0] ^= 0xff;
                    match s
                        .behaviour_mut()
                        .publish(topic.clone(), wire::encode_tx(&tx))
                    {
                        Ok(_) => published += 1,
                        Err(_) => refused += 1,
                    }
                    i += 1;
                }
                // Let the swarm write what was published.
                let _ = tokio::time::timeout(Duration::from_millis(1), async {
                    loop {
                        s.select_next_some().await;
                    }
                })
                .await;
            }
            // The node polices graylisted peers once a second: a reconnection made just
            // before the flood ended gets that second (and some) to be banned.
            let settle = tokio::time::Instant::now() + Duration::from_secs(3);
            while s.connected_peers().count() > 0 && tokio::time::Instant::now() < settle {
                let _ = tokio::time::timeout(Duration::from_millis(50), s.select_next_some()).await;
            }
            (i, published, refused, redials, s.connected_peers().count())
        })
    });

    // Meanwhile the honest transactions, at b, about 100 a second.
    let mut accepted = 0;
    for n in 0..HONEST {
        let tx = Tx::transfer(&net.alice, &chain, net.authority.public(), 1, 1, n);
        if b.post_tx(&tx).0 == 202 {
            accepted += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (attempted, published, refused, redials, still_connected) = flood.join().unwrap();
    let flood_secs = started.elapsed().as_secs_f64();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let pool = |n: &Node| n.status()["mempool_txs"].as_u64().unwrap_or(0);
    while nodes.iter().any(|n| pool(n) < accepted) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let delivered: Vec<u64> = nodes.iter().map(|n| pool(n)).collect();
    let rejected: Vec<u64> = nodes
        .iter()
        .map(|n| u(&net_stats(n)["tx_rejected"]))
        .collect();
    let rss_after: Vec<u64> = nodes.iter().map(|n| n.rss_kib()).collect();
    eprintln!(
        "flood: attacker tried {attempted} invalid txs in {flood_secs:.1} s: {published} published, {refused} refused by its own gossipsub (no peer left), {redials} redials, still connected to {still_connected}; \
         honest: {accepted} accepted at b, in the mempools of a/b/c: {delivered:?}; invalid txs validated by a/b/c: {rejected:?}; RSS KiB before {rss_before:?} after {rss_after:?}"
    );
    assert_eq!(accepted, HONEST);
    for d in &delivered {
        assert!(
            *d * 100 >= accepted * 99,
            "honest delivery {delivered:?} of {accepted}"
        );
    }
    assert_eq!(
        attempted, FLOOD,
        "the flood did not finish in its time bound"
    );
    // Cut off after a few dozen at most: each invalid tx costs 20 points, a ban is at -90.
    assert!(
        rejected.iter().all(|r| *r <= 50),
        "validated {rejected:?} invalid txs"
    );
    assert_eq!(still_connected, 0, "the attacker is still connected");
    for n in [&a, &b] {
        assert!(n.log().contains("banning peer"), "no ban logged");
    }
    for (before, after) in rss_before.iter().zip(&rss_after) {
        assert!(
            after < &(before + 50 * 1024),
            "RSS {rss_before:?} -> {rss_after:?}"
        );
    }
}
