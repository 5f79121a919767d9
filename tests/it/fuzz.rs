//! The fuzz targets' committed inputs, run in the ordinary test suite: every seed of
//! `tests/fuzz/corpus/<target>/` must still be a message its decoder accepts (so the
//! corpora follow the schemas), and every past finding in
//! `tests/fuzz/regressions/<target>/` must go through without a panic.
//!
//! `CHAINMESH_FUZZ_WRITE_SEEDS=1 cargo test -p chainmesh-tests --test it fuzz::` rewrites
//! the seeds from the encoders (after a schema change).

use std::path::{Path, PathBuf};

use chainmesh_behaviours::admission::{self, Challenge};
use chainmesh_behaviours::codec::{Inbound, ProtoCodec, WireMeter, protocol_name};
use chainmesh_behaviours::mina::{gossip as mina_gossip, peer_exchange};
use chainmesh_behaviours::status::{ChainStatus, ServeLimit};
use chainmesh_behaviours::{pex, pool, sync};
use chainmesh_chain_sync::genesis::{Allocation, ChainLimits, Genesis};
use chainmesh_chain_sync::state::{StateHash, UndoRecord};
use chainmesh_proto::codec::encode_frame;
use chainmesh_proto::{Account, Block, CompactBlock, Hash, Header, Keypair, Signature, Tx, wire};
use libp2p::request_response::Codec as _;
use prost::Message;

#[path = "../fuzz/src/lib.rs"]
mod targets;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

fn sample_block(txs: usize) -> Block {
    let producer = Keypair::from_seed([3; 32]);
    let chain = Hash([7; 32]);
    let txs: Vec<Tx> = (0..txs as u64)
        .map(|n| {
            let from = Keypair::from_seed([10 + n as u8; 32]);
            Tx::transfer(&from, &chain, producer.public(), 5 + n, 1, n)
        })
        .collect();
    let mut header = Header {
        parent: Hash([1; 32]),
        height: 9,
        slot: 12,
        timestamp_ms: 1_700_000_000_000,
        tx_root: Block::tx_root(&txs),
        state_root: Hash([2; 32]),
        producer: producer.public(),
        signature: Signature::ZERO,
    };
    header.sign(&producer);
    Block { header, txs }
}

fn tagged(tag: u8, m: &impl Message) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(m.encode_to_vec());
    v
}

