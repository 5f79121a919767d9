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
    /// Inbound handshakes under way from one IP address at once (0: no cap); addresses in
    /// `ip_ban_exempt` are not capped.
    pub max_pending_per_ip: u32,
    /// Status is re-exchanged with every peer at this interval.
    pub status_interval_secs: u64,
    /// Bootstrap peers that are not connected are redialled at this interval.
    pub redial_secs: u64,
    pub request_timeout_secs: u64,
    pub ban_secs: u64,
    /// Banned peer ids from one IP address that ban the address too (0: never).
    pub ip_ban_after: usize,
    /// Addresses never banned as a whole (a local devnet's nodes all come from one).
    pub ip_ban_exempt: Vec<std::net::IpAddr>,
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
    /// Penalise mesh peers that deliver no blocks (gossipsub's P3), against peers that
    /// join meshes and never forward. It acts only with at least 8 producers in the
    /// genesis and while blocks arrive by gossip (see `gossip::delivery`).
    pub mesh_delivery_scoring: bool,
    /// Peers kept at most; a peer beyond it gets addresses of others (pex) and is then
    /// disconnected. The hard limits above still apply.
    pub max_peers: u32,
    /// Below this many peers the node dials addresses it knows and asks peers for more.
    pub target_peers: u32,
    /// Wire settings: "chainmesh", or "mina" for the libp2p settings of Mina's nodes
    /// (pnet keyed by `chain_id`, Mina's muxer and Kademlia names; TCP only).
    pub profile: Profile,
    /// The Mina chain id (64 hex digits), for the mina profile.
    pub chain_id: Option<String>,
    pub discovery: DiscoveryConfig,
    pub nat: NatConfig,
    pub admission: AdmissionConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Chainmesh,
    Mina,
}

