//! `chainmesh-bench all [--quick] [--out DIR] [--write FILE]` (what `scripts/bench.sh`
//! runs): one calibration of this machine, then every benchmark, summarised as one table
//! of (workload, result, limit, ratio, target) in `DIR/summary.md`, everything in
//! `DIR/bench.json`. The full run also rewrites the summary section of `BENCHMARKS.md`
//! (or of `--write FILE`), between its markers; `--quick` (a CI smoke run, a few minutes)
//! writes only DIR unless `--write` is given.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::admission::{self, AdmissionResult};
use crate::api::{self, ApiResult};
use crate::gossip::{self, GossipResult, IngestResult, Mode};
use crate::scale::{self, ScaleResult, ScaleSettings};
use crate::store::{self, StoreResult};
use crate::{Calibration, SyncResult, calibrate, flag, run_sync, value};

pub const BEGIN: &str = "<!-- bench:summary:begin -->";
pub const END: &str = "<!-- bench:summary:end -->";

#[derive(Serialize)]
pub struct Row {
    pub area: &'static str,
    pub workload: String,
    pub result: String,
    pub limit: String,
    pub ratio: Option<f64>,
    pub target: String,
    pub met: Option<bool>,
}

/// A target on a ratio: at least or at most a bound.
#[derive(Clone, Copy)]
enum Target {
    AtLeast(f64),
    AtMost(f64),
    None,
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::AtLeast(x) => format!("≥ {x:.2}"),
            Target::AtMost(x) => format!("≤ {x:.2}"),
            Target::None => "—".into(),
        }
    }
    fn met(self, ratio: Option<f64>) -> Option<bool> {
        match (self, ratio) {
            (Target::AtLeast(x), Some(r)) => Some(r >= x),
            (Target::AtMost(x), Some(r)) => Some(r <= x),
            _ => None,
        }
    }
}

fn row(
    area: &'static str,
    workload: String,
    result: String,
    limit: String,
    ratio: Option<f64>,
    target: Target,
) -> Row {
    Row {
        area,
        workload,
        result,
        limit,
        ratio,
        target: target.text(),
        met: target.met(ratio),
    }
}