/// Valid inputs for each target, built with the encoders the node uses.
fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let block = sample_block(3);
    let tx = block.txs[0].clone();
    let compact = CompactBlock::of(&block);
    let status = ChainStatus {
        version: 1,
        genesis: Hash([1; 32]),
        network_id: "fuzz".into(),
        best_height: 120,
        best_hash: Hash([2; 32]),
        cumulative_weight: 120,
        agent: "chainmesh/0.1.0".into(),
        limits: vec![ServeLimit {
            protocol: "sync".into(),
            requests_per_second: 20,
            max_items_per_request: 512,
        }],
    };
    let requests = [
        sync::Request::GetHeaders {
            locator: vec![Hash([4; 32]), Hash([5; 32])],
            max: 64,
        },
        sync::Request::GetBlockRange {
            from: 10,
            count: 32,
        },
        sync::Request::GetBlocks {
            hashes: vec![block.hash()],
        },
        sync::Request::GetTxs { ids: vec![tx.id()] },
        sync::Request::GetBlockTxs {
            block: block.hash(),
            indexes: vec![0, 2],
        },
    ];
    let responses = [
        sync::Response::Headers(vec![block.header.clone()]),
        sync::Response::Blocks(vec![block.clone()]),
        sync::Response::Txs {
            txs: block.txs.clone(),
            missing: vec![Hash([9; 32])],
        },
        sync::Response::Error(sync::ServeError::RateLimited("slow down".into())),
    ];
    let peer = libp2p::identity::Keypair::ed25519_from_bytes([1; 32])
        .unwrap()
        .public()
        .to_peer_id();
    let records = vec![pex::PeerRecord {
        peer,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        last_seen_ms: 1_700_000_000_000,
    }];
    let challenge = Challenge {
        nonce: [6; admission::NONCE_BYTES],
        bits: 18,
        expires_ms: 30_000,
    };
    let genesis = Genesis {
        network_id: "fuzz-net".into(),
        timestamp_ms: 1_700_000_000_000,
        block_time_ms: 1_000,
        authorities: vec![Keypair::from_seed([3; 32]).public()],
        allocations: vec![Allocation {
            address: tx.from,
            balance: 1_000_000,
        }],
        limits: ChainLimits::default(),
    };
    let mut state = StateHash::empty();
    state.add(
        &tx.from,
        &Account {
            balance: 5,
            nonce: 1,
        },
    );
    let frame = |m: &[u8]| encode_frame(m, 4096).unwrap();
    // What the request-response codec writes for a request: a frame of the protobuf.
    let codec_frame = |r: &sync::Request| {
        let mut c = ProtoCodec::<_, chainmesh_proto::pb_net::SyncResponse>::new(
            1 << 16,
            1 << 23,
            WireMeter::default(),
        );
        let mut out = futures::io::Cursor::new(Vec::new());
        let req: Inbound<_> = Ok(r.to_pb());
        futures::executor::block_on(c.write_request(
            &protocol_name("fuzz", "sync", 1),
            &mut out,
            req,
        ))
        .unwrap();
        out.into_inner()
    };
    let api_tx = serde_json::to_vec(&tx).unwrap();
    // A block as `GET /blocks/{id}` shows it, which `POST /blocks` takes.
    let api_block = serde_json::to_vec(&chainmesh_node::api::block_view(&block, true)).unwrap();
    vec![
        (
            "frame",
            vec![frame(b"hello"), frame(&[0xab; 300]), frame(b"")],
        ),
        ("request_codec", requests.iter().map(codec_frame).collect()),
        ("tx", vec![wire::encode_tx(&tx)]),
        (
            "block",
            vec![
                wire::encode_block(&block),
                wire::encode_block(&sample_block(0)),
            ],
        ),
        ("compact_block", vec![wire::encode_compact_block(&compact)]),
        (
            "gossip",
            vec![wire::encode_tx(&tx), wire::encode_compact_block(&compact)],
        ),
        ("status", vec![status.to_pb().encode_to_vec()]),
        (
            "sync_request",
            requests.iter().map(|r| r.to_pb().encode_to_vec()).collect(),
        ),
        (
            "sync_response",
            responses
                .iter()
                .map(|r| r.to_pb().encode_to_vec())
                .collect(),
        ),
        (
            "pool",
            vec![
                tagged(0, &pool::permit_to_pb(17, 256)),
                tagged(5, &pool::entries_to_pb(&[tx.id(), block.txs[1].id()], 18)),
            ],
        ),
        (
            "pex",
            vec![
                tagged(0, &pex::request(32)),
                tagged(1, &pex::to_pb(&records)),
            ],
        ),
        (
            "admission",
            vec![
                tagged(0, &admission::Request::Challenge.to_pb()),
                tagged(
                    0,
                    &admission::Request::Proof {
                        nonce: challenge.nonce,
                        counter: 77,
                    }
                    .to_pb(),
                ),
                tagged(1, &admission::Response::Challenge(challenge).to_pb()),
                tagged(
                    1,
                    &admission::Response::Granted { until_ms: 60_000 }.to_pb(),
                ),
                tagged(1, &admission::Response::Refused("no proof".into()).to_pb()),
            ],
        ),
        (
            "mina",
            vec![
                peer_exchange::encode(vec![peer_exchange::AddrInfo {
                    id: peer.to_string(),
                    addrs: vec!["/ip4/127.0.0.1/tcp/8302".into()],
                }]),
                mina_gossip::frame(b"bin-prot body"),
            ],
        ),
        (
            "mempool_chunk",
            vec![chainmesh_mempool::chunks::encode(&block.txs)],
        ),
        (
            "store_records",
            vec![
                Account {
                    balance: 5,
                    nonce: 1,
                }
                .encode()
                .to_vec(),
                state.encode(),
                UndoRecord(vec![
                    (
                        tx.from,
                        Some(Account {
                            balance: 9,
                            nonce: 0,
                        }),
                    ),
                    (tx.to, None),
                ])
                .encode(),
            ],
        ),
        (
            "config",
            vec![
                chainmesh_node::config::template(
                    None,
                    "127.0.0.1:8080".parse().unwrap(),
                    &["/ip4/127.0.0.1/tcp/0".into()],
                )
                .into_bytes(),
            ],
        ),
        (
            "genesis",
            vec![
                chainmesh_node::config::genesis_to_toml(&genesis)
                    .unwrap()
                    .into_bytes(),
            ],
        ),
        (
            "api_json",
            vec![
                api_tx,
                br#"{"topic":"mina/tx/1.0.0","data_hex":"00ff10"}"#.to_vec(),
                tx.id().to_hex().into_bytes(),
                api_block,
            ],
        ),
    ]
}

#[test]
fn every_seed_is_accepted_and_every_past_finding_is_handled() {
    let dir = fuzz_dir();
    if std::env::var_os("CHAINMESH_FUZZ_WRITE_SEEDS").is_some() {
        for (name, inputs) in seeds() {
            let d = dir.join("corpus").join(name);
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            for (i, bytes) in inputs.iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i}")), bytes).unwrap();
            }
        }
    }
    // Every target has committed seeds, and the generator knows every target.
    let generated: Vec<&str> = seeds().iter().map(|(n, _)| *n).collect();
    let mut total = (0, 0);
    for (name, run) in targets::TARGETS {
        assert!(
            generated.contains(name),
            "no seeds are generated for target {name}"
        );
        let committed = files(&dir.join("corpus").join(name));
        assert!(
            !committed.is_empty(),
            "no seeds committed for fuzz target {name}"
        );
        for (path, bytes) in &committed {
            assert!(
                run(bytes),
                "{} is no longer accepted by its decoder",
                path.display()
            );
        }
        let findings = files(&dir.join("regressions").join(name));
        for (_, bytes) in &findings {
            // Accepted or refused, without a panic.
            run(bytes);
        }
        total.0 += committed.len();
        total.1 += findings.len();
    }
    assert_eq!(generated.len(), targets::TARGETS.len());
    println!(
        "fuzz inputs: {} targets, {} seeds accepted, {} past findings handled",
        targets::TARGETS.len(),
        total.0,
        total.1
    );
}

/// The seeds are valid; the same inputs cut short or with a byte flipped are refused or
/// accepted, but never panic (a quick check that runs without the fuzzer).
#[test]
fn damaged_seeds_never_panic() {
    let mut runs = 0;
    for (name, inputs) in seeds() {
        let run = targets::TARGETS.iter().find(|(n, _)| *n == name).unwrap().1;
        for bytes in inputs {
            for cut in 0..bytes.len().min(64) {
                run(&bytes[..cut]);
                let mut flipped = bytes.clone();
                flipped[cut] ^= 0x80;
                run(&flipped);
                runs += 2;
            }
        }
    }
    assert!(runs > 500, "only {runs} damaged inputs");
}