/// Whether the node answers Kademlia queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KadMode {
    /// Server once the node is known to be reachable: AutoNAT found it public, or an
    /// external address is configured.
    Auto,
    Server,
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Kademlia DHT under `/chainmesh/<net>/kad/1`, bootstrapped from `p2p.bootstrap`.
    pub kademlia: bool,
    pub kad_mode: KadMode,
    /// While below `target_peers`: a random walk of the DHT and a lookup of the network's
    /// members at this interval (every ten intervals otherwise).
    pub walk_secs: u64,
    /// mDNS on the local network.
    pub mdns: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatConfig {
    /// Learn whether we are reachable by asking peers to dial us back (AutoNAT).
    pub autonat: bool,
    /// AutoNAT uses and trusts only global IP addresses. Turn off on private networks.
    pub autonat_only_global: bool,
    /// Seconds before the first AutoNAT probe.
    pub autonat_delay_secs: u64,
    /// Addresses where others can reach this node (a public node, a port forward). They
    /// are announced, and make the node a DHT server in `auto` mode.
    pub external_addresses: Vec<String>,
    /// Behind NAT: keep reservations on this many relays, found in the DHT, among
    /// connected peers and in `relays` (0: never reserve).
    pub reservations: usize,
    /// Relays to try first (multiaddrs with /p2p/ id).
    pub relays: Vec<String>,
    /// Upgrade relayed connections to direct ones by hole punching (DCUtR).
    pub dcutr: bool,
    /// Serve as a circuit relay v2 (public nodes only) and announce it in the DHT.
    pub relay_server: bool,
    pub relay_max_reservations: usize,
    pub relay_max_circuits: usize,
    pub relay_max_circuits_per_peer: usize,
    pub relay_reservation_secs: u64,
    /// A relayed circuit ends after this long or this many bytes (each way).
    pub relay_max_circuit_secs: u64,
    pub relay_max_circuit_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Proof-of-work difficulty (leading zero bits) asked of a peer before it may reserve
    /// on our relay.
    pub bits: u32,
    /// How long a challenge may be answered, and how long an admission lasts.
    pub challenge_secs: u64,
    pub admitted_secs: u64,
    /// Also ask it of every inbound peer (a bootstrap node): a peer not admitted within
    /// `grace_secs` of connecting is disconnected.
    pub bootstrap: bool,
    pub grace_secs: u64,
    /// Most difficulty we agree to solve when a relay asks.
    pub max_bits: u32,
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
    /// sled page cache size. sled counts it in the on-disk size of the pages it holds,
    /// so the memory they take is larger (2.2 times in our soak's heap profile; up to ten
    /// times in sled's issues).
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
            max_pending_per_ip: 8,
            status_interval_secs: 120,
            redial_secs: 10,
            request_timeout_secs: 10,
            ban_secs: 600,
            ip_ban_after: 3,
            ip_ban_exempt: vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()],
            sync_requests_per_second: 50,
            sync_max_blocks: 256,
            gossip: true,
            pool_sync: true,
            mesh_delivery_scoring: true,
            max_peers: 50,
            target_peers: 8,
            profile: Profile::Chainmesh,
            chain_id: None,
            discovery: DiscoveryConfig::default(),
            nat: NatConfig::default(),
            admission: AdmissionConfig::default(),
        }
    }
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            kademlia: true,
            kad_mode: KadMode::Auto,
            walk_secs: 30,
            mdns: false,
        }
    }
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            autonat: true,
            autonat_only_global: true,
            autonat_delay_secs: 15,
            external_addresses: Vec::new(),
            reservations: 2,
            relays: Vec::new(),
            dcutr: true,
            relay_server: false,
            relay_max_reservations: 128,
            relay_max_circuits: 16,
            relay_max_circuits_per_peer: 4,
            relay_reservation_secs: 3600,
            // Seed 000's budget for relayed coordination: a few hundred kB a minute.
            relay_max_circuit_secs: 120,
            relay_max_circuit_bytes: 512 * 1024,
        }
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            bits: 20,
            challenge_secs: 60,
            admitted_secs: 3600,
            bootstrap: false,
            grace_secs: 10,
            max_bits: 24,
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
        Config::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and checks a config's text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Config> {
        let mut cfg: Config = toml::from_str(text)?;
        cfg.resolve(base);
        cfg.check()?;
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

    /// Checks settings together (also after command-line overrides).
    pub fn check(&self) -> anyhow::Result<()> {
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
        if self.chain.cache_mb == 0 {
            bail!("chain.cache_mb must be at least 1 (sled's page cache, in MiB)");
        }
        for a in self
            .p2p
            .listen
            .iter()
            .chain(&self.p2p.bootstrap)
            .chain(&self.p2p.nat.external_addresses)
            .chain(&self.p2p.nat.relays)
        {
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
        if p.profile == Profile::Mina {
            let id = p
                .chain_id
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("p2p.profile = \"mina\" needs p2p.chain_id"))?;
            crate::p2p::mina::parse_chain_id(id)
                .map_err(|e| anyhow::anyhow!("p2p.chain_id: {e}"))?;
        }
        let (n, a) = (&p.nat, &p.admission);
        if p.discovery.walk_secs == 0 {
            bail!("p2p.discovery.walk_secs must be at least 1");
        }
        if n.relay_server
            && (n.relay_max_reservations == 0
                || n.relay_max_circuits == 0
                || n.relay_max_circuit_secs == 0
                || n.relay_max_circuit_bytes == 0
                || n.relay_reservation_secs == 0)
        {
            bail!("p2p.nat.relay_* limits must be at least 1 when relay_server is on");
        }
        for r in &n.relays {
            if !r.contains("/p2p/") {
                bail!("p2p.nat.relays: {r:?} needs the relay's /p2p/<peer id>");
            }
        }
        let max = chainmesh_behaviours::admission::pow::MAX_BITS;
        if a.bits > max || a.max_bits > max {
            bail!("p2p.admission.bits and max_bits must be at most {max}");
        }
        if a.challenge_secs == 0 || a.admitted_secs == 0 || a.grace_secs == 0 {
            bail!("p2p.admission.challenge_secs, admitted_secs and grace_secs must be at least 1");
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
# Database page cache, in MiB of the pages' size on disk: the memory it takes is
# larger (about twice, and more on a large store).
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
# Handshakes under way from one IP address at once, so that one host holding connections
# that never finish cannot take every pending slot (0: no cap; `ip_ban_exempt` is not
# capped).
max_pending_per_ip = {pending_per_ip}
# Status is re-exchanged with every peer this often; disconnected bootstrap peers are
# redialled this often.
status_interval_secs = {status_iv}
redial_secs = {redial}
# Every request to a peer times out after this.
request_timeout_secs = {req_to}
# How long a misbehaving or incompatible peer stays banned (bans survive restarts).
ban_secs = {ban}
# Peer ids are free to make: once this many peer ids from one IP address are banned at
# once, the address is banned too, as long as their latest ban (0: never). Addresses in
# `ip_ban_exempt` never are (loopback, where a local devnet's nodes all come from).
ip_ban_after = {ip_ban_after}
ip_ban_exempt = {ip_ban_exempt}
# What we serve one peer, advertised in our status so peers throttle themselves.
sync_requests_per_second = {rps}
sync_max_blocks = {max_blocks}
# Gossip of transactions and compact blocks (gossipsub). The mempool also syncs by pull
# (`pool` protocol) either way.
gossip = {gossip}
# Pull-based mempool sync: ask peers for their pool log (we always answer theirs).
pool_sync = {pool_sync}
# Penalise mesh peers that deliver no blocks (they are pruned from the mesh): against
# peers that join meshes and never forward. Acts only with 8 or more producers, while
# blocks arrive by gossip.
mesh_delivery_scoring = {mesh_delivery_scoring}
# Peers kept at most: a peer beyond it is given addresses of others, then disconnected.
max_peers = {max_peers}
# Below this many peers, dial known addresses (kept in the database) and ask peers for more.
target_peers = {target_peers}
# Wire settings: "chainmesh", or "mina" for the libp2p settings of Mina's nodes (a private
# network keyed by chain_id, Mina's muxer and Kademlia names, TCP only).
profile = "chainmesh"
# chain_id = "<64 hex digits>"

[p2p.discovery]
# Kademlia DHT under /chainmesh/<net>/kad/1, bootstrapped from p2p.bootstrap.
kademlia = {kademlia}
# "auto": answer DHT queries once the node is known to be reachable (AutoNAT, or an
# external address below); "server"; "client".
kad_mode = "{kad_mode}"
# While below target_peers, a random walk of the DHT and a lookup of the network's members
# this often (ten times less often otherwise).
walk_secs = {walk}
# Find peers on the local network by mDNS.
mdns = {mdns}

[p2p.nat]
# Learn whether the node is reachable from outside (AutoNAT); only_global ignores private
# IP addresses (turn it off on a private network).
autonat = {autonat}
autonat_only_global = {only_global}
autonat_delay_secs = {autonat_delay}
# Addresses where others reach this node, e.g. "/ip4/203.0.113.7/tcp/7701" (port forward).
external_addresses = []
# Behind NAT, keep reservations on this many relays (found in the DHT, among peers, or
# listed here as multiaddrs with /p2p/<id>); 0 never reserves.
reservations = {reservations}
relays = []
# Upgrade relayed connections to direct ones by hole punching (DCUtR).
dcutr = {dcutr}
# Serve as a circuit relay v2 (public nodes) and announce it in the DHT. Reservations
# need a proof of work (p2p.admission). Circuits carry coordination and small data: each
# ends after relay_max_circuit_secs or relay_max_circuit_bytes, whichever comes first.
relay_server = {relay_server}
relay_max_reservations = {relay_res}
relay_max_circuits = {relay_circ}
relay_max_circuits_per_peer = {relay_circ_peer}
relay_reservation_secs = {relay_res_secs}
relay_max_circuit_secs = {relay_circ_secs}
relay_max_circuit_bytes = {relay_circ_bytes}

[p2p.admission]
# Proof of work asked before a relay reservation: leading zero bits of a blake3 digest
# (each bit doubles the client's expected work; checking costs one hash).
bits = {adm_bits}
challenge_secs = {adm_challenge}
admitted_secs = {adm_admitted}
# Ask it of every inbound peer too (a bootstrap node under a connection flood); peers
# not admitted within grace_secs are disconnected.
bootstrap = {adm_bootstrap}
grace_secs = {adm_grace}
# Most difficulty this node solves when a relay asks.
max_bits = {adm_max_bits}
"#,
        kademlia = p.discovery.kademlia,
        kad_mode = match p.discovery.kad_mode {
            KadMode::Auto => "auto",
            KadMode::Server => "server",
            KadMode::Client => "client",
        },
        walk = p.discovery.walk_secs,
        mdns = p.discovery.mdns,
        autonat = p.nat.autonat,
        only_global = p.nat.autonat_only_global,
        autonat_delay = p.nat.autonat_delay_secs,
        reservations = p.nat.reservations,
        dcutr = p.nat.dcutr,
        relay_server = p.nat.relay_server,
        relay_res = p.nat.relay_max_reservations,
        relay_circ = p.nat.relay_max_circuits,
        relay_circ_peer = p.nat.relay_max_circuits_per_peer,
        relay_res_secs = p.nat.relay_reservation_secs,
        relay_circ_secs = p.nat.relay_max_circuit_secs,
        relay_circ_bytes = p.nat.relay_max_circuit_bytes,
        adm_bits = d.p2p.admission.bits,
        adm_challenge = d.p2p.admission.challenge_secs,
        adm_admitted = d.p2p.admission.admitted_secs,
        adm_bootstrap = d.p2p.admission.bootstrap,
        adm_grace = d.p2p.admission.grace_secs,
        adm_max_bits = d.p2p.admission.max_bits,
        gossip = p.gossip,
        pool_sync = p.pool_sync,
        mesh_delivery_scoring = p.mesh_delivery_scoring,
        max_peers = p.max_peers,
        target_peers = p.target_peers,
        listen = list(p2p_listen),
        max_conn = p.max_connections,
        max_in = p.max_inbound,
        max_out = p.max_outbound,
        per_peer = p.max_per_peer,
        pending = p.max_pending,
        pending_per_ip = p.max_pending_per_ip,
        status_iv = p.status_interval_secs,
        redial = p.redial_secs,
        req_to = p.request_timeout_secs,
        ban = p.ban_secs,
        ip_ban_after = p.ip_ban_after,
        ip_ban_exempt = list(
            &p.ip_ban_exempt
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
        ),
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
    parse_genesis(&text).with_context(|| format!("invalid genesis file {}", path.display()))
}

/// Parses and validates a genesis file's text.
pub fn parse_genesis(text: &str) -> anyhow::Result<Genesis> {
    let g: Genesis = toml::from_str(text)?;
    g.validate()?;
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
        std::fs::write(&p, "[chain]\ncache_mb = 0\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("chain.cache_mb"), "{e}");
        std::fs::write(&p, "[p2p]\nbootstrap = [\"nowhere\"]\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("not a multiaddr"), "{e}");
        std::fs::write(&p, "[api]\nlisten = \"nowhere\"\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("listen"), "{e}");
        std::fs::write(&p, "[p2p.nat]\nrelays = [\"/ip4/10.0.0.1/tcp/7701\"]\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("needs the relay's /p2p/"), "{e}");
        std::fs::write(&p, "[p2p.admission]\nbits = 40\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(e.contains("at most 32"), "{e}");
        std::fs::write(&p, "[p2p.discovery]\nkad_mode = \"sometimes\"\n").unwrap();
        let e = format!("{:#}", Config::load(&p).unwrap_err());
        assert!(
            e.contains("kad_mode") || e.contains("unknown variant"),
            "{e}"
        );
        std::fs::write(&p, "data_dir = \"d\"\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.data_dir, dir.path().join("d"));
        assert_eq!(c.genesis, dir.path().join("genesis.toml"));
    }
}
