//! The fuzz targets: every decoder of ours that reads bytes from a peer, a file or an API
//! client, each behind one function of `&[u8]`.
//!
//! Each function runs the decoder exactly as the node does (same caps, same conversions)
//! and then checks what a correct decoder must guarantee, so that the fuzzer finds wrong
//! answers as well as panics: a value that decodes re-encodes to a value that decodes to
//! itself; nothing decoded exceeds its cap. A panic here is a finding. Each returns
//! whether the decoder accepted the input, which the tests use to keep the committed seeds
//! valid messages as the schemas change.
//!
//! `cargo fuzz` runs them (`tests/fuzz/fuzz_targets/`, one binary each, see
//! `scripts/fuzz.sh`), and the integration tests run every committed seed and every past
//! finding through them (`tests/it/fuzz.rs` includes this file), so a finding stays a
//! regression test once fixed.

use chainmesh_behaviours::admission;
use chainmesh_behaviours::codec::{ProtoCodec, WireMeter, protocol_name};
use chainmesh_behaviours::mina::{gossip as mina_gossip, peer_exchange};
use chainmesh_behaviours::status::{ChainStatus, check_compatible};
use chainmesh_behaviours::{gossip, pex, pool, sync};
use chainmesh_proto::codec::{decode_exact, decode_frame, encode_frame, read_frame};
use chainmesh_proto::limits::{
    MAX_ADMISSION_BYTES, MAX_BLOCK_BYTES, MAX_PEX_PEERS, MAX_PEX_REQUEST_BYTES,
    MAX_PEX_RESPONSE_BYTES, MAX_POOL_ENTRIES, MAX_POOL_ENTRIES_BYTES, MAX_POOL_PERMIT_BYTES,
    MAX_STATUS_BYTES, MAX_SYNC_REQUEST_BYTES, MAX_SYNC_RESPONSE_BYTES,
};
use chainmesh_proto::wire::{self, decode_capped};
use chainmesh_proto::{Account, Address, Hash, pb_net};
use futures::executor::block_on;
use libp2p::request_response::Codec as _;
use prost::Message;

/// A target: runs one input, and tells whether the decoder accepted it.
pub type Target = fn(&[u8]) -> bool;

/// Every target by name, as `scripts/fuzz.sh` and the corpus folders name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("request_codec", request_codec),
    ("tx", tx),
    ("block", block),
    ("compact_block", compact_block),
    ("gossip", gossip_payload),
    ("status", status),
    ("sync_request", sync_request),
    ("sync_response", sync_response),
    ("pool", pool_messages),
    ("pex", pex_messages),
    ("admission", admission_messages),
    ("mina", mina_messages),
    ("mempool_chunk", mempool_chunk),
    ("store_records", store_records),
    ("config", config),
    ("genesis", genesis),
    ("api_json", api_json),
];

const FRAME_CAP: usize = 4096;

/// Length-prefixed framing, sans-I/O and streaming: both must agree, and a frame is
/// accepted only in its one (minimal) encoding and within its cap.
pub fn frame(data: &[u8]) -> bool {
    if let Ok(Some((payload, used))) = decode_frame(data, FRAME_CAP) {
        assert!(payload.len() <= FRAME_CAP && used <= data.len());
        let again = encode_frame(payload, FRAME_CAP).expect("a decoded frame re-encodes");
        assert_eq!(again, &data[..used], "frames have exactly one encoding");
    }
    let exact = decode_exact(data, FRAME_CAP).map(<[u8]>::to_vec);
    let mut cursor = futures::io::Cursor::new(data);
    let streamed = block_on(read_frame(&mut cursor, FRAME_CAP));
    if let Ok(p) = &exact {
        assert_eq!(
            streamed.as_ref().ok(),
            Some(p),
            "stream and buffer decoders agree"
        );
    }
    if let Ok(p) = &streamed {
        assert!(p.len() <= FRAME_CAP);
    }
    exact.is_ok()
}

