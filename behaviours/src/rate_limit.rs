//! Token-bucket rate limiting per key (a peer, or a peer and a protocol).
//!
//! Sans I/O: the caller passes the current [`Instant`], so tests drive time by hand and
//! the limiter never reads a clock. Memory is bounded: at most `max_keys` buckets are
//! kept; when full, the bucket idle the longest is dropped (a dropped key starts again
//! with a full bucket, which is what an idle peer would have had anyway once refilled).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    pub per_second: f64,
    pub burst: u32,
}

impl Quota {
    pub fn new(per_second: u32, burst: u32) -> Quota {
        Quota {
            per_second: f64::from(per_second.max(1)),
            burst: burst.max(1),
        }
    }
}

/// One token bucket; [`RateLimiter`] keeps one per key.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(quota: Quota, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(quota.burst),
            last: now,
        }
    }

    /// Takes `cost` tokens if the bucket has them after refilling up to `now`.
    pub fn take(&mut self, q: Quota, cost: u32, now: Instant) -> Result<(), Limited> {
        let cost = f64::from(cost);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * q.per_second).min(f64::from(q.burst));
        self.last = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            let missing = cost.min(f64::from(q.burst)) - self.tokens;
            let wait = if cost > f64::from(q.burst) {
                f64::from(q.burst) / q.per_second
            } else {
                missing / q.per_second
            };
            Err(Limited {
                retry_after: Duration::from_secs_f64(wait.max(0.0)),
            })
        }
    }
}

/// Why a request was refused, and when the same cost would next be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

pub struct RateLimiter<K> {
    quota: Quota,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        RateLimiter {
            quota,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes `cost` tokens from `key`'s bucket if it has them. A cost above the burst can
    /// never pass and is refused with the time a full bucket would need.
    pub fn check(&mut self, key: &K, cost: u32, now: Instant) -> Result<(), Limited> {
        let q = self.quota;
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.evict_idlest();
        }
        self.buckets
            .entry(key.clone())
            .or_insert(Bucket::new(q, now))
            .take(q, cost, now)
    }

    /// Forgets a key (a peer that disconnected).
    pub fn remove(&mut self, key: &K) {
        self.buckets.remove(key);
    }

    fn evict_idlest(&mut self) {
        if let Some(k) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(k, _)| k.clone())
        {
            self.buckets.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Quota::new(10, 5), 16);
        for _ in 0..5 {
            rl.check(&"p", 1, t0).unwrap();
        }
        let e = rl.check(&"p", 1, t0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_millis(100));
        // Another key has its own bucket.
        rl.check(&"q", 1, t0).unwrap();
        // 100 ms later one token is back, not two.
        let t1 = t0 + Duration::from_millis(100);
        rl.check(&"p", 1, t1).unwrap();
        assert!(rl.check(&"p", 1, t1).is_err());
        // Refill caps at the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            rl.check(&"p", 1, t2).unwrap();
        }
        assert!(rl.check(&"p", 1, t2).is_err());
    }

    #[test]
    fn oversized_cost_is_refused_and_time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut rl = RateLimiter::new(Quota::new(2, 4), 4);
        let e = rl.check(&1u8, 9, t0).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(2));
        rl.check(&1u8, 4, t0).unwrap();
        assert!(rl.check(&1u8, 1, t0 - Duration::from_secs(5)).is_err());
    }

    #[test]
    fn key_set_is_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(Quota::new(1, 1), 100);
        for i in 0..10_000u32 {
            let _ = rl.check(&i, 1, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(rl.len(), 100);
        // The most recent keys survived, the idlest went.
        assert!(rl.buckets.contains_key(&9_999));
        assert!(!rl.buckets.contains_key(&0));
    }
}
