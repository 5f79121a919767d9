//! The last minutes of the node's life, sampled every few seconds for the dashboard's
//! charts: a page opened now shows the recent past at once instead of starting empty.
//! A bounded ring; a sample is a handful of numbers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::chain::{NodeStatus, now_ms};
use crate::p2p::SyncView;
use crate::pool::SharedPool;

pub const INTERVAL: Duration = Duration::from_secs(2);
/// Ten minutes at one sample per interval.
pub const CAPACITY: usize = 300;

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Sample {
    pub t_ms: u64,
    pub height: u64,
    /// Transactions in blocks that joined the best chain since start (a running total).
    pub txs: u64,
    pub peers: usize,
    pub mempool_txs: usize,
}

#[derive(Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Sample>>>);

impl History {
    pub fn push(&self, s: Sample) {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if q.len() == CAPACITY {
            q.pop_front();
        }
        q.push_back(s);
    }

    pub fn samples(&self) -> Vec<Sample> {
        let q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.iter().copied().collect()
    }

    /// Samples until the runtime stops.
    pub async fn run(
        self,
        status: watch::Receiver<NodeStatus>,
        sync: watch::Receiver<SyncView>,
        pool: SharedPool,
    ) {
        let mut every = tokio::time::interval(INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let height = status.borrow().height;
            let peers = sync.borrow().peers;
            let Some(mempool_txs) = pool.read(|p| p.len()).await else {
                return;
            };
            self.push(Sample {
                t_ms: now_ms(),
                height,
                txs: pool.metrics().block_txs.get(),
                peers,
                mempool_txs,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_samples_only() {
        let h = History::default();
        for i in 0..CAPACITY as u64 + 10 {
            h.push(Sample {
                t_ms: i,
                height: i,
                txs: 0,
                peers: 0,
                mempool_txs: 0,
            });
        }
        let s = h.samples();
        assert_eq!(s.len(), CAPACITY);
        assert_eq!(s.first().map(|s| s.t_ms), Some(10));
        assert_eq!(s.last().map(|s| s.t_ms), Some(CAPACITY as u64 + 9));
    }
}
