//! The syncer driven against real stores: peers answer from their own sled store, the
//! syncing node imports into its own. Time is simulated.

use std::collections::HashMap;

use chainmesh_proto::{Block, Hash};

use crate::store::{ImportError, Store};
use crate::sync::{Action, ImportResult, SyncConfig, SyncFault, Syncer, Want};
use crate::tests::{NOW, Net, net, open, produce};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Honest,
    Silent,
    /// Serves blocks whose transactions were tampered with.
    LyingBodies,
    /// Serves headers with a broken signature.
    LyingHeaders,
}

struct Harness {
    syncer: Syncer<&'static str>,
    dest: Store,
    peers: HashMap<&'static str, (Behaviour, crate::store::StoreReader)>,
    penalties: Vec<(&'static str, SyncFault)>,
    now: u64,
}

/// A chain of `n` blocks, a transaction in every third.
fn chain(n: &Net, blocks: u64) -> (tempfile::TempDir, Store) {
    let (d, mut s) = open(n);
    let mut nonce = 0;
    for slot in 1..=blocks {
        let txs = if slot.is_multiple_of(3) {
            nonce += 1;
            vec![n.tx(1, nonce - 1)]
        } else {
            vec![]
        };
        produce(n, &mut s, slot, txs);
    }
    (d, s)
}

impl Harness {
    fn new(n: &Net, dest: Store, cfg: SyncConfig) -> Harness {
        let tip = dest.tip().clone();
        let locator = dest.reader().locator(tip.height).unwrap();
        Harness {
            syncer: Syncer::new(n.genesis.clone(), cfg, (tip.height, tip.hash), locator),
            dest,
            peers: HashMap::new(),
            penalties: Vec::new(),
            now: NOW,
        }
    }

    fn add_peer(&mut self, name: &'static str, src: &Store, b: Behaviour) {
        self.peers.insert(name, (b, src.reader()));
        let t = src.tip();
        self.syncer
            .peer_status(name, t.height, t.hash, 64, self.now);
    }

    fn answer(
        &self,
        peer: &str,
        want: &Want,
    ) -> Option<Result<Vec<Block>, Vec<chainmesh_proto::Header>>> {
        // A peer the node dropped answers nothing.
        let (b, r) = self.peers.get(peer)?;
        if *b == Behaviour::Silent {
            return None;
        }
        Some(match want {
            Want::Headers { locator, max } => {
                let mut hs = r.headers_after(locator, *max).unwrap();
                if *b == Behaviour::LyingHeaders
                    && let Some(h) = hs.last_mut()
                {
                    h.signature.0[0] ^= 1;
                }
                Err(hs)
            }
            Want::Blocks { hashes } => {
                let mut bs = r.blocks_by_hash(hashes, usize::MAX).unwrap();
                if *b == Behaviour::LyingBodies {
                    for blk in bs.iter_mut().filter(|b| !b.txs.is_empty()) {
                        blk.txs[0].amount += 1;
                    }
                }
                Ok(bs)
            }
        })
    }

    /// Runs until the syncer has nothing left to do (bounded).
    fn run(&mut self) {
        self.run_until(|_| false)
    }

    /// Runs until `stop` holds or the syncer has nothing left to do (bounded).
    fn run_until(&mut self, stop: impl Fn(&Harness) -> bool) {
        for _ in 0..100_000 {
            if stop(self) {
                return;
            }
            let mut progressed = false;
            while let Some(a) = self.syncer.poll_action() {
                progressed = true;
                match a {
                    Action::Request { peer, id, want } => match self.answer(peer, &want) {
                        None => {}
                        Some(Ok(blocks)) => self.syncer.on_blocks(id, blocks, self.now),
                        Some(Err(headers)) => self.syncer.on_headers(id, headers, self.now),
                    },
                    Action::Import { blocks } => {
                        let mut result = ImportResult::Done;
                        for b in blocks {
                            let h = b.hash();
                            match self.dest.import(b, self.now) {
                                Ok(_) => {}
                                Err(ImportError::Invalid { error, .. }) => {
                                    result = ImportResult::Failed {
                                        hash: h,
                                        invalid: true,
                                        reason: error.to_string(),
                                    };
                                    break;
                                }
                                Err(e) => {
                                    result = ImportResult::Failed {
                                        hash: h,
                                        invalid: false,
                                        reason: e.to_string(),
                                    };
                                    break;
                                }
                            }
                        }
                        let t = self.dest.tip().clone();
                        let loc = self.dest.reader().locator(t.height).unwrap();
                        self.syncer.on_import_result(result, self.now);
                        self.syncer.set_local(t.height, t.hash, loc, self.now);
                    }
                    Action::Penalize { peer, fault, .. } => {
                        self.penalties.push((peer, fault));
                        if matches!(fault, SyncFault::Invalid) {
                            // The node bans such a peer: it disconnects.
                            self.peers.remove(peer);
                            self.syncer.peer_gone(&peer, self.now);
                        }
                    }
                }
            }
            if !progressed {
                if !self.syncer.is_syncing() {
                    return;
                }
                self.now += 1_000;
                self.syncer.tick(self.now);
            }
        }
        panic!("sync did not settle");
    }

