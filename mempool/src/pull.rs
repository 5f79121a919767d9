//! Pull-based mempool sync, the receiver's side (sans I/O).
//!
//! We grant each peer a permit: "send me at most `max` entries of your pool log after
//! `cursor`". The peer answers when it has some (long poll). While the peer is behind
//! (its last answer was full), its next permit goes out as soon as an answer is here,
//! while the transactions of the last one are fetched and taken in, but only while
//! fewer than `max_in_hand` of the peer's answers are in progress (being fetched, or
//! verified and added): the next answer travels while the last ones are worked on, yet
//! a peer can never get more than that ahead of us. Once a peer is caught up (a short
//! answer), the next permit waits until the last answer's transactions are here: a
//! steady trickle then comes in one answer per fetch, not one answer per transaction.
//! Answers fetched side by side may arrive out of order; they are released to be taken
//! in in the order of the peer's log, so that a sender's nonces enter in sequence.
//! Cursors live per connection; a peer that reconnects is read from the start of its
//! log again, which costs ids only (transactions we already hold are not fetched).

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// Most answers of one peer in progress: being fetched, waiting for an earlier one,
    /// or being verified and added.
    pub max_in_hand: usize,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            max_entries: 1024,
            retry_ms: 2_000,
            max_fetching: 8_192,
            // One answer per core being verified, one being added, one or two being
            // fetched: the round trips of the next answers overlap the work in hand.
            max_in_hand: 5,
        }
    }
}

/// A permit to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub cursor: u64,
    pub max: u32,
}

/// One answer of a peer, from its arrival until its transactions are taken in: the
/// caller carries it with the fetch and hands it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

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
    /// Answers whose transactions are being looked up or fetched, in log order; `true`
    /// once they arrived (they wait for the ones before them).
    fetching: VecDeque<(Ticket, bool)>,
    /// Answers released to be verified and added.
    in_hand: usize,
    /// The last answer was short: the peer had nothing more.
    caught_up: bool,
    retry_at_ms: u64,
}

impl PeerState {
    /// Releases the arrived answers at the front, in order.
    fn release_ready(&mut self) -> Vec<Ticket> {
        let mut ready = Vec::new();
        while let Some(&(t, true)) = self.fetching.front() {
            self.fetching.pop_front();
            self.in_hand += 1;
            ready.push(t);
        }
        ready
    }
}

pub struct PullSync<P> {
    cfg: PullConfig,
    peers: HashMap<P, PeerState>,
    fetching: HashSet<Hash>,
    next_ticket: u64,
}

impl<P: Clone + Eq + StdHash> PullSync<P> {
    pub fn new(cfg: PullConfig) -> Self {
        PullSync {
            cfg,
            peers: HashMap::new(),
            fetching: HashSet::new(),
            next_ticket: 0,
        }
    }

    pub fn add_peer(&mut self, peer: P) {
        self.peers.entry(peer).or_default();
    }

    /// Forgets a peer. Returns its answers that arrived but waited for an earlier one:
    /// nothing orders them any more, so the caller takes them in now (and reports them
    /// with [`PullSync::taken_in`] as usual).
    pub fn remove_peer(&mut self, peer: &P) -> Vec<Ticket> {
        self.peers.remove(peer).map_or_else(Vec::new, |s| {
            s.fetching
                .into_iter()
                .filter(|(_, arrived)| *arrived)
                .map(|(t, _)| t)
                .collect()
        })
    }

    pub fn cursor(&self, peer: &P) -> Option<u64> {
        self.peers.get(peer).map(|p| p.cursor)
    }

