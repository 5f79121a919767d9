//! Peer scores and bans (sans I/O: time is a parameter, in unix milliseconds so that ban
//! expiries can be persisted as they are).
//!
//! Each fault costs points; scores recover slowly towards zero. At or below
//! `disconnect_below` the node drops the peer; at or below `ban_below` it bans it until an
//! expiry. Memory is bounded: scores of at most `max_peers` peers are kept (the ones
//! closest to zero are forgotten first: they carry the least information).

pub mod filter;
pub mod ip;

pub use filter::{AddressBanned, ip_of};
pub use ip::{IpBanConfig, IpBans};

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A request timed out.
    Timeout,
    /// A response that does not parse or breaks the protocol's bounds.
    Malformed,
    /// Well-formed data that does not fit what was asked (wrong hashes, broken linkage).
    BadData,
    /// Data that fails validation (bad signature, invalid block).
    Invalid,
    /// Asking faster than the limits we advertised.
    RateExceeded,
    /// The same request again and again within a short window (under the rate or not).
    Repeated,
    /// Another network, genesis or an unsupported version.
    Incompatible,
    /// A gossip message no honest node would forward (invalid transaction or block,
    /// undecodable payload). Gossipsub scores it too; this makes repeat offenders leave.
    InvalidMessage,
    /// Still connected while gossipsub ignores it (its gossip score at or below the
    /// graylist threshold, through invalid messages or broken promises): counted each
    /// second, so a flooder that comes back after a disconnect is banned, not tolerated.
    Graylisted,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::Timeout,
        Fault::Malformed,
        Fault::BadData,
        Fault::Invalid,
        Fault::RateExceeded,
        Fault::Repeated,
        Fault::Incompatible,
        Fault::InvalidMessage,
        Fault::Graylisted,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Timeout => "timeout",
            Fault::Malformed => "malformed",
            Fault::BadData => "bad_data",
            Fault::Invalid => "invalid",
            Fault::RateExceeded => "rate_exceeded",
            Fault::Repeated => "repeated",
            Fault::Incompatible => "incompatible",
            Fault::InvalidMessage => "invalid_message",
            Fault::Graylisted => "graylisted",
        }
    }

    pub fn cost(self) -> f64 {
        match self {
            Fault::Timeout => 10.0,
            Fault::RateExceeded => 10.0,
            Fault::Repeated => 10.0,
            Fault::Malformed => 40.0,
            Fault::BadData => 40.0,
            Fault::Invalid => 100.0,
            Fault::Incompatible => 1_000.0,
            Fault::InvalidMessage => 20.0,
            Fault::Graylisted => 20.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreConfig {
    pub disconnect_below: f64,
    pub ban_below: f64,
    pub ban_ms: u64,
    /// Points recovered per second, towards zero.
    pub recovery_per_sec: f64,
    pub max_peers: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            disconnect_below: -50.0,
            ban_below: -90.0,
            ban_ms: 10 * 60 * 1000,
            recovery_per_sec: 0.5,
            max_peers: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Keep,
    Disconnect,
    Ban { until_ms: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    score: f64,
    at_ms: u64,
}

pub struct PeerScores<P> {
    cfg: ScoreConfig,
    scores: HashMap<P, Entry>,
    bans: HashMap<P, u64>,
}

impl<P: Hash + Eq + Clone> PeerScores<P> {
    pub fn new(cfg: ScoreConfig) -> Self {
        PeerScores {
            cfg,
            scores: HashMap::new(),
            bans: HashMap::new(),
        }
    }

    pub fn config(&self) -> &ScoreConfig {
        &self.cfg
    }

    fn current(&self, e: &Entry, now_ms: u64) -> f64 {
        let secs = now_ms.saturating_sub(e.at_ms) as f64 / 1000.0;
        let rec = secs * self.cfg.recovery_per_sec;
        if e.score < 0.0 {
            (e.score + rec).min(0.0)
        } else {
            e.score
        }
    }

    pub fn score(&self, peer: &P, now_ms: u64) -> f64 {
        self.scores
            .get(peer)
            .map_or(0.0, |e| self.current(e, now_ms))
    }

    /// Records a fault and says what to do with the peer.
    pub fn penalize(&mut self, peer: &P, fault: Fault, now_ms: u64) -> Verdict {
        self.penalize_evicting(peer, fault, now_ms).0
    }

    fn forget_mildest(&mut self, now_ms: u64) {
        if let Some(k) = self
            .scores
            .iter()
            .max_by(|a, b| {
                self.current(a.1, now_ms)
                    .total_cmp(&self.current(b.1, now_ms))
            })
            .map(|(k, _)| k.clone())
        {
            self.scores.remove(&k);
        }
    }

    /// Bans until `until_ms` (also used to restore persisted bans). Bans are bounded like
    /// scores: past the limit the one expiring first is dropped and returned, so that the
    /// caller lifts it wherever else it enforces bans.
    pub fn ban(&mut self, peer: &P, until_ms: u64) -> Option<P> {
        let mut evicted = None;
        if !self.bans.contains_key(peer)
            && self.bans.len() >= self.cfg.max_peers
            && let Some(k) = self
                .bans
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(k, _)| k.clone())
        {
            self.bans.remove(&k);
            evicted = Some(k);
        }
        self.bans.insert(peer.clone(), until_ms);
        evicted
    }

    /// Records a fault and says what to do with the peer, and which earlier ban (if any)
    /// made room for a new one.
    pub fn penalize_evicting(
        &mut self,
        peer: &P,
        fault: Fault,
        now_ms: u64,
    ) -> (Verdict, Option<P>) {
        let s = self.score(peer, now_ms) - fault.cost();
        if !self.scores.contains_key(peer) && self.scores.len() >= self.cfg.max_peers {
            self.forget_mildest(now_ms);
        }
        self.scores.insert(
            peer.clone(),
            Entry {
                score: s,
                at_ms: now_ms,
            },
        );
        if s <= self.cfg.ban_below {
            let until_ms = now_ms.saturating_add(self.cfg.ban_ms);
            let evicted = self.ban(peer, until_ms);
            (Verdict::Ban { until_ms }, evicted)
        } else if s <= self.cfg.disconnect_below {
            (Verdict::Disconnect, None)
        } else {
            (Verdict::Keep, None)
        }
    }

    pub fn banned_until(&self, peer: &P, now_ms: u64) -> Option<u64> {
        self.bans.get(peer).copied().filter(|u| *u > now_ms)
    }

    /// Removes and returns the bans that have expired.
    pub fn expire_bans(&mut self, now_ms: u64) -> Vec<P> {
        let gone: Vec<P> = self
            .bans
            .iter()
            .filter(|(_, u)| **u <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.bans.remove(k);
            self.scores.remove(k);
        }
        gone
    }

    pub fn bans(&self) -> impl Iterator<Item = (&P, &u64)> {
        self.bans.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_lead_to_disconnect_then_ban_then_expiry() {
        let mut s = PeerScores::new(ScoreConfig::default());
        let t = 1_000_000;
        assert_eq!(s.penalize(&"p", Fault::Timeout, t), Verdict::Keep);
        assert_eq!(s.penalize(&"p", Fault::BadData, t), Verdict::Disconnect);
        match s.penalize(&"p", Fault::BadData, t) {
            Verdict::Ban { until_ms } => assert_eq!(until_ms, t + 600_000),
            v => panic!("{v:?}"),
        }
        assert!(s.banned_until(&"p", t + 1).is_some());
        assert!(s.expire_bans(t + 599_999).is_empty());
        assert_eq!(s.expire_bans(t + 600_000), vec!["p"]);
        assert!(s.banned_until(&"p", t + 600_001).is_none());
        // An incompatible peer is banned at once.
        assert!(matches!(
            s.penalize(&"q", Fault::Incompatible, t),
            Verdict::Ban { .. }
        ));
    }

    #[test]
    fn scores_recover_and_stay_bounded() {
        let mut s = PeerScores::new(ScoreConfig {
            max_peers: 10,
            ..ScoreConfig::default()
        });
        s.penalize(&0u32, Fault::BadData, 0);
        assert_eq!(s.score(&0, 0), -40.0);
        assert_eq!(s.score(&0, 20_000), -30.0);
        assert_eq!(s.score(&0, 1_000_000), 0.0);
        for i in 0..1_000u32 {
            s.penalize(&i, Fault::Timeout, 5_000);
        }
        assert!(s.scores.len() <= 10);
        // Bans are bounded too, and the evicted one is reported.
        let mut evicted = 0;
        for i in 0..25u32 {
            if s.ban(&(1_000 + i), 10_000 + u64::from(i)).is_some() {
                evicted += 1;
            }
        }
        assert_eq!(s.bans().count(), 10);
        assert_eq!(evicted, 15);
    }
}
