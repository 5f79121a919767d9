//! Peers' transactions that arrived before their sender's previous nonce.
//!
//! Gossip and pool sync do not keep one sender's transactions in order: nonce n+1 can
//! reach a node before n. The pool only holds gap-free chains per sender, so without this
//! buffer n+1 would be refused, and (gossip delivering each message once, pool sync's
//! cursor having moved past it) never offered again: that sender's later transactions
//! would all be refused in turn and never reach this node's blocks. Here they wait,
//! bounded in count, per sender and in time, until the gap fills (the missing nonce
//! arrives or a block includes it); then the pool takes them in order.
//!
//! Time here is whatever the caller counts in (the pool counts new tips: an orphan waits
//! at most so many blocks). Only transactions whose signatures were verified enter; nothing here is persisted
//! (they are peers' transactions: the peers still hold them).

use std::collections::{BTreeMap, HashMap};

use chainmesh_proto::{Address, Tx};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrphanLimits {
    pub max_total: usize,
    pub max_per_sender: usize,
    /// How long one waits for its gap to fill, in the caller's time unit.
    pub max_age: u64,
}

impl Default for OrphanLimits {
    fn default() -> Self {
        OrphanLimits {
            max_total: 4_096,
            max_per_sender: 256,
            // In new tips: two minutes of one-second slots.
            max_age: 120,
        }
    }
}

#[derive(Default)]
pub struct Orphans {
    limits: OrphanLimits,
    /// Per sender, by nonce: the transaction and its arrival sequence number.
    by_sender: HashMap<Address, BTreeMap<u64, (Tx, u64)>>,
    /// Arrival order, for expiry and for evicting the oldest when full.
    arrivals: BTreeMap<u64, (Address, u64, u64)>,
    next_seq: u64,
}

