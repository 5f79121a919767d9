//! chainmesh benchmarks. Run from the repository root:
//!
//! ```sh
//! cargo run --release -p chainmesh-bench -- [--quick] [--out DIR] [--only NAME-PART]
//! ```
//!
//! First it calibrates this machine in the same run: (a) raw libp2p stream throughput
//! between two swarms (TCP + Noise + Yamux, one stream), (b) sled `apply_batch` write
//! rate for block-sized values, (c) ed25519 verification rate, single and batched. For a
//! workload, the limit L in blocks/s is the smallest of (a), (b), (c) expressed for that
//! workload's block size and signatures per block. Then it runs real `chainmesh` nodes on
//! loopback (this binary runs them: `chainmesh-bench node ...` is the node's CLI) and
//! measures sync. Results go to `BENCHMARKS.md` and `bench.json` in DIR (default `.`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chainmesh_chain_sync::state::SigCheck;
use chainmesh_chain_sync::{Allocation, ChainLimits, Genesis, Store};
use chainmesh_node::config::{Config, genesis_to_toml};
use chainmesh_proto::{Keypair, PublicKey, Signature, Tx, wire};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, noise, tcp, yamux};
use serde::Serialize;

mod admission;
mod api;
mod gossip;
mod plots;
mod scale;
mod store;
mod suite;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("node") {
        let node_args = std::iter::once("chainmesh".to_string()).chain(args[2..].iter().cloned());
        return chainmesh_node::main_from(node_args);
    }
    let result = if args.get(1).map(String::as_str) == Some("bare-host") {
        scale::bare_host_main()
    } else if args.get(1).map(String::as_str) == Some("swarms") {
        scale::swarms_main(&args[2..])
    } else if args.get(1).map(String::as_str) == Some("api") {
        let rest = &args[2..];
        number(rest, "--seconds", 10u64)
            .and_then(|secs| Ok((secs, number(rest, "--blocks", 600u64)?)))
            .and_then(|(secs, blocks)| api::bench_api(secs, blocks))
            .map(|r| {
                for a in r {
                    println!(
                        "{}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} of {} refused, syncing: {}",
                        a.endpoint, a.requests_per_s, a.p50_ms, a.p99_ms, a.non_2xx, a.requests, a.while_syncing
                    );
                }
            })
    } else if args.get(1).map(String::as_str) == Some("store") {
        let rest = &args[2..];
        number(rest, "--blocks", 10_000u64)
            .and_then(|b| Ok((b, number(rest, "--reopen", 20_000u64)?)))
            .and_then(|(b, r)| store::bench_store(b, r))
            .and_then(|r| {
                println!("{}", serde_json::to_string_pretty(&r)?);
                Ok(())
            })
    } else if args.get(1).map(String::as_str) == Some("scale") {
        run_scale(&args[2..])
    } else if args.get(1).map(String::as_str) == Some("all") {
        suite::run(&args[2..])
    } else if args.get(1).map(String::as_str) == Some("gossip") {
        run_gossip(&args[2..])
    } else if args.get(1).map(String::as_str) == Some("admission") {
        let rest = &args[2..];
        number(rest, "--bits", 20u32)
            .and_then(|bits| Ok((bits, number(rest, "--runs", 21usize)?)))
            .and_then(|(bits, runs)| admission::run(bits, runs).map(|_| ()))
    } else {
        run(&args[1..])
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Serialize, Clone)]
struct Calibration {
    stream_mb_s: f64,
    sled_mb_s: f64,
    verify_single_per_s: f64,
    verify_batch_per_s: f64,
    /// A bare swarm holding connections: memory per connection, handshakes per second.
    bare: scale::BareCalibration,
}

#[derive(Serialize)]
struct SyncResult {
    workload: String,
    blocks: u64,
    mb: f64,
    peers: usize,
    seconds: f64,
    blocks_per_s: f64,
    mb_per_s: f64,
    limit_blocks_per_s: f64,
    limit_from: String,
    ratio: f64,
    /// (seconds since the syncing node started, its height), at most every 100 ms.
    progress: Vec<(f64, u64)>,
}

