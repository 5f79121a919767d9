//! Crash safety: `kill -9` the real node at random moments while it produces blocks with
//! transactions. After every kill the store must open, hold the tip's whole chain back to
//! genesis, carry exactly the account state a re-execution of that chain gives, and still
//! contain every block the node had reported as its tip.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chainmesh_chain_sync::{ImportOutcome, Store};
use chainmesh_node::config::load_genesis;
use chainmesh_proto::{Hash, Tx};
use rand::Rng;

use crate::common::Node;

const CYCLES: usize = 24;

#[test]
fn kill9_at_random_moments_never_loses_an_acknowledged_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    // Every (height, hash) the node reported as its tip, over all runs.
    let mut acknowledged: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut accepted_txs = 0u64;
    let mut max_height = 0;

    for cycle in 0..CYCLES {
        let mut node = Node::start_dev(dir.path(), 200);
        let (alice, bob) = (node.key("alice"), node.key("bob"));
        let chain = node.genesis_hash();
        let run_for = Duration::from_millis(rng.gen_range(150..2_000));
        let start = Instant::now();
        while start.elapsed() < run_for {
            let nonce = node.account(&alice.public())["next_nonce"]
                .as_u64()
                .unwrap();
            let tx = Tx::transfer(
                &alice,
                &chain,
                bob.public(),
                rng.gen_range(1..1_000),
                1,
                nonce,
            );
            if node.post_tx(&tx).0 == 202 {
                accepted_txs += 1;
            }
            let s = node.status();
            let (h, tip) = (
                s["height"].as_u64().unwrap(),
                s["tip"].as_str().unwrap().parse().unwrap(),
            );
            if let Some(prev) = acknowledged.insert(h, tip) {
                assert_eq!(prev, tip, "the node reported two tips at height {h}");
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..40)));
        }
        node.kill9();

        let genesis = load_genesis(&dir.path().join("genesis.toml")).unwrap();
        let store = Store::open(&dir.path().join("data/db"), &genesis)
            .unwrap_or_else(|e| panic!("cycle {cycle}: store does not open after kill -9: {e}"));
        let reader = store.reader();
        let tip = store.tip().clone();
        max_height = max_height.max(tip.height);

        // The tip's whole chain, linked back to genesis, and indexed as canonical.
        let mut chain_blocks = Vec::new();
        let mut cursor = tip.hash;
        loop {
            let b = store
                .block(&cursor)
                .unwrap()
                .unwrap_or_else(|| panic!("cycle {cycle}: block {cursor} missing"));
            assert_eq!(store.canonical_hash(b.header.height).unwrap(), Some(cursor));
            if b.header.height == 0 {
                assert_eq!(cursor, genesis.hash());
                break;
            }
            cursor = b.header.parent;
            chain_blocks.push(b);
        }
        chain_blocks.reverse();
        assert_eq!(chain_blocks.len() as u64, tip.height);

        // Re-execute the canonical chain from genesis in a fresh store.
        let replay_dir = tempfile::tempdir().unwrap();
        let mut replay = Store::open(replay_dir.path(), &genesis).unwrap();
        for b in &chain_blocks {
            match replay.import(b.clone(), u64::MAX / 2) {
                Ok(ImportOutcome::NewTip { .. }) => {}
                other => panic!(
                    "cycle {cycle}: replaying height {}: {other:?}",
                    b.header.height
                ),
            }
        }
        assert_eq!(replay.tip(), &tip);
        let stored: Vec<_> = store.accounts().map(Result::unwrap).collect();
        let replayed: Vec<_> = replay.accounts().map(Result::unwrap).collect();
        assert_eq!(
            stored, replayed,
            "cycle {cycle}: account state differs from re-execution"
        );

        // No acknowledged block is missing.
        for (h, hash) in &acknowledged {
            assert_eq!(
                reader.canonical_hash(*h).unwrap(),
                Some(*hash),
                "cycle {cycle}: acknowledged block at height {h} is gone"
            );
        }
        drop(store);
    }
    let included: usize = {
        let genesis = load_genesis(&dir.path().join("genesis.toml")).unwrap();
        let store = Store::open(&dir.path().join("data/db"), &genesis).unwrap();
        (1..=store.tip().height)
            .map(|h| store.reader().block_at(h).unwrap().unwrap().txs.len())
            .sum()
    };
    eprintln!(
        "crash test: {CYCLES} kill -9 cycles, final height {max_height}, {} acknowledged tips checked, {accepted_txs} txs accepted, {included} included",
        acknowledged.len()
    );
    assert!(included > 0, "no transactions were included");
}

