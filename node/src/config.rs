//! The node's TOML config. Every field has a default, and [`template`] writes them all
//! down with comments, so `chainmesh init` produces a file that documents itself.
//! Relative paths are resolved against the folder holding the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chainmesh_chain_sync::Genesis;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the node keeps its database.
    pub data_dir: PathBuf,
    /// The network's genesis file.
    pub genesis: PathBuf,
    /// Key of a genesis authority: if set, the node produces blocks in its slots.
    pub producer_key: Option<PathBuf>,
    pub api: ApiConfig,
    pub mempool: MempoolConfig,
    pub chain: ChainConfig,
    pub p2p: P2pConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pConfig {
    /// Multiaddrs to listen on (TCP and QUIC).
    pub listen: Vec<String>,
    /// Peers to dial at start and whenever the connection is lost.
    pub bootstrap: Vec<String>,
    pub max_connections: u32,
    pub max_inbound: u32,
    pub max_outbound: u32,
    pub max_per_peer: u32,
    pub max_pending: u32,
    /// Status is re-exchanged with every peer at this interval.
    pub status_interval_secs: u64,
    /// Bootstrap peers that are not connected are redialled at this interval.
    pub redial_secs: u64,
    pub request_timeout_secs: u64,
    pub ban_secs: u64,
    /// Sync requests one peer may make per second (advertised in our status).
    pub sync_requests_per_second: u32,
    /// Most blocks per sync request we serve (advertised in our status).
    pub sync_max_blocks: u32,
    /// Take part in gossip (transactions and compact blocks). Without it the node still
    /// gets the mempool through `pool` and blocks through sync.
    pub gossip: bool,
    /// Pull-based mempool sync (`pool` protocol): grant permits to peers. Serving theirs
    /// stays on either way.
    pub pool_sync: bool,
    /// Peers kept at most; a peer beyond it gets addresses of others (pex) and is then
    /// disconnected. The hard limits above still apply.
    pub max_peers: u32,
    /// Below this many peers the node dials addresses it knows and asks peers for more.
    pub target_peers: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTP JSON API. Port 0 picks a free port; the bound address is written to
    /// `<data_dir>/api.addr`.
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// Longest a request waits for the chain task before answering 503.
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MempoolConfig {
    pub max_txs: usize,
    pub max_bytes: usize,
    pub max_per_sender: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    pub max_reorg_depth: u64,
    /// sled page cache size.
    pub cache_mb: u64,
}

pub const DEFAULT_API: &str = "127.0.0.1:7700";

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: "data".into(),
            genesis: "genesis.toml".into(),
            producer_key: None,
            api: ApiConfig::default(),
            mempool: MempoolConfig::default(),
            chain: ChainConfig::default(),
            p2p: P2pConfig::default(),
        }
    }
}

pub const DEFAULT_P2P_PORT: u16 = 7701;

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}"),
                format!("/ip4/0.0.0.0/udp/{DEFAULT_P2P_PORT}/quic-v1"),
            ],
            bootstrap: Vec::new(),
            max_connections: 128,
            max_inbound: 96,
            max_outbound: 48,
            max_per_peer: 2,
            max_pending: 32,
            status_interval_secs: 120,
            redial_secs: 10,
            request_timeout_secs: 10,
            ban_secs: 600,
            sync_requests_per_second: 50,
            sync_max_blocks: 256,
            gossip: true,
            pool_sync: true,
            max_peers: 50,
            target_peers: 8,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: DEFAULT_API
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7700))),
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
        }
    }
}

impl Default for MempoolConfig {
    fn default() -> Self {
        let d = chainmesh_mempool::PoolConfig::default();
        MempoolConfig {
            max_txs: d.max_txs,
            max_bytes: d.max_bytes,
            max_per_sender: d.max_per_sender,
        }
    }
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig {
            max_reorg_depth: chainmesh_chain_sync::store::DEFAULT_MAX_REORG_DEPTH,
            cache_mb: 256,
        }
    }
}

