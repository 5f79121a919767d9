//! Issue 9, item 10: a network split in two and healed. Two network namespaces joined by
//! a veth pair, five nodes in each, a producer on each side; the split drops every packet
//! between the sides (iptables in one namespace), so connections die silently as they
//! would over a real partition.

use std::process::Command;
use std::time::{Duration, Instant};

use chainmesh_proto::{Hash, Tx};

use crate::chains::TestNet;
use crate::common::{Node, wait_until};

const A_IP: &str = "10.77.0.1";
const B_IP: &str = "10.77.0.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `<prefix>-a` and `<prefix>-b`, one veth pair between them; removed on drop.
struct Split {
    prefix: String,
}

impl Split {
    fn up() -> Split {
        let prefix = format!("pt{}", std::process::id() % 100_000);
        let s = Split { prefix };
        let (a, b) = (s.ns("a"), s.ns("b"));
        for ns in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("{}a", s.prefix), format!("{}b", s.prefix));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &a]);
        ip(&["link", "set", &vb, "netns", &b]);
        ip(&["-n", &a, "addr", "add", &format!("{A_IP}/24"), "dev", &va]);
        ip(&["-n", &b, "addr", "add", &format!("{B_IP}/24"), "dev", &vb]);
        ip(&["-n", &a, "link", "set", &va, "up"]);
        ip(&["-n", &b, "link", "set", &vb, "up"]);
        s
    }

    fn ns(&self, side: &str) -> String {
        format!("{}-{side}", self.prefix)
    }

    fn iptables(&self, args: &[&str]) {
        let ns = self.ns("a");
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "iptables"])
            .args(args)
            .output()
            .expect("run iptables");
        assert!(
            out.status.success(),
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every packet between the sides dropped, in both directions.
    fn partition(&self) {
        self.iptables(&["-A", "INPUT", "-s", B_IP, "-j", "DROP"]);
        self.iptables(&["-A", "OUTPUT", "-d", B_IP, "-j", "DROP"]);
    }

    fn heal(&self) {
        self.iptables(&["-F", "INPUT"]);
        self.iptables(&["-F", "OUTPUT"]);
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        for side in ["a", "b"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(side)])
                .status();
        }
    }
}

fn tip(n: &Node) -> String {
    n.status()["tip"].as_str().unwrap_or_default().to_string()
}

/// Where transaction `id` is on `n`: "included" (in its canonical chain), "pending" (in its
/// mempool) or "missing".
fn tx_state(n: &Node, id: &Hash) -> String {
    match n.try_get(&format!("/txs/{id}")) {
        Some(v) => v["status"].as_str().unwrap_or("missing").to_string(),
        None => "missing".into(),
    }
}

