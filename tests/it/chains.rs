//! Networks for multi-node tests: a genesis, and stores holding pre-built chains, written
//! with the real chain-sync code so that nodes start with thousands of blocks at once.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use chainmesh_chain_sync::{Allocation, ChainLimits, Genesis, Store};
use chainmesh_node::config::{Config, genesis_to_toml};
use chainmesh_proto::{Keypair, PublicKey, Tx};

pub struct TestNet {
    pub genesis: Genesis,
    pub authority: Keypair,
    /// All authorities, `authority` first.
    pub authorities: Vec<Keypair>,
    pub alice: Keypair,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl TestNet {
    /// A network whose slots 1..=`past_slots` are already in the past.
    pub fn new(network_id: &str, past_slots: u64) -> TestNet {
        Self::with_authorities(network_id, past_slots, 1)
    }

    pub fn with_authorities(network_id: &str, past_slots: u64, n: usize) -> TestNet {
        Self::with_block_time(network_id, past_slots, n, 1_000)
    }

    pub fn with_block_time(
        network_id: &str,
        past_slots: u64,
        n: usize,
        block_time_ms: u64,
    ) -> TestNet {
        let authorities: Vec<Keypair> = (0..n).map(|_| Keypair::generate()).collect();
        let authority = authorities[0].clone();
        let alice = Keypair::generate();
        let genesis = Genesis {
            network_id: network_id.into(),
            timestamp_ms: (now_ms() - (past_slots + 60) * block_time_ms) / 1000 * 1000,
            block_time_ms,
            authorities: authorities.iter().map(Keypair::public).collect(),
            allocations: vec![Allocation {
                address: alice.public(),
                balance: 1_000_000_000,
            }],
            limits: ChainLimits::default(),
        };
        TestNet {
            genesis,
            authority,
            authorities,
            alice,
        }
    }

    /// Writes `<home>/genesis.toml` and `<home>/config.toml` (loopback, any free ports,
    /// quick redials, no producer) and returns the home.
    pub fn node_home(&self, home: &Path) -> PathBuf {
        self.node_home_with(home, None, |_| {})
    }

    /// Like `node_home`, producing with `producer` if given, with config changes.
    pub fn node_home_with(
        &self,
        home: &Path,
        producer: Option<&Keypair>,
        tweak: impl FnOnce(&mut Config),
    ) -> PathBuf {
        std::fs::create_dir_all(home).unwrap();
        std::fs::write(
            home.join("genesis.toml"),
            genesis_to_toml(&self.genesis).unwrap(),
        )
        .unwrap();
        let mut cfg = Config {
            data_dir: "data".into(),
            ..Config::default()
        };
        cfg.api.listen = "127.0.0.1:0".parse().unwrap();
        cfg.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        cfg.p2p.redial_secs = 1;
        cfg.p2p.request_timeout_secs = 5;
        if let Some(k) = producer {
            k.save_new(&home.join("producer.key")).unwrap();
            cfg.producer_key = Some("producer.key".into());
        }
        tweak(&mut cfg);
        std::fs::write(home.join("config.toml"), toml::to_string(&cfg).unwrap()).unwrap();
        home.to_path_buf()
    }

    /// Fills `<home>/data/db` with `blocks` blocks in slots 1..=blocks, each with
    /// `txs_per_block` transfers from alice. Returns the tip hash.
    pub fn build_chain(
        &self,
        home: &Path,
        blocks: u64,
        txs_per_block: u64,
    ) -> chainmesh_proto::Hash {
        let mut store = Store::open(&home.join("data/db"), &self.genesis).unwrap();
        let chain = self.genesis.hash();
        let mut nonce = store.account(&self.alice.public()).unwrap().nonce;
        let start = store.tip().slot + 1;
        for slot in start..start + blocks {
            let txs: Vec<Tx> = (0..txs_per_block)
                .map(|i| {
                    let to = PublicKey([(slot % 200) as u8 + 1; 32]);
                    let tx = Tx::transfer(&self.alice, &chain, to, 1 + i, 1, nonce);
                    nonce += 1;
                    tx
                })
                .collect();
            let built = store.build_block(&self.authority, slot, txs).unwrap();
            assert!(built.invalid.is_empty());
            store.import(built.block, now_ms()).unwrap();
        }
        store.flush().unwrap();
        store.tip().hash
    }
}

/// Copies a node's database folder (the node must be stopped).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// Accounts and tip of a stopped node's store.
pub fn snapshot(
    home: &Path,
    genesis: &Genesis,
) -> (
    chainmesh_chain_sync::Tip,
    Vec<(PublicKey, chainmesh_proto::Account)>,
) {
    let s = Store::open(&home.join("data/db"), genesis).unwrap();
    (s.tip().clone(), s.accounts().map(Result::unwrap).collect())
}
