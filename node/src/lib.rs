//! The `chainmesh` full node: CLI, config, chain task, block producer and HTTP API.

pub mod allocator;
pub mod api;
pub mod chain;
pub mod client;
pub mod config;
pub mod devnet;
pub mod flush;
pub mod history;
pub mod loadgen;
pub mod metrics;
pub mod p2p;
pub mod pool;
pub mod progress;
pub mod seen;
pub mod setup;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chainmesh_chain_sync::Store;
use chainmesh_mempool::PersistentPool;
use chainmesh_proto::{Address, Keypair, Tx};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;

use crate::chain::{COMMAND_QUEUE, ChainService};
use crate::config::Config;
use crate::pool::{PoolState, SharedPool};

#[derive(Parser)]
#[command(name = "chainmesh", version, about = "chainmesh full node")]
struct Cli {
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "CHAINMESH_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `chainmesh_node=debug,info` (RUST_LOG wins if set).
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate an ed25519 key file and print its address.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a commented config and a genesis for a new network into a folder.
    Init(setup::InitArgs),
    /// Write the files of a local multi-node network (see scripts/devnet.sh).
    DevnetInit(devnet::DevnetArgs),
    /// Submit valid transfers at a fixed rate and report acceptance and time to inclusion.
    Loadgen(loadgen::LoadgenArgs),
    /// Run a node from a config file.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Override the config's API listen address.
        #[arg(long)]
        api: Option<SocketAddr>,
        #[command(flatten)]
        p2p: P2pArgs,
    },
    /// Run a one-node development network: keys, genesis and data are created on first
    /// use, blocks every second, two funded accounts (alice, bob).
    Dev(DevArgs),
    /// Show a running node's status.
    Status {
        #[arg(long, default_value = DEFAULT_API_URL, env = "CHAINMESH_API")]
        api: String,
    },
    /// Show a running node's peers.
    Peers {
        #[arg(long, default_value = DEFAULT_API_URL, env = "CHAINMESH_API")]
        api: String,
    },
    /// Transactions.
    Tx {
        #[command(subcommand)]
        cmd: TxCmd,
    },
}

const DEFAULT_API_URL: &str = "http://127.0.0.1:7700";

#[derive(Args, Clone, Default)]
struct P2pArgs {
    /// A peer to dial and keep dialling (multiaddr, repeatable); adds to p2p.bootstrap.
    #[arg(long = "peer")]
    peers: Vec<libp2p::Multiaddr>,
    /// Listen on these multiaddrs instead of p2p.listen (repeatable).
    #[arg(long = "p2p-listen")]
    listen: Vec<libp2p::Multiaddr>,
    /// Wire settings (p2p.profile): chainmesh, or mina with --chain-id.
    #[arg(long, value_enum)]
    profile: Option<config::Profile>,
    /// Mina chain id, 64 hex digits (p2p.chain_id).
    #[arg(long = "chain-id")]
    chain_id: Option<String>,
}

impl P2pArgs {
    fn apply(&self, cfg: &mut Config) {
        if !self.listen.is_empty() {
            cfg.p2p.listen = self.listen.iter().map(ToString::to_string).collect();
        }
        cfg.p2p
            .bootstrap
            .extend(self.peers.iter().map(ToString::to_string));
        if let Some(p) = self.profile {
            cfg.p2p.profile = p;
        }
        if let Some(id) = &self.chain_id {
            cfg.p2p.chain_id = Some(id.clone());
        }
    }
}

#[derive(Args)]
struct DevArgs {
    /// Data folder [default: $XDG_DATA_HOME/chainmesh/dev or ~/.local/share/chainmesh/dev].
    #[arg(long, env = "CHAINMESH_DEV_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Slot length for a new dev network.
    #[arg(long, default_value_t = 1000)]
    block_time_ms: u64,
    /// Delete the dev network's data and keys first, and start a new chain.
    #[arg(long)]
    reset: bool,
    /// Do not look for peers on the LAN by mDNS (on in dev configs).
    #[arg(long)]
    no_mdns: bool,
    #[command(flatten)]
    p2p: P2pArgs,
}

