//! Issue 9, item 8: every misbehaviour class moves a peer's score by the cost that
//! `docs/security.md` gives it, and the documented thresholds decide the verdict. The
//! table in the document is parsed, so the two cannot drift apart.

use chainmesh_behaviours::peers::{Fault, PeerScores, ScoreConfig, Verdict};

/// `(fault name as in the code, cost)` from the rows of the document's fault table:
/// "| `Timeout` | 10 | ..." (a cost may read "1,000" or "20 a second").
fn documented_costs() -> Vec<(String, f64)> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md"),
    )
    .unwrap();
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let cost: f64 = cells
                .get(2)?
                .split_whitespace()
                .next()?
                .replace(',', "")
                .parse()
                .ok()?;
            Fault::ALL
                .iter()
                .any(|f| format!("{f:?}") == name)
                .then(|| (name.to_string(), cost))
        })
        .collect()
}

#[test]
fn each_fault_class_costs_what_the_documentation_says() {
    let documented = documented_costs();
    for f in Fault::ALL {
        let name = format!("{f:?}");
        let doc = documented
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not in docs/security.md's fault table"));
        assert_eq!(
            doc.1,
            f.cost(),
            "{name}: documented {}, costs {}",
            doc.1,
            f.cost()
        );
        // From a fresh score, one fault moves it by exactly its cost, and the verdict is
        // the one the documented thresholds give.
        let mut scores = PeerScores::new(ScoreConfig::default());
        let verdict = scores.penalize(&1u32, f, 1_000);
        assert_eq!(scores.score(&1u32, 1_000), -f.cost(), "{name}");
        let expected = if -f.cost() <= -90.0 {
            "ban"
        } else if -f.cost() <= -50.0 {
            "disconnect"
        } else {
            "keep"
        };
        let got = match verdict {
            Verdict::Keep => "keep",
            Verdict::Disconnect => "disconnect",
            Verdict::Ban { .. } => "ban",
        };
        assert_eq!(got, expected, "{name}");
    }
    assert_eq!(documented.len(), Fault::ALL.len());
}

/// The documented thresholds and recovery: -50 disconnects, -90 bans for `ban_secs`,
/// scores recover 0.5 a second; "three malformed frames, or one invalid block, ban a peer".
#[test]
fn thresholds_and_recovery_are_as_documented() {
    let cfg = ScoreConfig::default();
    assert_eq!((cfg.disconnect_below, cfg.ban_below), (-50.0, -90.0));
    assert_eq!(cfg.recovery_per_sec, 0.5);
    let mut s = PeerScores::new(cfg.clone());
    let t = 1_000_000;
    assert_eq!(s.penalize(&1u32, Fault::Malformed, t), Verdict::Keep);
    assert_eq!(s.penalize(&1u32, Fault::Malformed, t), Verdict::Disconnect);
    assert!(matches!(
        s.penalize(&1u32, Fault::Malformed, t),
        Verdict::Ban { until_ms } if until_ms == t + cfg.ban_ms
    ));
    assert!(matches!(
        s.penalize(&2u32, Fault::Invalid, t),
        Verdict::Ban { .. }
    ));
    // 40 points recover in 80 s.
    s.penalize(&3u32, Fault::Malformed, t);
    assert_eq!(s.score(&3u32, t + 40_000), -20.0);
    assert_eq!(s.score(&3u32, t + 80_000), 0.0);
    // A ban expires on time.
    assert!(s.banned_until(&1u32, t + cfg.ban_ms - 1).is_some());
    assert!(s.banned_until(&1u32, t + cfg.ban_ms).is_none());
}
