//! Hashcash-style admission, without I/O. The gate (a relay) issues a challenge: a nonce,
//! a difficulty in bits and an expiry. The peer searches a counter such that the blake3
//! digest of the challenge, its own peer id and the counter starts with that many zero
//! bits, and sends it back. The gate admits the peer for a while.
//!
//! Issuing a challenge stores nothing: its nonce is its expiry and a MAC (keyed blake3,
//! the gate's secret) of the expiry and the peer id, so the gate recognises its own
//! challenges by recomputing the MAC. A flood of challenge requests therefore costs no
//! memory and cannot push an honest peer's challenge out of a table; a proof costs at most
//! two hashes to check (the MAC, then the work), garbage one.
//!
//! Binding the MAC and the digest to the peer id stops one solution from admitting many
//! identities; each nonce redeems once (a replayed proof is refused; only solved proofs
//! are remembered, until their expiry), and a challenge is only good until its expiry, so
//! solutions cannot be stockpiled.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Separates our digests from any other use of blake3 on the same bytes.
const DOMAIN: &[u8] = b"chainmesh admission v1";
const MAC_DOMAIN: &[u8] = b"chainmesh admission challenge v1";
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
    /// Most redeemed nonces remembered at once (the oldest is forgotten first; each took
    /// a solved proof to get here).
    pub max_used: usize,
    /// Most peers admitted at once (the admission ending first is dropped first).
    pub max_admitted: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            bits: 20,
            challenge_ms: 60_000,
            admitted_ms: 3_600_000,
            max_used: 4096,
            max_admitted: 4096,
        }
    }
}

/// Why a proof was refused; the text goes back to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown challenge (not issued by this gate to this peer): ask for one")]
    Unknown,
    #[error("challenge already used: a proof redeems once")]
    Replayed,
    #[error("challenge expired {0} ms ago: ask for a new one")]
    Expired(u64),
    #[error("proof does not have {0} leading zero bits")]
    Insufficient(u32),
}

/// The gate's side: its secret, the nonces redeemed and the peers admitted, both bounded
/// by the config; challenges issued are not kept.
pub struct Gate<P> {
    cfg: GateConfig,
    key: [u8; 32],
    /// Nonces redeemed, until their challenge expires.
    used: HashMap<[u8; NONCE_BYTES], u64>,
    used_order: VecDeque<[u8; NONCE_BYTES]>,
    admitted: HashMap<P, u64>,
}