impl Orphans {
    pub fn new(limits: OrphanLimits) -> Orphans {
        Orphans {
            limits,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.arrivals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arrivals.is_empty()
    }

    /// Keeps `tx` until its gap fills. A second transaction for the same sender and
    /// nonce replaces the first only with a higher fee (as in the pool). When full, the
    /// oldest orphan goes; a sender at its own cap keeps its lower nonces (which fill
    /// first) and the newcomer is dropped if it is the highest.
    pub fn insert(&mut self, tx: Tx, now: u64) -> bool {
        self.expire(now);
        let (from, nonce) = (tx.from, tx.nonce);
        let mine = self.by_sender.entry(from).or_default();
        if let Some((old, seq)) = mine.get(&nonce) {
            if tx.fee <= old.fee {
                return false;
            }
            let seq = *seq;
            self.arrivals.remove(&seq);
            mine.remove(&nonce);
        }
        if mine.len() >= self.limits.max_per_sender {
            match mine.last_key_value().map(|(n, (_, s))| (*n, *s)) {
                Some((highest, seq)) if highest > nonce => {
                    mine.remove(&highest);
                    self.arrivals.remove(&seq);
                }
                _ => return false,
            }
        }
        while self.arrivals.len() >= self.limits.max_total {
            let Some((_, (a, n, _))) = self.arrivals.pop_first() else {
                break;
            };
            self.forget(&a, n);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_sender
            .entry(from)
            .or_default()
            .insert(nonce, (tx, seq));
        self.arrivals.insert(seq, (from, nonce, now));
        true
    }

    /// Takes the orphan of `sender` at `nonce`, dropping the sender's lower ones (their
    /// slots are taken: by the chain or by the pool).
    pub fn take(&mut self, sender: &Address, nonce: u64) -> Option<Tx> {
        let mine = self.by_sender.get_mut(sender)?;
        let stale: Vec<u64> = mine.range(..nonce).map(|(n, _)| *n).collect();
        for n in stale {
            if let Some((_, seq)) = mine.remove(&n) {
                self.arrivals.remove(&seq);
            }
        }
        let taken = mine.remove(&nonce).map(|(tx, seq)| {
            self.arrivals.remove(&seq);
            tx
        });
        if mine.is_empty() {
            self.by_sender.remove(sender);
        }
        taken
    }

    pub fn contains(&self, sender: &Address, nonce: u64) -> bool {
        self.by_sender
            .get(sender)
            .is_some_and(|m| m.contains_key(&nonce))
    }

    /// Whether `sender` has any orphan waiting.
    pub fn has_sender(&self, sender: &Address) -> bool {
        self.by_sender.contains_key(sender)
    }

    /// Drops orphans older than the age limit.
    pub fn expire(&mut self, now: u64) {
        while let Some((&seq, &(a, n, at))) = self.arrivals.first_key_value() {
            if now.saturating_sub(at) < self.limits.max_age {
                break;
            }
            self.arrivals.remove(&seq);
            self.forget(&a, n);
        }
    }

    fn forget(&mut self, sender: &Address, nonce: u64) {
        if let Some(mine) = self.by_sender.get_mut(sender) {
            mine.remove(&nonce);
            if mine.is_empty() {
                self.by_sender.remove(sender);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::{Hash, Keypair, PublicKey};

    fn tx(k: &Keypair, nonce: u64, fee: u64) -> Tx {
        Tx::transfer(k, &Hash::ZERO, PublicKey([7; 32]), 1, fee, nonce)
    }

    #[test]
    fn keeps_by_sender_and_nonce_and_takes_in_order() {
        let (a, b) = (Keypair::generate(), Keypair::generate());
        let mut o = Orphans::new(OrphanLimits::default());
        assert!(o.insert(tx(&a, 3, 1), 0));
        assert!(o.insert(tx(&a, 2, 1), 0));
        assert!(o.insert(tx(&b, 5, 1), 0));
        assert!(!o.insert(tx(&a, 2, 1), 0), "same fee does not replace");
        assert!(o.insert(tx(&a, 2, 2), 0), "a higher fee does");
        assert_eq!(o.len(), 3);
        assert_eq!(o.take(&a.public(), 1), None);
        assert_eq!(o.take(&a.public(), 2).map(|t| t.fee), Some(2));
        assert_eq!(o.take(&a.public(), 3).map(|t| t.nonce), Some(3));
        assert!(!o.has_sender(&a.public()));
        // Taking a higher nonce drops the lower, whose slot is gone.
        assert!(o.insert(tx(&b, 6, 1), 0));
        assert_eq!(o.take(&b.public(), 6).map(|t| t.nonce), Some(6));
        assert!(o.is_empty());
    }

    #[test]
    fn bounded_in_count_per_sender_and_time() {
        let limits = OrphanLimits {
            max_total: 4,
            max_per_sender: 2,
            max_age: 1_000,
        };
        let (a, b, c) = (
            Keypair::generate(),
            Keypair::generate(),
            Keypair::generate(),
        );
        let (pa, pb, pc) = (a.public(), b.public(), c.public());
        let mut o = Orphans::new(limits);
        assert!(o.insert(tx(&a, 10, 1), 0));
        assert!(o.insert(tx(&a, 12, 1), 10));
        // a is at its cap: a higher nonce is dropped, a lower one displaces the highest.
        assert!(!o.insert(tx(&a, 13, 1), 10));
        assert!(o.insert(tx(&a, 11, 1), 10));
        assert!(o.contains(&pa, 10) && o.contains(&pa, 11) && !o.contains(&pa, 12));
        assert!(o.insert(tx(&b, 1, 1), 20));
        assert!(o.insert(tx(&b, 2, 1), 30));
        assert_eq!(o.len(), 4);
        // Full: the oldest (a's 10) goes.
        assert!(o.insert(tx(&c, 1, 1), 40));
        assert_eq!(o.len(), 4);
        assert!(!o.contains(&pa, 10) && o.contains(&pa, 11));
        // Age: at 1,025 everything that arrived before 25 is gone.
        o.expire(1_025);
        assert_eq!(o.len(), 2);
        assert!(o.contains(&pb, 2) && o.contains(&pc, 1));
        assert!(!o.has_sender(&pa));
    }
}
