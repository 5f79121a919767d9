//! The gossip benchmark: N real nodes on loopback under a fixed transaction load.
//!
//! - Latency: every node logs the first sight of each transaction and block (target
//!   `chainmesh::seen`, JSON logs with microsecond timestamps, one clock: one machine).
//!   A transaction's time to reach all nodes is the last node's sight minus its
//!   submission; a block's is the last node's sight minus the producer's. The reference,
//!   in the same run, is a direct push: gossip and pool sync off, the publisher posts
//!   each transaction to every node itself.
//! - Amplification: payload bytes received by all nodes ÷ ((N − 1) × payload bytes),
//!   where gossip counts every copy of a transaction gossipsub received (duplicates
//!   included, its own `topic_msg_recv_counts_unfiltered` metric) and pull every
//!   transaction fetched (`/net`). Reported next to it, the wire ratio: every byte
//!   received for transactions (gossipsub's envelope, the pool log's ids) ÷ the same.
//!   Runs with gossip only, pull only, both.
//! - Mempool ingest: a node joins a peer whose pool holds 50,000 transactions and pulls
//!   them all (gossip off); txs/s from the first poll of `/status` that finds some in
//!   its pool to the one that finds them all, against the batch ed25519 verification
//!   rate of all cores in batches of 1,024 (the cheapest per signature), with the node's
//!   verifier on signatures by as many keys as the pool's (64, in turn), measured three
//!   times before and three times after and the median taken.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use chainmesh_chain_sync::{Allocation, ChainLimits, Genesis, Store};
use chainmesh_mempool::{PersistentPool, PoolConfig};
use chainmesh_node::config::{Config, genesis_to_toml};
use chainmesh_node::seen::Seen;
use chainmesh_proto::{Hash, Keypair, PublicKey, Tx, wire};
use serde::Serialize;

use crate::{Proc, now_ms, start_logged};

const NETWORK: &str = "gossipbench";
const ACCOUNTS: usize = 64;
pub const BLOCK_TIME_MS: u64 = 2_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Both,
    /// Gossip and pull on a topology the nodes build themselves with the default peer
    /// target (a chain of bootstrap peers, then peer exchange), as a deployment would.
    Peered,
    GossipOnly,
    PullOnly,
    /// The reference: the bench posts each transaction to every node, and each of the
    /// producer's blocks to every other node, one hop each.
    DirectPush,
    /// The reference before 2026-12-07: transactions pushed, blocks left to sync (every
    /// ~15 s here), so its nodes import almost nothing while transactions are timed.
    /// Kept for comparison with earlier figures.
    DirectTxs,
}

impl Mode {
    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        Ok(match s {
            "both" => Mode::Both,
            "peered" => Mode::Peered,
            "gossip" => Mode::GossipOnly,
            "pull" => Mode::PullOnly,
            "direct" => Mode::DirectPush,
            "direct-txs" => Mode::DirectTxs,
            _ => bail!("unknown mode {s:?}: both, peered, gossip, pull, direct or direct-txs"),
        })
    }

    /// Gossip and pull both on (the node's configuration by default).
    pub fn both(self) -> bool {
        matches!(self, Mode::Both | Mode::Peered)
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Both => "gossip + pull",
            Mode::Peered => "gossip + pull, default peering",
            Mode::GossipOnly => "gossip only",
            Mode::PullOnly => "pull only",
            Mode::DirectPush => "direct push (reference)",
            Mode::DirectTxs => "direct push of txs only, blocks by sync",
        }
    }
}