/// Issue 9, item 11: `kill -9` a node 100 times while it imports a chain by sync from a
/// peer, at random moments: a quarter of them within 150 ms of the start, while its store
/// opens; the rest while blocks are being imported. After every kill the store opens and
/// holds the tip's whole chain, canonical, with every tip the node had reported; every
/// tenth time its account state is checked against a re-execution. Then the node finishes
/// the sync and ends with the source's state. A node that completed the sync starts over
/// from an empty store, so that the kills keep landing during imports.
#[test]
fn kill9_during_sync_import_and_store_open_100_times() {
    const BLOCKS: u64 = 2_000;
    const KILLS: usize = 100;
    let root = tempfile::tempdir().unwrap();
    let net = crate::chains::TestNet::new("killsync", BLOCKS + 100);
    let src_home = net.node_home(&root.path().join("src"));
    net.build_chain(&src_home, BLOCKS, 1);
    let src = Node::start_run(&src_home, &[]);
    let args = vec!["--peer".to_string(), src.p2p_addr()];
    let dest_home = net.node_home(&root.path().join("dest"));
    let cfg = format!("{}", dest_home.join("config.toml").display());
    let genesis = net.genesis.clone();
    let mut rng = rand::thread_rng();
    let mut acknowledged: BTreeMap<u64, Hash> = BTreeMap::new();
    let (mut during_open, mut heights, mut restarts) = (0, Vec::new(), 0);
    let started = Instant::now();

    for cycle in 0..KILLS {
        if cycle % 4 == 0 {
            // Straight after the start: the store is opening (or has just opened).
            let mut child = std::process::Command::new(crate::common::BIN)
                .args(["--log-format", "json", "run", "--config", &cfg])
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..150)));
            let _ = child.kill();
            let _ = child.wait();
            during_open += 1;
        } else {
            let mut node = Node::start_run(&dest_home, &args);
            let run_for = Duration::from_millis(rng.gen_range(50..700));
            let t = Instant::now();
            while t.elapsed() < run_for {
                if let Some(s) = node.try_get("/status") {
                    let h = s["height"].as_u64().unwrap();
                    let tip: Hash = s["tip"].as_str().unwrap().parse().unwrap();
                    if let Some(prev) = acknowledged.insert(h, tip) {
                        assert_eq!(prev, tip, "two tips reported at height {h}");
                    }
                }
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..30)));
            }
            node.kill9();
        }

        let store = Store::open(&dest_home.join("data/db"), &genesis)
            .unwrap_or_else(|e| panic!("kill {cycle}: the store does not open: {e}"));
        let tip = store.tip().clone();
        heights.push(tip.height);
        let mut cursor = tip.hash;
        let mut chain_blocks = Vec::new();
        while cursor != genesis.hash() {
            let b = store
                .block(&cursor)
                .unwrap()
                .unwrap_or_else(|| panic!("kill {cycle}: block {cursor} missing"));
            assert_eq!(store.canonical_hash(b.header.height).unwrap(), Some(cursor));
            cursor = b.header.parent;
            chain_blocks.push(b);
        }
        assert_eq!(chain_blocks.len() as u64, tip.height, "kill {cycle}");
        for (h, hash) in &acknowledged {
            assert_eq!(
                store.canonical_hash(*h).unwrap(),
                Some(*hash),
                "kill {cycle}: the reported tip at height {h} is gone"
            );
        }
        if cycle % 10 == 9 {
            let replay_dir = tempfile::tempdir().unwrap();
            let mut replay = Store::open(replay_dir.path(), &genesis).unwrap();
            for b in chain_blocks.into_iter().rev() {
                assert!(matches!(
                    replay.import(b, u64::MAX / 2),
                    Ok(ImportOutcome::NewTip { .. })
                ));
            }
            let stored: Vec<_> = store.accounts().map(Result::unwrap).collect();
            let replayed: Vec<_> = replay.accounts().map(Result::unwrap).collect();
            assert_eq!(
                stored, replayed,
                "kill {cycle}: state differs from re-execution"
            );
        }
        drop(store);
        if tip.height == BLOCKS && cycle + 1 < KILLS {
            std::fs::remove_dir_all(dest_home.join("data/db")).unwrap();
            acknowledged.clear();
            restarts += 1;
        }
    }

    // Finally the node completes the sync and holds exactly the source's chain and state.
    let dest = Node::start_run(&dest_home, &args);
    crate::common::wait_until(120, "the sync to complete", || {
        dest.status()["height"].as_u64() == Some(BLOCKS)
    });
    drop(dest);
    drop(src);
    let (a, b) = (
        crate::chains::snapshot(&src_home, &genesis),
        crate::chains::snapshot(&dest_home, &genesis),
    );
    assert_eq!(a, b, "the synced node differs from its source");
    let moved = heights.windows(2).filter(|w| w[1] > w[0]).count();
    eprintln!(
        "kill -9 during sync: {KILLS} kills ({during_open} within 150 ms of the start) in {:.0} s; \
         the store opened every time; the tip rose between {moved} pairs of kills; {restarts} syncs completed and started over",
        started.elapsed().as_secs_f64(),
    );
    assert!(
        moved >= 30,
        "the sync hardly moved between kills: {heights:?}"
    );
}