    fn assert_same_as(&self, src: &Store) {
        assert_eq!(self.dest.tip(), src.tip());
        let a: Vec<_> = self.dest.accounts().map(Result::unwrap).collect();
        let b: Vec<_> = src.accounts().map(Result::unwrap).collect();
        assert_eq!(a, b);
    }
}

#[test]
fn syncs_from_three_peers_sharing_the_batches() {
    let n = net();
    let (_d, src) = chain(&n, 700);
    let (_e, dest) = open(&n);
    let mut h = Harness::new(&n, dest, SyncConfig::default());
    for p in ["p1", "p2", "p3"] {
        h.add_peer(p, &src, Behaviour::Honest);
    }
    h.run();
    h.assert_same_as(&src);
    for p in ["p1", "p2", "p3"] {
        let s = h.syncer.peer_stats(&p).unwrap();
        assert!(s.batches_served > 0, "{p} served nothing: {s:?}");
        // Fast, complete answers grew the request size to what the peer allows.
        assert_eq!(s.request_size, 64, "{p}: {s:?}"); // the peers advertise 64
    }
    assert!(
        h.penalties.is_empty(),
        "{:?}",
        h.penalties.iter().map(|p| p.1).collect::<Vec<_>>()
    );
    assert!(!h.syncer.progress().syncing);
}

#[test]
fn a_silent_peer_times_out_and_others_finish() {
    let n = net();
    let (_d, src) = chain(&n, 300);
    let (_e, dest) = open(&n);
    let mut h = Harness::new(&n, dest, SyncConfig::default());
    h.add_peer("dead", &src, Behaviour::Silent);
    h.add_peer("ok", &src, Behaviour::Honest);
    h.run();
    h.assert_same_as(&src);
    assert!(
        h.penalties
            .iter()
            .any(|(p, f)| *p == "dead" && *f == SyncFault::Timeout)
    );
}

#[test]
fn lying_peers_are_penalised_and_sync_completes_from_honest_ones() {
    let n = net();
    let (_d, src) = chain(&n, 300);
    for liar in [Behaviour::LyingBodies, Behaviour::LyingHeaders] {
        let (_e, dest) = open(&n);
        let mut h = Harness::new(&n, dest, SyncConfig::default());
        h.add_peer("liar", &src, liar);
        h.add_peer("honest", &src, Behaviour::Honest);
        h.run();
        h.assert_same_as(&src);
        assert!(
            h.penalties
                .iter()
                .any(|(p, f)| *p == "liar" && *f == SyncFault::Invalid),
            "liar not penalised"
        );
        assert!(h.penalties.iter().all(|(p, _)| *p == "liar"));
    }
}

#[test]
fn a_longer_fork_is_synced_and_reorganises() {
    let n = net();
    // Source: 120 blocks in slots 1..=120. Destination: its own 50 blocks in slots
    // 200.., diverging at genesis.
    let (_d, src) = chain(&n, 120);
    let (_e, mut dest) = open(&n);
    for slot in 200..250 {
        produce(&n, &mut dest, slot, vec![]);
    }
    let mut h = Harness::new(&n, dest, SyncConfig::default());
    h.add_peer("p", &src, Behaviour::Honest);
    h.run();
    h.assert_same_as(&src);
}

#[test]
fn relayed_peers_get_no_bulk_requests() {
    let n = net();
    let (_d, src) = chain(&n, 200);
    let (_e, dest) = open(&n);
    let mut h = Harness::new(&n, dest, SyncConfig::default());
    h.add_peer("relayed", &src, Behaviour::Honest);
    h.syncer.set_relayed(&"relayed", true);
    h.add_peer("direct", &src, Behaviour::Honest);
    h.run();
    h.assert_same_as(&src);
    assert_eq!(h.syncer.peer_stats(&"relayed").unwrap().blocks_served, 0);
    assert_eq!(h.syncer.peer_stats(&"direct").unwrap().blocks_served, 200);
}

#[test]
fn a_slow_peer_gets_smaller_requests() {
    let n = net();
    let (_d, src) = chain(&n, 300);
    let (_e, dest) = open(&n);
    let mut h = Harness::new(&n, dest, SyncConfig::default());
    h.add_peer("dead", &src, Behaviour::Silent);
    h.run_until(|h| {
        h.syncer
            .peer_stats(&"dead")
            .is_some_and(|s| s.timeouts >= 2)
    });
    let s = h.syncer.peer_stats(&"dead").unwrap();
    assert!(s.request_size < 16 && s.in_flight_limit == 1, "{s:?}");
}

#[test]
fn buffering_is_bounded() {
    let n = net();
    let (_d, src) = chain(&n, 400);
    let (_e, dest) = open(&n);
    let cfg = SyncConfig {
        max_buffered_blocks: 600,
        headers_per_request: 128,
        ..SyncConfig::default()
    };
    let mut h = Harness::new(&n, dest, cfg);
    // A peer that never answers block requests: headers pile up only to the bound.
    h.add_peer("slow", &src, Behaviour::Honest);
    let mut headers = 0;
    for _ in 0..50 {
        match h.syncer.poll_action() {
            Some(Action::Request {
                id,
                want: want @ Want::Headers { .. },
                ..
            }) => {
                if let Some(Err(hs)) = h.answer("slow", &want) {
                    headers += hs.len();
                    h.syncer.on_headers(id, hs, h.now);
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(headers <= 600, "{headers} headers buffered");
    let _ = Hash::ZERO;
}

#[test]
fn buffered_bodies_are_bounded_in_bytes() {
    let n = net();
    let (_d, src) = chain(&n, 600);
    let (_e, dest) = open(&n);
    let cfg = SyncConfig {
        max_buffered_bytes: 1, // anything beyond the lowest batch is over
        ..SyncConfig::default()
    };
    let mut h = Harness::new(&n, dest, cfg);
    h.add_peer("a", &src, Behaviour::Honest);
    h.add_peer("b", &src, Behaviour::Honest);
    // Still completes: the lowest batch is always fetched, so import never starves.
    h.run();
    h.assert_same_as(&src);
}

#[test]
fn a_fork_shown_by_gossip_after_the_status_is_synced() {
    let n = net();
    // Both share ten blocks, then split: the source grows 16 more, the destination 15.
    let (_d, mut src) = chain(&n, 10);
    let (_e, mut dest) = chain(&n, 10);
    assert_eq!(src.tip(), dest.tip());
    for slot in 11..=26 {
        produce(&n, &mut src, slot, vec![]);
    }
    for slot in 40..55 {
        produce(&n, &mut dest, slot, vec![]);
    }
    let mut h = Harness::new(&n, dest, SyncConfig::default());
    // The peer's status is from before the split: nothing to fetch from it.
    let shared = src.reader().canonical_hash(10).unwrap().unwrap();
    h.peers.insert("p", (Behaviour::Honest, src.reader()));
    h.syncer.peer_status("p", 10, shared, 64, h.now);
    h.run();
    assert_eq!(h.dest.tip().height, 25);
    // A lower or repeated hint changes nothing.
    h.syncer.peer_tip(&"p", 9, Hash::ZERO, h.now);
    h.run();
    assert_eq!(h.dest.tip().height, 25);
    // The peer forwards its new tip by gossip; we lack its parent.
    let t = src.tip().clone();
    h.syncer.peer_tip(&"p", t.height, t.hash, h.now);
    assert!(h.syncer.is_syncing());
    h.run();
    h.assert_same_as(&src);
    // Hints about peers we never heard a status from are ignored.
    h.syncer.peer_tip(&"stranger", 1_000, Hash::ZERO, h.now);
    assert!(!h.syncer.is_syncing());
}
