//! Partitions: two groups produce on separate forks while disconnected; once
//! reconnected, every node converges to the heavier fork and the transactions of the
//! abandoned blocks go back to the mempool (and from there into the chain again).

use chainmesh_proto::Tx;

use crate::chains::TestNet;
use crate::common::{Node, wait_until};

#[test]
fn partitioned_groups_converge_to_the_heavier_fork() {
    let root = tempfile::tempdir().unwrap();
    // Slots go a, b1, b2, a, b1, b2...: group B owns two thirds of them, so its fork is
    // the heavier one whatever the timing.
    let net = TestNet::with_authorities("forktest", 0, 3);
    let quick = |c: &mut chainmesh_node::config::Config| c.p2p.status_interval_secs = 1;
    let a1_home = net.node_home_with(&root.path().join("a1"), Some(&net.authorities[0]), quick);
    let a2_home = net.node_home_with(&root.path().join("a2"), None, quick);
    let b1_home = net.node_home_with(&root.path().join("b1"), Some(&net.authorities[1]), quick);
    let b2_home = net.node_home_with(&root.path().join("b2"), Some(&net.authorities[2]), quick);

    // Partition: {a1, a2} and {b1, b2}.
    let mut a1 = Node::start_run(&a1_home, &[]);
    let a2 = Node::start_run(&a2_home, &["--peer".into(), a1.p2p_addr()]);
    let b1 = Node::start_run(&b1_home, &[]);
    let b2 = Node::start_run(&b2_home, &["--peer".into(), b1.p2p_addr()]);

    // A transfer that only group A's fork includes.
    let chain = a1.genesis_hash();
    let tx = Tx::transfer(&net.alice, &chain, net.authorities[2].public(), 777, 1, 0);
    let (code, body) = a1.post_tx(&tx);
    assert_eq!(code, 202, "{body}");
    let id = tx.id().to_string();
    wait_until(30, "the transfer in group A's fork", || {
        a1.get(&format!("/txs/{id}"))["status"] == "included"
    });
    wait_until(30, "both groups to grow", || {
        a2.status()["height"].as_u64().unwrap() >= 2 && b2.status()["height"].as_u64().unwrap() >= 4
    });
    assert_ne!(
        a1.status()["tip"],
        b1.status()["tip"],
        "the groups share a tip while partitioned"
    );

    // Heal the partition: a1 comes back, on the same address, with b1 as a peer too.
    let (ha, tip_a) = (
        a1.status()["height"].as_u64().unwrap(),
        a1.status()["tip"].clone(),
    );
    let (hb, tip_b) = (
        b1.status()["height"].as_u64().unwrap(),
        b1.status()["tip"].clone(),
    );
    let a1_addr = a1.p2p_addr();
    let listen = a1_addr.split("/p2p/").next().unwrap().to_string();
    a1.kill9();
    let a1 = Node::start_run(
        &a1_home,
        &[
            "--p2p-listen".into(),
            listen,
            "--peer".into(),
            b1.p2p_addr(),
        ],
    );
    let nodes = [&a1, &a2, &b1, &b2];
    let hash_at = |n: &Node, h: u64| n.get(&format!("/blocks/{h}"))["hash"].clone();
    wait_until(60, "every node on group B's fork", || {
        nodes.iter().all(|n| {
            n.status()["height"].as_u64().unwrap() > hb + 1
                && hash_at(n, hb) == tip_b
                && hash_at(n, ha) != tip_a
        })
    });
    // And they agree with each other, a block behind the newest.
    wait_until(30, "all nodes on one chain", || {
        let h = nodes
            .iter()
            .map(|n| n.status()["height"].as_u64().unwrap())
            .min()
            .unwrap()
            - 1;
        let hashes: Vec<_> = nodes.iter().map(|n| hash_at(n, h)).collect();
        hashes.iter().all(|x| *x == hashes[0])
    });
    assert!(
        a1.log()
            .contains("returned transactions of abandoned blocks to the mempool"),
        "a1 did not return its abandoned transactions:\n{}",
        a1.log_tail()
    );
    // The returned transfer is pending again, then included in the converged chain.
    wait_until(
        30,
        "the returned transfer to be included on every node",
        || {
            nodes
                .iter()
                .all(|n| n.get(&format!("/txs/{id}"))["status"] == "included")
        },
    );
    let receiver = net.authorities[2].public();
    let balances: Vec<u64> = nodes
        .iter()
        .map(|n| n.account(&receiver)["balance"].as_u64().unwrap())
        .collect();
    assert!(balances.iter().all(|b| *b >= 777), "{balances:?}");
}
