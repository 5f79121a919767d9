//! `chainmesh dev`: a one-node network that produces blocks and processes transfers,
//! and refuses bad transactions with a reason while it keeps running.

use std::time::{Duration, Instant};

use chainmesh_proto::Tx;

use crate::common::{Node, cli};

#[test]
fn dev_node_produces_blocks_and_processes_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_dev(dir.path(), 1000);

    // Blocks every second: the height rises.
    let h0 = node.height();
    std::thread::sleep(Duration::from_millis(3_200));
    let h1 = node.height();
    assert!(h1 >= h0 + 2, "height went from {h0} to {h1} in 3.2 s");

    // A valid transfer through the CLI lands within two slots and moves both balances.
    let (alice, bob) = (node.key("alice"), node.key("bob"));
    let (a0, b0) = (node.balance(&alice.public()), node.balance(&bob.public()));
    let key = dir.path().join("keys/alice.key");
    let submitted_at = node.height();
    let out = cli(&[
        "--log-level",
        "warn",
        "tx",
        "send",
        "--api",
        &node.api,
        "--key",
        key.to_str().unwrap(),
        "--to",
        &bob.public().to_string(),
        "--amount",
        "12345",
        "--fee",
        "7",
    ]);
    assert!(
        out.status.success(),
        "tx send failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let included_at = loop {
        let t = node.get(&format!("/txs/{id}"));
        if t["status"] == "included" {
            break t["height"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "tx {id} not included: {t}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        included_at <= submitted_at + 2,
        "submitted at height {submitted_at}, included at {included_at}"
    );
    assert_eq!(node.balance(&alice.public()), a0 - 12345 - 7);
    assert_eq!(node.balance(&bob.public()), b0 + 12345);

    // Bad transactions: a 4xx whose message names the cause.
    let chain = node.genesis_hash();
    let mut forged = Tx::transfer(&alice, &chain, bob.public(), 5, 1, 1);
    forged.signature.0[10] ^= 0x40;
    let (code, body) = node.post_tx(&forged);
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("bad signature"),
        "{body}"
    );

    let reused = Tx::transfer(&alice, &chain, bob.public(), 5, 1, 0);
    let (code, body) = node.post_tx(&reused);
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nonce already used"),
        "{body}"
    );

    let balance = node.balance(&alice.public());
    let overspend = Tx::transfer(&alice, &chain, bob.public(), balance, 1, 1);
    let (code, body) = node.post_tx(&overspend);
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("insufficient balance"),
        "{body}"
    );

    let (code, body) = node.post_raw("{\"from\": 12".into());
    assert_eq!(code, 400, "{body}");
    let (code, body) = node.post_raw("x".repeat(200_000));
    assert!((400..500).contains(&code), "{code} {body}");

    // Still running and still producing.
    assert!(node.is_running(), "node died:\n{}", node.log_tail());
    let h2 = node.height();
    std::thread::sleep(Duration::from_millis(2_200));
    assert!(node.height() > h2);

    // The status command reads the same node.
    let out = cli(&["status", "--api", &node.api]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("network   devnet"));
}

#[test]
fn metrics_parse_as_prometheus_text_and_carry_the_node_and_libp2p_families() {
    let dir = tempfile::tempdir().unwrap();
    let node = crate::common::Node::start_dev(dir.path(), 500);
    crate::common::wait_until(20, "a block", || node.height() >= 1);
    // One transfer accepted and included, one refused (its nonce is taken).
    let (alice, bob) = (node.key("alice"), node.key("bob"));
    let chain = node.genesis_hash();
    let nonce = node.account(&alice.public())["next_nonce"]
        .as_u64()
        .unwrap();
    let tx = Tx::transfer(&alice, &chain, bob.public(), 5, 1, nonce);
    assert_eq!(node.post_tx(&tx).0, 202);
    let again = Tx::transfer(&alice, &chain, bob.public(), 6, 1, nonce);
    assert_eq!(node.post_tx(&again).0, 409);
    crate::common::wait_until(20, "the transfer in a block", || {
        node.get(&format!("/txs/{}", tx.id()))["status"] == "included"
    });
    // The network's families are refreshed once a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let text = node.get_text("/metrics");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the /metrics text parses");
    let families: Vec<&String> = scrape.docs.keys().collect();
    for want in [
        "chainmesh_height",
        "chainmesh_sync_target_height",
        "chainmesh_syncing",
        "chainmesh_mempool_txs",
        "chainmesh_mempool_bytes",
        "chainmesh_mempool_orphans",
        "chainmesh_peers",
        "chainmesh_peer_scores",
        "chainmesh_gossip_messages",
        "chainmesh_pool_sync_txs_added",
        "chainmesh_relay_circuits",
        "chainmesh_admissions",
        "chainmesh_blocks_imported",
        "chainmesh_block_txs_imported",
        "chainmesh_reorgs",
        "chainmesh_reorg_depth_blocks",
        "chainmesh_missed_slots",
        "chainmesh_mempool_admissions",
        "chainmesh_allocator_allocated_bytes",
        "chainmesh_allocator_resident_bytes",
        "chainmesh_protocol_bytes",
        "chainmesh_request_duration_seconds",
        "chainmesh_request_failures",
        "libp2p_swarm_dial_attempt",
        "libp2p_identify_errors",
        "libp2p_ping_rtt_seconds",
        "libp2p_kad_query_result_get_closest_peers_ok",
        "gossipsub_topic_subscription_status",
    ] {
        assert!(
            families.iter().any(|f| f.as_str() == want),
            "no {want} family in /metrics; have {families:?}"
        );
    }
    let height = scrape
        .samples
        .iter()
        .find(|s| s.metric == "chainmesh_height")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => -1.0,
        })
        .expect("a chainmesh_height sample");
    assert!(height >= 1.0, "height {height}");
    // The allocator's view: what the node holds, within what is resident, within RSS
    // (read a moment later, so with some room).
    let allocated = node.metric("chainmesh_allocator_allocated_bytes", &[]);
    let resident = node.metric("chainmesh_allocator_resident_bytes", &[]);
    let rss = node.rss_kib() as f64 * 1024.0;
    assert!(
        allocated
            .zip(resident)
            .is_some_and(|(a, r)| a > 1e6 && a <= r && r <= rss * 1.1),
        "allocated {allocated:?}, resident {resident:?}, RSS {rss}"
    );
    let sample = |name: &str, labels: &[(&str, &str)]| node.metric(name, labels);
    let admitted = |result| {
        sample(
            "chainmesh_mempool_admissions_total",
            &[("source", "api"), ("result", result)],
        )
    };
    assert_eq!(admitted("accepted"), Some(1.0), "{text}");
    assert_eq!(
        admitted("already_known").or(admitted("replacement_underpriced")),
        Some(1.0)
    );
    let produced = sample("chainmesh_blocks_imported_total", &[("source", "produced")]);
    assert!(
        produced.is_some_and(|n| n >= height),
        "produced {produced:?}, height {height}"
    );
    let txs = sample("chainmesh_block_txs_imported_total", &[]);
    assert_eq!(txs, Some(1.0));
}

