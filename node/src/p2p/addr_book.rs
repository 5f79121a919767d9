//! Known peer addresses, kept in the `addrs` sled tree so they survive restarts.
//!
//! An address is *confirmed* once we dialled it and the connection came up; only
//! confirmed addresses are given to other peers (pex), so one liar cannot make the
//! network pass its inventions around. Addresses learned from peers wait, unconfirmed,
//! until we dial them. Failed dials back off exponentially; an entry that keeps failing
//! is forgotten. The book holds at most `max` peers: the least recently seen go first,
//! unconfirmed before confirmed.

use std::collections::HashMap;

use chainmesh_behaviours::pex::PeerRecord;
use chainmesh_proto::limits::MAX_PEX_ADDRS;
use libp2p::{Multiaddr, PeerId};

/// Failed dials after which an entry is dropped.
const MAX_FAILURES: u32 = 6;
const BASE_BACKOFF_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookEntry {
    /// Most recent first, at most [`MAX_PEX_ADDRS`].
    pub addrs: Vec<Multiaddr>,
    pub last_seen_ms: u64,
    pub confirmed: bool,
    pub failures: u32,
    pub retry_at_ms: u64,
}

pub struct AddrBook {
    tree: sled::Tree,
    entries: HashMap<PeerId, BookEntry>,
    max: usize,
}

fn encode(e: &BookEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + e.addrs.len() * 32);
    v.extend_from_slice(&e.last_seen_ms.to_be_bytes());
    v.push(u8::from(e.confirmed));
    for a in &e.addrs {
        let b = a.to_vec();
        v.extend_from_slice(&(b.len() as u16).to_be_bytes());
        v.extend_from_slice(&b);
    }
    v
}

fn decode(v: &[u8]) -> Option<BookEntry> {
    let last_seen_ms = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let confirmed = *v.get(8)? == 1;
    let mut rest = v.get(9..)?;
    let mut addrs = Vec::new();
    while !rest.is_empty() && addrs.len() < MAX_PEX_ADDRS {
        let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let a = Multiaddr::try_from(rest.get(2..2 + len)?.to_vec()).ok()?;
        addrs.push(a);
        rest = &rest[2 + len..];
    }
    Some(BookEntry {
        addrs,
        last_seen_ms,
        confirmed,
        failures: 0,
        retry_at_ms: 0,
    })
}

