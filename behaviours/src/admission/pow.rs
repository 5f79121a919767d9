//! Hashcash-style admission, without I/O. The gate (a relay) issues a challenge: a random
//! nonce, a difficulty in bits and an expiry. The peer searches a counter such that the
//! blake3 digest of the challenge, its own peer id and the counter starts with that many
//! zero bits, and sends it back. The gate checks one hash, and admits the peer for a while.
//!
//! Binding the digest to the peer id stops one solution from admitting many identities;
//! each nonce redeems once (a replayed proof is refused), and a challenge is only good
//! until its expiry, so solutions cannot be stockpiled.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Separates our digests from any other use of blake3 on the same bytes.
const DOMAIN: &[u8] = b"chainmesh admission v1";
pub const NONCE_BYTES: usize = 16;
/// Most difficulty a gate may ask and a client agrees to solve: 2^32 hashes is hours.
pub const MAX_BITS: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub nonce: [u8; NONCE_BYTES],
    pub bits: u32,
    pub expires_ms: u64,
}

impl Challenge {
    fn digest(&self, peer: &[u8], counter: u64) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN);
        h.update(&self.nonce);
        h.update(&self.bits.to_le_bytes());
        h.update(&self.expires_ms.to_le_bytes());
        h.update(&(peer.len() as u32).to_le_bytes());
        h.update(peer);
        h.update(&counter.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// Whether `counter` solves this challenge for `peer` (its peer id bytes).
    pub fn is_solved_by(&self, peer: &[u8], counter: u64) -> bool {
        leading_zero_bits(&self.digest(peer, counter)) >= self.bits
    }

    /// Searches a solution, trying at most `max_tries` counters. Expected tries: 2^bits.
    pub fn solve(&self, peer: &[u8], max_tries: u64) -> Option<u64> {
        (0..max_tries).find(|c| self.is_solved_by(peer, *c))
    }
}

pub fn leading_zero_bits(d: &[u8; 32]) -> u32 {
    let mut n = 0;
    for b in d {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateConfig {
    pub bits: u32,
    /// How long a challenge may be answered.
    pub challenge_ms: u64,
    /// How long an admission lasts.
    pub admitted_ms: u64,
    /// Most challenges outstanding at once (the oldest is forgotten first).
    pub max_pending: usize,
    /// Most peers admitted at once (the admission ending first is dropped first).
    pub max_admitted: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            bits: 20,
            challenge_ms: 60_000,
            admitted_ms: 3_600_000,
            max_pending: 4096,
            max_admitted: 4096,
        }
    }
}

/// Why a proof was refused; the text goes back to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown challenge: ask for one first")]
    Unknown,
    #[error("challenge already used: a proof redeems once")]
    Replayed,
    #[error("challenge expired {0} ms ago: ask for a new one")]
    Expired(u64),
    #[error("challenge was issued to another peer")]
    WrongPeer,
    #[error("proof does not have {0} leading zero bits")]
    Insufficient(u32),
}

struct Pending<P> {
    peer: P,
    challenge: Challenge,
}

/// The gate's side: challenges issued, nonces used, peers admitted. Every map is
/// bounded by the config, so a peer asking for challenges in a loop costs us a fixed
/// amount of memory.
pub struct Gate<P> {
    cfg: GateConfig,
    pending: HashMap<[u8; NONCE_BYTES], Pending<P>>,
    /// Issue order, to forget the oldest challenge first.
    order: VecDeque<[u8; NONCE_BYTES]>,
    /// Nonces redeemed, until their challenge would have expired anyway.
    used: HashMap<[u8; NONCE_BYTES], u64>,
    used_order: VecDeque<[u8; NONCE_BYTES]>,
    admitted: HashMap<P, u64>,
}

impl<P: Clone + Eq + Hash> Gate<P> {
    pub fn new(cfg: GateConfig) -> Self {
        Gate {
            cfg,
            pending: HashMap::new(),
            order: VecDeque::new(),
            used: HashMap::new(),
            used_order: VecDeque::new(),
            admitted: HashMap::new(),
        }
    }

    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    /// A new challenge for `peer`, with a nonce the caller drew at random.
    pub fn issue(&mut self, peer: P, nonce: [u8; NONCE_BYTES], now_ms: u64) -> Challenge {
        self.expire(now_ms);
        while self.pending.len() >= self.cfg.max_pending.max(1) {
            match self.order.pop_front() {
                Some(old) => {
                    self.pending.remove(&old);
                }
                None => break,
            }
        }
        let challenge = Challenge {
            nonce,
            bits: self.cfg.bits.min(MAX_BITS),
            expires_ms: now_ms.saturating_add(self.cfg.challenge_ms),
        };
        if self
            .pending
            .insert(nonce, Pending { peer, challenge })
            .is_none()
        {
            self.order.push_back(nonce);
        }
        challenge
    }