#[derive(Serialize, Clone)]
pub struct GossipResult {
    pub nodes: usize,
    pub mode: Mode,
    /// Connected peers per node when the load started (mean).
    pub peers_mean: f64,
    pub txs: usize,
    pub tx_rate: u64,
    pub txs_reached_all: usize,
    pub tx_p50_ms: f64,
    pub tx_p99_ms: f64,
    pub blocks: usize,
    pub block_p50_ms: f64,
    pub block_p99_ms: f64,
    pub amplification_gossip: f64,
    pub amplification_pull: f64,
    pub amplification: f64,
    /// Every byte received for transactions ÷ the same ideal: gossipsub's envelope
    /// (signature, sender, sequence number, topic) and the pool log's ids included.
    pub wire_gossip: f64,
    pub wire_pull: f64,
    pub wire: f64,
    /// Every transaction's and block's time to reach the last node, sorted (the CDF).
    pub tx_all_ms: Vec<f64>,
    pub block_all_ms: Vec<f64>,
}

#[derive(Serialize)]
pub struct IngestResult {
    pub txs: usize,
    pub seconds: f64,
    pub txs_per_s: f64,
    pub verify_batch_all_cores_per_s: f64,
    pub ratio: f64,
}

struct Net {
    genesis: Genesis,
    authority: Keypair,
    accounts: Vec<Keypair>,
}

fn new_net() -> Net {
    let authority = Keypair::generate();
    let accounts: Vec<Keypair> = (0..ACCOUNTS).map(|_| Keypair::generate()).collect();
    let genesis = Genesis {
        network_id: NETWORK.into(),
        timestamp_ms: (now_ms() - 60_000) / 1000 * 1000,
        block_time_ms: BLOCK_TIME_MS,
        authorities: vec![authority.public()],
        allocations: accounts
            .iter()
            .map(|k| Allocation {
                address: k.public(),
                balance: 1 << 40,
            })
            .collect(),
        limits: ChainLimits {
            max_block_txs: 5_000,
            max_block_bytes: 4 * 1024 * 1024,
            min_fee: 1,
        },
    };
    Net {
        genesis,
        authority,
        accounts,
    }
}