#[derive(Subcommand)]
enum TxCmd {
    /// Sign a transfer with a key file and submit it to a node.
    Send {
        /// Sender's key file (see `keygen`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        to: Address,
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value_t = 1)]
        fee: u64,
        /// Defaults to the account's next nonce as the node sees it.
        #[arg(long)]
        nonce: Option<u64>,
        #[arg(long, default_value = DEFAULT_API_URL, env = "CHAINMESH_API")]
        api: String,
        /// Wait until the transaction is in a block (at most 60 s).
        #[arg(long)]
        wait: bool,
    },
}

pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs the CLI on the given arguments (the first is the program name), for binaries
/// that embed the node (the benchmark runs nodes this way).
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    init_logging(cli.log_format, &cli.log_level);
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal());
    progress::enable_on_terminal(matches!(format, LogFormat::Human));
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Keygen { out } => {
            let k = Keypair::generate();
            k.save_new(&out)?;
            println!("{}", k.public());
            eprintln!("wrote key file {} (keep it secret)", out.display());
            Ok(())
        }
        Cmd::Loadgen(args) => runtime()?.block_on(loadgen::run(args)),
        Cmd::DevnetInit(args) => {
            let nodes = devnet::init(&args)?;
            println!("{}", serde_json::to_string_pretty(&nodes)?);
            Ok(())
        }
        Cmd::Init(args) => {
            let s = setup::init(&args)?;
            println!("{}", s.describe());
            Ok(())
        }
        Cmd::Run { config, api, p2p } => {
            let mut cfg = Config::load(&config)?;
            if let Some(a) = api {
                cfg.api.listen = a;
            }
            p2p.apply(&mut cfg);
            cfg.check().context("invalid settings")?;
            run_node(cfg)
        }
        Cmd::Peers { api } => runtime()?.block_on(async {
            let peers = client::Client::new(&api)?.peers().await?;
            println!(
                "{:<54} {:<9} {:>8} {:>7} {:>7} {:>9}  agent / address",
                "peer", "direction", "height", "rtt_ms", "score", "served"
            );
            for p in peers {
                println!(
                    "{:<54} {:<9} {:>8} {:>7} {:>7.1} {:>9}  {} {}",
                    p.peer_id,
                    p.direction,
                    p.height.map_or("-".into(), |h| h.to_string()),
                    p.rtt_ms.map_or("-".into(), |r| r.to_string()),
                    p.score,
                    p.blocks_served,
                    p.agent.unwrap_or_default(),
                    p.address
                );
            }
            Ok(())
        }),
        Cmd::Dev(a) => dev(a),
        Cmd::Status { api } => runtime()?.block_on(async {
            let s = client::Client::new(&api)?.status().await?;
            println!("network   {}", s.network_id);
            println!("genesis   {}", s.genesis);
            println!("height    {}", s.height);
            println!("tip       {} (slot {})", s.tip, s.tip_slot);
            println!("mempool   {} txs, {} bytes", s.mempool_txs, s.mempool_bytes);
            match s.producer {
                Some(p) => println!("producer  {p}"),
                None => println!("producer  (not producing)"),
            }
            if s.sync.syncing {
                println!(
                    "sync      {} of {} ({} blocks/s, eta {})",
                    s.height,
                    s.sync.target_height,
                    s.sync.blocks_per_sec,
                    s.sync.eta_secs.map_or("-".into(), |e| format!("{e} s"))
                );
            }
            println!("peers     {}", s.sync.peers);
            println!("version   {}", s.version);
            Ok(())
        }),
        Cmd::Tx {
            cmd:
                TxCmd::Send {
                    key,
                    to,
                    amount,
                    fee,
                    nonce,
                    api,
                    wait,
                },
        } => runtime()?.block_on(tx_send(&key, to, amount, fee, nonce, &api, wait)),
    }
}

