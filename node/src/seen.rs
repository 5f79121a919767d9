//! The `chainmesh::seen` trace records (first sight of each transaction and block, in the
//! node's JSON log) read back, for latency measured across nodes on one machine (one
//! clock): the gossip benchmark and the hostile-network tests.

use std::collections::HashMap;

/// First sight of every transaction and block in one node's log, in unix milliseconds.
#[derive(Debug, Default)]
pub struct Seen {
    pub txs: HashMap<String, f64>,
    pub blocks: HashMap<String, f64>,
}

/// Reads the records out of a log written with `--log-format json`; other lines are
/// skipped.
pub fn read(log: &str) -> Seen {
    let mut s = Seen::default();
    for line in log.lines().filter(|l| l.contains("chainmesh::seen")) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(ts) = v["timestamp"].as_str().and_then(parse_ts) else {
            continue;
        };
        let f = &v["fields"];
        if let Some(t) = f["tx"].as_str() {
            s.txs.entry(t.to_string()).or_insert(ts);
        } else if let Some(b) = f["block"].as_str() {
            s.blocks.entry(b.to_string()).or_insert(ts);
        }
    }
    s
}

/// Unix ms of an RFC 3339 UTC timestamp as tracing writes it (`2026-11-23T06:55:01.123456Z`).
pub fn parse_ts(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3_600 + mm * 60) as f64 + ss) * 1_000.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_parse() {
        let t = super::parse_ts("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(t, 86_401_500.0);
        let t = super::parse_ts("2026-11-23T06:55:01.123456Z").unwrap();
        assert!((t - 1_795_416_901_123.456).abs() < 0.01, "{t}");
    }

    #[test]
    fn first_sights_are_kept_and_other_lines_skipped() {
        let log = r#"{"timestamp":"1970-01-01T00:00:01Z","level":"TRACE","fields":{"message":"tx","tx":"aa"},"target":"chainmesh::seen"}
not json chainmesh::seen
{"timestamp":"1970-01-01T00:00:02Z","level":"TRACE","fields":{"message":"tx","tx":"aa"},"target":"chainmesh::seen"}
{"timestamp":"1970-01-01T00:00:03Z","level":"TRACE","fields":{"message":"block","block":"bb"},"target":"chainmesh::seen"}
{"timestamp":"1970-01-01T00:00:04Z","level":"INFO","fields":{"message":"produced block"},"target":"chainmesh_node::chain"}"#;
        let s = super::read(log);
        assert_eq!(s.txs.get("aa"), Some(&1_000.0));
        assert_eq!(s.blocks.get("bb"), Some(&3_000.0));
        assert_eq!((s.txs.len(), s.blocks.len()), (1, 1));
    }
}