struct Workload {
    name: &'static str,
    blocks: u64,
    txs_per_block: u64,
    peers: &'static [usize],
}

fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

/// `--out DIR`; by default `target/bench` (cargo runs the bench from the workspace root),
/// so that a run never leaves its files among the sources.
fn out_dir(args: &[String]) -> PathBuf {
    args.iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or(PathBuf::from("target/bench"), PathBuf::from)
}

/// The value after `name`, if given.
fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// A number after `name`, or `default`; a bad number is an error, not a silent default.
fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match value(args, name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}: not a number: {v:?}")),
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let (quick, out) = (flag(args, "--quick"), out_dir(args));
    let started = Instant::now();
    let cal = calibrate(quick)?;
    let results = run_sync(&cal, quick, value(args, "--only"))?;
    write_report(&out, quick, &cal, &results, started.elapsed())?;
    Ok(())
}

/// This machine's limits, measured now: one libp2p stream, sled batch writes, ed25519.
fn calibrate(quick: bool) -> anyhow::Result<Calibration> {
    let stream_bytes: u64 = if quick { 256 << 20 } else { 1 << 30 };
    eprintln!("calibrating (stream {} MiB)...", stream_bytes >> 20);
    let cal = Calibration {
        stream_mb_s: calibrate_stream(stream_bytes)?,
        sled_mb_s: calibrate_sled(600 * 1024, if quick { 128 << 20 } else { 512 << 20 })?,
        verify_single_per_s: calibrate_verify(false),
        verify_batch_per_s: calibrate_verify(true),
        bare: scale::calibrate_bare(scale::connections(quick))?,
    };
    eprintln!(
        "stream {:.0} MB/s, sled {:.0} MB/s, verify {:.0}/s single, {:.0}/s batched, bare swarm {:.1} kB per connection and {:.0} handshakes/s over {} connections",
        cal.stream_mb_s,
        cal.sled_mb_s,
        cal.verify_single_per_s,
        cal.verify_batch_per_s,
        cal.bare.kb_per_connection,
        cal.bare.handshakes_per_s,
        cal.bare.connections
    );
    Ok(cal)
}

fn sync_workloads(quick: bool) -> Vec<Workload> {
    // 500 large blocks (~290 MB) measure the same rate as the 1,700 of earlier runs and
    // keep the full suite within half an hour (building them is signing 2 million txs).
    let (large, small) = if quick { (20, 3_000) } else { (500, 20_000) };
    vec![
        Workload {
            name: "large blocks (~0.6 MB)",
            blocks: large,
            txs_per_block: 4_000,
            peers: &[1],
        },
        Workload {
            name: "blocks with 2 txs",
            blocks: small,
            txs_per_block: 2,
            peers: &[1, 3],
        },
    ]
}

/// Every sync workload (those whose name contains `only`, if given).
fn run_sync(cal: &Calibration, quick: bool, only: Option<&str>) -> anyhow::Result<Vec<SyncResult>> {
    let mut results = Vec::new();
    for w in sync_workloads(quick)
        .iter()
        .filter(|w| only.is_none_or(|o| w.name.contains(o)))
    {
        for &peers in w.peers {
            eprintln!("sync: {} x {} from {peers} peer(s)...", w.blocks, w.name);
            let r = bench_sync(w, peers, cal)?;
            eprintln!(
                "  {:.1} s, {:.0} blocks/s, {:.1} MB/s, L = {:.0} blocks/s ({}), ratio {:.2}",
                r.seconds, r.blocks_per_s, r.mb_per_s, r.limit_blocks_per_s, r.limit_from, r.ratio
            );
            results.push(r);
        }
    }
    Ok(results)
}

