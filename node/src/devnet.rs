//! `chainmesh devnet-init`: the files of a local multi-node network, for
//! `scripts/devnet.sh`. One genesis with `authorities` producers and `accounts` funded
//! accounts (keys in `keys/`), and per node a folder with its config, its p2p identity
//! (generated here, so that every node's peer id is known before any starts) and its
//! bootstrap peers: each node dials the two before it on a ring, so the topology is
//! sparse and peer exchange and the DHT fill in the rest.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chainmesh_chain_sync::{Allocation, ChainLimits, Genesis};
use chainmesh_proto::Keypair;
use clap::Args;
use serde::Serialize;

use crate::chain::now_ms;
use crate::config::{Config, KadMode, genesis_to_toml};

#[derive(Args, Debug, Clone)]
pub struct DevnetArgs {
    /// Folder for the network (created; must not hold a devnet already).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Producers, the first nodes.
    #[arg(long, default_value_t = 1)]
    pub authorities: usize,
    /// Funded accounts for load (keys/account-<i>.key).
    #[arg(long, default_value_t = 32)]
    pub accounts: usize,
    #[arg(long, default_value_t = 1000)]
    pub block_time_ms: u64,
    /// Node i serves its API on base_port + i and p2p on base_port + 100 + i.
    #[arg(long, default_value_t = 7800)]
    pub base_port: u16,
    #[arg(long, default_value = "devnet-local")]
    pub network_id: String,
}

#[derive(Serialize)]
pub struct DevnetNode {
    pub name: String,
    pub api: String,
    pub p2p: String,
    pub producer: bool,
}

/// Balance of each load account.
const ACCOUNT_BALANCE: u64 = 1_000_000_000_000;

pub fn init(a: &DevnetArgs) -> anyhow::Result<Vec<DevnetNode>> {
    if a.nodes == 0 || a.nodes > 100 {
        bail!("--nodes must be 1..=100");
    }
    if a.authorities == 0 || a.authorities > a.nodes {
        bail!("--authorities must be 1..=--nodes");
    }
    if a.accounts > 10_000 {
        bail!("--accounts must be at most 10,000");
    }
    if u32::from(a.base_port) + 100 + a.nodes as u32 > 65_535 || a.base_port < 1024 {
        bail!("--base-port must leave room for 2 x --nodes ports below 65536, above 1023");
    }
    if a.dir.join("devnet.json").exists() {
        bail!("{} already holds a devnet", a.dir.display());
    }
    let keys = a.dir.join("keys");
    std::fs::create_dir_all(&keys).with_context(|| format!("cannot create {}", keys.display()))?;
    let save = |k: &Keypair, p: &Path| {
        k.save_new(p)
            .with_context(|| format!("cannot write {}", p.display()))
    };
    let authorities: Vec<Keypair> = (0..a.authorities).map(|_| Keypair::generate()).collect();
    for (i, k) in authorities.iter().enumerate() {
        save(k, &keys.join(format!("authority-{i}.key")))?;
    }
    let mut allocations = Vec::new();
    for i in 0..a.accounts {
        let k = Keypair::generate();
        save(&k, &keys.join(format!("account-{i}.key")))?;
        allocations.push(Allocation {
            address: k.public(),
            balance: ACCOUNT_BALANCE,
        });
    }
    let genesis = Genesis {
        network_id: a.network_id.clone(),
        timestamp_ms: now_ms() / 1000 * 1000,
        block_time_ms: a.block_time_ms,
        authorities: authorities.iter().map(Keypair::public).collect(),
        allocations,
        limits: ChainLimits::default(),
    };
    genesis.validate().context("invalid network parameters")?;
    std::fs::write(a.dir.join("genesis.toml"), genesis_to_toml(&genesis)?)?;

    // Identities first: bootstrap addresses need every node's peer id.
    let mut peer_ids = Vec::new();
    for i in 0..a.nodes {
        let data = a.dir.join(format!("n{i}/data"));
        std::fs::create_dir_all(&data)?;
        let k = Keypair::generate();
        save(&k, &data.join("p2p.key"))?;
        let id = libp2p::identity::Keypair::ed25519_from_bytes(k.seed())
            .context("p2p key")?
            .public()
            .to_peer_id();
        peer_ids.push(id);
    }
    let p2p_port = |i: usize| a.base_port + 100 + i as u16;
    let p2p_addr = |i: usize| format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", p2p_port(i), peer_ids[i]);
    let mut nodes = Vec::new();
    for i in 0..a.nodes {
        let home = a.dir.join(format!("n{i}"));
        let mut cfg = Config {
            data_dir: "data".into(),
            genesis: "../genesis.toml".into(),
            producer_key: (i < a.authorities).then(|| format!("../keys/authority-{i}.key").into()),
            ..Config::default()
        };
        cfg.api.listen = format!("127.0.0.1:{}", a.base_port + i as u16).parse()?;
        cfg.p2p.listen = vec![format!("/ip4/127.0.0.1/tcp/{}", p2p_port(i))];
        cfg.p2p.bootstrap = [1, 2]
            .iter()
            .filter(|d| **d < a.nodes)
            .map(|d| p2p_addr((i + a.nodes - d) % a.nodes))
            .collect();
        cfg.p2p.target_peers = 4.min(a.nodes.saturating_sub(1)) as u32;
        cfg.p2p.redial_secs = 2;
        // On loopback nobody is publicly reachable: every node answers DHT queries.
        cfg.p2p.discovery.kad_mode = KadMode::Server;
        cfg.mempool.max_per_sender = 1024;
        std::fs::write(home.join("config.toml"), toml::to_string(&cfg)?)?;
        nodes.push(DevnetNode {
            name: format!("n{i}"),
            api: format!("http://{}", cfg.api.listen),
            p2p: p2p_addr(i),
            producer: i < a.authorities,
        });
    }
    std::fs::write(
        a.dir.join("devnet.json"),
        serde_json::to_string_pretty(&nodes)?,
    )?;
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_loadable_configs_on_a_sparse_ring() {
        let dir = tempfile::tempdir().unwrap();
        let a = DevnetArgs {
            dir: dir.path().join("net"),
            nodes: 5,
            authorities: 2,
            accounts: 3,
            block_time_ms: 500,
            base_port: 20_000,
            network_id: "devnet-local".into(),
        };
        let nodes = init(&a).unwrap();
        assert_eq!(nodes.len(), 5);
        for (i, n) in nodes.iter().enumerate() {
            let c = Config::load(&a.dir.join(format!("{}/config.toml", n.name))).unwrap();
            assert_eq!(c.p2p.bootstrap.len(), 2);
            assert_eq!(c.producer_key.is_some(), i < 2);
            assert!(!c.p2p.bootstrap.contains(&n.p2p), "a node dials itself");
            crate::config::load_genesis(&c.genesis).unwrap();
        }
        assert!(a.dir.join("keys/account-2.key").exists());
        // Twice into the same folder: refused, nothing overwritten.
        assert!(init(&a).is_err());
    }
}
