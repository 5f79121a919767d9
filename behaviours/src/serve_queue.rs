//! Shares the serving capacity of request-response protocols between peers.
//!
//! A rate limit per peer bounds what one peer id asks, but peer ids are free: an attacker
//! that opens a new one each time the last is cut off takes a fresh budget every time,
//! and with first-come serving it holds slots that honest peers then wait for (or are
//! refused, which halves an honest syncer's pace). Here a request runs at once while a
//! slot is free and its peer holds fewer than `per_peer_slots`; otherwise it waits, and a
//! freed slot goes to the best-ranked peer that waits, as the caller ranks peers when the
//! slot frees (the node ranks by standing: no faults, handshake done, connected longest).
//! Peers the caller marks in bad standing share `bad_standing_slots` between them even
//! while other slots are free, so the work they make us do stays small whatever the
//! number of their ids. When the queue is full, a request from a better-ranked peer
//! displaces the newest one of the worst-ranked peer, so a flood from new ids never locks
//! established peers out.
//!
//! Sans I/O: the caller passes the time and answers what comes back (`Refused`,
//! displaced and expired items) with "busy". Bounded: `max_queued` items in all,
//! `per_peer_queued` per peer.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ServeQueueConfig {
    /// Requests served at once, over all peers.
    pub slots: usize,
    /// Requests served at once for one peer.
    pub per_peer_slots: usize,
    /// Requests served at once for all the peers in bad standing together.
    pub bad_standing_slots: usize,
    /// Requests waiting for a slot, over all peers.
    pub max_queued: usize,
    /// Requests waiting for a slot, for one peer.
    pub per_peer_queued: usize,
    /// How long a request may wait: past it, an answer "busy" helps the asker more than
    /// a late one (it asks someone else before its own timeout).
    pub max_wait: Duration,
}

impl Default for ServeQueueConfig {
    fn default() -> Self {
        ServeQueueConfig {
            slots: 16,
            per_peer_slots: 4,
            bad_standing_slots: 2,
            max_queued: 64,
            per_peer_queued: 8,
            max_wait: Duration::from_secs(3),
        }
    }
}

/// What became of an offered request.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<P, T> {
    /// A slot is taken for it: serve it now, and call [`ServeQueue::done`] after.
    Run(T),
    /// It waits for a slot.
    Queued,
    /// It waits for a slot, in place of this one of a worse-ranked peer: answer "busy".
    Displaced(P, T),
    /// No room: answer "busy".
    Refused(T),
}

struct Waiting<T> {
    seq: u64,
    since: Instant,
    item: T,
}

/// How the caller ranks a peer: `bad` (in bad standing) sorts last and is held to
/// `bad_standing_slots`; among equals, the lower `order` goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank<R> {
    pub bad: bool,
    pub order: R,
}

#[derive(Default)]
struct Running {
    all: usize,
    /// Of them, started while the peer was in bad standing.
    bad: usize,
}

pub struct ServeQueue<P, T> {
    cfg: ServeQueueConfig,
    running: HashMap<P, Running>,
    total_running: usize,
    bad_running: usize,
    waiting: HashMap<P, VecDeque<Waiting<T>>>,
    total_waiting: usize,
    seq: u64,
}

impl<P: Hash + Eq + Clone, T> ServeQueue<P, T> {
    pub fn new(cfg: ServeQueueConfig) -> Self {
        ServeQueue {
            cfg: ServeQueueConfig {
                slots: cfg.slots.max(1),
                per_peer_slots: cfg.per_peer_slots.max(1),
                ..cfg
            },
            running: HashMap::new(),
            total_running: 0,
            bad_running: 0,
            waiting: HashMap::new(),
            total_waiting: 0,
            seq: 0,
        }
    }

    pub fn config(&self) -> &ServeQueueConfig {
        &self.cfg
    }

    pub fn running(&self) -> usize {
        self.total_running
    }

    pub fn queued(&self) -> usize {
        self.total_waiting
    }