/// `chainmesh-bench scale [--quick] [--connections N] [--seconds S] [--rate R]
/// [--sync-blocks B]`: connection scale alone (with its bare-swarm calibration); the
/// result as JSON on stdout.
fn run_scale(args: &[String]) -> anyhow::Result<()> {
    let mut s = scale::ScaleSettings::new(flag(args, "--quick"));
    s.connections = number(args, "--connections", s.connections)?;
    s.load_seconds = number(args, "--seconds", s.load_seconds)?;
    s.tx_rate = number(args, "--rate", s.tx_rate)?;
    s.sync_blocks = number(args, "--sync-blocks", s.sync_blocks)?;
    eprintln!("bare swarm with {} connections...", s.connections);
    let bare = scale::calibrate_bare(s.connections)?;
    eprintln!(
        "  {:.1} kB per connection, {:.0} handshakes/s",
        bare.kb_per_connection, bare.handshakes_per_s
    );
    let r = scale::bench_scale(&s, &bare)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

/// `chainmesh-bench gossip [--quick] [--out DIR] [--nodes 10,30] [--modes direct,both,
/// peered,gossip,pull]`: the gossip and mempool benchmark (`peered`, the topology the
/// nodes build themselves, is not in the default runs).
fn run_gossip(args: &[String]) -> anyhow::Result<()> {
    use gossip::Mode;
    let (quick, out) = (flag(args, "--quick"), out_dir(args));
    // The overrides are for working on one case; the report is for the defaults.
    let sizes: Vec<usize> = match value(args, "--nodes") {
        // Only the ingest case.
        Some("none") => Vec::new(),
        Some(v) => v
            .split(',')
            .map(|n| n.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--nodes: a list of numbers, not {v:?}"))?,
        None if quick => vec![10],
        None => vec![10, 30],
    };
    let modes: Vec<Mode> = match value(args, "--modes") {
        Some(v) => v
            .split(',')
            .map(Mode::parse)
            .collect::<anyhow::Result<_>>()?,
        None => vec![
            Mode::DirectPush,
            Mode::DirectTxs,
            Mode::Both,
            Mode::GossipOnly,
            Mode::PullOnly,
        ],
    };
    let (txs, rate) = if quick { (300, 50) } else { (1_500, 100) };
    let (txs, rate) = (number(args, "--txs", txs)?, number(args, "--rate", rate)?);
    let mut results = Vec::new();
    for &n in &sizes {
        for &mode in &modes {
            eprintln!("gossip: {n} nodes, {mode:?}, {txs} txs at {rate}/s...");
            let r = gossip::bench_gossip(n, mode, txs, rate)?;
            eprintln!(
                "  reached all {} of {}, tx p50 {:.0} ms p99 {:.0} ms, block p50 {:.0} ms p99 {:.0} ms, amplification {:.2} (gossip {:.2}, pull {:.2}), wire {:.2}",
                r.txs_reached_all,
                r.txs,
                r.tx_p50_ms,
                r.tx_p99_ms,
                r.block_p50_ms,
                r.block_p99_ms,
                r.amplification,
                r.amplification_gossip,
                r.amplification_pull,
                r.wire
            );
            results.push(r);
        }
    }
    let ingest_txs = number(args, "--ingest-txs", if quick { 5_000 } else { 50_000 })?;
    eprintln!("ingest: {ingest_txs} txs by pull...");
    let ingest = gossip::bench_ingest(ingest_txs)?;
    let command = format!(
        "cargo run --release -p chainmesh-bench -- gossip{}",
        if quick { " --quick" } else { "" }
    );
    let md = gossip::report(&results, &ingest, &command);
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("BENCHMARKS.gossip.md"), &md)?;
    let json = serde_json::json!({ "mode": if quick { "quick" } else { "full" }, "gossip": results, "ingest": ingest });
    std::fs::write(
        out.join("bench-gossip.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("{md}");
    Ok(())
}

// ---------------------------------------------------------------- calibration

fn calibrate_stream(bytes: u64) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let proto = StreamProtocol::new("/chainmesh-bench/stream/1");
        let mk = || -> anyhow::Result<libp2p::Swarm<libp2p_stream::Behaviour>> {
            Ok(libp2p::SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )?
                .with_behaviour(|_| libp2p_stream::Behaviour::new())?
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                .build())
        };
        let mut rx = mk()?;
        let mut tx = mk()?;
        let mut incoming = rx.behaviour().new_control().accept(proto.clone())?;
        rx.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = rx.select_next_some().await {
                break address;
            }
        };
        let rx_id = *rx.local_peer_id();
        tokio::spawn(async move {
            loop {
                rx.select_next_some().await;
            }
        });
        let mut control = tx.behaviour().new_control();
        tx.dial(addr.with(libp2p::multiaddr::Protocol::P2p(rx_id)))?;
        tokio::spawn(async move {
            loop {
                tx.select_next_some().await;
            }
        });
        let reader = tokio::spawn(async move {
            let (_, mut s) = incoming.next().await.context("no stream")?;
            let mut buf = vec![0u8; 1 << 18];
            let mut got = 0u64;
            let mut first = None;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                got += n as u64;
            }
            anyhow::Ok((got, first.map(|t| t.elapsed())))
        });
        let mut s = control
            .open_stream(rx_id, proto)
            .await
            .map_err(|e| anyhow::anyhow!("open stream: {e}"))?;
        let chunk = vec![0x5au8; 1 << 18];
        let mut sent = 0u64;
        while sent < bytes {
            s.write_all(&chunk).await?;
            sent += chunk.len() as u64;
        }
        s.close().await?;
        let (got, took) = reader.await??;
        if got != sent {
            bail!("stream calibration received {got} of {sent} bytes");
        }
        let took = took.context("nothing received")?;
        Ok(got as f64 / 1e6 / took.as_secs_f64())
    })
}