async fn tx_send(
    key: &Path,
    to: Address,
    amount: u64,
    fee: u64,
    nonce: Option<u64>,
    api: &str,
    wait: bool,
) -> anyhow::Result<()> {
    let key = Keypair::load(key)?;
    let c = client::Client::new(api)?;
    let status = c.status().await?;
    let nonce = match nonce {
        Some(n) => n,
        None => c.account(&key.public()).await?.next_nonce,
    };
    let tx = Tx::transfer(&key, &status.genesis, to, amount, fee, nonce);
    let id = c.submit(&tx).await?;
    println!("{id}");
    eprintln!(
        "submitted {id}: {amount} from {} to {to}, fee {fee}, nonce {nonce}",
        key.public()
    );
    if wait {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let t = c.tx(&id).await?;
            if t.status == "included" {
                eprintln!(
                    "included in block {} at height {}",
                    t.block.map(|b| b.to_string()).unwrap_or_default(),
                    t.height.unwrap_or_default()
                );
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "transaction {id} was not included within 60 s (status: {})",
                    t.status
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

fn default_dev_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    match base {
        Some(b) => b.join("chainmesh/dev"),
        None => PathBuf::from(".chainmesh-dev"),
    }
}

fn dev(a: DevArgs) -> anyhow::Result<()> {
    let dir = a.data_dir.unwrap_or_else(default_dev_dir);
    if a.reset && dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "reset the dev network");
    }
    let config_path = dir.join("config.toml");
    if !config_path.exists() {
        let s = setup::init(&setup::InitArgs {
            dir: dir.clone(),
            network_id: "devnet".into(),
            block_time_ms: a.block_time_ms,
            authorities: vec![],
            alloc: vec![],
            dev_accounts: true,
            api: a.api.unwrap_or(config::ApiConfig::default().listen),
            // A dev node listens on loopback only, on any free port (see p2p.addrs).
            p2p_listen: vec![
                "/ip4/127.0.0.1/tcp/0".into(),
                "/ip4/127.0.0.1/udp/0/quic-v1".into(),
            ],
        })?;
        eprintln!("{}", s.describe());
        // A dev node finds other local nodes by mDNS and answers their DHT queries.
        let text = std::fs::read_to_string(&config_path)?
            .replacen("mdns = false", "mdns = true", 1)
            .replacen("kad_mode = \"auto\"", "kad_mode = \"server\"", 1);
        std::fs::write(&config_path, text)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
    }
    let mut cfg = Config::load(&config_path)?;
    if let Some(api) = a.api {
        cfg.api.listen = api;
    }
    a.p2p.apply(&mut cfg);
    if a.no_mdns {
        cfg.p2p.discovery.mdns = false;
    }
    cfg.check().context("invalid settings")?;
    let keys = dir.join("keys");
    for name in ["alice", "bob"] {
        let p = keys.join(format!("{name}.key"));
        if let Ok(k) = Keypair::load(&p) {
            tracing::info!(account = name, address = %k.public(), key = %p.display(), "dev account");
        }
    }
    run_node(cfg)
}

/// Opens everything a node needs and runs it until Ctrl-C or SIGTERM.
/// Raises the soft open-file limit to the hard one: each connection is a descriptor, and
/// the usual soft default (1,024) is below a node with many peers plus its store's files.
fn raise_fd_limit(want: u64) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < want => tracing::warn!(
            limit = n,
            want,
            "the open-file limit is below p2p.max_connections plus the store's files: connections beyond it will fail"
        ),
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

