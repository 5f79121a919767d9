//! Pull-based mempool sync, the receiver's side (sans I/O).
//!
//! We grant each peer a permit: "send me at most `max` entries of your pool log after
//! `cursor`". The peer answers when it has some (long poll). Only then, and only after
//! the transactions we lacked have arrived, do we grant the next permit, and only while
//! fewer than `max_in_hand` of the peer's answers are still being verified and added:
//! the next answer travels while the last one is taken in, yet a peer can never get
//! more than that ahead of us. Cursors live per connection; a peer that reconnects is
//! read from the start of its log again, which costs ids only (transactions we already
//! hold are not fetched).

use std::collections::{HashMap, HashSet};
use std::hash::Hash as StdHash;

use chainmesh_proto::Hash;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullConfig {
    /// Entries asked per permit.
    pub max_entries: u32,
    /// Pause after a failed permit before the next one.
    pub retry_ms: u64,
    /// Most transaction ids being fetched or taken in at once, from all peers together.
    pub max_fetching: usize,
    /// Most answers of one peer whose transactions arrived and are being taken in.
    pub max_in_hand: usize,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            max_entries: 1024,
            retry_ms: 2_000,
            max_fetching: 8_192,
            // One answer per core being verified, one being added, one waiting: the
            // next permit's round trip overlaps the work in hand.
            max_in_hand: 4,
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
    /// The transactions of this peer's last answer are being looked up or fetched.
    fetching: bool,
    /// Answers whose transactions arrived and are being verified and added.
    in_hand: usize,
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
    /// has fewer than `max_in_hand` answers being taken in, and is not pausing after a
    /// failure.
    pub fn permits(&mut self, now_ms: u64) -> Vec<(P, Permit)> {
        let full = self.fetching.len() >= self.cfg.max_fetching;
        let max = self.cfg.max_entries;
        let mut out = Vec::new();
        for (peer, s) in &mut self.peers {
            if s.permit_out
                || s.fetching
                || s.in_hand >= self.cfg.max_in_hand
                || now_ms < s.retry_at_ms
                || full
            {
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
    /// [`PullSync::fetched`] if nothing is fetched in the end, or with
    /// [`PullSync::received`] and then [`PullSync::taken_in`].
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
        s.fetching = true;
        Ok(fresh)
    }

    /// Nothing to take in from a peer's answer (we held every transaction, or the fetch
    /// failed): its ids are free and its next permit may go out.
    pub fn fetched(&mut self, peer: &P, ids: &[Hash]) {
        self.release(ids);
        if let Some(s) = self.peers.get_mut(peer) {
            s.fetching = false;
        }
    }

    /// The transactions of a peer's answer arrived and are being taken in; its ids stay
    /// reserved (no other peer is asked for them) until [`PullSync::taken_in`].
    pub fn received(&mut self, peer: &P) {
        if let Some(s) = self.peers.get_mut(peer)
            && s.fetching
        {
            s.fetching = false;
            s.in_hand += 1;
        }
    }

    /// The transactions of one answer [`PullSync::received`] from `peer` are in the pool
    /// (or were refused).
    pub fn taken_in(&mut self, peer: &P, ids: &[Hash]) {
        self.release(ids);
        if let Some(s) = self.peers.get_mut(peer) {
            s.in_hand = s.in_hand.saturating_sub(1);
        }
    }

    fn release(&mut self, ids: &[Hash]) {
        for id in ids {
            self.fetching.remove(id);
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
    fn the_next_answer_travels_while_the_last_is_taken_in_but_no_further() {
        let mut s = PullSync::new(PullConfig {
            max_entries: 2,
            max_in_hand: 2,
            ..PullConfig::default()
        });
        s.add_peer("a");
        s.permits(0);
        let first = s.on_entries(&"a", vec![id(1), id(2)], 2).unwrap();
        s.received(&"a");
        // The first answer is being verified: the second permit goes out meanwhile.
        assert_eq!(s.permits(0), vec![("a", Permit { cursor: 2, max: 2 })]);
        let second = s.on_entries(&"a", vec![id(3), id(4)], 4).unwrap();
        // Ids being taken in are still reserved: announced again, they are not refetched.
        s.add_peer("b");
        assert_eq!(s.permits(0), vec![("b", Permit { cursor: 0, max: 2 })]);
        assert_eq!(s.on_entries(&"b", vec![id(1), id(4)], 2).unwrap(), vec![]);
        s.fetched(&"b", &[]);
        s.received(&"a");
        // Two answers in hand: a waits until one is in the pool.
        assert_eq!(s.permits(0), vec![("b", Permit { cursor: 2, max: 2 })]);
        s.taken_in(&"a", &first);
        assert_eq!(s.permits(0), vec![("a", Permit { cursor: 4, max: 2 })]);
        s.taken_in(&"a", &second);
        assert!(s.fetching.is_empty());
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
