//! chainmesh's own Prometheus families, beside libp2p's (swarm, identify, ping, kad,
//! gossipsub, relay, dcutr, bytes per transport stack) in the same registry. The network
//! task refreshes them once a second from what it already counts, so a scrape costs the
//! node nothing but the encoding. Counters follow our running totals (`inc_by` the
//! difference), gauges are set.

use std::time::Duration;

use chainmesh_behaviours::codec::WireMeter;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::NetStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnState {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Band {
    /// good (≥ 0), penalised (−50..0), failing (< −50)
    pub band: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Verdict {
    pub kind: &'static str,
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolDirection {
    pub protocol: &'static str,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultKind {
    pub fault: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    pub request: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestFailure {
    pub request: &'static str,
    /// `timeout` or `error`.
    pub reason: &'static str,
}

/// The byte meters of our request-response protocols, one per protocol.
#[derive(Clone, Default)]
pub struct WireMeters {
    pub status: WireMeter,
    pub sync: WireMeter,
    pub pool: WireMeter,
    pub pex: WireMeter,
    pub admission: WireMeter,
}

impl WireMeters {
    fn each(&self) -> [(&'static str, &WireMeter); 5] {
        [
            ("status", &self.status),
            ("sync", &self.sync),
            ("pool", &self.pool),
            ("pex", &self.pex),
            ("admission", &self.admission),
        ]
    }
}

/// The kinds of our sync-protocol requests (see `Outbound::kind`).
pub const REQUEST_KINDS: [&str; 4] = ["sync", "relay_txs", "relay_block", "pull_txs"];

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Latency histograms, one per request kind.
struct Latencies(Family<Request, Histogram, fn() -> Histogram>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Family::new_with_constructor(latency_histogram))
    }
}

#[derive(Default)]
pub struct NodeMetrics {
    pub wire: WireMeters,
    protocol_bytes: Family<ProtocolDirection, Counter>,
    request_seconds: Latencies,
    request_failures: Family<RequestFailure, Counter>,
    height: Gauge,
    sync_target: Gauge,
    syncing: Gauge,
    mempool_txs: Gauge,
    mempool_bytes: Gauge,
    mempool_orphans: Gauge,
    peers: Family<Direction, Gauge>,
    connections: Family<ConnState, Gauge>,
    peer_scores: Family<Band, Gauge>,
    gossip: Family<Verdict, Counter>,
    pool_txs_added: Counter,
    relay_circuits: Counter,
    admissions: Family<Verdict, Counter>,
    peer_faults: Family<FaultKind, Counter>,
    /// Last totals seen, to turn running totals into counter increments.
    seen: std::sync::Mutex<Vec<u64>>,
}

pub struct Snapshot<'a> {
    pub height: u64,
    pub sync_target: u64,
    pub syncing: bool,
    pub mempool_txs: usize,
    pub mempool_bytes: usize,
    pub mempool_orphans: usize,
    pub inbound: usize,
    pub outbound: usize,
    /// Connections by state: established or pending, in or out.
    pub connections: [(&'static str, u32); 4],
    /// Our score of each connected peer.
    pub scores: &'a [f64],
    pub stats: &'a NetStats,
}

impl NodeMetrics {
    /// Counted as it happens (faults are rare, and a test reads them at once).
    pub fn fault(&self, fault: chainmesh_behaviours::peers::Fault) {
        self.peer_faults
            .get_or_create(&FaultKind {
                fault: fault.name(),
            })
            .inc();
    }

    pub fn register(r: &mut Registry) -> std::sync::Arc<NodeMetrics> {
        let m = std::sync::Arc::new(NodeMetrics::default());
        let r = r.sub_registry_with_prefix("chainmesh");
        r.register("height", "Height of the local best chain", m.height.clone());
        r.register(
            "sync_target_height",
            "Best height announced by peers",
            m.sync_target.clone(),
        );
        r.register("syncing", "1 while syncing from peers", m.syncing.clone());
        r.register("mempool_txs", "Pending transactions", m.mempool_txs.clone());
        r.register(
            "mempool_bytes",
            "Encoded bytes of pending transactions",
            m.mempool_bytes.clone(),
        );
        r.register(
            "mempool_orphans",
            "Peers' transactions waiting for their sender's previous nonce",
            m.mempool_orphans.clone(),
        );
        r.register("peers", "Connected peers by direction", m.peers.clone());
        r.register(
            "connections",
            "Connections by state (established or pending, in or out), against p2p.max_* caps",
            m.connections.clone(),
        );
        r.register(
            "peer_scores",
            "Connected peers by score band",
            m.peer_scores.clone(),
        );
        r.register(
            "gossip_messages",
            "Gossiped messages received, by kind and verdict",
            m.gossip.clone(),
        );
        r.register(
            "pool_sync_txs_added",
            "Transactions added to the mempool by pull sync",
            m.pool_txs_added.clone(),
        );
        r.register(
            "relay_circuits",
            "Circuits this node relayed",
            m.relay_circuits.clone(),
        );
        r.register(
            "admissions",
            "Admission proofs checked, by verdict",
            m.admissions.clone(),
        );
        r.register_with_unit(
            "protocol",
            "Bytes of our request-response protocols' frames, by protocol and direction \
             (gossipsub's are in gossipsub_*, the transport's in libp2p_swarm_bandwidth)",
            prometheus_client::registry::Unit::Bytes,
            m.protocol_bytes.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time to the answer of our sync-protocol requests, by kind",
            prometheus_client::registry::Unit::Seconds,
            m.request_seconds.0.clone(),
        );
        r.register(
            "request_failures",
            "Our sync-protocol requests that failed, by kind and reason",
            m.request_failures.clone(),
        );
        r.register(
            "peer_faults",
            "Faults scored against peers, by class (docs/security.md gives each one's cost)",
            m.peer_faults.clone(),
        );
        for fault in chainmesh_behaviours::peers::Fault::ALL {
            let _ = m.peer_faults.get_or_create(&FaultKind {
                fault: fault.name(),
            });
        }
        // Every series from the start, at zero: a rate over a series that appears late
        // misses its first increments.
        for request in REQUEST_KINDS {
            let _ = m.request_seconds.0.get_or_create(&Request { request });
            for reason in ["timeout", "error"] {
                let _ = m
                    .request_failures
                    .get_or_create(&RequestFailure { request, reason });
            }
        }
        m
    }

    pub fn answered(&self, request: &'static str, took: Duration) {
        self.request_seconds
            .0
            .get_or_create(&Request { request })
            .observe(took.as_secs_f64());
    }

    pub fn failed(&self, request: &'static str, timed_out: bool) {
        let reason = if timed_out { "timeout" } else { "error" };
        self.request_failures
            .get_or_create(&RequestFailure { request, reason })
            .inc();
    }

    pub fn update(&self, s: &Snapshot) {
        self.height.set(s.height as i64);
        self.sync_target.set(s.sync_target as i64);
        self.syncing.set(i64::from(s.syncing));
        self.mempool_txs.set(s.mempool_txs as i64);
        self.mempool_bytes.set(s.mempool_bytes as i64);
        self.mempool_orphans.set(s.mempool_orphans as i64);
        for (d, n) in [("inbound", s.inbound), ("outbound", s.outbound)] {
            self.peers
                .get_or_create(&Direction { direction: d })
                .set(n as i64);
        }
        for (state, n) in s.connections {
            self.connections
                .get_or_create(&ConnState { state })
                .set(i64::from(n));
        }
        let band = |lo: f64, hi: f64| s.scores.iter().filter(|x| **x >= lo && **x < hi).count();
        for (b, n) in [
            ("good", band(0.0, f64::INFINITY)),
            ("penalised", band(-50.0, 0.0)),
            ("failing", band(f64::NEG_INFINITY, -50.0)),
        ] {
            self.peer_scores
                .get_or_create(&Band { band: b })
                .set(n as i64);
        }
        let st = s.stats;
        let totals: Vec<u64> = [
            st.tx_accepted,
            st.tx_rejected,
            st.tx_ignored,
            st.blocks_accepted,
            st.blocks_rejected,
            st.blocks_ignored,
            st.pool_txs_added,
            st.relay_circuits_accepted,
            st.admissions_granted,
            st.admissions_refused,
        ]
        .into_iter()
        .chain(
            self.wire
                .each()
                .iter()
                .flat_map(|(_, m)| [m.bytes_in(), m.bytes_out()]),
        )
        .collect::<Vec<u64>>();
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        seen.resize(totals.len(), 0);
        let mut step = |i: usize, c: &Counter| {
            c.inc_by(totals[i].saturating_sub(seen[i]));
            seen[i] = seen[i].max(totals[i]);
        };
        let v = |kind, verdict| Verdict { kind, verdict };
        step(0, &self.gossip.get_or_create(&v("tx", "accepted")));
        step(1, &self.gossip.get_or_create(&v("tx", "rejected")));
        step(2, &self.gossip.get_or_create(&v("tx", "ignored")));
        step(3, &self.gossip.get_or_create(&v("block", "accepted")));
        step(4, &self.gossip.get_or_create(&v("block", "rejected")));
        step(5, &self.gossip.get_or_create(&v("block", "ignored")));
        step(6, &self.pool_txs_added);
        step(7, &self.relay_circuits);
        step(
            8,
            &self.admissions.get_or_create(&v("admission", "granted")),
        );
        step(
            9,
            &self.admissions.get_or_create(&v("admission", "refused")),
        );
        for (i, (protocol, _)) in self.wire.each().into_iter().enumerate() {
            for (j, direction) in ["in", "out"].into_iter().enumerate() {
                let c = self.protocol_bytes.get_or_create(&ProtocolDirection {
                    protocol,
                    direction,
                });
                step(10 + 2 * i + j, &c);
            }
        }
    }
}