fn calibrate_sled(value_size: usize, total: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = sled::open(dir.path())?;
    let tree = db.open_tree("blocks")?;
    let value: Vec<u8> = (0..value_size).map(|i| (i * 31) as u8).collect();
    let per_batch = 64;
    let n = total / value_size;
    let t = Instant::now();
    let mut i = 0u64;
    while (i as usize) < n {
        let mut b = sled::Batch::default();
        for _ in 0..per_batch {
            b.insert(&i.to_be_bytes(), value.as_slice());
            i += 1;
        }
        tree.apply_batch(b)?;
    }
    db.flush()?;
    Ok((i as usize * value_size) as f64 / 1e6 / t.elapsed().as_secs_f64())
}

/// Messages shaped like transaction signing bytes, their signatures and keys.
pub(crate) struct VerifyFixture {
    msgs: Vec<Vec<u8>>,
    sigs: Vec<Signature>,
    keys: Vec<PublicKey>,
}

/// `n` signatures by `signers` keys in turn. The node's verifier merges the terms of one
/// key's signatures in a batch, so its rate depends on how many keys a batch holds: a
/// limit is measured on the key mix of the workload it is the limit of (the sync
/// benchmark's blocks are one sender's, the ingest's pool is 64 senders' in turn).
pub(crate) fn verify_fixture(n: usize, signers: usize) -> VerifyFixture {
    let signers: Vec<Keypair> = (0..signers.max(1)).map(|_| Keypair::generate()).collect();
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            [
                b"chainmesh/tx/v1\0".as_slice(),
                &[0u8; 112],
                &(i as u64).to_be_bytes(),
            ]
            .concat()
        })
        .collect();
    let sigs = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| signers[i % signers.len()].sign(m))
        .collect();
    let keys = (0..n)
        .map(|i| signers[i % signers.len()].public())
        .collect();
    VerifyFixture { msgs, sigs, keys }
}

