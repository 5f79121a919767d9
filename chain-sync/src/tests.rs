//! Rule and store tests on a real sled database in a temporary directory.

use chainmesh_proto::{Account, Block, Hash, Header, Keypair, PublicKey, Signature, Tx, TxError};

use crate::genesis::{Allocation, ChainLimits, Genesis};
use crate::rules::BlockError;
use crate::store::{ImportError, ImportOutcome, Store, StoreError};

pub(crate) struct Net {
    pub a: Keypair,
    pub b: Keypair,
    pub alice: Keypair,
    pub bob: PublicKey,
    pub genesis: Genesis,
}

const T0: u64 = 1_700_000_000_000;
pub(crate) const NOW: u64 = T0 + 1_000_000;

pub(crate) fn net() -> Net {
    let (a, b, alice) = (
        Keypair::generate(),
        Keypair::generate(),
        Keypair::generate(),
    );
    let genesis = Genesis {
        network_id: "test".into(),
        timestamp_ms: T0,
        block_time_ms: 1_000,
        authorities: vec![a.public(), b.public()],
        allocations: vec![Allocation {
            address: alice.public(),
            balance: 1_000,
        }],
        limits: ChainLimits::default(),
    };
    Net {
        a,
        b,
        alice,
        bob: PublicKey([0xb0; 32]),
        genesis,
    }
}

impl Net {
    pub fn key_for(&self, slot: u64) -> &Keypair {
        if slot.is_multiple_of(2) {
            &self.a
        } else {
            &self.b
        }
    }
    pub fn tx(&self, amount: u64, nonce: u64) -> Tx {
        Tx::transfer(
            &self.alice,
            &self.genesis.hash(),
            self.bob,
            amount,
            1,
            nonce,
        )
    }
}

pub(crate) fn open(n: &Net) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), &n.genesis).unwrap();
    (dir, s)
}

pub(crate) fn produce(n: &Net, s: &mut Store, slot: u64, txs: Vec<Tx>) -> Block {
    let built = s.build_block(n.key_for(slot), slot, txs).unwrap();
    assert!(built.invalid.is_empty(), "{:?}", built.invalid);
    let b = built.block;
    match s.import(b.clone(), NOW).unwrap() {
        ImportOutcome::NewTip { .. } => {}
        o => panic!("expected new tip, got {o:?}"),
    }
    b
}

/// A block with arbitrary txs whose header is otherwise right (roots computed, signed
/// by the slot's producer), to reach the rule under test.
fn raw_block(n: &Net, parent: &Header, slot: u64, txs: Vec<Tx>) -> Block {
    let key = n.key_for(slot);
    let mut header = Header {
        parent: parent.hash(),
        height: parent.height + 1,
        slot,
        timestamp_ms: n.genesis.slot_start(slot).unwrap(),
        tx_root: Block::tx_root(&txs),
        state_root: Hash::ZERO,
        producer: key.public(),
        signature: Signature::ZERO,
    };
    header.sign(key);
    Block { header, txs }
}

fn invalid(r: Result<ImportOutcome, ImportError>) -> BlockError {
    match r {
        Err(ImportError::Invalid { error, .. }) => error,
        other => panic!("expected an invalid block, got {other:?}"),
    }
}

#[test]
fn extends_chain_and_moves_balances() {
    let n = net();
    let (_d, mut s) = open(&n);
    let b1 = produce(&n, &mut s, 1, vec![n.tx(100, 0), n.tx(50, 1)]);
    assert_eq!(s.tip().height, 1);
    assert_eq!(
        s.account(&n.alice.public()).unwrap(),
        Account {
            balance: 848,
            nonce: 2
        }
    );
    assert_eq!(s.account(&n.bob).unwrap().balance, 150);
    // Fees go to slot 1's producer.
    assert_eq!(s.account(&n.b.public()).unwrap().balance, 2);
    let r = s.reader();
    assert_eq!(
        r.tx_block(&b1.txs[0].id()).unwrap().unwrap().hash(),
        b1.hash()
    );
    assert!(matches!(
        s.import(b1, NOW).unwrap(),
        ImportOutcome::AlreadyKnown
    ));
}