    /// Checks a proof from `peer` (whose id bytes the digest covers); on success the peer
    /// is admitted until the returned time.
    pub fn redeem(
        &mut self,
        peer: &P,
        peer_bytes: &[u8],
        nonce: [u8; NONCE_BYTES],
        counter: u64,
        now_ms: u64,
    ) -> Result<u64, Refusal> {
        if self.used.contains_key(&nonce) {
            return Err(Refusal::Replayed);
        }
        let Some(p) = self.pending.get(&nonce) else {
            return Err(Refusal::Unknown);
        };
        if p.peer != *peer {
            return Err(Refusal::WrongPeer);
        }
        let c = p.challenge;
        if now_ms > c.expires_ms {
            self.pending.remove(&nonce);
            return Err(Refusal::Expired(now_ms - c.expires_ms));
        }
        if !c.is_solved_by(peer_bytes, counter) {
            return Err(Refusal::Insufficient(c.bits));
        }
        self.pending.remove(&nonce);
        self.used.insert(nonce, c.expires_ms);
        self.used_order.push_back(nonce);
        let until = now_ms.saturating_add(self.cfg.admitted_ms);
        if !self.admitted.contains_key(peer) && self.admitted.len() >= self.cfg.max_admitted.max(1)
        {
            let first = self
                .admitted
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(p, _)| p.clone());
            if let Some(first) = first {
                self.admitted.remove(&first);
            }
        }
        self.admitted.insert(peer.clone(), until);
        Ok(until)
    }

    pub fn is_admitted(&self, peer: &P, now_ms: u64) -> bool {
        self.admitted.get(peer).is_some_and(|t| *t >= now_ms)
    }

    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }

    /// Forgets what has expired. Expired challenges are kept for one more lifetime, so a
    /// late proof hears "expired" rather than "unknown".
    pub fn expire(&mut self, now_ms: u64) {
        let keep_until = |expires: u64, life: u64| expires.saturating_add(life) >= now_ms;
        while let Some(n) = self.order.front() {
            match self.pending.get(n) {
                Some(p) if keep_until(p.challenge.expires_ms, self.cfg.challenge_ms) => break,
                _ => {
                    let n = *n;
                    self.order.pop_front();
                    self.pending.remove(&n);
                }
            }
        }
        while let Some(n) = self.used_order.front() {
            match self.used.get(n) {
                Some(e) if keep_until(*e, self.cfg.challenge_ms) => break,
                _ => {
                    let n = *n;
                    self.used_order.pop_front();
                    self.used.remove(&n);
                }
            }
        }
        self.admitted.retain(|_, t| *t >= now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(bits: u32) -> Gate<Vec<u8>> {
        Gate::new(GateConfig {
            bits,
            challenge_ms: 1_000,
            admitted_ms: 10_000,
            max_pending: 4,
            max_admitted: 2,
        })
    }

    #[test]
    fn a_solved_challenge_admits_its_peer_once() {
        let mut g = gate(8);
        let peer = b"peer-a".to_vec();
        let c = g.issue(peer.clone(), [1; 16], 100);
        let counter = c.solve(&peer, 1 << 20).unwrap();
        assert!(!g.is_admitted(&peer, 100));
        assert_eq!(g.redeem(&peer, &peer, c.nonce, counter, 200), Ok(10_200));
        assert!(g.is_admitted(&peer, 10_200));
        assert!(!g.is_admitted(&peer, 10_201));
        assert_eq!(
            g.redeem(&peer, &peer, c.nonce, counter, 300),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn wrong_peer_late_or_unsolved_proofs_are_refused() {
        let mut g = gate(12);
        let (a, b) = (b"peer-a".to_vec(), b"peer-b".to_vec());
        let c = g.issue(a.clone(), [2; 16], 0);
        let counter = c.solve(&a, 1 << 24).unwrap();
        // Someone else presenting a's solution.
        assert_eq!(
            g.redeem(&b, &b, c.nonce, counter, 10),
            Err(Refusal::WrongPeer)
        );
        // A counter that does not solve it (the solution is the first that does).
        if counter > 0 {
            assert_eq!(
                g.redeem(&a, &a, c.nonce, counter - 1, 10),
                Err(Refusal::Insufficient(12))
            );
        }
        assert_eq!(
            g.redeem(&a, &a, [9; 16], counter, 10),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            g.redeem(&a, &a, c.nonce, counter, 1_500),
            Err(Refusal::Expired(500))
        );
        assert!(!g.is_admitted(&a, 1_500));
    }

    #[test]
    fn digests_bind_the_peer_and_the_challenge() {
        let c = Challenge {
            nonce: [3; 16],
            bits: 10,
            expires_ms: 5,
        };
        let n = c.solve(b"a", 1 << 20).unwrap();
        // The same counter for another peer, or a challenge with fewer bits claimed, is
        // a different digest: it solves by chance only (probability 2^-10 each).
        let other = Challenge { bits: 9, ..c };
        assert_ne!(c.digest(b"a", n), c.digest(b"b", n));
        assert_ne!(c.digest(b"a", n), other.digest(b"a", n));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_requests() {
        let mut g = gate(8);
        for i in 0..1_000u32 {
            let mut nonce = [0; 16];
            nonce[..4].copy_from_slice(&i.to_le_bytes());
            g.issue(format!("p{i}").into_bytes(), nonce, 0);
        }
        assert!(g.pending.len() <= 4 && g.order.len() <= 4);
        // Admissions beyond the cap push out the one ending first.
        for (i, t) in [(0u8, 0u64), (1, 10), (2, 20)] {
            let p = vec![i];
            let c = g.issue(p.clone(), [100 + i; 16], t);
            let n = c.solve(&p, 1 << 20).unwrap();
            g.redeem(&p, &p, c.nonce, n, t).unwrap();
        }
        assert_eq!(g.admitted(), 2);
        assert!(!g.is_admitted(&vec![0], 20));
        assert!(g.is_admitted(&vec![2], 20));
        // Everything expires.
        g.expire(100_000);
        assert_eq!((g.pending.len(), g.used.len(), g.admitted()), (0, 0, 0));
    }

    #[test]
    fn leading_zeros_are_counted_across_bytes() {
        let mut d = [0u8; 32];
        d[2] = 0b0001_0000;
        assert_eq!(leading_zero_bits(&d), 19);
        assert_eq!(leading_zero_bits(&[0; 32]), 256);
    }
}
