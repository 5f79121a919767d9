//! `chainmesh loadgen`: valid transfers at a fixed rate from funded accounts, spread over
//! one or more nodes' APIs, and the time each accepted one took to land in a block.
//!
//! Nonces are kept per account here (fetched once, refetched after a refusal), and each
//! account submits to one node, so its transactions arrive there in nonce order. Inclusion is read from the blocks of the first API:
//! latency = the block's timestamp − the submission time (wall clock, same machine).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chainmesh_proto::{Hash, Keypair, Tx};
use clap::Args;

use crate::chain::now_ms;
use crate::client::Client;

#[derive(Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Node API URLs, comma-separated; submissions go round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub api: Vec<String>,
    /// Folder of funded account key files (`*.key`; a devnet's `keys/account-*.key`).
    #[arg(long)]
    pub keys: PathBuf,
    /// Accounts used at most.
    #[arg(long, default_value_t = 32)]
    pub accounts: usize,
    /// Transactions per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Fee per transaction.
    #[arg(long, default_value_t = 1)]
    pub fee: u64,
}

/// Submissions in flight at most.
const MAX_IN_FLIGHT: usize = 256;
/// Submitted transactions followed for inclusion at most.
const MAX_TRACKED: usize = 1_000_000;

/// The API's error code in a client error (`... answered 422 ... (nonce_gap): ...`), or
/// the error itself when the node gave none (unreachable, timed out).
fn reason_of(error: &str) -> String {
    error
        .split_once(" (")
        .and_then(|(_, rest)| rest.split_once("): "))
        .map(|(code, _)| code)
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or(error)
        .to_string()
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    /// By reason (the API's error code, or the error): how many, and the first message.
    rejected: BTreeMap<String, (u64, String)>,
    pending: HashMap<Hash, u64>,
    included_ms: Vec<u64>,
}