    /// Permits to grant now: one per peer that has none out, has fewer than
    /// `max_in_hand` answers in progress (and none being fetched once it is caught up),
    /// and is not pausing after a failure.
    pub fn permits(&mut self, now_ms: u64) -> Vec<(P, Permit)> {
        let full = self.fetching.len() >= self.cfg.max_fetching;
        let max = self.cfg.max_entries;
        let mut out = Vec::new();
        for (peer, s) in &mut self.peers {
            if s.permit_out
                || s.fetching.len() + s.in_hand >= self.cfg.max_in_hand
                || (s.caught_up && !s.fetching.is_empty())
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

    /// A peer's answer to its permit. Returns the answer's ticket and the ids to look up
    /// and fetch: those not already being fetched from another peer. The caller reports
    /// the ticket back with [`PullSync::fetched`] if nothing is fetched in the end, or
    /// with [`PullSync::received`] and then [`PullSync::taken_in`].
    pub fn on_entries(
        &mut self,
        peer: &P,
        ids: Vec<Hash>,
        next_cursor: u64,
    ) -> Result<(Ticket, Vec<Hash>), PullError> {
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
        s.caught_up = ids.len() < self.cfg.max_entries as usize;
        let fresh: Vec<Hash> = ids
            .into_iter()
            .filter(|id| self.fetching.insert(*id))
            .collect();
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        s.fetching.push_back((ticket, false));
        Ok((ticket, fresh))
    }

    /// Nothing to take in from an answer (we held every transaction, or the fetch
    /// failed): its ids are free. Returns the answers after it that may now be taken in,
    /// in order.
    pub fn fetched(&mut self, peer: &P, ticket: Ticket, ids: &[Hash]) -> Vec<Ticket> {
        self.release(ids);
        let Some(s) = self.peers.get_mut(peer) else {
            return Vec::new();
        };
        s.fetching.retain(|(t, _)| *t != ticket);
        s.release_ready()
    }

    /// The transactions of an answer arrived; its ids stay reserved (no other peer is
    /// asked for them) until [`PullSync::taken_in`]. Returns the answers to take in now,
    /// in log order: this one and those that waited for it, or none while an earlier
    /// one is still being fetched. From a peer we no longer follow, the answer itself.
    pub fn received(&mut self, peer: &P, ticket: Ticket) -> Vec<Ticket> {
        let Some(s) = self.peers.get_mut(peer) else {
            return vec![ticket];
        };
        match s.fetching.iter_mut().find(|(t, _)| *t == ticket) {
            Some(entry) => entry.1 = true,
            None => return vec![ticket],
        }
        s.release_ready()
    }

    /// The transactions of one released answer from `peer` are in the pool (or were
    /// refused).
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
    fn one_permit_per_peer_and_the_next_once_its_answer_is_here() {
        let mut s = PullSync::new(PullConfig {
            max_entries: 2,
            max_in_hand: 2,
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
        let (ta, ids) = s.on_entries(&"a", vec![id(1), id(2)], 7).unwrap();
        assert_eq!(ids, vec![id(1), id(2)]);
        // b announces one a is already delivering: only the new one is fetched.
        let (tb, fresh) = s.on_entries(&"b", vec![id(2), id(3)], 3).unwrap();
        assert_eq!(fresh, vec![id(3)]);
        // While a's answer is fetched, its next permit travels; then a has two answers
        // in progress and waits.
        let mut p = s.permits(0);
        p.sort_by_key(|(k, _)| *k);
        assert_eq!(
            p,
            vec![
                ("a", Permit { cursor: 7, max: 2 }),
                ("b", Permit { cursor: 3, max: 2 })
            ]
        );
        let (ta2, _) = s.on_entries(&"a", vec![id(4), id(5)], 8).unwrap();
        assert!(
            s.permits(0).iter().all(|(k, _)| *k != "a"),
            "a is at its limit"
        );
        assert!(s.fetched(&"a", ta, &ids).is_empty());
        assert_eq!(s.permits(0), vec![("a", Permit { cursor: 8, max: 2 })]);
        assert!(s.fetched(&"b", tb, &fresh).is_empty());
        assert_eq!(s.received(&"a", ta2), vec![ta2]);
    }

    #[test]
    fn a_caught_up_peer_gets_its_next_permit_once_the_last_answer_is_fetched() {
        let mut s = PullSync::new(PullConfig {
            max_entries: 2,
            ..PullConfig::default()
        });
        s.add_peer("a");
        s.permits(0);
        // A short answer: the peer had nothing more, so no new permit meanwhile (a
        // trickle of transactions would otherwise come one answer each).
        let (t, _) = s.on_entries(&"a", vec![id(1)], 1).unwrap();
        assert!(s.permits(0).is_empty());
        assert_eq!(s.received(&"a", t), vec![t]);
        assert_eq!(s.permits(0), vec![("a", Permit { cursor: 1, max: 2 })]);
        // Behind again (a full answer): the next permit goes out at once.
        s.on_entries(&"a", vec![id(2), id(3)], 3).unwrap();
        assert_eq!(s.permits(0), vec![("a", Permit { cursor: 3, max: 2 })]);
    }

    #[test]
    fn answers_fetched_side_by_side_are_taken_in_in_log_order() {
        let mut s = PullSync::new(PullConfig {
            max_entries: 2,
            max_in_hand: 4,
            ..PullConfig::default()
        });
        s.add_peer("a");
        let mut tickets = Vec::new();
        for i in 0..3u8 {
            assert_eq!(s.permits(0).len(), 1);
            let (t, _) = s
                .on_entries(&"a", vec![id(2 * i), id(2 * i + 1)], 2 * u64::from(i) + 2)
                .unwrap();
            tickets.push(t);
        }
        // The third arrives first, then the second: both wait for the first.
        assert!(s.received(&"a", tickets[2]).is_empty());
        assert!(s.received(&"a", tickets[1]).is_empty());
        assert_eq!(s.received(&"a", tickets[0]), tickets);
        // An answer with nothing to fetch lets the ones after it through.
        let (t3, _) = {
            s.permits(0);
            s.on_entries(&"a", vec![id(9), id(19)], 9).unwrap()
        };
        assert!(
            s.permits(0).is_empty(),
            "three in hand, one fetching: at the limit"
        );
        s.taken_in(&"a", &[id(0), id(1)]);
        s.permits(0);
        let (t4, _) = s.on_entries(&"a", vec![id(10), id(20)], 10).unwrap();
        assert!(s.received(&"a", t4).is_empty());
        assert_eq!(s.fetched(&"a", t3, &[id(9), id(19)]), vec![t4]);
        // A peer that leaves hands back what waited for an earlier answer.
        s.permits(0);
        let (t5, _) = s.on_entries(&"a", vec![id(11), id(21)], 11).unwrap();
        s.taken_in(&"a", &[]);
        s.permits(0);
        let (t6, _) = s.on_entries(&"a", vec![id(12), id(22)], 12).unwrap();
        assert!(s.received(&"a", t6).is_empty());
        assert_eq!(s.remove_peer(&"a"), vec![t6]);
        // Its answers still on their way are then taken in as they come.
        assert_eq!(s.received(&"a", t5), vec![t5]);
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
        let (t1, first) = s.on_entries(&"a", vec![id(1), id(2)], 2).unwrap();
        assert_eq!(s.received(&"a", t1), vec![t1]);
        // The first answer is being verified: the second permit goes out meanwhile.
        assert_eq!(s.permits(0), vec![("a", Permit { cursor: 2, max: 2 })]);
        let (t2, second) = s.on_entries(&"a", vec![id(3), id(4)], 4).unwrap();
        // Ids being taken in are still reserved: announced again, they are not refetched.
        s.add_peer("b");
        assert_eq!(s.permits(0), vec![("b", Permit { cursor: 0, max: 2 })]);
        let (tb, none) = s.on_entries(&"b", vec![id(1), id(4)], 2).unwrap();
        assert!(none.is_empty());
        s.fetched(&"b", tb, &[]);
        assert_eq!(s.received(&"a", t2), vec![t2]);
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
        let (t, _) = s.on_entries(&"a", vec![], 5).unwrap();
        s.fetched(&"a", t, &[]);
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