impl<P: Clone + Eq + Hash> Gate<P> {
    /// `key`: the secret of the challenges' MACs, drawn at random by the caller (a
    /// restart makes earlier challenges unknown, which only asks their peers for a new one).
    pub fn new(cfg: GateConfig, key: [u8; 32]) -> Self {
        Gate {
            cfg,
            key,
            used: HashMap::new(),
            used_order: VecDeque::new(),
            admitted: HashMap::new(),
        }
    }

    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    fn mac(&self, peer: &[u8], expires_ms: u64) -> [u8; NONCE_BYTES - 8] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(MAC_DOMAIN);
        h.update(&expires_ms.to_le_bytes());
        h.update(&(peer.len() as u32).to_le_bytes());
        h.update(peer);
        let mut mac = [0; NONCE_BYTES - 8];
        mac.copy_from_slice(&h.finalize().as_bytes()[..NONCE_BYTES - 8]);
        mac
    }

    fn challenge(&self, nonce: [u8; NONCE_BYTES], expires_ms: u64) -> Challenge {
        Challenge {
            nonce,
            bits: self.cfg.bits.min(MAX_BITS),
            expires_ms,
        }
    }

    /// A new challenge for the peer whose id bytes are `peer`.
    pub fn issue(&self, peer: &[u8], now_ms: u64) -> Challenge {
        let expires_ms = now_ms.saturating_add(self.cfg.challenge_ms);
        let mut nonce = [0; NONCE_BYTES];
        nonce[..8].copy_from_slice(&expires_ms.to_le_bytes());
        nonce[8..].copy_from_slice(&self.mac(peer, expires_ms));
        self.challenge(nonce, expires_ms)
    }

    /// Checks a proof from `peer` (whose id bytes the MAC and the digest cover); on
    /// success the peer is admitted until the returned time.
    pub fn redeem(
        &mut self,
        peer: &P,
        peer_bytes: &[u8],
        nonce: [u8; NONCE_BYTES],
        counter: u64,
        now_ms: u64,
    ) -> Result<u64, Refusal> {
        let mut e = [0; 8];
        e.copy_from_slice(&nonce[..8]);
        let expires_ms = u64::from_le_bytes(e);
        if nonce[8..] != self.mac(peer_bytes, expires_ms) {
            return Err(Refusal::Unknown);
        }
        if self.used.contains_key(&nonce) {
            return Err(Refusal::Replayed);
        }
        if now_ms > expires_ms {
            return Err(Refusal::Expired(now_ms - expires_ms));
        }
        let c = self.challenge(nonce, expires_ms);
        if !c.is_solved_by(peer_bytes, counter) {
            return Err(Refusal::Insufficient(c.bits));
        }
        self.expire(now_ms);
        if self.used.len() >= self.cfg.max_used.max(1)
            && let Some(old) = self.used_order.pop_front()
        {
            self.used.remove(&old);
        }
        self.used.insert(nonce, expires_ms);
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

    /// Nonces remembered as redeemed.
    pub fn used(&self) -> usize {
        self.used.len()
    }

    /// Forgets what has expired: a redeemed nonce once its challenge has (a replay then
    /// hears "expired"), an admission once it ends.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(n) = self.used_order.front() {
            match self.used.get(n) {
                Some(e) if *e >= now_ms => break,
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
        Gate::new(
            GateConfig {
                bits,
                challenge_ms: 1_000,
                admitted_ms: 10_000,
                max_used: 4,
                max_admitted: 2,
            },
            [7; 32],
        )
    }

    #[test]
    fn a_solved_challenge_admits_its_peer_once() {
        let mut g = gate(8);
        let peer = b"peer-a".to_vec();
        let c = g.issue(&peer, 100);
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
    fn wrong_peer_forged_late_or_unsolved_proofs_are_refused() {
        let mut g = gate(12);
        let (a, b) = (b"peer-a".to_vec(), b"peer-b".to_vec());
        let c = g.issue(&a, 0);
        let counter = c.solve(&a, 1 << 24).unwrap();
        // Someone else presenting a's challenge: its MAC is a's.
        assert_eq!(
            g.redeem(&b, &b, c.nonce, counter, 10),
            Err(Refusal::Unknown)
        );
        // A counter that does not solve it (the solution is the first that does).
        if counter > 0 {
            assert_eq!(
                g.redeem(&a, &a, c.nonce, counter - 1, 10),
                Err(Refusal::Insufficient(12))
            );
        }
        // A nonce we never issued; one whose expiry was moved later (its MAC no longer
        // matches); one from a gate with another key.
        assert_eq!(
            g.redeem(&a, &a, [9; 16], counter, 10),
            Err(Refusal::Unknown)
        );
        let mut later = c.nonce;
        later[..8].copy_from_slice(&5_000u64.to_le_bytes());
        assert_eq!(g.redeem(&a, &a, later, counter, 10), Err(Refusal::Unknown));
        let other = Gate::<Vec<u8>>::new(g.config().clone(), [8; 32]).issue(&a, 0);
        assert_eq!(g.redeem(&a, &a, other.nonce, 0, 10), Err(Refusal::Unknown));
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
    fn challenges_cost_no_memory_and_what_is_kept_stays_bounded() {
        let mut g = gate(8);
        // A million challenges issued and a million garbage proofs: nothing kept.
        for i in 0..1_000_000u32 {
            let p = i.to_le_bytes();
            let c = g.issue(&p, 0);
            let mut forged = c.nonce;
            forged[15] ^= 1;
            assert_eq!(
                g.redeem(&p.to_vec(), &p, forged, 0, 0),
                Err(Refusal::Unknown)
            );
        }
        assert_eq!((g.used(), g.admitted()), (0, 0));
        // Solved ones are kept, within the caps: admissions beyond the cap push out the
        // one ending first, redeemed nonces beyond theirs the oldest.
        for (i, t) in [(0u8, 0u64), (1, 10), (2, 20), (3, 30), (4, 40)] {
            let p = vec![i];
            let c = g.issue(&p, t);
            let n = c.solve(&p, 1 << 20).unwrap();
            g.redeem(&p, &p, c.nonce, n, t).unwrap();
        }
        assert_eq!((g.used(), g.admitted()), (4, 2));
        assert!(!g.is_admitted(&vec![0], 40));
        assert!(g.is_admitted(&vec![4], 40));
        // Everything expires.
        g.expire(100_000);
        assert_eq!((g.used(), g.admitted()), (0, 0));
    }

    #[test]
    fn leading_zeros_are_counted_across_bytes() {
        let mut d = [0u8; 32];
        d[2] = 0b0001_0000;
        assert_eq!(leading_zero_bits(&d), 19);
        assert_eq!(leading_zero_bits(&[0; 32]), 256);
    }
}
