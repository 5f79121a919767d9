//! Pull-based mempool sync, the receiver's side (sans I/O).
//!
//! We grant each peer a permit: "send me at most `max` entries of your pool log after
//! `cursor`". The peer answers when it has some (long poll). Only then, and only after we
//! have fetched the transactions we lacked, do we grant the next permit: a peer can never
//! send faster than we process, and what it sent is known to have been taken in. Cursors
//! live per connection; a peer that reconnects is read from the start of its log again,
//! which costs ids only (transactions we already hold are not fetched).

use std::collections::{HashMap, HashSet};
use std::hash::Hash as StdHash;

use chainmesh_proto::Hash;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullConfig {
    /// Entries asked per permit.
    pub max_entries: u32,
    /// Pause after a failed permit before the next one.
    pub retry_ms: u64,
    /// Most transaction ids being fetched at once, from all peers together.
    pub max_fetching: usize,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            max_entries: 1024,
            retry_ms: 2_000,
            max_fetching: 8_192,
        }
    }
}

/// A permit to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub cursor: u64,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    #[error("entries from a peer we granted no permit")]
    Unrequested,
    #[error("{got} entries for a permit of {max}")]
    TooMany { got: usize, max: u32 },
    #[error("cursor went back from {from} to {to}")]
    CursorBack { from: u64, to: u64 },
}

#[derive(Debug, Default)]
struct PeerState {
    cursor: u64,
    permit_out: bool,
    /// Ids of this peer's last answer still being fetched and submitted.
    fetching: usize,
    retry_at_ms: u64,
}

pub struct PullSync<P> {
    cfg: PullConfig,
    peers: HashMap<P, PeerState>,
    fetching: HashSet<Hash>,
}

impl<P: Clone + Eq + StdHash> PullSync<P> {
    pub fn new(cfg: PullConfig) -> Self {
        PullSync {
            cfg,
            peers: HashMap::new(),
            fetching: HashSet::new(),
        }
    }

    pub fn add_peer(&mut self, peer: P) {
        self.peers.entry(peer).or_default();
    }

    pub fn remove_peer(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    pub fn cursor(&self, peer: &P) -> Option<u64> {
        self.peers.get(peer).map(|p| p.cursor)
    }

    /// Permits to grant now: one per peer that has none out, is not being fetched from,
    /// and is not pausing after a failure.
    pub fn permits(&mut self, now_ms: u64) -> Vec<(P, Permit)> {
        let full = self.fetching.len() >= self.cfg.max_fetching;
        let max = self.cfg.max_entries;
        let mut out = Vec::new();
        for (peer, s) in &mut self.peers {
            if s.permit_out || s.fetching > 0 || now_ms < s.retry_at_ms || full {
                continue;
            }
            s.permit_out = true;
            out.push((
                peer.clone(),
                Permit {
                    cursor: s.cursor,
                    max,
                },
            ));
        }
        out
    }

    /// A peer's answer to its permit. Returns the ids to look up and fetch: those not
    /// already being fetched from another peer. The caller reports them back with
    /// [`PullSync::fetched`] when done.
    pub fn on_entries(
        &mut self,
        peer: &P,
        ids: Vec<Hash>,
        next_cursor: u64,
    ) -> Result<Vec<Hash>, PullError> {
        let Some(s) = self.peers.get_mut(peer) else {
            return Err(PullError::Unrequested);
        };
        if !s.permit_out {
            return Err(PullError::Unrequested);
        }
        s.permit_out = false;
        if ids.len() > self.cfg.max_entries as usize {
            return Err(PullError::TooMany {
                got: ids.len(),
                max: self.cfg.max_entries,
            });
        }
        if next_cursor < s.cursor {
            return Err(PullError::CursorBack {
                from: s.cursor,
                to: next_cursor,
            });
        }
        s.cursor = next_cursor;
        let fresh: Vec<Hash> = ids
            .into_iter()
            .filter(|id| self.fetching.insert(*id))
            .collect();
        s.fetching = fresh.len();
        Ok(fresh)
    }

    /// The ids of a peer's answer have been fetched (or given up on): its next permit may
    /// go out.
    pub fn fetched(&mut self, peer: &P, ids: &[Hash]) {
        for id in ids {
            self.fetching.remove(id);
        }
        if let Some(s) = self.peers.get_mut(peer) {
            s.fetching = 0;
        }
    }

    /// A permit failed (timeout, refused, stream error): try again after a pause.
    pub fn on_failure(&mut self, peer: &P, now_ms: u64) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.permit_out = false;
            s.retry_at_ms = now_ms + self.cfg.retry_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> Hash {
        Hash([i; 32])
    }

    #[test]
    fn one_permit_per_peer_and_the_next_only_after_fetching() {
        let mut s = PullSync::new(PullConfig {
            max_entries: 2,
            ..PullConfig::default()
        });
        s.add_peer("a");
        s.add_peer("b");
        let mut p = s.permits(0);
        p.sort_by_key(|(k, _)| *k);
        assert_eq!(
            p,
            vec![
                ("a", Permit { cursor: 0, max: 2 }),
                ("b", Permit { cursor: 0, max: 2 })
            ]
        );
        assert!(s.permits(0).is_empty(), "one permit in flight per peer");
        let ids = s.on_entries(&"a", vec![id(1), id(2)], 7).unwrap();
        assert_eq!(ids, vec![id(1), id(2)]);
        // b announces one a is already delivering: only the new one is fetched.
        assert_eq!(
            s.on_entries(&"b", vec![id(2), id(3)], 3).unwrap(),
            vec![id(3)]
        );
        assert!(
            s.permits(0).is_empty(),
            "nothing until the fetches are done"
        );
        s.fetched(&"a", &ids);
        assert_eq!(s.permits(0), vec![("a", Permit { cursor: 7, max: 2 })]);
    }

    #[test]
    fn protocol_breaches_are_errors() {
        let mut s = PullSync::new(PullConfig {
            max_entries: 2,
            ..PullConfig::default()
        });
        s.add_peer("a");
        assert_eq!(s.on_entries(&"a", vec![], 1), Err(PullError::Unrequested));
        s.permits(0);
        assert!(matches!(
            s.on_entries(&"a", vec![id(1), id(2), id(3)], 3),
            Err(PullError::TooMany { .. })
        ));
        s.permits(0);
        s.on_entries(&"a", vec![], 5).unwrap();
        s.fetched(&"a", &[]);
        s.permits(0);
        assert_eq!(
            s.on_entries(&"a", vec![], 4),
            Err(PullError::CursorBack { from: 5, to: 4 })
        );
    }

    #[test]
    fn a_failed_permit_pauses_the_peer() {
        let mut s = PullSync::new(PullConfig::default());
        s.add_peer("a");
        s.permits(0);
        s.on_failure(&"a", 1_000);
        assert!(s.permits(2_000).is_empty());
        assert_eq!(s.permits(3_000).len(), 1);
    }
}