#[test]
fn wrong_producer_for_slot() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    let mut b = raw_block(&n, &g, 1, vec![]);
    b.header.sign(&n.a); // slot 1 belongs to b
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::WrongProducer { slot: 1, .. }
    ));
}

#[test]
fn bad_signature() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    let mut b = raw_block(&n, &g, 1, vec![]);
    b.header.signature.0[5] ^= 1;
    assert_eq!(invalid(s.import(b, NOW)), BlockError::BadSignature);
}

#[test]
fn bad_parent() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    let mut b = raw_block(&n, &g, 1, vec![]);
    b.header.parent = Hash::digest(b"nobody");
    b.header.sign(&n.b);
    assert!(matches!(
        s.import(b, NOW),
        Err(ImportError::UnknownParent(_))
    ));
    // Known parent, wrong height.
    let mut b = raw_block(&n, &g, 1, vec![]);
    b.header.height = 5;
    b.header.sign(&n.b);
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::BadHeight { parent: 0, got: 5 }
    ));
    // Slot not after the parent's.
    let b1 = produce(&n, &mut s, 3, vec![]);
    let b = raw_block(&n, &b1.header, 3, vec![]);
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::SlotNotAfterParent { .. }
    ));
}

#[test]
fn bad_tx_root() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    let mut b = raw_block(&n, &g, 1, vec![n.tx(1, 0)]);
    b.txs.push(n.tx(1, 1));
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::BadTxRoot { .. }
    ));
}

#[test]
fn bad_state_root() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    let b = raw_block(&n, &g, 1, vec![n.tx(1, 0)]);
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::BadStateRoot { .. }
    ));
    assert_eq!(s.tip().height, 0);
    assert_eq!(s.account(&n.alice.public()).unwrap().balance, 1_000);
}

#[test]
fn overspend() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    let b = raw_block(&n, &g, 1, vec![n.tx(600, 0), n.tx(600, 1)]);
    match invalid(s.import(b, NOW)) {
        BlockError::Tx {
            index: 1,
            error:
                TxError::InsufficientBalance {
                    needed: 601,
                    available: 399,
                },
            ..
        } => {}
        e => panic!("{e:?}"),
    }
    // Nothing of the failed block was written.
    assert_eq!(
        s.account(&n.alice.public()).unwrap(),
        Account {
            balance: 1_000,
            nonce: 0
        }
    );
}

#[test]
fn nonce_gap_and_reuse() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    let b = raw_block(&n, &g, 1, vec![n.tx(1, 0), n.tx(1, 2)]);
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::Tx {
            index: 1,
            error: TxError::NonceGap {
                expected: 1,
                got: 2
            },
            ..
        }
    ));
    let b1 = produce(&n, &mut s, 1, vec![n.tx(1, 0)]);
    let b = raw_block(&n, &b1.header, 2, vec![n.tx(2, 0)]);
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::Tx {
            index: 0,
            error: TxError::NonceReused {
                expected: 1,
                got: 0
            },
            ..
        }
    ));
}

#[test]
fn bad_timestamp_and_future_blocks() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    let mut b = raw_block(&n, &g, 1, vec![]);
    b.header.timestamp_ms += 1;
    b.header.sign(&n.b);
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::BadTimestamp { .. }
    ));
    let future_slot = 1_000 + 11; // NOW is slot 1000
    let b = raw_block(&n, &g, future_slot, vec![]);
    assert!(matches!(
        invalid(s.import(b, NOW)),
        BlockError::FromTheFuture { .. }
    ));
}

