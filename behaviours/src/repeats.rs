//! Spots a peer asking the same thing over and over: within `window`, the same request
//! (by digest) more than `allowed` times. The rate limiter bounds how often a peer asks;
//! this catches the peer that stays under the rate and still makes us redo the same work.
//!
//! Sans I/O (the caller passes the time) and bounded: `per_key` digests per peer, at most
//! `max_keys` peers; when full, the peer idle the longest is forgotten.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct Repeats<K> {
    window: Duration,
    allowed: usize,
    per_key: usize,
    max_keys: usize,
    seen: HashMap<K, VecDeque<(u64, Instant)>>,
}

impl<K: Hash + Eq + Clone> Repeats<K> {
    pub fn new(window: Duration, allowed: usize, per_key: usize, max_keys: usize) -> Self {
        Repeats {
            window,
            allowed,
            per_key: per_key.max(1),
            max_keys: max_keys.max(1),
            seen: HashMap::new(),
        }
    }

    /// Records a request; true if the same one came more than `allowed` times before
    /// within the window (an honest retry after a timeout is outside it).
    pub fn repeated(&mut self, key: &K, digest: u64, now: Instant) -> bool {
        if !self.seen.contains_key(key) && self.seen.len() >= self.max_keys {
            let idlest = self
                .seen
                .iter()
                .min_by_key(|(_, d)| d.back().map(|(_, t)| *t))
                .map(|(k, _)| k.clone());
            if let Some(k) = idlest {
                self.seen.remove(&k);
            }
        }
        let recent = self.seen.entry(key.clone()).or_default();
        while recent
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) > self.window)
        {
            recent.pop_front();
        }
        let before = recent.iter().filter(|(d, _)| *d == digest).count();
        if recent.len() == self.per_key {
            recent.pop_front();
        }
        recent.push_back((digest, now));
        before > self.allowed
    }

    pub fn remove(&mut self, key: &K) {
        self.seen.remove(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_request_within_the_window_is_a_repeat_after_the_allowance() {
        let t0 = Instant::now();
        let mut r = Repeats::new(Duration::from_secs(2), 1, 16, 8);
        assert!(!r.repeated(&"p", 7, t0));
        // One retry is allowed.
        assert!(!r.repeated(&"p", 7, t0));
        assert!(r.repeated(&"p", 7, t0));
        // Other requests and other peers are apart.
        assert!(!r.repeated(&"p", 8, t0));
        assert!(!r.repeated(&"q", 7, t0));
        // After the window the same request is new again.
        let later = t0 + Duration::from_secs(3);
        assert!(!r.repeated(&"p", 7, later));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = Repeats::new(Duration::from_secs(2), 1, 4, 100);
        for i in 0..10_000u64 {
            r.repeated(&(i % 500), i, t0 + Duration::from_micros(i));
            r.repeated(&1_000_000, i, t0);
        }
        assert!(r.len() <= 100);
        assert!(r.seen.values().all(|d| d.len() <= 4));
    }
}