/// The request-response codec every protocol of ours uses (here with sync's caps): an
/// inbound request never fails the stream for bad bytes (it becomes `Malformed`, which
/// the node penalises), and a response that decodes is within its cap.
pub fn request_codec(data: &[u8]) -> bool {
    let mut codec = ProtoCodec::<pb_net::SyncRequest, pb_net::SyncResponse>::new(
        MAX_SYNC_REQUEST_BYTES,
        MAX_SYNC_RESPONSE_BYTES,
        WireMeter::default(),
    );
    let p = protocol_name("fuzz", "sync", 1);
    let mut io = futures::io::Cursor::new(data);
    let accepted = match block_on(codec.read_request(&p, &mut io)) {
        Ok(Ok(req)) => {
            assert!(req.encoded_len() <= MAX_SYNC_REQUEST_BYTES);
            true
        }
        Ok(Err(_malformed)) => false,
        Err(e) => {
            // Only a stream that sent nothing at all is no frame to score.
            assert!(data.is_empty(), "bad bytes are Malformed, not {e}");
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            false
        }
    };
    let mut io = futures::io::Cursor::new(data);
    if let Ok(resp) = block_on(codec.read_response(&p, &mut io)) {
        assert!(resp.encoded_len() <= MAX_SYNC_RESPONSE_BYTES);
    }
    accepted
}

pub fn tx(data: &[u8]) -> bool {
    let Ok(t) = wire::decode_tx(data) else {
        return false;
    };
    assert_eq!(
        wire::decode_tx(&wire::encode_tx(&t)).ok().as_ref(),
        Some(&t)
    );
    let _ = t.check_stateless(&Hash([7; 32]), 1);
    let _ = t.cost();
    true
}

pub fn block(data: &[u8]) -> bool {
    let Ok(b) = wire::decode_block(data) else {
        return false;
    };
    let again = wire::encode_block(&b);
    assert!(again.len() <= MAX_BLOCK_BYTES);
    assert_eq!(wire::decode_block(&again).ok().as_ref(), Some(&b));
    let _ = b.header.verify_signature();
    let _ = chainmesh_proto::Block::tx_root(&b.txs);
    true
}

pub fn compact_block(data: &[u8]) -> bool {
    let Ok(c) = wire::decode_compact_block(data) else {
        return false;
    };
    let again = wire::encode_compact_block(&c);
    assert_eq!(wire::decode_compact_block(&again).ok().as_ref(), Some(&c));
    let _ = c.hash();
    true
}

/// A gossip payload on each of our topics and on one we do not serve.
pub fn gossip_payload(data: &[u8]) -> bool {
    let net = "fuzz";
    let as_tx = gossip::decode(net, &gossip::tx_topic(net).hash(), data);
    let as_block = gossip::decode(net, &gossip::block_topic(net).hash(), data);
    assert!(gossip::decode(net, &gossip::tx_topic("other").hash(), data).is_err());
    as_tx.is_ok() || as_block.is_ok()
}

pub fn status(data: &[u8]) -> bool {
    let Ok(pb) = decode_capped::<pb_net::Status>(data, MAX_STATUS_BYTES) else {
        return false;
    };
    let Ok(theirs) = ChainStatus::from_pb(pb) else {
        return false;
    };
    assert_eq!(
        ChainStatus::from_pb(theirs.to_pb()).ok().as_ref(),
        Some(&theirs)
    );
    assert!(theirs.agent.chars().count() <= 128);
    let ours = ChainStatus {
        version: 1,
        genesis: Hash([1; 32]),
        network_id: "fuzz".into(),
        best_height: 10,
        best_hash: Hash([2; 32]),
        cumulative_weight: 10,
        agent: "fuzz".into(),
        limits: Vec::new(),
    };
    let _ = check_compatible(&ours, &theirs);
    true
}

pub fn sync_request(data: &[u8]) -> bool {
    let Ok(pb) = decode_capped::<pb_net::SyncRequest>(data, MAX_SYNC_REQUEST_BYTES) else {
        return false;
    };
    let Ok(r) = sync::Request::from_pb(pb) else {
        return false;
    };
    assert_eq!(sync::Request::from_pb(r.to_pb()).ok().as_ref(), Some(&r));
    let _ = r.items();
    true
}