#[derive(Serialize)]
struct Everything<'a> {
    mode: &'static str,
    seconds: f64,
    calibration: &'a Calibration,
    sync: &'a [SyncResult],
    gossip: &'a [GossipResult],
    ingest: &'a IngestResult,
    store: &'a StoreResult,
    admission: &'a AdmissionResult,
    api: &'a [ApiResult],
    scale: &'a ScaleResult,
    rows: &'a [Row],
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = flag(args, "--quick");
    let out = PathBuf::from(value(args, "--out").unwrap_or(if quick {
        "target/bench-quick"
    } else {
        "docs/bench"
    }));
    let write = value(args, "--write")
        .map(PathBuf::from)
        .or_else(|| (!quick).then(|| PathBuf::from("BENCHMARKS.md")));
    let started = Instant::now();

    let cal = calibrate(quick)?;
    let sync = run_sync(&cal, quick, None)?;

    let (sizes, modes): (&[usize], &[Mode]) = if quick {
        (&[10], &[Mode::DirectPush, Mode::Both])
    } else {
        (
            &[10, 30],
            &[
                Mode::DirectPush,
                Mode::DirectTxs,
                Mode::Both,
                Mode::GossipOnly,
                Mode::PullOnly,
            ],
        )
    };
    let (txs, rate) = if quick { (300, 50) } else { (1_500, 100) };
    let mut gossip_results = Vec::new();
    for &n in sizes {
        for &mode in modes {
            eprintln!("gossip: {n} nodes, {mode:?}, {txs} txs at {rate}/s...");
            gossip_results.push(gossip::bench_gossip(n, mode, txs, rate)?);
        }
    }
    let ingest_txs = if quick { 5_000 } else { 50_000 };
    eprintln!("ingest: {ingest_txs} txs by pull...");
    let ingest = gossip::bench_ingest(ingest_txs)?;

    let (import_blocks, reopen_blocks) = if quick {
        (200, 20_000)
    } else {
        (10_000, 1_000_000)
    };
    eprintln!("store: import {import_blocks} blocks, reopen {reopen_blocks}...");
    let store = store::bench_store(import_blocks, reopen_blocks)?;

    let (bits, runs) = if quick { (16, 5) } else { (20, 21) };
    let admission = admission::run(bits, runs)?;

    let (api_seconds, api_blocks) = if quick { (3, 30) } else { (10, 600) };
    let api = api::bench_api(api_seconds, api_blocks)?;

    let settings = ScaleSettings::new(quick);
    eprintln!(
        "scale: {} connections, then sync and {} tx/s for {} s...",
        settings.connections, settings.tx_rate, settings.load_seconds
    );
    let scale = scale::bench_scale(&settings, &cal.bare)?;

    let mut rows = rows(&sync, &gossip_results, &ingest, &store, &admission);
    rows.extend(scale_rows(&scale, &sync));
    for a in &api {
        rows.push(row(
            "api",
            format!(
                "{}, {} connections, {} s{}",
                a.endpoint,
                a.connections,
                a.seconds,
                if a.while_syncing {
                    ", node syncing"
                } else {
                    " (sync had finished)"
                }
            ),
            format!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} of {} refused",
                a.requests_per_s, a.p50_ms, a.p99_ms, a.non_2xx, a.requests
            ),
            "—".into(),
            None,
            Target::None,
        ));
    }
    std::fs::create_dir_all(&out)?;
    let charts = crate::plots::draw(&out, &gossip_results, &sync)?;
    let seconds = started.elapsed().as_secs_f64();
    let mode = if quick { "quick" } else { "full" };
    let mut md = table(&rows, mode, seconds);
    md.push_str("\nCharts: ");
    md.push_str(
        &charts
            .iter()
            .map(|c| {
                let name = c
                    .file_stem()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned());
                format!("[{name}]({})", c.display())
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    md.push('\n');
    std::fs::write(out.join("summary.md"), &md)?;
    let all = Everything {
        mode,
        seconds,
        calibration: &cal,
        sync: &sync,
        gossip: &gossip_results,
        ingest: &ingest,
        store: &store,
        admission: &admission,
        api: &api,
        scale: &scale,
        rows: &rows,
    };
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&all)?)?;
    if let Some(file) = write {
        replace_section(&file, &md)?;
        eprintln!("summary written into {}", file.display());
    }
    println!("{md}");
    eprintln!("results in {}", out.display());
    Ok(())
}

