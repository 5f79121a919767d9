//! The node's allocator, and its counters on `/metrics`.
//!
//! jemalloc on Linux (as Lighthouse, Reth and Polkadot ship): glibc's malloc kept memory
//! a long-running node had freed (docs/security.md, "Soak"). Declared here, in the
//! library, so that the node, the tests' copy of it and the benchmarks all run on it.
//!
//! The counters tell an operator (and the soak test) whether a growing RSS is memory the
//! node holds (`allocated`) or memory the allocator keeps (`resident` − `active`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Reads jemalloc's statistics on each scrape (a few microseconds).
#[derive(Debug)]
pub struct AllocatorStats;

#[cfg(target_os = "linux")]
impl Collector for AllocatorStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::registry::Unit;
        use tikv_jemalloc_ctl::{epoch, stats};

        // The statistics are a snapshot, refreshed by advancing the epoch.
        if epoch::advance().is_err() {
            return Ok(());
        }
        type Read = fn() -> tikv_jemalloc_ctl::Result<usize>;
        let read: [(&str, &str, Read); 5] = [
            (
                "allocated",
                "Bytes in objects the node has allocated and not freed",
                stats::allocated::read,
            ),
            (
                "active",
                "Bytes in pages holding allocated objects",
                stats::active::read,
            ),
            (
                "resident",
                "Bytes of the allocator's pages in physical memory (objects, free space kept, metadata)",
                stats::resident::read,
            ),
            (
                "metadata",
                "Bytes of the allocator's own bookkeeping",
                stats::metadata::read,
            ),
            (
                "retained",
                "Bytes of virtual memory the allocator kept mapped but returned to the system",
                stats::retained::read,
            ),
        ];
        for (name, help, read) in read {
            let Ok(v) = read() else { continue };
            let gauge = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
            let metric =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
impl Collector for AllocatorStats {
    fn encode(&self, _: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}