impl AddrBook {
    /// Loads the book; entries that do not decode are removed (logged, not fatal).
    pub fn open(tree: sled::Tree, max: usize) -> Result<AddrBook, sled::Error> {
        let mut entries = HashMap::new();
        let mut bad = Vec::new();
        for r in tree.iter() {
            let (k, v) = r?;
            match (PeerId::from_bytes(&k), decode(&v)) {
                (Ok(p), Some(e)) => {
                    entries.insert(p, e);
                }
                _ => bad.push(k),
            }
        }
        if !bad.is_empty() {
            tracing::warn!(
                entries = bad.len(),
                "dropping unreadable address book entries"
            );
            for k in bad {
                tree.remove(k)?;
            }
        }
        let mut book = AddrBook { tree, entries, max };
        book.evict();
        Ok(book)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn confirmed(&self) -> usize {
        self.entries.values().filter(|e| e.confirmed).count()
    }

    #[cfg(test)]
    pub fn get(&self, peer: &PeerId) -> Option<&BookEntry> {
        self.entries.get(peer)
    }

    /// We dialled `addr` and reached `peer`.
    pub fn confirm(&mut self, peer: PeerId, addr: Multiaddr, now_ms: u64) {
        let e = self.entries.entry(peer).or_insert_with(|| BookEntry {
            addrs: Vec::new(),
            last_seen_ms: now_ms,
            confirmed: true,
            failures: 0,
            retry_at_ms: 0,
        });
        e.addrs.retain(|a| *a != addr);
        e.addrs.insert(0, addr);
        e.addrs.truncate(MAX_PEX_ADDRS);
        e.last_seen_ms = now_ms;
        e.confirmed = true;
        e.failures = 0;
        e.retry_at_ms = 0;
        self.persist(&peer);
        self.evict();
    }

    /// A peer told us about another; kept unconfirmed until we reach it ourselves.
    pub fn learn(&mut self, r: PeerRecord, now_ms: u64) {
        if r.addrs.is_empty() {
            return;
        }
        let e = self.entries.entry(r.peer).or_insert_with(|| BookEntry {
            addrs: Vec::new(),
            last_seen_ms: 0,
            confirmed: false,
            failures: 0,
            retry_at_ms: 0,
        });
        if e.confirmed {
            // What we verified ourselves wins over hearsay.
            return;
        }
        for a in r.addrs {
            if !e.addrs.contains(&a) && e.addrs.len() < MAX_PEX_ADDRS {
                e.addrs.push(a);
            }
        }
        // A peer cannot make its records look fresher than now.
        e.last_seen_ms = e.last_seen_ms.max(r.last_seen_ms.min(now_ms));
        self.persist(&r.peer);
        self.evict();
    }

    pub fn dial_failed(&mut self, peer: &PeerId, now_ms: u64) {
        let Some(e) = self.entries.get_mut(peer) else {
            return;
        };
        e.failures += 1;
        if e.failures >= MAX_FAILURES {
            self.entries.remove(peer);
            let _ = self.tree.remove(peer.to_bytes());
            return;
        }
        e.retry_at_ms = now_ms + (BASE_BACKOFF_MS << e.failures.min(10));
    }

    /// Up to `n` peers to dial now, most recently seen first, confirmed before learned.
    pub fn candidates(
        &self,
        now_ms: u64,
        n: usize,
        skip: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .filter(|(p, e)| e.retry_at_ms <= now_ms && !e.addrs.is_empty() && !skip(p))
            .collect();
        v.sort_by_key(|(_, e)| {
            (
                std::cmp::Reverse(e.confirmed),
                std::cmp::Reverse(e.last_seen_ms),
            )
        });
        v.into_iter()
            .take(n)
            .map(|(p, e)| (*p, e.addrs.clone()))
            .collect()
    }

    /// Up to `n` confirmed records to give a peer, most recently seen first.
    pub fn records(&self, n: usize, skip: impl Fn(&PeerId) -> bool) -> Vec<PeerRecord> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .filter(|(p, e)| e.confirmed && !skip(p))
            .collect();
        v.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_seen_ms));
        v.into_iter()
            .take(n)
            .map(|(p, e)| PeerRecord {
                peer: *p,
                addrs: e.addrs.clone(),
                last_seen_ms: e.last_seen_ms,
            })
            .collect()
    }

    fn persist(&self, peer: &PeerId) {
        if let Some(e) = self.entries.get(peer)
            && let Err(err) = self.tree.insert(peer.to_bytes(), encode(e))
        {
            tracing::warn!(error = %err, "cannot store a peer address");
        }
    }

    fn evict(&mut self) {
        while self.entries.len() > self.max {
            let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| (e.confirmed, e.last_seen_ms))
                .map(|(p, _)| *p)
            else {
                return;
            };
            self.entries.remove(&victim);
            let _ = self.tree.remove(victim.to_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(dir: &std::path::Path, max: usize) -> AddrBook {
        let db = sled::open(dir).unwrap();
        AddrBook::open(db.open_tree("addrs").unwrap(), max).unwrap()
    }

    #[test]
    fn confirmed_addresses_persist_and_only_they_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        {
            let mut bk = book(dir.path(), 10);
            bk.confirm(a, addr.clone(), 100);
            bk.learn(
                PeerRecord {
                    peer: b,
                    addrs: vec!["/ip4/127.0.0.1/tcp/4002".parse().unwrap()],
                    last_seen_ms: u64::MAX,
                },
                200,
            );
            assert_eq!(bk.records(10, |_| false).len(), 1);
            assert_eq!(bk.get(&b).unwrap().last_seen_ms, 200);
        }
        let bk = book(dir.path(), 10);
        assert_eq!(bk.len(), 2);
        assert_eq!(bk.get(&a).unwrap().addrs, vec![addr]);
        assert!(bk.get(&a).unwrap().confirmed && !bk.get(&b).unwrap().confirmed);
        assert_eq!(bk.candidates(0, 10, |_| false)[0].0, a);
    }

    #[test]
    fn failures_back_off_then_forget_and_the_book_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut bk = book(dir.path(), 3);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            bk.confirm(*p, "/ip4/127.0.0.1/tcp/1".parse().unwrap(), i as u64);
        }
        assert_eq!(bk.len(), 3);
        assert!(bk.get(&peers[0]).is_none() && bk.get(&peers[4]).is_some());
        bk.dial_failed(&peers[4], 1_000);
        assert!(
            bk.candidates(1_000, 10, |_| false)
                .iter()
                .all(|(p, _)| *p != peers[4])
        );
        for _ in 0..MAX_FAILURES {
            bk.dial_failed(&peers[4], 1_000);
        }
        assert!(bk.get(&peers[4]).is_none());
    }
}