/// Signatures per batch in the calibration: the size at which batch verification is
/// cheapest per signature (larger batches gain nothing more), and the largest the node
/// uses, so the limit is the best this machine can do.
pub(crate) const CALIBRATION_BATCH: usize = 1024;

/// Verifies the fixture in batches of [`CALIBRATION_BATCH`] with the node's verifier;
/// returns how many signatures passed.
pub(crate) fn verify_batches(f: &VerifyFixture) -> usize {
    let mut ok = 0;
    for c in 0..f.msgs.len() / CALIBRATION_BATCH {
        let items: Vec<(&PublicKey, &[u8], &Signature)> = (c * CALIBRATION_BATCH
            ..(c + 1) * CALIBRATION_BATCH)
            .map(|i| (&f.keys[i], f.msgs[i].as_slice(), &f.sigs[i]))
            .collect();
        if chainmesh_proto::crypto::verify_batch(&items) {
            ok += CALIBRATION_BATCH;
        }
    }
    ok
}

/// Signers of the sync benchmark's transactions (all of them are `alice`'s).
const SYNC_SIGNERS: usize = 1;

fn calibrate_verify(batch: bool) -> f64 {
    let f = verify_fixture(4_096, SYNC_SIGNERS);
    let t = Instant::now();
    let n = if batch {
        verify_batches(&f)
    } else {
        (0..f.msgs.len())
            .filter(|&i| chainmesh_proto::crypto::verify(&f.keys[i], &f.msgs[i], &f.sigs[i]))
            .count()
    };
    n as f64 / t.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- sync

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Net {
    genesis: Genesis,
    authority: Keypair,
    alice: Keypair,
}

fn net(blocks: u64) -> Net {
    let authority = Keypair::generate();
    let alice = Keypair::generate();
    let genesis = Genesis {
        network_id: "bench".into(),
        timestamp_ms: (now_ms() - (blocks + 100) * 1000) / 1000 * 1000,
        block_time_ms: 1000,
        authorities: vec![authority.public()],
        allocations: vec![Allocation {
            address: alice.public(),
            balance: u64::MAX / 2,
        }],
        limits: ChainLimits {
            max_block_txs: 5_000,
            max_block_bytes: 4 * 1024 * 1024,
            min_fee: 1,
        },
    };
    Net {
        genesis,
        authority,
        alice,
    }
}

/// Builds the chain; returns its total encoded size in bytes and the signatures per block.
fn build_chain(n: &Net, db: &Path, w: &Workload) -> anyhow::Result<u64> {
    let mut store = Store::open(db, &n.genesis)?;
    let chain = n.genesis.hash();
    let mut nonce = 0;
    let mut bytes = 0u64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for slot in 1..=w.blocks {
        // Signing is the slow part of building: spread it over the cores.
        let first = nonce;
        let per = (w.txs_per_block as usize).div_ceil(threads).max(1);
        let txs: Vec<Tx> = std::thread::scope(|s| {
            let parts: Vec<_> = (0..w.txs_per_block)
                .collect::<Vec<_>>()
                .chunks(per)
                .map(|c| {
                    let c = c.to_vec();
                    s.spawn(move || {
                        c.into_iter()
                            .map(|i| {
                                let to = PublicKey([(i % 250) as u8 + 1; 32]);
                                Tx::transfer(&n.alice, &chain, to, 1, 1, first + i)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        nonce += w.txs_per_block;
        let built = store.build_block(&n.authority, slot, txs)?;
        bytes += wire::encode_block(&built.block).len() as u64;
        // Our own freshly signed block: its signatures need no second check here.
        store.import_with(built.block, now_ms(), SigCheck::AlreadyVerified)?;
    }
    store.flush()?;
    Ok(bytes)
}

fn home(root: &Path, name: &str, n: &Net) -> anyhow::Result<PathBuf> {
    home_with(root, name, n, |_| {})
}

/// A node's folder: genesis, and a config on loopback ports chosen by the system,
/// adjusted by `tweak`.
fn home_with(
    root: &Path,
    name: &str,
    n: &Net,
    tweak: impl FnOnce(&mut Config),
) -> anyhow::Result<PathBuf> {
    let h = root.join(name);
    std::fs::create_dir_all(&h)?;
    std::fs::write(h.join("genesis.toml"), genesis_to_toml(&n.genesis)?)?;
    let mut cfg = Config {
        data_dir: "data".into(),
        ..Config::default()
    };
    cfg.api.listen = "127.0.0.1:0".parse()?;
    cfg.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
    cfg.p2p.redial_secs = 1;
    tweak(&mut cfg);
    std::fs::write(h.join("config.toml"), toml::to_string(&cfg)?)?;
    Ok(h)
}

pub(crate) struct Proc(Child);

impl Drop for Proc {
    /// SIGTERM to the node's process group (a profiler wrapping it passes nothing on, and
    /// must see the node exit to write its profile), SIGKILL after ten seconds.
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(h: &Path, extra: &[String]) -> anyhow::Result<(Proc, String)> {
    start_logged(h, extra, "warn,chainmesh_node::p2p=info", false)
}

/// Starts a node (this binary's `node` subcommand) with its log at `level`, in JSON if
/// asked, in `<home>/node.log`; returns it with its API URL.
pub(crate) fn start_logged(
    h: &Path,
    extra: &[String],
    level: &str,
    json: bool,
) -> anyhow::Result<(Proc, String)> {
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(h.join("node.log"))?;
    let format = if json { "json" } else { "human" };
    // For profiles: CHAINMESH_BENCH_WRAP="heaptrack -o /tmp/ht" (or "perf record -g
    // -o ...", "valgrind --tool=callgrind") runs every node under that command.
    let wrap = std::env::var("CHAINMESH_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let child = cmd
        .args([
            "node",
            "--log-format",
            format,
            "--log-level",
            level,
            "run",
            "--config",
        ])
        .arg(h.join("config.toml"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = std::fs::read_to_string(h.join("data/api.addr"))
            && !a.trim().is_empty()
        {
            return Ok((p, format!("http://{}", a.trim())));
        }
        if Instant::now() > deadline {
            bail!("node in {} did not start", h.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn p2p_addr(h: &Path) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(h.join("data/p2p.addrs"))
            && let Some(l) = s.lines().next()
        {
            return Ok(l.to_string());
        }
        if Instant::now() > deadline {
            bail!("no p2p address for {}", h.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(http: &reqwest::blocking::Client, api: &str) -> anyhow::Result<serde_json::Value> {
    Ok(http.get(format!("{api}/status")).send()?.json()?)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn bench_sync(w: &Workload, peers: usize, cal: &Calibration) -> anyhow::Result<SyncResult> {
    let root = tempfile::tempdir()?;
    let n = net(w.blocks);
    let src0 = home(root.path(), "src0", &n)?;
    let t = Instant::now();
    let bytes = build_chain(&n, &src0.join("data/db"), w)?;
    eprintln!(
        "  built {} blocks ({:.1} MB) in {:.1} s",
        w.blocks,
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let mut homes = vec![src0.clone()];
    for i in 1..peers {
        let h = home(root.path(), &format!("src{i}"), &n)?;
        copy_dir(&src0.join("data/db"), &h.join("data/db"))?;
        homes.push(h);
    }
    let mut procs = Vec::new();
    let mut peer_args = Vec::new();
    for h in &homes {
        procs.push(start(h, &[])?.0);
        peer_args.push("--peer".to_string());
        peer_args.push(p2p_addr(h)?);
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let dest = home(root.path(), "dest", &n)?;
    let (dest_proc, api) = start(&dest, &peer_args)?;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(1_800);
    // The API must stay responsive while the node syncs: the slowest answer is reported.
    let mut slowest = Duration::ZERO;
    let mut progress = vec![(0.0, 0)];
    loop {
        let asked = Instant::now();
        let s = status(&http, &api)?;
        slowest = slowest.max(asked.elapsed());
        let h = s["height"].as_u64().unwrap_or(0);
        let t = t0.elapsed().as_secs_f64();
        if progress
            .last()
            .is_some_and(|p| t - p.0 >= 0.1 || h == w.blocks)
        {
            progress.push((t, h));
        }
        if h == w.blocks {
            break;
        }
        if Instant::now() > deadline {
            bail!("sync did not finish in 30 minutes (at {})", s["height"]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "  slowest GET /status while syncing: {} ms",
        slowest.as_millis()
    );
    drop(dest_proc);
    drop(procs);
    let block_mb = bytes as f64 / 1e6 / w.blocks as f64;
    let sigs = (w.txs_per_block + 1) as f64;
    let limits = [
        (cal.stream_mb_s / block_mb, "libp2p stream"),
        (cal.sled_mb_s / block_mb, "sled writes"),
        (cal.verify_batch_per_s / sigs, "ed25519 batch verify"),
    ];
    let (l, from) = limits
        .iter()
        .fold((f64::MAX, ""), |a, b| if b.0 < a.0 { *b } else { a });
    let bps = w.blocks as f64 / secs;
    Ok(SyncResult {
        workload: w.name.to_string(),
        blocks: w.blocks,
        mb: bytes as f64 / 1e6,
        peers,
        seconds: secs,
        blocks_per_s: bps,
        mb_per_s: bytes as f64 / 1e6 / secs,
        limit_blocks_per_s: l,
        limit_from: from.to_string(),
        ratio: bps / l,
        progress,
    })
}

fn write_report(
    out: &Path,
    quick: bool,
    cal: &Calibration,
    r: &[SyncResult],
    took: Duration,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mode = if quick { "--quick" } else { "full" };
    let mut md = format!(
        "# chainmesh benchmarks\n\nProduced by `cargo run --release -p chainmesh-bench --{}` ({mode} mode, {:.0} s) on this\n\
         machine. Absolute numbers drift on shared machines; the ratios compare each result with\n\
         limits measured in the same run.\n\n## Calibration\n\n| measure | result |\n|---|---|\n\
         | raw libp2p stream, TCP + Noise + Yamux, one stream | {:.0} MB/s |\n\
         | sled `apply_batch`, 600 KiB values, 64 per batch | {:.0} MB/s |\n\
         | ed25519 verify, single | {:.0} /s |\n| ed25519 verify, batches of 1,024 | {:.0} /s |\n\n\
         ## Sync (real nodes on 127.0.0.1, from an empty store to the source's tip)\n\n\
         L is the smallest of the calibrated limits expressed in blocks/s for the workload\n\
         (stream MB/s ÷ block MB, sled MB/s ÷ block MB, batch verifications/s ÷ signatures per block).\n\n\
         | workload | blocks | MB | peers | seconds | blocks/s | MB/s | L (blocks/s) | L set by | ratio | target |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        if quick { " --quick" } else { "" },
        took.as_secs_f64(),
        cal.stream_mb_s,
        cal.sled_mb_s,
        cal.verify_single_per_s,
        cal.verify_batch_per_s
    );
    for x in r {
        md += &format!(
            "| {} | {} | {:.1} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {} | {:.2} | ≥ 0.70 |\n",
            x.workload,
            x.blocks,
            x.mb,
            x.peers,
            x.seconds,
            x.blocks_per_s,
            x.mb_per_s,
            x.limit_blocks_per_s,
            x.limit_from,
            x.ratio
        );
    }
    std::fs::write(out.join("BENCHMARKS.generated.md"), &md)?;
    let json = serde_json::json!({ "mode": mode, "calibration": cal, "sync": r });
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&json)?)?;
    eprintln!(
        "wrote {} and {}",
        out.join("BENCHMARKS.generated.md").display(),
        out.join("bench.json").display()
    );
    println!("{md}");
    Ok(())
}