/// `POST /blocks`: a block from a client (here, one another node produced) is checked as
/// a peer's would be, imported, and announced to peers; forged, orphaned and oversized
/// ones are refused with a reason, and the node goes on.
#[test]
fn a_block_submitted_through_the_api_is_checked_imported_and_announced() {
    use crate::chains::TestNet;
    let dir = tempfile::tempdir().unwrap();
    let net = TestNet::new("submit", 0);
    // A produces on its own; B and C (C's only peer is B) never hear of A.
    let a = Node::start_run(
        &net.node_home_with(&dir.path().join("a"), Some(&net.authority), |_| {}),
        &[],
    );
    let b = Node::start_run(&net.node_home(&dir.path().join("b")), &[]);
    let c = Node::start_run(
        &net.node_home(&dir.path().join("c")),
        &["--peer".to_string(), b.p2p_addr()],
    );
    crate::common::wait_until(20, "B and C connected", || !b.peers().is_empty());
    // A transfer, so that one of A's blocks carries a signature to forge.
    let chain = net.genesis.hash();
    let bob = chainmesh_proto::Keypair::generate().public();
    let (code, body) = a.post_tx(&Tx::transfer(&net.alice, &chain, bob, 5, 1, 0));
    assert_eq!(code, 202, "{body}");
    crate::common::wait_until(20, "A at height 3", || a.height() >= 3);
    let with_tx = (1..=a.height())
        .find(|h| {
            !a.get(&format!("/blocks/{h}"))["txs"]
                .as_array()
                .unwrap()
                .is_empty()
        })
        .expect("the transfer is in a block");
    let post = |n: &Node, body: String| {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/blocks", n.api))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json::<serde_json::Value>().unwrap_or_default())
    };
    let block = |h: u64| a.get(&format!("/blocks/{h}"));

    // A block whose parent B lacks: not the block's fault, not imported.
    let (code, body) = post(&b, block(2).to_string());
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("not_imported")),
        "{body}"
    );
    // Forged: the producer's signature, or a transaction's.
    let refused = |forged: serde_json::Value, why: &str| {
        let (code, body) = post(&b, forged.to_string());
        assert_eq!(
            (code, body["error"].as_str()),
            (422, Some("invalid_block")),
            "{body}"
        );
        assert!(body["message"].as_str().unwrap().contains(why), "{body}");
    };
    let mut forged = block(1);
    let sig = forged["signature"].as_str().unwrap().to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    forged["signature"] = format!("{flipped}{}", &sig[1..]).into();
    refused(forged, "producer");
    let mut forged = block(with_tx);
    forged["txs"][0]["amount"] = 6.into();
    refused(forged, "signature");
    // Malformed and oversized bodies.
    let (code, body) = post(&b, "{\"height\": ".into());
    assert_eq!(code, 400, "{body}");
    let (code, _) = post(&b, "x".repeat(9 << 20));
    assert_eq!(code, 413);
    assert_eq!(b.height(), 0, "nothing refused was imported");

    // A's blocks in order: each one B's tip, and announced to C by gossip.
    for h in 1..=with_tx.max(2) {
        let (code, body) = post(&b, block(h).to_string());
        assert_eq!(code, 200, "block {h}: {body}");
        assert_eq!(
            (body["height"].as_u64(), body["canonical"].as_bool()),
            (Some(h), Some(true))
        );
    }
    let top = with_tx.max(2);
    crate::common::wait_until(20, "B and C at A's height", || {
        b.height() == top && c.height() == top
    });
    assert_eq!(
        c.get(&format!("/blocks/{top}"))["hash"],
        block(top)["hash"],
        "C follows A's chain"
    );
    assert!(
        c.get("/net")["blocks_accepted"].as_u64().unwrap() >= 1,
        "C heard of the blocks by gossip: {}",
        c.get("/net")
    );
    // Known already: accepted again, nothing changes.
    let (code, body) = post(&b, block(1).to_string());
    assert_eq!(
        (code, body["canonical"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    assert_eq!(b.height(), top);
}