pub fn sync_response(data: &[u8]) -> bool {
    let Ok(pb) = decode_capped::<pb_net::SyncResponse>(data, MAX_SYNC_RESPONSE_BYTES) else {
        return false;
    };
    let Ok(r) = sync::Response::from_pb(pb) else {
        return false;
    };
    assert_eq!(sync::Response::from_pb(r.to_pb()).ok().as_ref(), Some(&r));
    true
}

/// The first byte picks the message: even, a permit; odd, entries answering a permit
/// for `8 × (byte >> 1)` of them.
pub fn pool_messages(data: &[u8]) -> bool {
    let Some((&pick, rest)) = data.split_first() else {
        return false;
    };
    if pick & 1 == 0 {
        let Ok(p) = decode_capped::<pb_net::PoolPermit>(rest, MAX_POOL_PERMIT_BYTES) else {
            return false;
        };
        let Ok((cursor, max)) = pool::permit_from_pb(&p) else {
            return false;
        };
        assert!((1..=MAX_POOL_ENTRIES).contains(&max));
        let again = pool::permit_from_pb(&pool::permit_to_pb(cursor, max));
        assert_eq!(again.ok(), Some((cursor, max)));
    } else {
        let Ok(e) = decode_capped::<pb_net::PoolEntries>(rest, MAX_POOL_ENTRIES_BYTES) else {
            return false;
        };
        let max = u32::from(pick >> 1) * 8;
        let Ok((ids, next)) = pool::entries_from_pb(e, max) else {
            return false;
        };
        assert!(ids.len() <= max as usize);
        let again = pool::entries_from_pb(pool::entries_to_pb(&ids, next), max);
        assert_eq!(again.ok(), Some((ids, next)));
    }
    true
}

/// The first byte picks the message: even, a request for peers; odd, an answer.
pub fn pex_messages(data: &[u8]) -> bool {
    let Some((&pick, rest)) = data.split_first() else {
        return false;
    };
    if pick & 1 == 0 {
        let Ok(r) = decode_capped::<pb_net::GetPeers>(rest, MAX_PEX_REQUEST_BYTES) else {
            return false;
        };
        assert!(pex::requested(&r) <= MAX_PEX_PEERS as usize);
    } else {
        let Ok(p) = decode_capped::<pb_net::Peers>(rest, MAX_PEX_RESPONSE_BYTES) else {
            return false;
        };
        let Ok(records) = pex::from_pb(p) else {
            return false;
        };
        assert!(records.len() <= MAX_PEX_PEERS as usize);
        assert_eq!(pex::from_pb(pex::to_pb(&records)).ok(), Some(records));
    }
    true
}

/// The first byte picks the message: even, a request (challenge or proof); odd, a response.
pub fn admission_messages(data: &[u8]) -> bool {
    let Some((&pick, rest)) = data.split_first() else {
        return false;
    };
    if pick & 1 == 0 {
        let Ok(p) = decode_capped::<pb_net::AdmissionRequest>(rest, MAX_ADMISSION_BYTES) else {
            return false;
        };
        let Ok(r) = admission::Request::from_pb(p) else {
            return false;
        };
        assert_eq!(admission::Request::from_pb(r.to_pb()).ok(), Some(r));
    } else {
        let Ok(p) = decode_capped::<pb_net::AdmissionResponse>(rest, MAX_ADMISSION_BYTES) else {
            return false;
        };
        let Ok(r) = admission::Response::from_pb(p) else {
            return false;
        };
        assert_eq!(admission::Response::from_pb(r.to_pb()).ok(), Some(r));
    }
    true
}