fn rows(
    sync: &[SyncResult],
    gossip: &[GossipResult],
    ingest: &IngestResult,
    store: &StoreResult,
    admission: &AdmissionResult,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in sync {
        rows.push(row(
            "sync",
            format!("{} × {}, {} peer(s)", s.blocks, s.workload, s.peers),
            format!("{:.0} blocks/s ({:.1} MB/s)", s.blocks_per_s, s.mb_per_s),
            format!("{:.0} blocks/s ({})", s.limit_blocks_per_s, s.limit_from),
            Some(s.ratio),
            Target::AtLeast(0.7),
        ));
    }
    let reference = |n: usize, m: Mode| gossip.iter().find(|g| g.nodes == n && g.mode == m);
    let direct = |n: usize| reference(n, Mode::DirectPush);
    for g in gossip
        .iter()
        .filter(|g| !matches!(g.mode, Mode::DirectPush | Mode::DirectTxs))
    {
        let name = format!("{} nodes, {}", g.nodes, g.mode.name());
        if g.mode.both()
            && let Some(d) = direct(g.nodes)
        {
            rows.push(row(
                "gossip",
                format!("{name}: tx to all nodes, p99"),
                format!("{:.0} ms", g.tx_p99_ms),
                format!("{:.0} ms (direct push, same run)", d.tx_p99_ms),
                (d.tx_p99_ms > 0.0).then(|| g.tx_p99_ms / d.tx_p99_ms),
                Target::AtMost(2.0),
            ));
        }
        if g.mode.both()
            && let Some(t) = reference(g.nodes, Mode::DirectTxs)
        {
            // The earlier reference, whose nodes import no blocks while it is timed.
            rows.push(row(
                "gossip",
                format!("{name}: tx to all nodes, p99, against txs pushed alone"),
                format!("{:.0} ms", g.tx_p99_ms),
                format!("{:.0} ms (direct push of txs, blocks by sync)", t.tx_p99_ms),
                (t.tx_p99_ms > 0.0).then(|| g.tx_p99_ms / t.tx_p99_ms),
                Target::None,
            ));
        }
        if g.mode.both()
            && let Some(d) = direct(g.nodes)
        {
            rows.push(row(
                "gossip",
                format!("{name}: block to all nodes, p99, against the direct push"),
                format!("{:.0} ms", g.block_p99_ms),
                format!("{:.0} ms (direct push, same run)", d.block_p99_ms),
                (d.block_p99_ms > 0.0 && g.block_p99_ms.is_finite())
                    .then(|| g.block_p99_ms / d.block_p99_ms),
                Target::None,
            ));
        }
        if g.mode.both() {
            // The gossip issue asks for blocks "well under a slot".
            let slot = gossip::BLOCK_TIME_MS as f64;
            rows.push(row(
                "gossip",
                format!("{name}: block to all nodes, p99"),
                format!("{:.0} ms", g.block_p99_ms),
                format!("{slot:.0} ms (one slot)"),
                g.block_p99_ms.is_finite().then(|| g.block_p99_ms / slot),
                Target::AtMost(0.5),
            ));
        }
        rows.push(row(
            "gossip",
            format!("{name}: amplification (payload received ÷ ideal)"),
            format!("{:.2}", g.amplification),
            "1.00 (each node gets each tx once)".into(),
            Some(g.amplification),
            if g.mode.both() {
                Target::AtMost(2.0)
            } else {
                Target::None
            },
        ));
    }
    rows.push(row(
        "mempool",
        format!("ingest of {} txs from the network", ingest.txs),
        format!("{:.0} txs/s", ingest.txs_per_s),
        format!(
            "{:.0} verifications/s (batch, all cores)",
            ingest.verify_batch_all_cores_per_s
        ),
        Some(ingest.ratio),
        Target::AtLeast(0.7),
    ));
    rows.push(row(
        "store",
        format!(
            "import of {} blocks × {} txs ({:.1} MB)",
            store.blocks, store.txs_per_block, store.mb
        ),
        format!(
            "{:.1} MB/s ({:.0} blocks/s)",
            store.import_mb_s, store.import_blocks_s
        ),
        format!(
            "{:.1} MB/s (sled batches, same value size)",
            store.sled_mb_s
        ),
        Some(store.ratio),
        Target::AtLeast(0.8),
    ));
    rows.push(row(
        "store",
        format!("reopen of a {}-block chain", store.reopen_blocks),
        format!("{:.0} ms", store.reopen_ms),
        "—".into(),
        None,
        Target::None,
    ));
    rows.push(row(
        "relay admission",
        format!(
            "{}-bit proof of work, {} challenges",
            admission.bits, admission.runs
        ),
        format!("solve {:.1} ms (median)", admission.solve_median_ms),
        format!("verify {:.2} µs", admission.verify_us),
        Some(admission.cost_ratio),
        Target::None,
    ));
    rows
}

