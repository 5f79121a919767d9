//! The cost of relay admission: how long a client takes to solve a challenge at a given
//! difficulty (median and spread over fresh random challenges, one core), against how
//! long the relay takes to check a proof (one digest).
//!
//! `cargo run --release -p chainmesh-bench -- admission [--bits 20] [--runs 21]`

use std::time::Instant;

use chainmesh_behaviours::admission::{Challenge, NONCE_BYTES};
use serde::Serialize;

#[derive(Serialize, Clone)]
pub struct AdmissionResult {
    pub bits: u32,
    pub runs: usize,
    pub solve_median_ms: f64,
    pub solve_p90_ms: f64,
    pub verify_us: f64,
    /// Median solve ÷ verify: what a client pays per unit of the relay's cost.
    pub cost_ratio: f64,
}

pub fn run(bits: u32, runs: usize) -> anyhow::Result<AdmissionResult> {
    anyhow::ensure!(bits <= 28, "--bits above 28 takes minutes per run");
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let peer = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_bytes();
    let mut solve_ms = Vec::with_capacity(runs);
    let mut tries = Vec::with_capacity(runs);
    let mut proofs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let c = Challenge {
            nonce: rand::random::<[u8; NONCE_BYTES]>(),
            bits,
            expires_ms: u64::MAX,
        };
        let t = Instant::now();
        let n = c
            .solve(&peer, 1u64 << (bits + 8))
            .ok_or_else(|| anyhow::anyhow!("no solution in 2^{} tries", bits + 8))?;
        solve_ms.push(t.elapsed().as_secs_f64() * 1e3);
        tries.push(n + 1);
        proofs.push((c, n));
    }
    // Verification: every proof checked over and over.
    let checks = 200_000usize;
    let t = Instant::now();
    let mut ok = 0usize;
    for i in 0..checks {
        let (c, n) = &proofs[i % proofs.len()];
        ok += usize::from(c.is_solved_by(std::hint::black_box(&peer), *n));
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / checks as f64;
    anyhow::ensure!(ok == checks, "a proof failed its check");
    solve_ms.sort_by(f64::total_cmp);
    let median = solve_ms[runs / 2];
    let p90 = solve_ms[(runs * 9 / 10).min(runs - 1)];
    let mean_tries = tries.iter().sum::<u64>() as f64 / runs as f64;
    println!("admission at {bits} bits, {runs} fresh challenges, one core:");
    println!(
        "  solve: median {median:.1} ms, p90 {p90:.1} ms, min {:.1} ms, max {:.1} ms (mean tries {:.0}, expected 2^{bits} = {})",
        solve_ms[0],
        solve_ms[runs - 1],
        mean_tries,
        1u64 << bits
    );
    println!("  verify: {verify_us:.3} µs per proof ({checks} checks)");
    let cost_ratio = median * 1e3 / verify_us;
    println!("  cost ratio, client ÷ relay (median solve ÷ verify): {cost_ratio:.0}");
    Ok(AdmissionResult {
        bits,
        runs,
        solve_median_ms: median,
        solve_p90_ms: p90,
        verify_us,
        cost_ratio,
    })
}
