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
