//! Account state transitions.
//!
//! State changes are computed on an [`Overlay`] over the stored accounts and written in
//! one batch only if the whole block (or reorg) is valid. The state root is a lattice
//! hash (LtHash, Bellare–Micciancio; 1024 lanes of 16 bits as in Meta's and Solana's
//! use): the sum of a per-account hash over all accounts. Adding or removing one account
//! is one hash and a vector addition, so a block's state root costs O(accounts touched),
//! not O(all accounts), and undoing a block is the inverse update.

use std::collections::BTreeMap;

use chainmesh_proto::{Account, Address, Hash, PublicKey, Tx, TxError};

const ELEMENT_TAG: &[u8] = b"chainmesh/account/v1\0";
const ROOT_TAG: &[u8] = b"chainmesh/stateroot/v1\0";
pub const LANES: usize = 1024;

/// Incremental multiset hash of `(address, account)` pairs.
#[derive(Clone, PartialEq, Eq)]
pub struct StateHash(Box<[u16; LANES]>);

impl std::fmt::Debug for StateHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateHash({})", self.root())
    }
}

impl StateHash {
    pub const ENCODED_LEN: usize = LANES * 2;

    pub fn empty() -> StateHash {
        StateHash(Box::new([0; LANES]))
    }

    fn element(addr: &Address, acct: &Account) -> [u16; LANES] {
        let mut h = blake3::Hasher::new();
        h.update(ELEMENT_TAG);
        h.update(&addr.0);
        h.update(&acct.encode());
        let mut bytes = [0u8; LANES * 2];
        h.finalize_xof().fill(&mut bytes);
        let mut out = [0u16; LANES];
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = u16::from_le_bytes([c[0], c[1]]);
        }
        out
    }

    pub fn add(&mut self, addr: &Address, acct: &Account) {
        for (l, e) in self.0.iter_mut().zip(Self::element(addr, acct)) {
            *l = l.wrapping_add(e);
        }
    }

    pub fn remove(&mut self, addr: &Address, acct: &Account) {
        for (l, e) in self.0.iter_mut().zip(Self::element(addr, acct)) {
            *l = l.wrapping_sub(e);
        }
    }

    pub fn root(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(ROOT_TAG);
        h.update(&self.encode());
        Hash(*h.finalize().as_bytes())
    }

    pub fn encode(&self) -> Vec<u8> {
        self.0.iter().flat_map(|l| l.to_le_bytes()).collect()
    }

    pub fn decode(b: &[u8]) -> Option<StateHash> {
        if b.len() != Self::ENCODED_LEN {
            return None;
        }
        let mut out = Box::new([0u16; LANES]);
        for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
            *o = u16::from_le_bytes([c[0], c[1]]);
        }
        Some(StateHash(out))
    }
}

/// Read access to committed account state.
pub trait AccountReader {
    type Error;
    fn read_account(&self, addr: &Address) -> Result<Option<Account>, Self::Error>;
}

impl AccountReader for BTreeMap<Address, Account> {
    type Error = std::convert::Infallible;
    fn read_account(&self, addr: &Address) -> Result<Option<Account>, Self::Error> {
        Ok(self.get(addr).copied())
    }
}

/// What to restore to undo one block: each touched address and its value before the
/// block (`None`: the account did not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UndoRecord(pub Vec<(Address, Option<Account>)>);

impl UndoRecord {
    const VERSION: u8 = 1;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.0.len() * 49);
        out.push(Self::VERSION);
        for (addr, prev) in &self.0 {
            out.extend_from_slice(&addr.0);
            match prev {
                Some(a) => {
                    out.push(1);
                    out.extend_from_slice(&a.encode());
                }
                None => out.push(0),
            }
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<UndoRecord> {
        let (&v, mut rest) = b.split_first()?;
        if v != Self::VERSION {
            return None;
        }
        let mut out = Vec::new();
        while !rest.is_empty() {
            let addr = PublicKey::from_slice(rest.get(..32)?)?;
            let tag = *rest.get(32)?;
            rest = &rest[33..];
            let prev = match tag {
                0 => None,
                1 => {
                    let a = Account::decode(rest.get(..Account::ENCODED_LEN)?)?;
                    rest = &rest[Account::ENCODED_LEN..];
                    Some(a)
                }
                _ => return None,
            };
            out.push((addr, prev));
        }
        Some(UndoRecord(out))
    }
}

/// Uncommitted account changes on top of a reader, with the state hash they lead to.
///
/// The hash is brought up to date per account, not per write, and only for accounts
/// changed since it was last asked for: an account written by many transactions costs
/// one removal and one addition, and asking once per block of a long run of blocks costs
/// what that block changed, not everything before it.
pub struct Overlay<'a, R> {
    base: &'a R,
    changes: BTreeMap<Address, Option<Account>>,
    /// The hash as of the last [`Overlay::hash`].
    hash: StateHash,
    /// Accounts changed since then, with their value at that time.
    stale: BTreeMap<Address, Option<Account>>,
}

