//! The confirmed accounts most recently read or committed, in memory, for the readers
//! outside the chain task (the gossip path checking a peer's transaction, the mempool,
//! the API).
//!
//! sled 0.34 serialises every multi-key write (a transaction or a batch) behind one
//! process-wide lock that also stops every read of every tree: while a block is being
//! committed, an account read waits for the whole commit, and a transaction that
//! arrives then is forwarded only after it. The store writes each commit's changed
//! accounts here right after the commit, so the accounts in use — senders with
//! transactions in flight, recent recipients — are answered without sled.

use std::sync::{Mutex, MutexGuard, PoisonError};

use chainmesh_proto::{Account, Address};
use hashlink::LruCache;

/// About 6 MB: senders of a full mempool (50,000 transactions, up to 1,000 per sender)
/// and the recipients of the last few thousand blocks' transactions.
pub const DEFAULT_CAPACITY: usize = 65_536;

pub struct AccountCache {
    inner: Mutex<Inner>,
}

struct Inner {
    map: LruCache<Address, Account>,
    /// Counts commits: a value read from sled before a commit may be older than it.
    generation: u64,
}

impl AccountCache {
    pub fn new(capacity: usize) -> Self {
        AccountCache {
            inner: Mutex::new(Inner {
                map: LruCache::new(capacity.max(1)),
                generation: 0,
            }),
        }
    }

    /// Every operation completes or does not start under the lock: a panic elsewhere
    /// while it was held leaves a consistent map.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, addr: &Address) -> Option<Account> {
        self.lock().map.get(addr).copied()
    }

    /// To pass to [`AccountCache::fill`] with what is read from sled after this call.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `account`, read from sled after [`AccountCache::generation`] returned
    /// `seen`, unless a commit happened since: the read may predate it, and the commit
    /// wrote its own value of every account it changed.
    pub fn fill(&self, addr: Address, account: Account, seen: u64) {
        let mut inner = self.lock();
        if inner.generation == seen && !inner.map.contains_key(&addr) {
            inner.map.insert(addr, account);
        }
    }

    /// After a commit: the accounts it changed, as now stored (`None`: removed, which
    /// reads as the default account).
    pub fn committed<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a Address, Option<&'a Account>)>,
    ) {
        let mut inner = self.lock();
        inner.generation += 1;
        for (addr, account) in changes {
            inner
                .map
                .insert(*addr, account.copied().unwrap_or_default());
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::PublicKey;

    fn acct(balance: u64) -> Account {
        Account {
            balance,
            ..Account::default()
        }
    }

    #[test]
    fn a_read_that_may_predate_a_commit_is_not_kept() {
        let c = AccountCache::new(8);
        let a = PublicKey([1; 32]);
        let seen = c.generation();
        // The chain commits a new balance while a reader holds the old one from sled.
        c.committed([(&a, Some(&acct(5)))]);
        c.fill(a, acct(9), seen);
        assert_eq!(c.get(&a), Some(acct(5)));
        // A read after the commit is kept; a removed account reads as the default.
        let b = PublicKey([2; 32]);
        let seen = c.generation();
        c.fill(b, acct(7), seen);
        assert_eq!(c.get(&b), Some(acct(7)));
        c.committed([(&b, None)]);
        assert_eq!(c.get(&b), Some(Account::default()));
    }

    #[test]
    fn it_holds_at_most_its_capacity() {
        let c = AccountCache::new(4);
        for i in 0..10u8 {
            c.committed([(&PublicKey([i; 32]), Some(&acct(i.into())))]);
        }
        assert_eq!(c.len(), 4);
        assert_eq!(c.get(&PublicKey([9; 32])), Some(acct(9)));
        assert_eq!(c.get(&PublicKey([0; 32])), None);
    }
}