fn scale_rows(s: &ScaleResult, sync: &[SyncResult]) -> Vec<Row> {
    let n = s.connections;
    let mut rows = vec![
        row(
            "scale",
            format!("{n} connections held (every behaviour on): memory per connection"),
            format!("{:.1} kB", s.node_kb_per_connection),
            format!(
                "{:.1} kB (bare swarm, {n} connections)",
                s.bare_kb_per_connection
            ),
            Some(s.memory_ratio),
            Target::AtMost(3.0),
        ),
        row(
            "scale",
            format!("{n} handshakes (TCP, Noise, Yamux, then our status exchange), 32 at a time"),
            format!("{:.0} /s", s.handshakes_per_s),
            format!(
                "{:.0} /s (bare swarm: TCP, Noise, Yamux)",
                s.bare_handshakes_per_s
            ),
            (s.bare_handshakes_per_s > 0.0).then(|| s.handshakes_per_s / s.bare_handshakes_per_s),
            Target::None,
        ),
    ];
    // The reference is the sync benchmark's workload of the same block shape, one peer.
    if let Some(r) = sync
        .iter()
        .find(|r| r.workload.contains("2 txs") && r.peers == 1)
    {
        rows.push(row(
            "scale",
            format!(
                "sync of {} blocks × 2 txs while holding {n} connections",
                s.sync_blocks
            ),
            format!("{:.0} blocks/s", s.sync_blocks_per_s),
            format!(
                "{:.0} blocks/s (same block shape, no other connections)",
                r.blocks_per_s
            ),
            Some(s.sync_blocks_per_s / r.blocks_per_s),
            Target::AtLeast(0.8),
        ));
    }
    let p = |v: Option<f64>| v.map_or("—".into(), |x| format!("{x:.0} ms"));
    rows.push(row(
        "scale",
        format!(
            "{} tx/s for {} s at the node holding {n} connections, to a producer and back in blocks",
            s.tx_rate, s.load_seconds
        ),
        format!(
            "{} of {} included, p50 {}, p99 {}",
            s.txs_included,
            s.txs_accepted,
            p(s.inclusion_p50_ms),
            p(s.inclusion_p99_ms)
        ),
        format!("{} accepted", s.txs_accepted),
        (s.txs_accepted > 0).then(|| s.txs_included as f64 / s.txs_accepted as f64),
        Target::AtLeast(0.99),
    ));
    let (first, last) = (
        s.rss_mb.first().map_or(0.0, |x| x.1),
        s.rss_mb.last().map_or(0.0, |x| x.1),
    );
    rows.push(row(
        "scale",
        format!("node memory through that load ({} samples)", s.rss_mb.len()),
        format!(
            "slope {:+.1} MB per 10 min after warm-up ({first:.0} → {last:.0} MB)",
            s.rss_slope_mb_per_10_min
        ),
        format!("{first:.0} MB (RSS at the start of the load)"),
        (first > 0.0).then(|| s.rss_slope_mb_per_10_min / first),
        Target::AtMost(0.05),
    ));
    rows
}

fn table(rows: &[Row], mode: &str, seconds: f64) -> String {
    let mut md = format!(
        "Produced by `scripts/bench.sh{}` ({mode} mode, {seconds:.0} s). Each result is compared with\n\
         a limit measured in the same run; a ratio is result ÷ limit.\n\n\
         | area | workload | result | limit | ratio | target | met |\n|---|---|---|---|---|---|---|\n",
        if mode == "quick" { " --quick" } else { "" }
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.area,
            r.workload,
            r.result,
            r.limit,
            r.ratio.map_or("—".into(), |x| format!("{x:.2}")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        ));
    }
    md
}

/// Puts `md` between the markers of `file`, or appends a marked section if it has none.
fn replace_section(file: &std::path::Path, md: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(file).unwrap_or_default();
    let section = format!("{BEGIN}\n{md}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &old[..b], &old[e + END.len()..])
        }
        _ => format!("{old}\n## Summary\n\n{section}\n"),
    };
    std::fs::write(file, new)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_the_marked_section() {
        assert_eq!(Target::AtLeast(0.7).met(Some(0.71)), Some(true));
        assert_eq!(Target::AtMost(2.0).met(Some(2.5)), Some(false));
        assert_eq!(Target::None.met(Some(1.0)), None);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("B.md");
        std::fs::write(&f, format!("# B\n\ntext\n{BEGIN}\nold\n{END}\nafter\n")).unwrap();
        replace_section(&f, "new\n").unwrap();
        let s = std::fs::read_to_string(&f).unwrap();
        assert_eq!(s, format!("# B\n\ntext\n{BEGIN}\nnew\n{END}\nafter\n"));
    }
}