impl<'a, R: AccountReader> Overlay<'a, R> {
    pub fn new(base: &'a R, hash: StateHash) -> Self {
        Overlay {
            base,
            changes: BTreeMap::new(),
            hash,
            stale: BTreeMap::new(),
        }
    }

    pub fn get(&self, addr: &Address) -> Result<Option<Account>, R::Error> {
        match self.changes.get(addr) {
            Some(v) => Ok(*v),
            None => self.base.read_account(addr),
        }
    }

    /// Sets (or, with `None`, deletes) an account.
    pub fn put(&mut self, addr: Address, new: Option<Account>) -> Result<(), R::Error> {
        if !self.stale.contains_key(&addr) {
            let old = self.get(&addr)?;
            self.stale.insert(addr, old);
        }
        self.changes.insert(addr, new);
        Ok(())
    }

    /// The state hash with every change so far.
    pub fn hash(&mut self) -> StateHash {
        for (addr, old) in std::mem::take(&mut self.stale) {
            let new = self.changes.get(&addr).copied().flatten();
            if old != new {
                if let Some(o) = &old {
                    self.hash.remove(&addr, o);
                }
                if let Some(n) = &new {
                    self.hash.add(&addr, n);
                }
            }
        }
        self.hash.clone()
    }

    pub fn into_parts(mut self) -> (BTreeMap<Address, Option<Account>>, StateHash) {
        let h = self.hash();
        (self.changes, h)
    }

    /// Restores the accounts an undo record names.
    pub fn undo(&mut self, rec: &UndoRecord) -> Result<(), R::Error> {
        for (addr, prev) in rec.0.iter().rev() {
            self.put(*addr, *prev)?;
        }
        Ok(())
    }
}

/// Why a transaction could not be applied: its own fault, or the store's.
#[derive(Debug)]
pub enum ApplyError<E> {
    Tx(TxError),
    Store(E),
}

/// Applies one transaction: the sender pays `amount + fee` and its nonce moves on, the
/// receiver gets `amount`, the producer gets `fee`. Records first-touch values in `undo`.
/// Whether [`apply_tx`] verifies the signature, or the caller already has (batch
/// verification ahead of import, or a transaction admitted to the mempool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigCheck {
    Verify,
    AlreadyVerified,
}

