//! `chainmesh init` and the first start of `chainmesh dev`: a folder with a genesis, a
//! commented config and the keys they name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chainmesh_chain_sync::{Allocation, ChainLimits, Genesis};
use chainmesh_proto::{Address, Keypair, PublicKey};
use clap::Args;

use crate::chain::now_ms;
use crate::config;

/// Balance of each dev account.
pub const DEV_BALANCE: u64 = 1_000_000_000_000;

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Folder to write `config.toml`, `genesis.toml` and `keys/` into.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "devnet")]
    pub network_id: String,
    #[arg(long, default_value_t = 1000)]
    pub block_time_ms: u64,
    /// Authority public key (repeatable). Without any, a producer key is generated in
    /// `keys/producer.key` and is the only authority.
    #[arg(long = "authority")]
    pub authorities: Vec<PublicKey>,
    /// Initial balance, `ADDRESS=AMOUNT` (repeatable).
    #[arg(long, value_parser = parse_alloc)]
    pub alloc: Vec<(Address, u64)>,
    /// Also generate two funded accounts, `keys/alice.key` and `keys/bob.key`.
    #[arg(long)]
    pub dev_accounts: bool,
    /// API listen address written to the config.
    #[arg(long, default_value = config::DEFAULT_API)]
    pub api: SocketAddr,
    /// P2P listen addresses written to the config [default: all interfaces, TCP and QUIC
    /// on port 7701].
    #[arg(long = "p2p-listen")]
    pub p2p_listen: Vec<String>,
}

fn parse_alloc(s: &str) -> Result<(Address, u64), String> {
    let (a, n) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ADDRESS=AMOUNT, got {s:?}"))?;
    let addr = a.parse().map_err(|e| format!("address: {e}"))?;
    let amount = n.parse().map_err(|e| format!("amount {n:?}: {e}"))?;
    Ok((addr, amount))
}

pub struct InitSummary {
    pub dir: PathBuf,
    pub genesis: Genesis,
    pub producer_key: Option<PathBuf>,
    pub accounts: Vec<(String, Address, PathBuf)>,
}

impl InitSummary {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "initialised network {:?} (genesis {}) in {}\n  config:  {}\n  genesis: {}\n",
            self.genesis.network_id,
            self.genesis.hash(),
            self.dir.display(),
            self.dir.join("config.toml").display(),
            self.dir.join("genesis.toml").display(),
        );
        if let Some(p) = &self.producer_key {
            s += &format!("  producer key: {}\n", p.display());
        }
        for (name, addr, path) in &self.accounts {
            s += &format!("  account {name}: {addr} (key {})\n", path.display());
        }
        s
    }
}

fn new_key(path: &Path) -> anyhow::Result<Keypair> {
    let k = Keypair::generate();
    k.save_new(path)?;
    Ok(k)
}

pub fn init(a: &InitArgs) -> anyhow::Result<InitSummary> {
    let config_path = a.dir.join("config.toml");
    let genesis_path = a.dir.join("genesis.toml");
    for p in [&config_path, &genesis_path] {
        if p.exists() {
            bail!(
                "{} already exists; refusing to overwrite a network's files",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let mut authorities = a.authorities.clone();
    let mut producer_key = None;
    if authorities.is_empty() {
        let p = a.dir.join("keys/producer.key");
        authorities.push(new_key(&p)?.public());
        producer_key = Some(p);
    }
    let mut allocations: Vec<Allocation> = a
        .alloc
        .iter()
        .map(|(address, balance)| Allocation {
            address: *address,
            balance: *balance,
        })
        .collect();
    let mut accounts = Vec::new();
    if a.dev_accounts {
        for name in ["alice", "bob"] {
            let p = a.dir.join(format!("keys/{name}.key"));
            let k = new_key(&p)?;
            allocations.push(Allocation {
                address: k.public(),
                balance: DEV_BALANCE,
            });
            accounts.push((name.to_string(), k.public(), p));
        }
    }
    let genesis = Genesis {
        network_id: a.network_id.clone(),
        // Whole seconds keep the file readable; slot 0 starts now.
        timestamp_ms: now_ms() / 1000 * 1000,
        block_time_ms: a.block_time_ms,
        authorities,
        allocations,
        limits: ChainLimits::default(),
    };
    genesis.validate().context("invalid network parameters")?;
    std::fs::write(&genesis_path, config::genesis_to_toml(&genesis)?)
        .with_context(|| format!("cannot write {}", genesis_path.display()))?;
    let key_rel = producer_key.as_ref().map(|_| "keys/producer.key");
    let listen = if a.p2p_listen.is_empty() {
        config::P2pConfig::default().listen
    } else {
        a.p2p_listen.clone()
    };
    std::fs::write(&config_path, config::template(key_rel, a.api, &listen))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    Ok(InitSummary {
        dir: a.dir.clone(),
        genesis,
        producer_key,
        accounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_network_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let args = InitArgs {
            dir: dir.path().join("net"),
            network_id: "testnet".into(),
            block_time_ms: 500,
            authorities: vec![],
            alloc: vec![(PublicKey([5; 32]), 77)],
            dev_accounts: true,
            api: "127.0.0.1:0".parse().unwrap(),
            p2p_listen: vec![],
        };
        let s = init(&args).unwrap();
        assert_eq!(s.accounts.len(), 2);
        let cfg = config::Config::load(&args.dir.join("config.toml")).unwrap();
        let g = config::load_genesis(&cfg.genesis).unwrap();
        assert_eq!(g, s.genesis);
        assert_eq!(g.allocations.len(), 3);
        let k = Keypair::load(cfg.producer_key.as_ref().unwrap()).unwrap();
        assert_eq!(g.authorities, vec![k.public()]);
        let e = init(&args).err().unwrap().to_string();
        assert!(e.contains("already exists"), "{e}");
        assert!(parse_alloc("nonsense").is_err());
        assert!(parse_alloc(&format!("{}=x", PublicKey([1; 32]))).is_err());
    }
}