/// The Mina profile: a peer-exchange answer (JSON) and a gossip frame.
pub fn mina_messages(data: &[u8]) -> bool {
    let answer = peer_exchange::decode(data);
    if let Ok(peers) = &answer {
        assert!(data.len() <= peer_exchange::MAX_ANSWER);
        let again = peer_exchange::encode(peers.clone());
        assert_eq!(peer_exchange::decode(&again).ok().as_ref(), Some(peers));
    }
    let frame = mina_gossip::check_frame(data);
    if let Ok(len) = frame {
        assert_eq!(mina_gossip::frame(&data[8..]), data);
        assert_eq!(len, data.len() - 8);
    }
    answer.is_ok() || frame.is_ok()
}

/// A chunk of the persisted mempool, as read back from sled.
pub fn mempool_chunk(data: &[u8]) -> bool {
    use chainmesh_mempool::chunks;
    let Ok(txs) = chunks::decode(data) else {
        return false;
    };
    assert!(txs.len() <= chunks::CHUNK_TXS);
    assert_eq!(chunks::decode(&chunks::encode(&txs)).ok(), Some(txs));
    true
}

/// The store's own records, as read back from sled (a damaged file must not panic).
pub fn store_records(data: &[u8]) -> bool {
    use chainmesh_chain_sync::state::{StateHash, UndoRecord};
    let account = Account::decode(data);
    if let Some(a) = &account {
        assert_eq!(&a.encode()[..], data);
    }
    let state = StateHash::decode(data);
    if let Some(s) = &state {
        assert_eq!(s.encode(), data);
    }
    let undo = UndoRecord::decode(data);
    if let Some(u) = &undo {
        assert_eq!(UndoRecord::decode(&u.encode()).as_ref(), Some(u));
    }
    account.is_some() || state.is_some() || undo.is_some()
}

/// The node's TOML config, as `chainmesh --config` reads it.
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    chainmesh_node::config::Config::parse(text, std::path::Path::new("/fuzz")).is_ok()
}

/// A genesis file: one that validates writes back to a file that gives the same genesis.
pub fn genesis(data: &[u8]) -> bool {
    use chainmesh_node::config::{genesis_to_toml, parse_genesis};
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(g) = parse_genesis(text) else {
        return false;
    };
    let written = genesis_to_toml(&g).expect("a valid genesis serialises");
    let again = parse_genesis(&written).expect("and what it writes parses again");
    assert_eq!(again.hash(), g.hash());
    true
}

/// The API's inputs: `POST /txs` and `POST /mina/publish` bodies, and the ids in paths.
pub fn api_json(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(t) = serde_json::from_slice::<chainmesh_proto::Tx>(data) {
        let again = serde_json::to_vec(&t).expect("a transaction serialises");
        let back = serde_json::from_slice::<chainmesh_proto::Tx>(&again);
        assert_eq!(back.ok().as_ref(), Some(&t));
        let _ = t.check_stateless(&Hash([7; 32]), 1);
        accepted = true;
    }
    if let Ok(b) = serde_json::from_slice::<chainmesh_node::api::BlockBody>(data) {
        // What `POST /blocks` takes is what `GET /blocks/{id}` shows.
        let block = chainmesh_proto::Block {
            header: b.header,
            txs: b.txs,
        };
        let view = chainmesh_node::api::block_view(&block, true);
        let shown = serde_json::to_vec(&view).expect("a block view serialises");
        let back = serde_json::from_slice::<chainmesh_node::api::BlockBody>(&shown)
            .expect("a block view reads back as a submitted block");
        assert_eq!((back.header, back.txs), (block.header, block.txs));
        accepted = true;
    }
    if let Ok(m) = serde_json::from_slice::<chainmesh_node::api::MinaPublish>(data) {
        let _ = hex::decode(&m.data_hex);
        let _ = mina_gossip::is_mina_topic(&libp2p::gossipsub::TopicHash::from_raw(m.topic));
        accepted = true;
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(h) = s.parse::<Hash>() {
            assert_eq!(h.to_hex().parse::<Hash>().ok(), Some(h));
            accepted = true;
        }
        if let Ok(a) = s.parse::<Address>() {
            assert_eq!(a.to_hex().parse::<Address>().ok(), Some(a));
            accepted = true;
        }
    }
    accepted
}