#[test]
fn reorg_to_higher_fork_restores_state() {
    let n = net();
    let (_d, mut s) = open(&n);
    let g = n.genesis.block().header;
    // Canonical: g <- c1(slot 1, pays bob 100) <- c2(slot 2, pays bob 10)
    let c1 = produce(&n, &mut s, 1, vec![n.tx(100, 0)]);
    let c2 = produce(&n, &mut s, 2, vec![n.tx(10, 1)]);
    let before_fork = s.account(&n.alice.public()).unwrap();
    assert_eq!(
        before_fork,
        Account {
            balance: 888,
            nonce: 2
        }
    );

    // A competing fork from genesis: f1(slot 3) <- f2(slot 4) <- f3(slot 5). Built on a
    // second store that only ever sees the fork, so its roots are right.
    let (_d2, mut other) = open(&n);
    let f1 = produce(&n, &mut other, 3, vec![n.tx(7, 0)]);
    let f2 = produce(&n, &mut other, 4, vec![]);
    let f3 = produce(&n, &mut other, 5, vec![n.tx(3, 1)]);
    let expected: Vec<_> = other.accounts().map(Result::unwrap).collect();

    assert!(matches!(
        s.import(f1.clone(), NOW).unwrap(),
        ImportOutcome::SideChain { .. }
    ));
    // f2 is at height 2 like c2: fork choice takes the lower hash.
    let f2_wins = f2.hash() < c2.hash();
    let out = s.import(f2.clone(), NOW).unwrap();
    assert_eq!(matches!(out, ImportOutcome::NewTip { .. }), f2_wins);
    match s.import(f3.clone(), NOW).unwrap() {
        ImportOutcome::NewTip {
            tip,
            applied,
            reverted,
        } => {
            assert_eq!(tip.hash, f3.hash());
            if f2_wins {
                assert_eq!(applied, vec![f3.clone()]);
                assert!(reverted.is_empty());
            } else {
                assert_eq!(applied, vec![f1.clone(), f2.clone(), f3.clone()]);
                assert_eq!(reverted, vec![c1.clone(), c2.clone()]);
            }
        }
        o => panic!("{o:?}"),
    }
    let got: Vec<_> = s.accounts().map(Result::unwrap).collect();
    assert_eq!(
        got, expected,
        "state after reorg equals state of the fork alone"
    );
    let r = s.reader();
    assert!(r.tx_block(&c1.txs[0].id()).unwrap().is_none());
    assert_eq!(
        r.tx_block(&f1.txs[0].id()).unwrap().unwrap().hash(),
        f1.hash()
    );
    assert_eq!(r.canonical_hash(3).unwrap(), Some(f3.hash()));
    let _ = g;
}

#[test]
fn reorg_onto_an_invalid_side_block_changes_nothing() {
    let n = net();
    let (_d, mut s) = open(&n);
    produce(&n, &mut s, 1, vec![n.tx(100, 0)]);
    let state: Vec<_> = s.accounts().map(Result::unwrap).collect();
    let g = n.genesis.block().header;
    // A side block with a bad state root is stored on header checks alone...
    let bad = raw_block(&n, &g, 3, vec![n.tx(1, 0)]);
    let out = s.import(bad.clone(), NOW);
    // ...unless it wins fork choice right away, in which case execution rejects it.
    if let Ok(ImportOutcome::SideChain { .. }) = out {
        let child = raw_block(&n, &bad.header, 4, vec![]);
        assert!(matches!(
            s.import(child, NOW),
            Err(ImportError::Invalid { .. })
        ));
    } else {
        assert!(matches!(out, Err(ImportError::Invalid { .. })));
    }
    assert_eq!(s.tip().height, 1);
    let after: Vec<_> = s.accounts().map(Result::unwrap).collect();
    assert_eq!(after, state);
}

/// Opens a store that was just dropped. sled releases its file lock when its flusher
/// thread lets go of the database, a moment after the last handle is dropped.
fn reopen(dir: &std::path::Path, g: &Genesis) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(dir, g) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r,
        }
    }
}

