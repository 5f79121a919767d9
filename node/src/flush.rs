//! Group commit for answers that must wait until what they acknowledge is durable.
//!
//! A caller asks for a flush and waits; one sled flush, started after the request, serves
//! every caller waiting when it starts. Under load the answers share flushes instead of
//! queueing one each; the queue of waiting callers is bounded, and a full queue is the
//! caller's to report (the API answers `busy`).

use tokio::sync::{mpsc, oneshot};

/// Callers waiting for the next flush, at most.
pub const FLUSH_QUEUE: usize = 1024;

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Clone)]
pub struct Flusher {
    queue: mpsc::Sender<Waiter>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("too many answers are waiting for a flush")]
    Busy,
    #[error("the flush task stopped")]
    Stopped,
    #[error("storage error: {0}")]
    Storage(String),
}

impl Flusher {
    /// Starts the flush task on the current runtime.
    pub fn spawn(db: sled::Db) -> Flusher {
        let (queue, mut rx) = mpsc::channel::<Waiter>(FLUSH_QUEUE);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiting.push(w);
                }
                let r = db
                    .flush_async()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                if let Err(e) = &r {
                    tracing::error!(error = %e, "flush failed: the waiting answers report it");
                }
                for w in waiting {
                    let _ = w.send(r.clone());
                }
            }
        });
        Flusher { queue }
    }

    /// Returns once a flush that started after this call has completed.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (tx, rx) = oneshot::channel();
        self.queue.try_send(tx).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => FlushError::Busy,
            mpsc::error::TrySendError::Closed(_) => FlushError::Stopped,
        })?;
        rx.await
            .map_err(|_| FlushError::Stopped)?
            .map_err(FlushError::Storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiting_caller_is_answered_and_the_queue_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let f = Flusher::spawn(db.clone());
        db.insert(b"k", b"v").unwrap();
        // Many callers at once share flushes and all get their answer.
        let all: Vec<_> = (0..64).map(|_| f.flush()).collect();
        for r in futures::future::join_all(all).await {
            r.unwrap();
        }
        // More waiting callers than the queue holds: the excess is told at once.
        let all: Vec<_> = (0..FLUSH_QUEUE + 200).map(|_| f.flush()).collect();
        let results = futures::future::join_all(all).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(FlushError::Busy)))
            .count();
        assert!(busy >= 1, "no caller was refused");
        assert!(
            results
                .iter()
                .all(|r| r.is_ok() || matches!(r, Err(FlushError::Busy)))
        );
    }
}
