//! The HTTP API under load while the node syncs: `GET /status` and `POST /txs` requests
//! per second and latency percentiles, measured with `wrk` (Debian's package), against a
//! node that is syncing a chain of large blocks from another node at the same time.
//!
//! The transactions are valid: 256 funded accounts per wrk thread, their transfers in
//! round-robin order, so that the few requests in flight on one thread never carry two
//! nonces of one sender (which the API would refuse as a gap).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chainmesh_chain_sync::Allocation;
use chainmesh_node::config::Config;
use chainmesh_proto::{Keypair, PublicKey, Tx};
use serde::Serialize;

use crate::{Workload, build_chain, home, net, p2p_addr, start, status};

#[derive(Serialize, Clone)]
pub struct ApiResult {
    pub endpoint: String,
    pub connections: usize,
    pub seconds: u64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers other than 2xx/3xx (refusals, errors).
    pub non_2xx: u64,
    pub requests: u64,
    /// The node was still syncing when wrk finished.
    pub while_syncing: bool,
}

const THREADS: usize = 2;
const ACCOUNTS_PER_THREAD: usize = 256;
const CONNECTIONS: usize = 16;

const SCRIPT: &str = r#"
-- One body per line in txs_<thread>.jsonl; each thread cycles through its own file.
counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  bodies = {}
  local f = assert(io.open(args[1] .. "/txs_" .. id .. ".jsonl"))
  for line in f:lines() do bodies[#bodies + 1] = line end
  f:close()
  i = 0
end
function request()
  i = i + 1
  if i > #bodies then i = 1 end
  return wrk.format("POST", "/txs", {["Content-Type"] = "application/json"}, bodies[i])
end
"#;

pub fn bench_api(seconds: u64, blocks: u64) -> anyhow::Result<Vec<ApiResult>> {
    anyhow::ensure!(
        Command::new("wrk").arg("--version").output().is_ok(),
        "wrk is needed (apt-get install wrk)"
    );
    let root = tempfile::tempdir()?;
    let mut n = net(blocks);
    let accounts: Vec<Keypair> = (0..THREADS * ACCOUNTS_PER_THREAD)
        .map(|_| Keypair::generate())
        .collect();
    n.genesis
        .allocations
        .extend(accounts.iter().map(|k| Allocation {
            address: k.public(),
            balance: 1_000_000_000,
        }));
    let src = home(root.path(), "src", &n)?;
    let w = Workload {
        name: "api",
        blocks,
        txs_per_block: 2_000,
        peers: &[],
    };
    let t = Instant::now();
    build_chain(&n, &src.join("data/db"), &w)?;
    eprintln!(
        "  built {blocks} blocks for the API run in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // Room for every transaction wrk sends: the pool must not be what refuses them.
    let dest = home(root.path(), "dest", &n)?;
    let cfg_path = dest.join("config.toml");
    let mut cfg: Config = toml::from_str(&std::fs::read_to_string(&cfg_path)?)?;
    cfg.mempool.max_txs = 1_000_000;
    cfg.mempool.max_bytes = 512 * 1024 * 1024;
    cfg.mempool.max_per_sender = 100_000;
    std::fs::write(&cfg_path, toml::to_string(&cfg)?)?;
    let bodies = root.path().join("bodies");
    write_bodies(&bodies, &n.genesis.hash(), &accounts, seconds)?;
    std::fs::write(root.path().join("post.lua"), SCRIPT)?;

    let (_src_proc, _) = start(&src, &[])?;
    let peer = vec!["--peer".to_string(), p2p_addr(&src)?];
    let (_dest_proc, api) = start(&dest, &peer)?;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    // Wait for the sync to be under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&http, &api)?["height"].as_u64().unwrap_or(0) == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the node did not start syncing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut results = Vec::new();
    for (endpoint, script) in [
        ("GET /status", None),
        ("POST /txs", Some(root.path().join("post.lua"))),
    ] {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "--latency",
            &format!("-t{THREADS}"),
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "10s",
        ]);
        let url = match &script {
            Some(s) => {
                cmd.arg("-s").arg(s);
                format!("{api}/")
            }
            None => format!("{api}/status"),
        };
        cmd.arg(&url);
        if script.is_some() {
            cmd.arg("--").arg(&bodies);
        }
        eprintln!("api: {endpoint}, {CONNECTIONS} connections, {seconds} s...");
        let out = cmd.output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(out.status.success(), "wrk failed: {text}");
        let syncing = status(&http, &api)?["sync"]["syncing"].as_bool() == Some(true)
            || status(&http, &api)?["height"].as_u64() < Some(blocks);
        let r = parse(&text, endpoint, seconds, syncing)?;
        eprintln!(
            "  {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} of {} not 2xx, still syncing: {}",
            r.requests_per_s, r.p50_ms, r.p99_ms, r.non_2xx, r.requests, r.while_syncing
        );
        results.push(r);
    }
    Ok(results)
}

/// Per wrk thread, transfers from its accounts in round-robin order: enough for
/// `seconds` at 6,000 requests/s on the thread (beyond that it starts over, and the
/// repeats count as refusals: `already_known`).
fn write_bodies(
    dir: &Path,
    chain: &chainmesh_proto::Hash,
    accounts: &[Keypair],
    seconds: u64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let per_account = (seconds as usize * 6_000).div_ceil(ACCOUNTS_PER_THREAD);
    let to = PublicKey([9; 32]);
    for (t, mine) in accounts.chunks(ACCOUNTS_PER_THREAD).enumerate() {
        let mut lines = String::new();
        for nonce in 0..per_account as u64 {
            for k in mine {
                let tx = Tx::transfer(k, chain, to, 1, 1, nonce);
                lines.push_str(&serde_json::to_string(&tx)?);
                lines.push('\n');
            }
        }
        std::fs::write(dir.join(format!("txs_{t}.jsonl")), lines)?;
    }
    Ok(())
}

/// Reads wrk's report: requests/s, the 50% and 99% latencies, the non-2xx count.
fn parse(text: &str, endpoint: &str, seconds: u64, syncing: bool) -> anyhow::Result<ApiResult> {
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    let latency = |p: &str| -> anyhow::Result<f64> {
        let v = field(p).ok_or_else(|| anyhow::anyhow!("no {p} latency in:\n{text}"))?;
        duration_ms(v).ok_or_else(|| anyhow::anyhow!("latency {v:?}"))
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(ApiResult {
        endpoint: endpoint.into(),
        connections: CONNECTIONS,
        seconds,
        requests_per_s: rps,
        p50_ms: latency("50%")?,
        p99_ms: latency("99%")?,
        non_2xx,
        requests,
        while_syncing: syncing,
    })
}

/// `812.00us`, `1.23ms`, `2.01s` in milliseconds.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let x: f64 = num.parse().ok()?;
    match unit {
        "us" => Some(x / 1e3),
        "ms" => Some(x),
        "s" => Some(x * 1e3),
        "m" => Some(x * 60e3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let out = "Running 5s test @ http://127.0.0.1:1/status
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.00us  300.00us   5.00ms   90.00%
  Latency Distribution
     50%  700.00us
     75%  900.00us
     90%    1.10ms
     99%    2.50ms
  98765 requests in 5.00s, 20.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  19753.00
Transfer/sec:      4.00MB
";
        let r = parse(out, "GET /status", 5, true).unwrap();
        assert_eq!(r.requests_per_s, 19753.0);
        assert_eq!((r.p50_ms, r.p99_ms), (0.7, 2.5));
        assert_eq!((r.requests, r.non_2xx), (98765, 12));
        assert_eq!(duration_ms("2.5s"), Some(2500.0));
    }
}
