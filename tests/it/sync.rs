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
    // Per-protocol bytes and request latencies count the sync (refreshed every second).
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let sync_in = dest.metric(
        "chainmesh_protocol_bytes_total",
        &[("protocol", "sync"), ("direction", "in")],
    );
    let sync_out = src.metric(
        "chainmesh_protocol_bytes_total",
        &[("protocol", "sync"), ("direction", "out")],
    );
    assert!(sync_in.is_some_and(|b| b > 5_000.0 * 100.0), "{sync_in:?}");
    assert!(
        sync_out >= sync_in,
        "{sync_out:?} served, {sync_in:?} received"
    );
    let answered = dest.metric("chainmesh_request_duration_seconds", &[("request", "sync")]);
    assert!(
        answered.is_some_and(|n| n >= 5.0),
        "{answered:?} sync answers"
    );
    let imported = dest.metric("chainmesh_blocks_imported_total", &[("source", "peers")]);
    assert_eq!(imported, Some(5_000.0));
    // Off a terminal: log lines, no bar.
    let log = dest.log();
    assert!(log.contains("sync complete"), "{}", dest.log_tail());
    assert!(!log.contains("ETA"), "a progress bar in a log file");
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

#[test]
fn a_terminal_shows_a_progress_bar_while_the_node_syncs() {
    use std::os::unix::process::CommandExt;
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::new("bartest", 6_000);
    let homes = sources(&net, root.path(), 5_000, 0);
    let src = Node::start_run(&homes[0], &[]);
    let dest_home = net.node_home(&root.path().join("dest"));
    // `script` (util-linux) gives the node a pseudo-terminal and copies what it draws.
    let screen = dest_home.join("screen.txt");
    let cmd = format!(
        "{} run --config {} --peer {}",
        crate::common::bin(),
        dest_home.join("config.toml").display(),
        src.p2p_addr()
    );
    let mut term = std::process::Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&screen).unwrap())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("script (util-linux) runs the node in a pseudo-terminal");
    let target = src.status()["tip"].clone();
    let api_file = dest_home.join("data/api.addr");
    let http = reqwest::blocking::Client::new();
    let synced = || -> bool {
        let Ok(a) = std::fs::read_to_string(&api_file) else {
            return false;
        };
        http.get(format!("http://{}/status", a.trim()))
            .send()
            .and_then(|r| r.json::<Value>())
            .is_ok_and(|s| s["tip"] == target)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while !synced() {
        assert!(std::time::Instant::now() < deadline, "no sync in 240 s");
        assert!(term.try_wait().unwrap().is_none(), "the node stopped");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", term.id())])
        .status();
    let _ = term.wait();
    let drawn = std::fs::read_to_string(&screen).unwrap_or_default();
    assert!(
        drawn.contains("syncing [") && drawn.contains("/5000 blocks") && drawn.contains("ETA"),
        "no progress bar on the terminal:\n{drawn}"
    );
    // The bar replaces the progress lines; other logs still show, and the end of sync.
    assert!(
        !drawn.contains("target=5000"),
        "progress lines beside the bar"
    );
    assert!(drawn.contains("sync complete"), "{drawn}");
}