impl Config {
    /// Reads and checks a config file; paths in it become absolute.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg: Config = toml::from_str(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        cfg.check()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.data_dir);
        abs(&mut self.genesis);
        if let Some(k) = &mut self.producer_key {
            abs(k);
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.mempool.max_txs == 0 || self.mempool.max_per_sender == 0 {
            bail!("mempool.max_txs and mempool.max_per_sender must be at least 1");
        }
        if self.mempool.max_bytes < chainmesh_proto::limits::MAX_TX_BYTES {
            bail!(
                "mempool.max_bytes must be at least {} (one transaction)",
                chainmesh_proto::limits::MAX_TX_BYTES
            );
        }
        if self.api.max_body_bytes < 1024 {
            bail!("api.max_body_bytes must be at least 1024");
        }
        if self.api.request_timeout_ms == 0 {
            bail!("api.request_timeout_ms must be above 0");
        }
        if self.chain.max_reorg_depth == 0 {
            bail!("chain.max_reorg_depth must be at least 1");
        }
        for a in self.p2p.listen.iter().chain(&self.p2p.bootstrap) {
            a.parse::<libp2p::Multiaddr>()
                .map_err(|e| anyhow::anyhow!("p2p: {a:?} is not a multiaddr: {e}"))?;
        }
        let p = &self.p2p;
        if p.max_connections == 0
            || p.max_per_peer == 0
            || p.sync_max_blocks == 0
            || p.sync_requests_per_second == 0
        {
            bail!(
                "p2p.max_connections, max_per_peer, sync_max_blocks and sync_requests_per_second must be at least 1"
            );
        }
        if p.max_peers == 0 || p.max_peers > p.max_connections {
            bail!("p2p.max_peers must be between 1 and p2p.max_connections");
        }
        if p.target_peers > p.max_peers {
            bail!("p2p.target_peers must not exceed p2p.max_peers");
        }
        if p.status_interval_secs == 0 || p.redial_secs == 0 || p.request_timeout_secs == 0 {
            bail!(
                "p2p.status_interval_secs, redial_secs and request_timeout_secs must be at least 1"
            );
        }
        Ok(())
    }

    pub fn pool_config(&self, genesis: &Genesis) -> chainmesh_mempool::PoolConfig {
        chainmesh_mempool::PoolConfig {
            max_txs: self.mempool.max_txs,
            max_bytes: self.mempool.max_bytes,
            max_per_sender: self.mempool.max_per_sender,
            min_fee: genesis.limits.min_fee,
        }
    }
}