pub async fn run(a: LoadgenArgs) -> anyhow::Result<()> {
    if a.rate == 0 || a.duration == 0 || a.accounts == 0 {
        bail!("--rate, --duration and --accounts must be at least 1");
    }
    let clients: Vec<Client> = a
        .api
        .iter()
        .map(|u| Client::new(u))
        .collect::<Result<_, _>>()?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&a.keys)
        .with_context(|| format!("cannot read {}", a.keys.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "key")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("account"))
        })
        .collect();
    paths.sort();
    paths.truncate(a.accounts);
    if paths.is_empty() {
        bail!("no account-*.key files in {}", a.keys.display());
    }
    let keys: Vec<Keypair> = paths
        .iter()
        .map(|p| Keypair::load(p))
        .collect::<Result<_, _>>()?;
    let status = clients[0].status().await?;
    let genesis = status.genesis;
    let mut nonces = Vec::with_capacity(keys.len());
    for k in &keys {
        nonces.push(clients[0].account(&k.public()).await?.next_nonce);
    }
    eprintln!(
        "loadgen: {} tx/s for {} s from {} accounts over {} node(s)",
        a.rate,
        a.duration,
        keys.len(),
        clients.len()
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let watcher = tokio::spawn(watch_blocks(
        clients[0].clone(),
        status.height,
        tally.clone(),
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let clients = Arc::new(clients);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(a.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let refetch: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut sent: u64 = 0;
    // Ctrl-C or SIGTERM (devnet.sh down) end the load early; the report still comes.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    while started.elapsed() < Duration::from_secs(a.duration) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let due = std::mem::take(&mut *refetch.lock().map_err(|_| anyhow::anyhow!("lock"))?);
        for i in due {
            if let Ok(acc) = clients[i % clients.len()].account(&keys[i].public()).await {
                nonces[i] = acc.next_nonce;
            }
        }
        let i = (sent % keys.len() as u64) as usize;
        let to = keys[(i + 1) % keys.len()].public();
        let tx = Tx::transfer(&keys[i], &genesis, to, 1, a.fee, nonces[i]);
        nonces[i] += 1;
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (clients, tally, refetch) = (clients.clone(), tally.clone(), refetch.clone());
        // One node per account: its transactions arrive in nonce order there.
        let api = i % clients.len();
        sent += 1;
        tokio::spawn(async move {
            let at = now_ms();
            let r = clients[api].submit(&tx).await;
            let Ok(mut t) = tally.lock() else { return };
            match r {
                Ok(id) => {
                    t.accepted += 1;
                    if t.pending.len() < MAX_TRACKED {
                        t.pending.insert(id, at);
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    let entry = t
                        .rejected
                        .entry(reason_of(&why))
                        .or_insert_with(|| (0, why.clone()));
                    entry.0 += 1;
                    if let Ok(mut r) = refetch.lock() {
                        r.push(i);
                    }
                }
            }
            drop(permit);
        });
    }
    let elapsed = started.elapsed();
    // Whatever is still pending gets three slots to land.
    let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
    let wait_ms = status_block_time(&clients[0])
        .await
        .saturating_mul(3)
        .max(3_000);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    while Instant::now() < deadline && tally.lock().map(|t| !t.pending.is_empty()).unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watcher.abort();
    let t = tally.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let mut lat = t.included_ms.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    println!(
        "submitted      {sent} in {:.1} s ({:.0} tx/s)",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    println!("accepted       {}", t.accepted);
    let rejected: u64 = t.rejected.values().map(|(n, _)| n).sum();
    println!("rejected       {rejected}");
    for (reason, (n, first)) in &t.rejected {
        let detail = first.rsplit(": ").next().unwrap_or(first);
        println!("  {n:>8}  {reason} (e.g. {detail})");
    }
    println!(
        "included       {} (not yet: {})",
        lat.len(),
        t.pending.len()
    );
    match (pct(0.5), pct(0.99)) {
        (Some(p50), Some(p99)) => println!("to inclusion   median {p50} ms, p99 {p99} ms"),
        _ => println!("to inclusion   -"),
    }
    Ok(())
}

async fn status_block_time(c: &Client) -> u64 {
    // The slot length is not in /status; two block timestamps tell it.
    let h = c.status().await.map(|s| s.height).unwrap_or(0);
    let ts = |v: serde_json::Value| v["timestamp_ms"].as_u64();
    match (
        c.block(h).await.ok().and_then(ts),
        c.block(h.saturating_sub(1)).await.ok().and_then(ts),
    ) {
        (Some(a), Some(b)) if a > b => a - b,
        _ => 1_000,
    }
}

/// Follows new blocks and moves their transactions from pending to included.
async fn watch_blocks(c: Client, from: u64, tally: Arc<Mutex<Tally>>) {
    let mut next = from + 1;
    loop {
        let tip = c
            .status()
            .await
            .map(|s| s.height)
            .unwrap_or(next.saturating_sub(1));
        while next <= tip {
            let Ok(b) = c.block(next).await else { break };
            let ts = b["timestamp_ms"].as_u64().unwrap_or_else(now_ms);
            if let (Some(txs), Ok(mut t)) = (b["txs"].as_array(), tally.lock()) {
                for tx in txs {
                    if let Some(id) = tx["id"].as_str().and_then(|s| s.parse::<Hash>().ok())
                        && let Some(at) = t.pending.remove(&id)
                        && t.included_ms.len() < MAX_TRACKED
                    {
                        t.included_ms.push(ts.saturating_sub(at));
                    }
                }
            }
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::reason_of;

    #[test]
    fn refusals_group_by_the_api_error_code() {
        let gap = "submit: the node answered 422 Unprocessable Entity (nonce_gap): nonce gap: \
                   the next acceptable nonce is 7, transaction has 9";
        assert_eq!(reason_of(gap), "nonce_gap");
        let down = "cannot reach the node API at http://127.0.0.1:7803";
        assert_eq!(reason_of(down), down);
    }
}
