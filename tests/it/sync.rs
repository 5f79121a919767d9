//! Multi-process sync: real `chainmesh` nodes on 127.0.0.1 syncing real stores.

use std::path::Path;

use serde_json::Value;

use crate::chains::{TestNet, copy_dir, snapshot};
use crate::common::{Node, wait_until};

fn height(n: &Node) -> u64 {
    n.status()["height"].as_u64().unwrap()
}

fn peer_args(sources: &[&Node]) -> Vec<String> {
    sources
        .iter()
        .flat_map(|s| ["--peer".to_string(), s.p2p_addr()])
        .collect()
}

/// A source node home holding `blocks` blocks, and `copies` more homes with a copy of
/// its database (each node makes its own p2p identity on first start).
fn sources(net: &TestNet, root: &Path, blocks: u64, copies: usize) -> Vec<std::path::PathBuf> {
    let first = net.node_home(&root.join("src0"));
    net.build_chain(&first, blocks, 2);
    let mut homes = vec![first.clone()];
    for i in 1..=copies {
        let h = net.node_home(&root.join(format!("src{i}")));
        copy_dir(&first.join("data/db"), &h.join("data/db"));
        homes.push(h);
    }
    homes
}

fn served(dest: &Node) -> Vec<(String, u64)> {
    dest.peers()
        .iter()
        .map(|p: &Value| {
            (
                p["peer_id"].as_str().unwrap().to_string(),
                p["blocks_served"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn empty_node_syncs_5000_blocks_from_one_peer() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("synctest", 6_000);
    let homes = sources(&net, root.path(), 5_000, 0);
    let mut src = Node::start_run(&homes[0], &[]);
    let dest_home = net.node_home(&root.path().join("dest"));
    let mut dest = Node::start_run(&dest_home, &peer_args(&[&src]));
    let target = src.status()["tip"].clone();
    wait_until(240, "the tip of the source", || {
        dest.status()["tip"] == target
    });
    assert_eq!(height(&dest), 5_000);
    src.kill9();
    dest.kill9();
    let (a, b) = (
        snapshot(&homes[0], &net.genesis),
        snapshot(&dest_home, &net.genesis),
    );
    assert_eq!(a.0, b.0, "tips differ");
    assert_eq!(a.1, b.1, "account state differs");
    assert!(a.1.len() > 100);
}

#[test]
fn syncs_from_three_peers_each_serving_a_share() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("synctest", 4_000);
    let homes = sources(&net, root.path(), 3_000, 2);
    let srcs: Vec<Node> = homes.iter().map(|h| Node::start_run(h, &[])).collect();
    let dest_home = net.node_home(&root.path().join("dest"));
    let refs: Vec<&Node> = srcs.iter().collect();
    let dest = Node::start_run(&dest_home, &peer_args(&refs));
    let target = srcs[0].status()["tip"].clone();
    wait_until(240, "the tip of the sources", || {
        dest.status()["tip"] == target
    });
    let shares = served(&dest);
    eprintln!("blocks served per peer: {shares:?}");
    assert_eq!(shares.len(), 3, "{shares:?}");
    for (peer, n) in &shares {
        assert!(*n > 0, "peer {peer} served nothing: {shares:?}");
    }
    assert!(shares.iter().map(|s| s.1).sum::<u64>() >= 3_000);
}

#[test]
fn sync_survives_a_serving_peer_killed_midway() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("synctest", 5_000);
    let homes = sources(&net, root.path(), 4_000, 2);
    let mut srcs: Vec<Node> = homes.iter().map(|h| Node::start_run(h, &[])).collect();
    let dest_home = net.node_home(&root.path().join("dest"));
    let refs: Vec<&Node> = srcs.iter().collect();
    let mut dest = Node::start_run(&dest_home, &peer_args(&refs));
    let target = srcs[0].status()["tip"].clone();
    wait_until(240, "sync to pass height 500", || height(&dest) >= 500);
    let at_kill = height(&dest);
    srcs[1].kill9();
    assert!(at_kill < 4_000, "sync finished before the kill ({at_kill})");
    wait_until(240, "the tip of the sources", || {
        dest.status()["tip"] == target
    });
    eprintln!(
        "killed a source at height {at_kill}; shares: {:?}",
        served(&dest)
    );
    dest.kill9();
    for s in &mut srcs {
        s.kill9();
    }
    let (a, b) = (
        snapshot(&homes[0], &net.genesis),
        snapshot(&dest_home, &net.genesis),
    );
    assert_eq!(a, b);
}

#[test]
fn a_node_of_another_genesis_is_refused_and_stays_banned() {
    let root = tempfile::tempdir().unwrap();
    let ours = TestNet::new("synctest", 100);
    let theirs = TestNet::new("synctest", 100);
    let a_home = ours.node_home(&root.path().join("a"));
    ours.build_chain(&a_home, 50, 1);
    let a = Node::start_run(&a_home, &[]);
    let c_home = theirs.node_home(&root.path().join("c"));
    let args = peer_args(&[&a]);
    let mut c = Node::start_run(&c_home, &args);
    wait_until(30, "both sides to log the refusal", || {
        a.log().contains("genesis mismatch") && c.log().contains("genesis mismatch")
    });
    // Neither syncs from the other, and the connection is gone.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(height(&c), 0);
    assert!(a.peers().is_empty(), "{:?}", a.peers());
    assert!(c.peers().is_empty(), "{:?}", c.peers());
    // Restarted, `c` redials `a` (every second): the persisted ban keeps them apart.
    c.kill9();
    let c = Node::start_run(&c_home, &args);
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(height(&c), 0);
    assert!(a.peers().is_empty() && c.peers().is_empty());
    assert_eq!(
        a.log().matches("refusing peer").count(),
        1,
        "a handshake happened again"
    );
    assert!(!c.log().contains("peer joined"));
}

#[test]
fn nodes_sync_over_quic() {
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("synctest", 300);
    let quic = |c: &mut chainmesh_node::config::Config| {
        c.p2p.listen = vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()]
    };
    let src_home = net.node_home_with(&root.path().join("src"), None, quic);
    net.build_chain(&src_home, 200, 1);
    let src = Node::start_run(&src_home, &[]);
    let addrs = std::fs::read_to_string(src_home.join("data/p2p.addrs")).unwrap_or_default();
    let addr = {
        let mut a = addrs
            .lines()
            .find(|l| l.contains("/quic-v1/"))
            .map(str::to_string);
        wait_until(15, "a QUIC listen address", || {
            a = std::fs::read_to_string(src_home.join("data/p2p.addrs"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("/quic-v1/"))
                .map(str::to_string);
            a.is_some()
        });
        a.unwrap()
    };
    let dest_home = net.node_home_with(&root.path().join("dest"), None, quic);
    let dest = Node::start_run(&dest_home, &["--peer".into(), addr]);
    let target = src.status()["tip"].clone();
    wait_until(60, "sync over QUIC", || dest.status()["tip"] == target);
    assert!(
        dest.peers()[0]["address"]
            .as_str()
            .unwrap()
            .contains("/quic-v1")
    );
}