/// A commented config file holding every default, with the given producer key and API
/// address.
pub fn template(producer_key: Option<&str>, api: SocketAddr, p2p_listen: &[String]) -> String {
    let d = Config::default();
    let p = &d.p2p;
    let list = |v: &[String]| {
        format!(
            "[{}]",
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let key_line = match producer_key {
        Some(k) => format!("producer_key = {k:?}"),
        None => "# producer_key = \"keys/producer.key\"".to_string(),
    };
    format!(
        r#"# chainmesh node configuration. Every setting is shown with its default value.
# Relative paths are relative to this file's folder.

# Where the node keeps its database (sled).
data_dir = {data_dir:?}
# The network's genesis file (network id, authorities, allocations, chain limits).
genesis = {genesis:?}
# Key of a genesis authority: when set, the node produces blocks in that authority's slots.
{key_line}

[api]
# HTTP JSON API (status, blocks, accounts, transactions). Keep it on loopback unless a
# proxy in front of it controls access. Port 0 picks a free port; the bound address is
# written to <data_dir>/api.addr.
listen = "{api}"
# Largest request body accepted, in bytes.
max_body_bytes = {body}
# Longest a request waits for the chain task before the API answers 503.
request_timeout_ms = {timeout}

[mempool]
# Most pending transactions, and their most total encoded bytes. When full, a new
# transaction must out-pay the lowest fee in the pool, which is evicted.
max_txs = {max_txs}
max_bytes = {max_bytes}
# Most pending transactions of one sender.
max_per_sender = {per_sender}

[chain]
# Deepest reorganisation the node performs on its own.
max_reorg_depth = {reorg}
# Database page cache, in MiB.
cache_mb = {cache}

[p2p]
# Addresses to listen on (multiaddrs; TCP and QUIC). The node's identity key is
# <data_dir>/p2p.key; the bound addresses with its peer id go to <data_dir>/p2p.addrs.
listen = {listen}
# Peers to dial at start and redial while disconnected, e.g.
# "/ip4/127.0.0.1/tcp/7701/p2p/12D3KooW...". Also `--peer` on the command line.
bootstrap = []
# Connection limits.
max_connections = {max_conn}
max_inbound = {max_in}
max_outbound = {max_out}
max_per_peer = {per_peer}
max_pending = {pending}
# Status is re-exchanged with every peer this often; disconnected bootstrap peers are
# redialled this often.
status_interval_secs = {status_iv}
redial_secs = {redial}
# Every request to a peer times out after this.
request_timeout_secs = {req_to}
# How long a misbehaving or incompatible peer stays banned (bans survive restarts).
ban_secs = {ban}
# What we serve one peer, advertised in our status so peers throttle themselves.
sync_requests_per_second = {rps}
sync_max_blocks = {max_blocks}
# Gossip of transactions and compact blocks (gossipsub). The mempool also syncs by pull
# (`pool` protocol) either way.
gossip = {gossip}
# Pull-based mempool sync: ask peers for their pool log (we always answer theirs).
pool_sync = {pool_sync}
# Peers kept at most: a peer beyond it is given addresses of others, then disconnected.
max_peers = {max_peers}
# Below this many peers, dial known addresses (kept in the database) and ask peers for more.
target_peers = {target_peers}
"#,
        gossip = p.gossip,
        pool_sync = p.pool_sync,
        max_peers = p.max_peers,
        target_peers = p.target_peers,
        listen = list(p2p_listen),
        max_conn = p.max_connections,
        max_in = p.max_inbound,
        max_out = p.max_outbound,
        per_peer = p.max_per_peer,
        pending = p.max_pending,
        status_iv = p.status_interval_secs,
        redial = p.redial_secs,
        req_to = p.request_timeout_secs,
        ban = p.ban_secs,
        rps = p.sync_requests_per_second,
        max_blocks = p.sync_max_blocks,
        data_dir = d.data_dir.display().to_string(),
        genesis = d.genesis.display().to_string(),
        body = d.api.max_body_bytes,
        timeout = d.api.request_timeout_ms,
        max_txs = d.mempool.max_txs,
        max_bytes = d.mempool.max_bytes,
        per_sender = d.mempool.max_per_sender,
        reorg = d.chain.max_reorg_depth,
        cache = d.chain.cache_mb,
    )
}

/// Reads and validates a genesis file.
pub fn load_genesis(path: &Path) -> anyhow::Result<Genesis> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read genesis file {}", path.display()))?;
    let g: Genesis = toml::from_str(&text)
        .with_context(|| format!("invalid genesis file {}", path.display()))?;
    g.validate()
        .with_context(|| format!("invalid genesis file {}", path.display()))?;
    Ok(g)
}

pub fn genesis_to_toml(g: &Genesis) -> anyhow::Result<String> {
    Ok(format!(
        "# chainmesh genesis. Every node of the network must use this exact file: any change\n\
         # gives another genesis hash, i.e. another network.\n\n{}",
        toml::to_string(g)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses_to_the_defaults() {
        let t = template(
            None,
            DEFAULT_API.parse().unwrap(),
            &P2pConfig::default().listen,
        );
        let c: Config = toml::from_str(&t).unwrap();
        assert_eq!(c, Config::default());
        let t = template(Some("keys/p.key"), "127.0.0.1:0".parse().unwrap(), &[]);
        let c: Config = toml::from_str(&t).unwrap();
        assert_eq!(c.producer_key, Some(PathBuf::from("keys/p.key")));
        assert_eq!(c.api.listen.port(), 0);
    }

    #[test]
    fn unknown_and_bad_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[mempool]\nmax_tx = 5\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("unknown field `max_tx`"), "{e}");
        std::fs::write(&p, "[mempool]\nmax_txs = 0\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("max_txs"), "{e}");
        std::fs::write(&p, "[p2p]\nbootstrap = [\"nowhere\"]\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("not a multiaddr"), "{e}");
        std::fs::write(&p, "[api]\nlisten = \"nowhere\"\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("listen"), "{e}");
        std::fs::write(&p, "data_dir = \"d\"\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.data_dir, dir.path().join("d"));
        assert_eq!(c.genesis, dir.path().join("genesis.toml"));
    }
}