pub fn run_node(cfg: Config) -> anyhow::Result<()> {
    raise_fd_limit(u64::from(cfg.p2p.max_connections) + 256);
    let genesis = config::load_genesis(&cfg.genesis)?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let db_path = cfg.data_dir.join("db");
    let db = sled::Config::new()
        .path(&db_path)
        .cache_capacity(cfg.chain.cache_mb.saturating_mul(1024 * 1024))
        .open()
        .with_context(|| {
            format!(
                "cannot open the database {} (is another node using this data directory?)",
                db_path.display()
            )
        })?;
    let mut store = Store::open_db(db.clone(), &genesis)
        .with_context(|| format!("cannot open the store in {}", db_path.display()))?;
    store.set_max_reorg_depth(cfg.chain.max_reorg_depth);
    let pool = PersistentPool::open(
        db.open_tree("mempool")?,
        cfg.pool_config(&genesis),
        store.genesis_hash(),
        &PoolState(store.account_reader()),
    )?;
    let producer = match &cfg.producer_key {
        None => None,
        Some(p) => {
            let k = Keypair::load(p)?;
            if genesis.authorities.contains(&k.public()) {
                Some(k)
            } else {
                tracing::warn!(key = %p.display(), address = %k.public(), "producer key is not a genesis authority; not producing blocks");
                None
            }
        }
    };
    let tip = store.tip().clone();
    tracing::info!(
        network = %genesis.network_id,
        genesis = %store.genesis_hash(),
        height = tip.height,
        tip = %tip.hash,
        mempool = pool.pool().len(),
        producing = producer.is_some(),
        "node starting"
    );
    let reader = store.reader();
    let db = store.db().clone();
    let db_for_api = db.clone();
    let pool = SharedPool::new(pool);
    let (svc, status) = ChainService::new(store, pool.clone(), producer);
    let (events_tx, events_rx) = mpsc::channel(chain::EVENT_QUEUE);
    let svc = svc.with_events(events_tx.clone());
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let chain_thread =
        std::thread::Builder::new()
            .name("chain".into())
            .spawn(move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(svc.run(cmd_rx));
                Ok(())
            })?;

    let rt = runtime()?;
    let served = rt.block_on(async {
        let mut registry = prometheus_client::registry::Registry::default();
        pool.metrics().register(&mut registry);
        registry
            .sub_registry_with_prefix("chainmesh_allocator")
            .register_collector(Box::new(allocator::AllocatorStats));
        let net = p2p::start(
            p2p::NetworkParams {
                cfg: cfg.p2p.clone(),
                data_dir: cfg.data_dir.clone(),
                genesis: genesis.clone(),
                db,
                reader: reader.clone(),
                status: status.clone(),
                chain: cmd_tx.clone(),
                events: events_rx,
                pool: pool.clone(),
            },
            Vec::new(),
            &mut registry,
        )?;
        let listener = api::bind(cfg.api.listen).await?;
        let bound = listener.local_addr()?;
        let addr_file = cfg.data_dir.join("api.addr");
        std::fs::write(&addr_file, format!("{bound}\n"))
            .with_context(|| format!("cannot write {}", addr_file.display()))?;
        tracing::info!(api = %format!("http://{bound}"), "API listening");
        tokio::spawn(progress::run(net.sync.clone(), status.clone()));
        let history = history::History::default();
        tokio::spawn(
            history
                .clone()
                .run(status.clone(), net.sync.clone(), pool.clone()),
        );
        let (genesis_hash, max_block_bytes) = (genesis.hash(), genesis.limits.max_block_bytes);
        let state = api::ApiState {
            flusher: flush::Flusher::spawn(db_for_api),
            events: events_tx,
            submissions: std::sync::Arc::new(tokio::sync::Semaphore::new(api::MAX_SUBMISSIONS)),
            commands: cmd_tx,
            status,
            reader,
            timeout: Duration::from_millis(cfg.api.request_timeout_ms),
            net: net.commands,
            sync: net.sync,
            metrics: std::sync::Arc::new(registry),
            pool,
            history,
            genesis_hash,
        };
        axum::serve(
            listener,
            api::router(state, cfg.api.max_body_bytes, max_block_bytes),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("API server failed")
    });
    // Stopping the server dropped the last command sender: the chain task flushes and ends.
    drop(rt);
    match chain_thread.join() {
        Ok(r) => r?,
        Err(_) => bail!("the chain task panicked"),
    }
    served?;
    tracing::info!("node stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}
