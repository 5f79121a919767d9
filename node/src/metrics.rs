//! What the chain task and the mempool count, as Prometheus families: blocks imported,
//! transactions they carried, reorgs and their depth, and mempool admissions by source
//! and result. The counters are updated where the events happen (they are atomics), so
//! they are exact; the network's families are in `p2p::metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    /// `produced` (ours) or `peers` (gossip and sync).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Admission {
    /// `api` or `peer`.
    pub source: &'static str,
    /// `accepted`, or the refusal's code (as the API reports it).
    pub result: &'static str,
}

#[derive(Clone)]
pub struct ChainMetrics {
    pub blocks_imported: Family<Source, Counter>,
    pub block_txs: Counter,
    pub reorgs: Counter,
    pub reorg_depth: Histogram,
    pub admissions: Family<Admission, Counter>,
    pub missed_slots: Counter,
}

impl Default for ChainMetrics {
    fn default() -> Self {
        ChainMetrics {
            blocks_imported: Family::default(),
            block_txs: Counter::default(),
            reorgs: Counter::default(),
            // 1, 2, 4 … 512 blocks abandoned.
            reorg_depth: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            admissions: Family::default(),
            missed_slots: Counter::default(),
        }
    }
}

impl ChainMetrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("chainmesh");
        r.register(
            "blocks_imported",
            "Blocks that joined the best chain, by source",
            self.blocks_imported.clone(),
        );
        r.register(
            "block_txs_imported",
            "Transactions in blocks that joined the best chain",
            self.block_txs.clone(),
        );
        r.register(
            "reorgs",
            "Best-chain switches that abandoned blocks",
            self.reorgs.clone(),
        );
        r.register(
            "reorg_depth_blocks",
            "Blocks abandoned per reorg",
            self.reorg_depth.clone(),
        );
        r.register(
            "missed_slots",
            "Slots of this producer that passed without a block (the chain task was busy)",
            self.missed_slots.clone(),
        );
        r.register(
            "mempool_admissions",
            "Transactions offered to the mempool, by source and result",
            self.admissions.clone(),
        );
    }

    pub fn admitted<T>(&self, source: &'static str, r: &Result<T, chainmesh_mempool::AddError>) {
        let result = match r {
            Ok(_) => "accepted",
            Err(e) => e.code(),
        };
        self.admissions
            .get_or_create(&Admission { source, result })
            .inc();
    }

    pub fn imported(
        &self,
        source: &'static str,
        applied: &[chainmesh_proto::Block],
        reverted: usize,
    ) {
        self.blocks_imported
            .get_or_create(&Source { source })
            .inc_by(applied.len() as u64);
        self.block_txs
            .inc_by(applied.iter().map(|b| b.txs.len() as u64).sum());
        if reverted > 0 {
            self.reorgs.inc();
            self.reorg_depth.observe(reverted as f64);
        }
    }
}