#[test]
fn reopen_keeps_tip_and_refuses_other_genesis_or_schema() {
    let n = net();
    let dir = tempfile::tempdir().unwrap();
    let tip = {
        let mut s = Store::open(dir.path(), &n.genesis).unwrap();
        produce(&n, &mut s, 1, vec![n.tx(5, 0)]);
        s.flush().unwrap();
        s.tip().clone()
    };
    {
        let s = reopen(dir.path(), &n.genesis).unwrap();
        assert_eq!(s.tip(), &tip);
        assert_eq!(s.account(&n.bob).unwrap().balance, 5);
    }
    let mut other = n.genesis.clone();
    other.network_id = "other".into();
    let e = reopen(dir.path(), &other).err().unwrap();
    assert!(matches!(e, StoreError::GenesisMismatch { .. }), "{e}");
    {
        let db = {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match sled::open(dir.path()) {
                    Ok(db) => break db,
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        };
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &99u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let e = reopen(dir.path(), &n.genesis).err().unwrap();
    assert!(
        matches!(
            e,
            StoreError::SchemaMismatch {
                found: 99,
                expected: 1
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("schema version 99"), "{e}");
}

#[test]
fn build_block_skips_invalid_candidates_and_respects_limits() {
    let mut n = net();
    n.genesis.limits.max_block_txs = 2;
    let (_d, s) = open(&n);
    let candidates = vec![
        n.tx(10, 0),
        n.tx(10, 5),
        n.tx(2_000, 1),
        n.tx(10, 1),
        n.tx(10, 2),
    ];
    let built = s.build_block(&n.b, 1, candidates).unwrap();
    assert_eq!(built.block.txs.len(), 2);
    assert_eq!(built.invalid.len(), 2);
}

#[test]
fn a_run_of_blocks_goes_in_as_one_write_and_stops_at_the_first_invalid() {
    use crate::state::SigCheck;
    let n = net();
    // The source chain: five blocks with a transfer each.
    let (_d, mut src) = open(&n);
    let blocks: Vec<Block> = (0..5)
        .map(|i| produce(&n, &mut src, i + 1, vec![n.tx(10, i)]))
        .collect();
    let (_e, mut dest) = open(&n);
    let (taken, err) = dest.extend(&blocks[..3], NOW, SigCheck::Verify).unwrap();
    assert_eq!((taken, err.is_none()), (3, true));
    assert_eq!(dest.tip().hash, blocks[2].hash());
    assert_eq!(dest.account(&n.bob).unwrap().balance, 30);
    // Not an extension of the tip: nothing taken, no error.
    let (taken, err) = dest.extend(&blocks[..2], NOW, SigCheck::Verify).unwrap();
    assert_eq!((taken, err.is_none()), (0, true));
    // A forged signature in the last block: the valid one before it still goes in.
    let mut bad = blocks[4].clone();
    bad.txs[0].signature.0[0] ^= 1;
    let (taken, err) = dest
        .extend(&[blocks[3].clone(), bad], NOW, SigCheck::Verify)
        .unwrap();
    assert_eq!(taken, 1);
    assert!(matches!(err, Some(ImportError::Invalid { .. })), "{err:?}");
    assert_eq!(dest.tip().hash, blocks[3].hash());
    assert_eq!(dest.account(&n.bob).unwrap().balance, 40);
    // Batch verification names the forgery too; the honest blocks pass.
    let chain = n.genesis.hash();
    assert!(crate::rules::tx_signatures_valid(&chain, &blocks));
    let mut forged = blocks.clone();
    forged[4].txs[0].signature.0[0] ^= 1;
    assert!(!crate::rules::tx_signatures_valid(&chain, &forged));
    // The state after a batched import equals the source's, and it survives a reopen.
    dest.extend(&blocks[4..], NOW, SigCheck::Verify).unwrap();
    assert_eq!(dest.tip(), src.tip());
    let dir = _e.path().to_path_buf();
    drop(dest);
    let dest = reopen(&dir, &n.genesis).unwrap();
    assert_eq!(dest.tip(), src.tip());
    assert_eq!(dest.account(&n.bob).unwrap().balance, 50);
}