fn node_home(
    root: &Path,
    i: usize,
    n: &Net,
    tweak: impl FnOnce(&mut Config),
) -> anyhow::Result<PathBuf> {
    let h = root.join(format!("n{i}"));
    std::fs::create_dir_all(&h)?;
    std::fs::write(h.join("genesis.toml"), genesis_to_toml(&n.genesis)?)?;
    let mut cfg = Config {
        data_dir: "data".into(),
        ..Config::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse()?;
    cfg.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    cfg.p2p.redial_secs = 1;
    // A fixed sparse topology: no peer exchange dialling.
    cfg.p2p.target_peers = 0;
    cfg.mempool.max_per_sender = 1_000;
    cfg.mempool.max_txs = 50_000;
    cfg.mempool.max_bytes = 64 << 20;
    tweak(&mut cfg);
    std::fs::write(h.join("config.toml"), toml::to_string(&cfg)?)?;
    Ok(h)
}

/// The gossip nodes' log filter: `chainmesh::seen` is what the latencies are read from;
/// `CHAINMESH_BENCH_GOSSIP_LOGS` adds to it (e.g. `chainmesh::relay=trace`: the stages
/// of each block's hop).
fn logs() -> String {
    let base = "warn,chainmesh::seen=trace";
    match std::env::var("CHAINMESH_BENCH_GOSSIP_LOGS") {
        Ok(extra) if !extra.is_empty() => format!("{base},{extra}"),
        _ => base.to_string(),
    }
}

struct Running {
    homes: Vec<PathBuf>,
    apis: Vec<String>,
    procs: Vec<Proc>,
}

/// Starts `count` nodes in a ring with chords (node i dials i−1, and i − count/2 when
/// i ≥ count/2; the last also dials node 0): three peers each, diameter about count/4.
/// With [`Mode::Peered`], node i dials only i−1 and finds the rest itself (peer
/// exchange, the DHT) up to the default peer target. Returns the running nodes and the
/// mean number of peers each has once the network is up.
fn start_network(root: &Path, n: &Net, count: usize, mode: Mode) -> anyhow::Result<(Running, f64)> {
    let peered = mode == Mode::Peered;
    let target = Config::default().p2p.target_peers as usize;
    let mut r = Running {
        homes: Vec::new(),
        apis: Vec::new(),
        procs: Vec::new(),
    };
    let mut addrs: Vec<String> = Vec::new();
    for i in 0..count {
        let producer = i == 0;
        let home = node_home(root, i, n, |c| {
            c.p2p.gossip = mode.both() || mode == Mode::GossipOnly;
            c.p2p.pool_sync = mode.both() || mode == Mode::PullOnly;
            if peered {
                c.p2p.target_peers = target as u32;
            }
            if producer {
                c.producer_key = Some("producer.key".into());
            }
        })?;
        if producer {
            n.authority.save_new(&home.join("producer.key"))?;
        }
        let mut dial = Vec::new();
        if i >= 1 {
            dial.push(addrs[i - 1].clone());
        }
        if !peered && i >= count / 2 && i - count / 2 != i - 1 {
            dial.push(addrs[i - count / 2].clone());
        }
        if !peered && i == count - 1 && count > 2 {
            dial.push(addrs[0].clone());
        }
        let extra: Vec<String> = dial
            .iter()
            .flat_map(|a| ["--peer".to_string(), a.clone()])
            .collect();
        let (p, api) = start_logged(&home, &extra, &logs(), true)?;
        addrs.push(crate::p2p_addr(&home)?);
        r.procs.push(p);
        r.apis.push(api);
        r.homes.push(home);
    }
    let http = client()?;
    // Self-made peering waits for every node to reach the peer target (or every other
    // node); a sparse ring for two peers each.
    let want = if peered {
        target.min(count - 1)
    } else {
        2.min(count - 1)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut counts;
    loop {
        counts = Vec::new();
        for a in &r.apis {
            let peers: Vec<serde_json::Value> = http.get(format!("{a}/peers")).send()?.json()?;
            counts.push(peers.len());
        }
        if counts.iter().all(|&c| c >= want) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the network did not reach {want} peers per node in 90 s: {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Meshes form on gossipsub's heartbeat.
    std::thread::sleep(Duration::from_secs(3));
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    Ok((r, mean))
}

fn client() -> anyhow::Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

fn post(http: &reqwest::blocking::Client, api: &str, tx: &Tx) -> anyhow::Result<()> {
    let r = http.post(format!("{api}/txs")).json(tx).send()?;
    if !r.status().is_success() {
        bail!(
            "{api} refused a transaction: {}",
            r.text().unwrap_or_default()
        );
    }
    Ok(())
}

/// Submits `count` transfers at `rate` per second from the senders in turn, each sender
/// at its own node (or, for a direct push, to every node). Returns each transaction's id, submission time (unix ms)
/// and payload size.
fn load(
    n: &Net,
    chain: &Hash,
    apis: &[String],
    count: usize,
    rate: u64,
    direct: bool,
) -> anyhow::Result<Vec<(Hash, u64, usize)>> {
    let mut nonces = vec![0u64; n.accounts.len()];
    // For a direct push, one poster per node so all get it at once.
    let mut posters = Vec::new();
    if direct {
        for api in apis {
            let (tx, rx) = tokio::sync::mpsc::channel::<(usize, Tx)>(1024);
            let api = api.clone();
            let senders = n.accounts.len();
            let handle = std::thread::spawn(move || push_all(&api, senders, rx));
            posters.push((tx, handle));
        }
    }
    let http = client()?;
    let start = Instant::now();
    let mut sent = Vec::with_capacity(count);
    for i in 0..count {
        let due = start + Duration::from_micros(i as u64 * 1_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let a = i % n.accounts.len();
        let to = PublicKey([(i % 200) as u8 + 1; 32]);
        let tx = Tx::transfer(&n.accounts[a], chain, to, 1, 1, nonces[a]);
        nonces[a] += 1;
        let at = now_ms();
        if direct {
            for (p, _) in &posters {
                p.blocking_send((a, tx.clone()))
                    .map_err(|_| anyhow::anyhow!("poster stopped"))?;
            }
        } else {
            // Each sender always submits at the same node, so its nonces arrive in order
            // there whatever the protocols do between nodes.
            post(&http, &apis[a % apis.len()], &tx)?;
        }
        sent.push((tx.id(), at, wire::encode_tx(&tx).len()));
    }
    for (p, h) in posters {
        drop(p);
        h.join().map_err(|_| anyhow::anyhow!("poster panicked"))??;
    }
    Ok(sent)
}

/// A direct push to one node at its best: requests overlap (an answer waits for the
/// node's fsync, which must not hold up the next transaction), and each sender's
/// transactions still arrive in nonce order.
fn push_all(
    api: &str,
    senders: usize,
    mut rx: tokio::sync::mpsc::Receiver<(usize, Tx)>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let turns: Vec<_> = (0..senders)
            .map(|_| std::sync::Arc::new(tokio::sync::Mutex::new(())))
            .collect();
        let mut posts = tokio::task::JoinSet::new();
        while let Some((sender, tx)) = rx.recv().await {
            // The sender's previous transaction must have arrived first.
            let turn = turns[sender].clone().lock_owned().await;
            let (http, url) = (http.clone(), format!("{api}/txs"));
            posts.spawn(async move {
                let r = http.post(url).json(&tx).send().await?;
                drop(turn);
                if !r.status().is_success() {
                    bail!(
                        "a node refused a transaction: {}",
                        r.text().await.unwrap_or_default()
                    );
                }
                anyhow::Ok(())
            });
            while let Some(done) = posts.try_join_next() {
                done??;
            }
        }
        while let Some(done) = posts.join_next().await {
            done??;
        }
        anyhow::Ok(())
    })
}

/// The block half of the direct push: each block of the producer (node 0), as soon as
/// it has it, posted by the bench to every other node (`POST /blocks`), so that the
/// reference carries the same block traffic and imports as the gossip runs, one hop
/// each. Runs until `stop`; returns the last height pushed.
fn push_blocks(
    apis: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let Some((producer, others)) = apis.split_first() else {
            return Ok(0);
        };
        let mut next = 1;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let s: serde_json::Value = http
                .get(format!("{producer}/status"))
                .send()
                .await?
                .json()
                .await?;
            let height = s["height"].as_u64().unwrap_or(0);
            while next <= height {
                let block = http
                    .get(format!("{producer}/blocks/{next}"))
                    .send()
                    .await?
                    .text()
                    .await?;
                let mut posts = tokio::task::JoinSet::new();
                for api in others {
                    let r = http
                        .post(format!("{api}/blocks"))
                        .header("content-type", "application/json")
                        .body(block.clone());
                    posts.spawn(async move {
                        let r = r.send().await?;
                        if !r.status().is_success() {
                            bail!(
                                "a node refused a block: {}",
                                r.text().await.unwrap_or_default()
                            );
                        }
                        anyhow::Ok(())
                    });
                }
                while let Some(done) = posts.join_next().await {
                    done??;
                }
                next += 1;
            }
            // Polled: the delay (2.5 ms on average) counts in the reference's block times.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(next - 1)
    })
}

fn read_seen(home: &Path) -> anyhow::Result<Seen> {
    Ok(chainmesh_node::seen::read(&std::fs::read_to_string(
        home.join("node.log"),
    )?))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// Sums a counter over every node's `/metrics` lines that start with `name` and contain
/// `filter`.
fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn bench_gossip(
    count: usize,
    mode: Mode,
    txs: usize,
    rate: u64,
) -> anyhow::Result<GossipResult> {
    let root = bench_root()?;
    let n = new_net();
    let chain = n.genesis.hash();
    let (running, peers_mean) = start_network(root.path(), &n, count, mode)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = (mode == Mode::DirectPush).then(|| {
        let (apis, stop) = (running.apis.clone(), stop.clone());
        std::thread::spawn(move || push_blocks(apis, stop))
    });
    let sent = load(
        &n,
        &chain,
        &running.apis,
        txs,
        rate,
        matches!(mode, Mode::DirectPush | Mode::DirectTxs),
    )?;
    // Let the last transactions spread and get into blocks.
    std::thread::sleep(Duration::from_millis(3 * BLOCK_TIME_MS));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(p) = pusher {
        let pushed = p
            .join()
            .map_err(|_| anyhow::anyhow!("block pusher panicked"))??;
        eprintln!("  direct push: {pushed} blocks pushed to every node");
    }
    let http = client()?;
    let (mut gossip_bytes, mut pull_bytes) = (0.0, 0.0);
    let (mut gossip_copies, mut pull_copies) = (0.0, 0.0);
    let topic = format!("{NETWORK}/tx/1");
    for api in &running.apis {
        let m = http.get(format!("{api}/metrics")).send()?.text()?;
        gossip_bytes += metric_sum(&m, "gossipsub_topic_msg_recv_bytes_unfiltered", &topic);
        gossip_copies += metric_sum(&m, "gossipsub_topic_msg_recv_counts_unfiltered", &topic);
        let s: serde_json::Value = http.get(format!("{api}/net")).send()?.json()?;
        pull_bytes += s["pool_bytes_received"].as_f64().unwrap_or(0.0);
        pull_copies += s["pool_txs_fetched"].as_f64().unwrap_or(0.0);
    }
    let Running { homes, procs, .. } = running;
    drop(procs);
    let seen: Vec<Seen> = homes
        .iter()
        .map(|h| read_seen(h))
        .collect::<Result<_, _>>()?;

    let mut tx_lat = Vec::new();
    for (id, at, _) in &sent {
        let id = id.to_string();
        let last = seen
            .iter()
            .map(|s| s.txs.get(&id).copied())
            .collect::<Option<Vec<f64>>>();
        if let Some(l) = last {
            tx_lat.push(l.into_iter().fold(f64::MIN, f64::max) - *at as f64);
        }
    }
    // Blocks: from the producer's (node 0) sight to the last node's, for those produced
    // under the load (before it, a direct push's nodes were still catching up).
    let load_start = sent.first().map_or(0.0, |(_, at, _)| *at as f64);
    let mut block_lat = Vec::new();
    for (id, produced) in seen[0].blocks.iter().filter(|(_, t)| **t >= load_start) {
        let last = seen
            .iter()
            .map(|s| s.blocks.get(id).copied())
            .collect::<Option<Vec<f64>>>();
        if let Some(l) = last {
            block_lat.push(l.into_iter().fold(f64::MIN, f64::max) - produced);
        }
    }
    let payload: f64 = sent.iter().map(|(_, _, b)| *b as f64).sum();
    let ideal = (count - 1) as f64 * payload;
    // Copies received, in payload bytes: the transfers are all of one size.
    let per_tx = payload / sent.len().max(1) as f64;
    let reached = tx_lat.len();
    Ok(GossipResult {
        nodes: count,
        mode,
        peers_mean,
        txs: sent.len(),
        tx_rate: rate,
        txs_reached_all: reached,
        tx_p50_ms: percentile(&mut tx_lat, 0.5),
        tx_p99_ms: percentile(&mut tx_lat, 0.99),
        blocks: block_lat.len(),
        block_p50_ms: percentile(&mut block_lat, 0.5),
        block_p99_ms: percentile(&mut block_lat, 0.99),
        amplification_gossip: gossip_copies * per_tx / ideal,
        amplification_pull: pull_copies * per_tx / ideal,
        amplification: (gossip_copies + pull_copies) * per_tx / ideal,
        wire_gossip: gossip_bytes / ideal,
        wire_pull: pull_bytes / ideal,
        wire: (gossip_bytes + pull_bytes) / ideal,
        tx_all_ms: tx_lat,
        block_all_ms: block_lat,
    })
}

/// Batch ed25519 verification on every core at once.
pub fn calibrate_verify_all_cores() -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fixtures: Vec<_> = (0..threads)
        .map(|_| crate::verify_fixture(8_192, ACCOUNTS))
        .collect();
    let t = Instant::now();
    let verified: usize = std::thread::scope(|s| {
        let hs: Vec<_> = fixtures
            .iter()
            .map(|f| s.spawn(move || crate::verify_batches(f)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    verified as f64 / t.elapsed().as_secs_f64()
}

/// The nodes' folders, kept with `CHAINMESH_BENCH_KEEP` set (to read their logs).
fn bench_root() -> anyhow::Result<tempfile::TempDir> {
    let mut root = tempfile::tempdir()?;
    if std::env::var_os("CHAINMESH_BENCH_KEEP").is_some() {
        root.disable_cleanup(true);
        eprintln!("  keeping the nodes' folders in {}", root.path().display());
    }
    Ok(root)
}

pub fn bench_ingest(txs: usize) -> anyhow::Result<IngestResult> {
    let root = bench_root()?;
    let n = new_net();
    let chain = n.genesis.hash();
    // The source's pool, filled with the real mempool code before it starts.
    let src = node_home(root.path(), 0, &n, |_| {})?;
    {
        let db = sled::open(src.join("data/db"))?;
        let store = Store::open_db(db.clone(), &n.genesis)?;
        let cfg = PoolConfig {
            max_txs: 50_000,
            max_bytes: 64 << 20,
            max_per_sender: 1_000,
            min_fee: 1,
        };
        struct St<'a>(&'a Store);
        impl chainmesh_mempool::AccountState for St<'_> {
            fn account(&self, a: &PublicKey) -> Result<chainmesh_proto::Account, String> {
                self.0.account(a).map_err(|e| e.to_string())
            }
        }
        let mut pool = PersistentPool::open(db.open_tree("mempool")?, cfg, chain, &St(&store))?;
        for i in 0..txs {
            let a = i % n.accounts.len();
            let tx = Tx::transfer(
                &n.accounts[a],
                &chain,
                PublicKey([7; 32]),
                1,
                1,
                (i / n.accounts.len()) as u64,
            );
            if let Err(e) = pool.add(tx, &St(&store))? {
                bail!("filling the source pool: {e}");
            }
        }
        db.flush()?;
    }
    // The limit is measured around the run, three times before and after, and the
    // median taken: a single short measurement on a shared machine swings by a third.
    let mut limits: Vec<f64> = (0..3).map(|_| calibrate_verify_all_cores()).collect();
    // No per-transaction trace here: what is measured is the node as it runs.
    let level = std::env::var("CHAINMESH_BENCH_LOGS").unwrap_or_else(|_| "warn".into());
    let (_src_proc, _) = start_logged(&src, &[], &level, true)?;
    let addr = crate::p2p_addr(&src)?;
    let dest = node_home(root.path(), 1, &n, |c| c.p2p.gossip = false)?;
    let (dest_proc, api) = start_logged(&dest, &["--peer".into(), addr], &level, true)?;
    let http = client()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    // From the first poll that finds some transactions in the pool to the one that finds
    // them all; what arrived before the first is not counted.
    let mut first: Option<(Instant, u64)> = None;
    let end = loop {
        let s: serde_json::Value = http.get(format!("{api}/status")).send()?.json()?;
        let now = Instant::now();
        let have = s["mempool_txs"].as_u64().unwrap_or(0);
        if have > 0 && first.is_none() {
            first = Some((now, have));
        }
        if have == txs as u64 {
            break now;
        }
        if now > deadline {
            bail!("ingest did not finish in 5 minutes (at {have})");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(dest_proc);
    let (start, before) = first.unwrap_or((end, 0));
    let counted = txs as u64 - before;
    let secs = end.duration_since(start).as_secs_f64().max(1e-3);
    let rate = counted as f64 / secs;
    limits.extend((0..3).map(|_| calibrate_verify_all_cores()));
    limits.sort_by(f64::total_cmp);
    let verify = (limits[2] + limits[3]) / 2.0;
    eprintln!("  verify limit: {limits:.0?} (median {verify:.0})");
    Ok(IngestResult {
        txs: counted as usize,
        seconds: secs,
        txs_per_s: rate,
        verify_batch_all_cores_per_s: verify,
        ratio: rate / verify,
    })
}

/// Milliseconds for a table, a dash where nothing was measured.
fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "–".into()
    }
}

pub fn report(results: &[GossipResult], ingest: &IngestResult, command: &str) -> String {
    let mut md = format!(
        "## Gossip and mempool (real nodes on 127.0.0.1)\n\nProduced by `{command}`. A sparse \
         topology (ring with chords, three peers each) or, for `default peering`, the one the \
         nodes build themselves from a chain of bootstrap peers with the default peer target \
         (8); one producer (2 s slots), 64 \
         senders; latency = last node's first sight (in its pool, or in a block that brought \
         it first) − submission (txs) or − the producer's sight (blocks); amplification = payload bytes received by all nodes ÷ ((N − 1) × \
         payload), counting every copy of a transaction received (gossip duplicates \
         included); wire = every byte received for transactions (gossipsub's envelope of \
         signature, sender, sequence number and topic; the pool log's ids) ÷ the same.\n\n\
         | nodes | mode | peers per node | txs (rate/s) | reached all | tx p50 ms | tx p99 ms | blocks | block p50 ms | block p99 ms | ampl. gossip | ampl. pull | ampl. total | wire gossip | wire pull | wire total |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for r in results {
        md += &format!(
            "| {} | {} | {:.1} | {} ({}) | {} | {:.0} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            r.nodes,
            r.mode.name(),
            r.peers_mean,
            r.txs,
            r.tx_rate,
            r.txs_reached_all,
            r.tx_p50_ms,
            r.tx_p99_ms,
            r.blocks,
            ms(r.block_p50_ms),
            ms(r.block_p99_ms),
            r.amplification_gossip,
            r.amplification_pull,
            r.amplification,
            r.wire_gossip,
            r.wire_pull,
            r.wire
        );
    }
    for nodes in results
        .iter()
        .map(|r| r.nodes)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let of = |m: Mode| results.iter().find(|r| r.nodes == nodes && r.mode == m);
        for b in results.iter().filter(|r| r.nodes == nodes && r.mode.both()) {
            let Some(d) = of(Mode::DirectPush) else { break };
            md += &format!(
                "\nN = {nodes}, {}: tx p99 ÷ direct push = {:.2} (target ≤ 2); block p99 ÷ \
                 direct push = {:.2}; amplification = {:.2} (target ≤ 2; wire {:.2}).\n",
                b.mode.name(),
                b.tx_p99_ms / d.tx_p99_ms,
                b.block_p99_ms / d.block_p99_ms,
                b.amplification,
                b.wire
            );
            if let Some(t) = of(Mode::DirectTxs) {
                md += &format!(
                    "N = {nodes}, {}: tx p99 ÷ direct push of txs alone (blocks by sync) = {:.2}.\n",
                    b.mode.name(),
                    b.tx_p99_ms / t.tx_p99_ms
                );
            }
        }
    }
    md += &format!(
        "\n### Mempool ingest\n\n{} transactions pulled by a new node (gossip off) in {:.2} s: \
         {:.0} txs/s; batch ed25519 verification on all cores: {:.0}/s; ratio {:.2} (target ≥ 0.7).\n",
        ingest.txs,
        ingest.seconds,
        ingest.txs_per_s,
        ingest.verify_batch_all_cores_per_s,
        ingest.ratio
    );
    md
}