/// Ten nodes, five a side, each side with a producer (two authorities taking turns by
/// slot, one-second slots). Split for 15 s while transactions are submitted on both sides
/// (20 from alice on side A, 20 from bob on side B); both sides keep producing and their
/// chains diverge. Healed: every node reaches the same tip, and every one of the 40
/// transactions ends up in the common chain on all ten (those of the losing side's blocks
/// went back to its mempools and were gossiped or pulled across).
///
/// It found two bugs, both fixed: healing banned honest peers (see docs/security.md, item
/// 10), and a block gossiped from the other side's fork never started a sync (the hint to
/// the syncer was dead code), so the sides stayed on their own forks for good.
#[test]
fn a_split_network_converges_after_healing_and_loses_no_transaction() {
    let split = Split::up();
    let root = tempfile::tempdir().unwrap();
    let net = TestNet::with_block_time("parttest", 0, 2, 1_000);
    let side_ns = [split.ns("a"), split.ns("b")];
    let mut nodes: Vec<Node> = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..10 {
        let side = i / 5;
        let listen = format!("/ip4/{}/tcp/0", [A_IP, B_IP][side]);
        let producer = (i % 5 == 0).then(|| &net.authorities[side]);
        let home = net.node_home_with(&root.path().join(format!("n{i}")), producer, |c| {
            c.p2p.listen = vec![listen.clone()];
            c.p2p.discovery.mdns = false;
        });
        // Each node dials every node started before it, on both sides.
        let peers: Vec<String> = addrs
            .iter()
            .flat_map(|a| ["--peer".to_string(), a.clone()])
            .collect();
        let n = Node::start_run_in(Some(&side_ns[side]), &home, &peers);
        addrs.push(n.p2p_addr());
        nodes.push(n);
    }
    let t = Instant::now();
    while !nodes.iter().all(|n| n.peers().len() >= 9) {
        let view: Vec<(usize, u64)> = nodes
            .iter()
            .map(|n| (n.peers().len(), n.height()))
            .collect();
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no full mesh after 60 s: (peers, height) {view:?}\n{}",
            nodes[1].log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let chain = nodes[0].genesis_hash();
    let bob = chainmesh_proto::Keypair::generate();
    let fund = Tx::transfer(&net.alice, &chain, bob.public(), 1_000_000, 1, 0);
    assert_eq!(nodes[1].post_tx(&fund).0, 202);
    wait_until(30, "bob funded on every node", || {
        nodes.iter().all(|n| n.balance(&bob.public()) == 1_000_000)
    });

    split.partition();
    let split_at = Instant::now();
    let mut ids = Vec::new();
    for k in 0..20u64 {
        let a = Tx::transfer(&net.alice, &chain, net.authority.public(), 10 + k, 1, 1 + k);
        let b = Tx::transfer(&bob, &chain, net.authority.public(), 10 + k, 1, k);
        assert_eq!(nodes[1 + k as usize % 4].post_tx(&a).0, 202);
        assert_eq!(nodes[6 + k as usize % 4].post_tx(&b).0, 202);
        ids.push(a.id());
        ids.push(b.id());
        std::thread::sleep(Duration::from_millis(300));
    }
    while split_at.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let heights: Vec<u64> = nodes.iter().map(Node::height).collect();
    let (tip_a, tip_b) = (tip(&nodes[0]), tip(&nodes[5]));
    let alice_on_b = ids
        .iter()
        .step_by(2)
        .filter(|id| tx_state(&nodes[5], id) != "missing")
        .count();
    eprintln!(
        "partition: after {:.1} s apart, heights {heights:?}; side A's alice txs known on side B: {alice_on_b}",
        split_at.elapsed().as_secs_f64()
    );
    assert_ne!(tip_a, tip_b, "the sides did not diverge");
    assert_eq!(alice_on_b, 0, "traffic crossed the split");

    split.heal();
    let healed = Instant::now();
    let mut converged = None;
    while healed.elapsed() < Duration::from_secs(60) {
        let tips: Vec<String> = nodes.iter().map(tip).collect();
        if tips.iter().all(|t| *t == tips[0]) {
            converged = Some(healed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut all_in = None;
    while healed.elapsed() < Duration::from_secs(90) {
        if nodes
            .iter()
            .all(|n| ids.iter().all(|id| tx_state(n, id) == "included"))
        {
            all_in = Some(healed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for n in &nodes {
        let st = n.status();
        eprintln!(
            "partition:   peers {} height {} tip {} sync {}",
            n.peers().len(),
            st["height"],
            st["tip"],
            st["sync"]
        );
    }
    let states: Vec<usize> = nodes
        .iter()
        .map(|n| {
            ids.iter()
                .filter(|id| tx_state(n, id) == "included")
                .count()
        })
        .collect();
    eprintln!(
        "partition: healed; one tip on all ten after {converged:?}; all 40 txs in the common chain on all ten after {all_in:?} (included per node {states:?}); heights {:?}",
        nodes.iter().map(Node::height).collect::<Vec<_>>()
    );
    for n in nodes.iter_mut() {
        assert!(n.is_running(), "a node died:\n{}", n.log_tail());
    }
    if std::env::var_os("CHAINMESH_KEEP_LOGS").is_some() {
        drop(nodes);
        eprintln!("partition: node logs kept in {}", root.keep().display());
    }
    assert!(converged.is_some(), "no common tip 60 s after healing");
    assert!(
        all_in.is_some(),
        "transactions missing after healing: {states:?}"
    );
}