    /// A request from `peer`. `rank` orders peers, lower first; it is asked for the
    /// peers concerned now, as their standing may have changed since they asked.
    pub fn offer<R: Ord>(
        &mut self,
        peer: P,
        item: T,
        now: Instant,
        rank: impl Fn(&P) -> Rank<R>,
    ) -> Offer<P, T> {
        let my_rank = rank(&peer);
        let ahead = self.waiting.get(&peer).map_or(0, VecDeque::len);
        if ahead == 0 && self.may_start(&peer, my_rank.bad) {
            self.start(peer, my_rank.bad);
            return Offer::Run(item);
        }
        if ahead >= self.cfg.per_peer_queued {
            return Offer::Refused(item);
        }
        let mut displaced = None;
        if self.total_waiting >= self.cfg.max_queued {
            let worst = self
                .waiting
                .iter()
                .filter(|(p, q)| **p != peer && !q.is_empty())
                .map(|(p, q)| (rank(p), q.back().map_or(0, |w| w.seq), p))
                .max_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)))
                .filter(|(r, _, _)| *r > my_rank)
                .map(|(_, _, p)| p.clone());
            let Some(victim) = worst else {
                return Offer::Refused(item);
            };
            match self.pop_back(&victim) {
                Some(w) => displaced = Some((victim, w.item)),
                None => return Offer::Refused(item),
            }
        }
        self.seq += 1;
        self.waiting.entry(peer).or_default().push_back(Waiting {
            seq: self.seq,
            since: now,
            item,
        });
        self.total_waiting += 1;
        match displaced {
            Some((p, t)) => Offer::Displaced(p, t),
            None => Offer::Queued,
        }
    }

    /// A request of `peer` was answered; returns the waiting requests that now run, best
    /// ranked peer first (each has its slot taken).
    pub fn done<R: Ord>(&mut self, peer: &P, rank: impl Fn(&P) -> Rank<R>) -> Vec<(P, T)> {
        if let Some(r) = self.running.get_mut(peer) {
            r.all -= 1;
            self.total_running -= 1;
            if r.bad > 0 {
                r.bad -= 1;
                self.bad_running -= 1;
            }
            if r.all == 0 {
                self.running.remove(peer);
            }
        }
        self.next(rank)
    }

    /// Requests that waited longer than `max_wait`: answer them "busy".
    pub fn expire(&mut self, now: Instant) -> Vec<(P, T)> {
        let max_wait = self.cfg.max_wait;
        let mut out = Vec::new();
        for (p, q) in self.waiting.iter_mut() {
            while q
                .front()
                .is_some_and(|w| now.saturating_duration_since(w.since) > max_wait)
            {
                if let Some(w) = q.pop_front() {
                    out.push((p.clone(), w.item));
                }
            }
        }
        self.total_waiting -= out.len();
        self.waiting.retain(|_, q| !q.is_empty());
        out
    }

    /// The peer is gone: its waiting requests are dropped (nobody can be answered) and
    /// its running ones no longer count against it once they finish.
    pub fn remove_peer(&mut self, peer: &P) -> Vec<T> {
        let gone: Vec<T> = self
            .waiting
            .remove(peer)
            .map(|q| q.into_iter().map(|w| w.item).collect())
            .unwrap_or_default();
        self.total_waiting -= gone.len();
        gone
    }

    fn may_start(&self, peer: &P, bad: bool) -> bool {
        let mine = self.running.get(peer).map_or(0, |r| r.all);
        self.total_running < self.cfg.slots
            && mine < self.cfg.per_peer_slots
            && (!bad || self.bad_running < self.cfg.bad_standing_slots)
    }

    fn start(&mut self, peer: P, bad: bool) {
        let r = self.running.entry(peer).or_default();
        r.all += 1;
        self.total_running += 1;
        if bad {
            r.bad += 1;
            self.bad_running += 1;
        }
    }

    fn pop_back(&mut self, peer: &P) -> Option<Waiting<T>> {
        let q = self.waiting.get_mut(peer)?;
        let w = q.pop_back()?;
        if q.is_empty() {
            self.waiting.remove(peer);
        }
        self.total_waiting -= 1;
        Some(w)
    }

    fn next<R: Ord>(&mut self, rank: impl Fn(&P) -> Rank<R>) -> Vec<(P, T)> {
        let mut out = Vec::new();
        while self.total_running < self.cfg.slots {
            let best = self
                .waiting
                .iter()
                .filter_map(|(p, q)| q.front().map(|w| (rank(p), w.seq, p)))
                .filter(|(r, _, p)| self.may_start(p, r.bad))
                .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)))
                .map(|(r, _, p)| (p.clone(), r.bad));
            let Some((peer, bad)) = best else { break };
            let Some(q) = self.waiting.get_mut(&peer) else {
                break;
            };
            let Some(w) = q.pop_front() else { break };
            if q.is_empty() {
                self.waiting.remove(&peer);
            }
            self.total_waiting -= 1;
            self.start(peer.clone(), bad);
            out.push((peer, w.item));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(slots: usize, per_peer_slots: usize, max_queued: usize) -> ServeQueueConfig {
        ServeQueueConfig {
            slots,
            per_peer_slots,
            bad_standing_slots: slots,
            max_queued,
            per_peer_queued: 4,
            max_wait: Duration::from_secs(3),
        }
    }

    /// Peers named by their rank: 'a' before 'b' before 'z'; capitals are in bad standing.
    fn rank(p: &char) -> Rank<char> {
        Rank {
            bad: p.is_ascii_uppercase(),
            order: p.to_ascii_lowercase(),
        }
    }

    #[test]
    fn runs_at_once_while_there_is_room() {
        let mut q = ServeQueue::new(cfg(2, 2, 4));
        let now = Instant::now();
        assert_eq!(q.offer('a', 1, now, rank), Offer::Run(1));
        assert_eq!(q.offer('b', 2, now, rank), Offer::Run(2));
        assert_eq!(q.offer('a', 3, now, rank), Offer::Queued);
        assert_eq!((q.running(), q.queued()), (2, 1));
        assert_eq!(q.done(&'b', rank), vec![('a', 3)]);
        assert_eq!((q.running(), q.queued()), (2, 0));
    }

    #[test]
    fn one_peer_cannot_take_every_slot() {
        let mut q = ServeQueue::new(cfg(4, 2, 8));
        let now = Instant::now();
        for i in 0..2 {
            assert_eq!(q.offer('z', i, now, rank), Offer::Run(i));
        }
        assert_eq!(q.offer('z', 2, now, rank), Offer::Queued);
        // Two slots are still free for the others.
        assert_eq!(q.offer('a', 10, now, rank), Offer::Run(10));
        assert_eq!(q.offer('b', 20, now, rank), Offer::Run(20));
    }

    #[test]
    fn a_freed_slot_goes_to_the_best_ranked_waiting_peer() {
        let mut q = ServeQueue::new(cfg(1, 1, 8));
        let now = Instant::now();
        assert_eq!(q.offer('z', 0, now, rank), Offer::Run(0));
        assert_eq!(q.offer('z', 1, now, rank), Offer::Queued);
        assert_eq!(q.offer('y', 2, now, rank), Offer::Queued);
        assert_eq!(q.offer('a', 3, now, rank), Offer::Queued);
        assert_eq!(q.done(&'z', rank), vec![('a', 3)]);
        assert_eq!(q.done(&'a', rank), vec![('y', 2)]);
        // The rank is asked anew each time: 'z' is now the best.
        let z_first = |p: &char| Rank {
            bad: false,
            order: *p != 'z',
        };
        assert_eq!(q.done(&'y', z_first), vec![('z', 1)]);
    }

    #[test]
    fn a_full_queue_displaces_the_worst_ranked_peer_not_a_better_one() {
        let mut q = ServeQueue::new(cfg(1, 1, 3));
        let now = Instant::now();
        assert_eq!(q.offer('m', 0, now, rank), Offer::Run(0));
        assert_eq!(q.offer('z', 1, now, rank), Offer::Queued);
        assert_eq!(q.offer('z', 2, now, rank), Offer::Queued);
        assert_eq!(q.offer('m', 3, now, rank), Offer::Queued);
        // 'a' outranks 'z': it takes the place of z's newest request.
        assert_eq!(q.offer('a', 4, now, rank), Offer::Displaced('z', 2));
        // 'y' outranks 'z' too.
        assert_eq!(q.offer('y', 5, now, rank), Offer::Displaced('z', 1));
        // 'z' outranks nobody waiting now ('a', 'm', 'y').
        assert_eq!(q.offer('z', 6, now, rank), Offer::Refused(6));
        assert_eq!(q.queued(), 3);
    }

    #[test]
    fn each_peer_waits_with_a_bounded_number_of_requests() {
        let mut q = ServeQueue::new(cfg(1, 1, 100));
        let now = Instant::now();
        assert_eq!(q.offer('a', 0, now, rank), Offer::Run(0));
        for i in 1..=4 {
            assert_eq!(q.offer('a', i, now, rank), Offer::Queued);
        }
        assert_eq!(q.offer('a', 5, now, rank), Offer::Refused(5));
    }

    #[test]
    fn requests_that_waited_too_long_expire_and_gone_peers_leave_the_queue() {
        let mut q = ServeQueue::new(cfg(1, 1, 8));
        let t0 = Instant::now();
        assert_eq!(q.offer('a', 0, t0, rank), Offer::Run(0));
        assert_eq!(q.offer('b', 1, t0, rank), Offer::Queued);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(q.offer('b', 2, t1, rank), Offer::Queued);
        assert_eq!(q.offer('c', 3, t1, rank), Offer::Queued);
        assert_eq!(q.expire(t0 + Duration::from_secs(4)), vec![('b', 1)]);
        assert_eq!(q.remove_peer(&'b'), vec![2]);
        assert_eq!(q.queued(), 1);
        assert_eq!(q.done(&'a', rank), vec![('c', 3)]);
        assert_eq!(q.done(&'c', rank), vec![]);
        assert_eq!((q.running(), q.queued()), (0, 0));
    }

    #[test]
    fn peers_in_bad_standing_share_a_few_slots_even_when_more_are_free() {
        let mut q = ServeQueue::new(ServeQueueConfig {
            bad_standing_slots: 2,
            ..cfg(8, 4, 16)
        });
        let now = Instant::now();
        assert_eq!(q.offer('X', 0, now, rank), Offer::Run(0));
        assert_eq!(q.offer('Y', 1, now, rank), Offer::Run(1));
        assert_eq!(q.offer('Z', 2, now, rank), Offer::Queued);
        assert_eq!(q.offer('X', 3, now, rank), Offer::Queued);
        // Good peers still find their slots.
        for i in 10..14 {
            assert_eq!(q.offer('a', i, now, rank), Offer::Run(i));
        }
        // A bad peer's slot freed goes to the best-ranked bad one that waits.
        assert_eq!(q.done(&'Y', rank), vec![('X', 3)]);
        assert_eq!((q.running(), q.queued()), (6, 1));
        // A good peer's slot freed does not go to a bad one while two bad ones run.
        assert_eq!(q.done(&'a', rank), vec![]);
        assert_eq!(q.done(&'X', rank), vec![('Z', 2)]);
    }
}