pub fn apply_tx<R: AccountReader>(
    ov: &mut Overlay<'_, R>,
    tx: &Tx,
    chain: &Hash,
    min_fee: u64,
    producer: &PublicKey,
    undo: &mut UndoRecord,
    sig: SigCheck,
) -> Result<(), ApplyError<R::Error>> {
    match sig {
        SigCheck::Verify => tx.check_stateless(chain, min_fee),
        SigCheck::AlreadyVerified => tx.check_stateless_unsigned(min_fee),
    }
    .map_err(ApplyError::Tx)?;
    let cost = tx.cost().map_err(ApplyError::Tx)?;
    let from = ov
        .get(&tx.from)
        .map_err(ApplyError::Store)?
        .unwrap_or_default();
    if tx.nonce < from.nonce {
        return Err(ApplyError::Tx(TxError::NonceReused {
            expected: from.nonce,
            got: tx.nonce,
        }));
    }
    if tx.nonce > from.nonce {
        return Err(ApplyError::Tx(TxError::NonceGap {
            expected: from.nonce,
            got: tx.nonce,
        }));
    }
    if from.balance < cost {
        return Err(ApplyError::Tx(TxError::InsufficientBalance {
            needed: cost,
            available: from.balance,
        }));
    }
    // Check every credit before the first write, so a failing tx leaves no trace.
    let mut credits: Vec<(Address, u64)> = vec![(tx.to, tx.amount)];
    if tx.fee > 0 {
        credits.push((*producer, tx.fee));
    }
    let mut staged: BTreeMap<Address, Account> = BTreeMap::new();
    staged.insert(
        tx.from,
        Account {
            balance: from.balance - cost,
            nonce: from.nonce + 1,
        },
    );
    for (addr, amount) in credits {
        let cur = match staged.get(&addr) {
            Some(a) => *a,
            None => ov
                .get(&addr)
                .map_err(ApplyError::Store)?
                .unwrap_or_default(),
        };
        let balance = cur
            .balance
            .checked_add(amount)
            .ok_or(ApplyError::Tx(TxError::Overflow))?;
        staged.insert(addr, Account { balance, ..cur });
    }
    for (addr, acct) in staged {
        if !undo.0.iter().any(|(a, _)| *a == addr) {
            let prev = ov.get(&addr).map_err(ApplyError::Store)?;
            undo.0.push((addr, prev));
        }
        ov.put(addr, Some(acct)).map_err(ApplyError::Store)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmesh_proto::Keypair;

    #[test]
    fn state_hash_is_order_independent_and_invertible() {
        let a = (
            PublicKey([1; 32]),
            Account {
                balance: 5,
                nonce: 0,
            },
        );
        let b = (
            PublicKey([2; 32]),
            Account {
                balance: 7,
                nonce: 3,
            },
        );
        let mut x = StateHash::empty();
        x.add(&a.0, &a.1);
        x.add(&b.0, &b.1);
        let mut y = StateHash::empty();
        y.add(&b.0, &b.1);
        y.add(&a.0, &a.1);
        assert_eq!(x.root(), y.root());
        y.remove(&a.0, &a.1);
        assert_ne!(x.root(), y.root());
        y.remove(&b.0, &b.1);
        assert_eq!(y.root(), StateHash::empty().root());
        assert_eq!(StateHash::decode(&x.encode()).unwrap(), x);
    }

    #[test]
    fn apply_and_undo_restore_everything() {
        let k = Keypair::generate();
        let producer = PublicKey([9; 32]);
        let to = PublicKey([8; 32]);
        let mut base = BTreeMap::new();
        base.insert(
            k.public(),
            Account {
                balance: 100,
                nonce: 0,
            },
        );
        let mut h0 = StateHash::empty();
        h0.add(&k.public(), &base[&k.public()]);
        let chain = Hash::ZERO;
        let mut ov = Overlay::new(&base, h0.clone());
        let mut undo = UndoRecord::default();
        for n in 0..3 {
            let tx = Tx::transfer(&k, &chain, to, 10, 2, n);
            apply_tx(
                &mut ov,
                &tx,
                &chain,
                1,
                &producer,
                &mut undo,
                SigCheck::Verify,
            )
            .unwrap();
        }
        assert_eq!(
            ov.get(&k.public()).unwrap(),
            Some(Account {
                balance: 64,
                nonce: 3
            })
        );
        assert_eq!(
            ov.get(&to).unwrap(),
            Some(Account {
                balance: 30,
                nonce: 0
            })
        );
        assert_eq!(
            ov.get(&producer).unwrap(),
            Some(Account {
                balance: 6,
                nonce: 0
            })
        );
        assert_eq!(undo.0.len(), 3);
        assert_eq!(UndoRecord::decode(&undo.encode()).unwrap(), undo);
        ov.undo(&undo).unwrap();
        assert_eq!(ov.hash().root(), h0.root());
        assert_eq!(ov.get(&to).unwrap(), None);
    }

    #[test]
    fn self_transfer_pays_only_the_fee() {
        let k = Keypair::generate();
        let mut base = BTreeMap::new();
        base.insert(
            k.public(),
            Account {
                balance: 50,
                nonce: 0,
            },
        );
        let mut ov = Overlay::new(&base, StateHash::empty());
        let tx = Tx::transfer(&k, &Hash::ZERO, k.public(), 20, 1, 0);
        apply_tx(
            &mut ov,
            &tx,
            &Hash::ZERO,
            1,
            &PublicKey([9; 32]),
            &mut UndoRecord::default(),
            SigCheck::Verify,
        )
        .unwrap();
        assert_eq!(
            ov.get(&k.public()).unwrap(),
            Some(Account {
                balance: 49,
                nonce: 1
            })
        );
    }

    #[test]
    fn failing_tx_leaves_no_trace() {
        let k = Keypair::generate();
        let to = PublicKey([8; 32]);
        let mut base = BTreeMap::new();
        base.insert(
            k.public(),
            Account {
                balance: 10,
                nonce: 0,
            },
        );
        base.insert(
            to,
            Account {
                balance: u64::MAX - 1,
                nonce: 0,
            },
        );
        let mut ov = Overlay::new(&base, StateHash::empty());
        let tx = Tx::transfer(&k, &Hash::ZERO, to, 5, 1, 0);
        let mut undo = UndoRecord::default();
        let r = apply_tx(
            &mut ov,
            &tx,
            &Hash::ZERO,
            1,
            &PublicKey([9; 32]),
            &mut undo,
            SigCheck::Verify,
        );
        assert!(matches!(r, Err(ApplyError::Tx(TxError::Overflow))));
        assert!(undo.0.is_empty());
        assert_eq!(
            ov.get(&k.public()).unwrap(),
            Some(Account {
                balance: 10,
                nonce: 0
            })
        );
    }
}
