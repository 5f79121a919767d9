//! The block store on sled.
//!
//! Trees (see docs/architecture.md for the byte layout):
//! - `blocks`: block hash → protobuf block (canonical and side-chain blocks)
//! - `canonical`: height (u64 BE) → block hash, for the canonical chain only
//! - `accounts`: address → account (balance u64 BE ‖ nonce u64 BE)
//! - `undo`: block hash → undo record, for canonical blocks
//! - `tx_index`: tx id → hash of the canonical block that includes it
//! - `meta`: `schema_version`, `genesis`, `tip`, `state_hash`
//!
//! One writer (the node's chain task) owns the `Store`; every change of the canonical
//! chain (a block on the tip, a run of them, or a reorg) is one multi-tree sled
//! transaction, so a crash leaves either the old tip with its state or the new one with
//! its state. The tx index of new blocks is written just before that transaction (a
//! plain batch is far cheaper for thousands of entries); readers believe an entry only if
//! its block is canonical. A tip is
//! durable once [`Store::flush`] returns: the node reports a tip only after that.

use std::path::Path;
use std::sync::Arc;

use chainmesh_proto::{
    Account, Address, Block, Hash, Header, Keypair, Signature, Tx, TxError, wire,
};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::account_cache::{self, AccountCache};
use crate::genesis::{Genesis, GenesisError};
use crate::rules::{self, BlockError};
use crate::state::{AccountReader, ApplyError, Overlay, SigCheck, StateHash, UndoRecord, apply_tx};

/// Bumped whenever the on-disk layout changes.
pub const SCHEMA_VERSION: u32 = 1;
/// Deepest reorg the store performs; a deeper fork needs operator attention.
pub const DEFAULT_MAX_REORG_DEPTH: u64 = 1_000;

const META_SCHEMA: &[u8] = b"schema_version";
const META_GENESIS: &[u8] = b"genesis";
const META_TIP: &[u8] = b"tip";
const META_STATE: &[u8] = b"state_hash";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error(
        "the store was written with schema version {found}, this build reads version {expected}; \
         use a chainmesh build that matches, or move the data directory aside and resync"
    )]
    SchemaMismatch { found: u32, expected: u32 },
    #[error(
        "the store belongs to the network with genesis {stored}, but the configured genesis is \
         {configured}; point the node at the right genesis file or at another data directory"
    )]
    GenesisMismatch { stored: Hash, configured: Hash },
    #[error("invalid genesis: {0}")]
    Genesis(#[from] GenesisError),
    #[error("the store is corrupt: {0}")]
    Corrupt(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("parent {0} is unknown")]
    UnknownParent(Hash),
    #[error("invalid block {hash}: {error}")]
    Invalid { hash: Hash, error: BlockError },
    #[error("fork is {depth} blocks deep, deeper than the limit of {max}")]
    ReorgTooDeep { depth: u64, max: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The head of the canonical chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    pub hash: Hash,
    pub height: u64,
    pub slot: u64,
}

#[derive(Debug)]
pub enum ImportOutcome {
    AlreadyKnown,
    /// Valid header, stored, but not better than the tip.
    SideChain {
        hash: Hash,
    },
    /// The canonical chain changed. `reverted` (ascending) left it, `applied` (ascending)
    /// joined it; both are empty of the other on a plain extension.
    NewTip {
        tip: Tip,
        applied: Vec<Block>,
        reverted: Vec<Block>,
    },
}

/// Accounts as committed in the `accounts` tree.
pub struct AccountsTree(sled::Tree);

impl AccountReader for AccountsTree {
    type Error = StoreError;
    fn read_account(&self, addr: &Address) -> Result<Option<Account>, StoreError> {
        match self.0.get(addr.0)? {
            None => Ok(None),
            Some(v) => Account::decode(&v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("account {addr} is malformed"))),
        }
    }
}

/// A block built by [`Store::build_block`], and the candidates left out because they are
/// no longer valid (the mempool drops them).
pub struct BuiltBlock {
    pub block: Block,
    pub invalid: Vec<(Hash, TxError)>,
}

pub struct Store {
    db: sled::Db,
    blocks: sled::Tree,
    canonical: sled::Tree,
    accounts: AccountsTree,
    undo: sled::Tree,
    tx_index: sled::Tree,
    meta: sled::Tree,
    genesis: Genesis,
    genesis_hash: Hash,
    tip: Tip,
    state_hash: StateHash,
    max_reorg_depth: u64,
    /// Shared with every [`StoreReader`]; updated after each commit.
    cache: Arc<AccountCache>,
}

fn txn_err(e: TransactionError<()>) -> StoreError {
    match e {
        TransactionError::Storage(e) => StoreError::Db(e),
        TransactionError::Abort(()) => StoreError::Corrupt("transaction aborted".into()),
    }
}

impl Store {
    /// Opens the store in `path`, creating it from `genesis` if it is new.
    pub fn open(path: &Path, genesis: &Genesis) -> Result<Store, StoreError> {
        Self::open_db(sled::open(path)?, genesis)
    }

    /// Opens the store inside an existing database (the node shares it with the mempool).
    pub fn open_db(db: sled::Db, genesis: &Genesis) -> Result<Store, StoreError> {
        genesis.validate()?;
        let genesis_hash = genesis.hash();
        let meta = db.open_tree("meta")?;
        let mut store = Store {
            blocks: db.open_tree("blocks")?,
            canonical: db.open_tree("canonical")?,
            accounts: AccountsTree(db.open_tree("accounts")?),
            undo: db.open_tree("undo")?,
            tx_index: db.open_tree("tx_index")?,
            meta,
            db,
            genesis: genesis.clone(),
            genesis_hash,
            tip: Tip {
                hash: genesis_hash,
                height: 0,
                slot: 0,
            },
            state_hash: genesis.initial_state_hash(),
            max_reorg_depth: DEFAULT_MAX_REORG_DEPTH,
            cache: Arc::new(AccountCache::new(account_cache::DEFAULT_CAPACITY)),
        };
        match store.meta.get(META_SCHEMA)? {
            None => store.initialise()?,
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("schema_version is malformed".into()))?;
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                store.load_meta()?;
            }
        }
        Ok(store)
    }

    fn initialise(&mut self) -> Result<(), StoreError> {
        if !self.blocks.is_empty() || !self.accounts.0.is_empty() {
            return Err(StoreError::Corrupt(
                "blocks exist but the schema version is missing".into(),
            ));
        }
        let block = self.genesis.block();
        let hash = self.genesis_hash;
        let bytes = wire::encode_block(&block);
        let state = self.genesis.initial_state_hash();
        let accounts: Vec<_> = self.genesis.initial_accounts().collect();
        (&self.blocks, &self.canonical, &self.accounts.0, &self.meta)
            .transaction(|(b, c, a, m)| {
                b.insert(&hash.0, bytes.as_slice())?;
                c.insert(&0u64.to_be_bytes(), &hash.0)?;
                for (addr, acct) in &accounts {
                    a.insert(&addr.0, &acct.encode())?;
                }
                m.insert(META_GENESIS, &hash.0)?;
                m.insert(META_TIP, &hash.0)?;
                m.insert(META_STATE, state.encode())?;
                m.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(txn_err)?;
        self.db.flush()?;
        tracing::info!(genesis = %hash, network = %self.genesis.network_id, "initialised a new store");
        Ok(())
    }

    fn load_meta(&mut self) -> Result<(), StoreError> {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("meta `{what}` is missing or malformed"));
        let stored = self
            .meta
            .get(META_GENESIS)?
            .and_then(|v| Hash::from_slice(&v))
            .ok_or_else(|| corrupt("genesis"))?;
        if stored != self.genesis_hash {
            return Err(StoreError::GenesisMismatch {
                stored,
                configured: self.genesis_hash,
            });
        }
        let tip_hash = self
            .meta
            .get(META_TIP)?
            .and_then(|v| Hash::from_slice(&v))
            .ok_or_else(|| corrupt("tip"))?;
        self.state_hash = self
            .meta
            .get(META_STATE)?
            .and_then(|v| StateHash::decode(&v))
            .ok_or_else(|| corrupt("state_hash"))?;
        let tip = self
            .block(&tip_hash)?
            .ok_or_else(|| StoreError::Corrupt(format!("tip block {tip_hash} is missing")))?;
        if self.canonical_hash(tip.header.height)? != Some(tip_hash) {
            return Err(StoreError::Corrupt(
                "tip is not in the canonical index".into(),
            ));
        }
        if self.state_hash.root() != tip.header.state_root {
            return Err(StoreError::Corrupt(
                "account state does not match the tip's state root".into(),
            ));
        }
        self.tip = Tip {
            hash: tip_hash,
            height: tip.header.height,
            slot: tip.header.slot,
        };
        Ok(())
    }

    pub fn set_max_reorg_depth(&mut self, depth: u64) {
        self.max_reorg_depth = depth;
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    pub fn tip(&self) -> &Tip {
        &self.tip
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes every write so far durable. A tip must not be reported before this returns.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn reader(&self) -> StoreReader {
        StoreReader {
            blocks: self.blocks.clone(),
            canonical: self.canonical.clone(),
            accounts: self.accounts.0.clone(),
            tx_index: self.tx_index.clone(),
            cache: self.cache.clone(),
        }
    }

    pub fn block(&self, hash: &Hash) -> Result<Option<Block>, StoreError> {
        read_block(&self.blocks, hash)
    }

    pub fn canonical_hash(&self, height: u64) -> Result<Option<Hash>, StoreError> {
        read_canonical(&self.canonical, height)
    }

    pub fn account(&self, addr: &Address) -> Result<Account, StoreError> {
        Ok(self.accounts.read_account(addr)?.unwrap_or_default())
    }

    /// All accounts, in address order.
    pub fn accounts(&self) -> impl Iterator<Item = Result<(Address, Account), StoreError>> + '_ {
        self.accounts.0.iter().map(|r| {
            let (k, v) = r?;
            match (Address::from_slice(&k), Account::decode(&v)) {
                (Some(a), Some(acct)) => Ok((a, acct)),
                _ => Err(StoreError::Corrupt("malformed account entry".into())),
            }
        })
    }

    pub fn account_reader(&self) -> &AccountsTree {
        &self.accounts
    }

    fn is_better(&self, height: u64, hash: &Hash) -> bool {
        // Fork choice: greatest height, then lowest hash.
        height > self.tip.height || (height == self.tip.height && hash < &self.tip.hash)
    }

    /// Validates and stores a block; makes it the tip (reorganising if needed) when fork
    /// choice prefers it. Does not flush.
    pub fn import(&mut self, block: Block, now_ms: u64) -> Result<ImportOutcome, ImportError> {
        self.import_with(block, now_ms, SigCheck::Verify)
    }

    /// [`Store::import`], skipping the transaction signatures of `block` if the caller
    /// verified them already (blocks of a reorganisation read back from the store are
    /// always verified again).
    pub fn import_with(
        &mut self,
        block: Block,
        now_ms: u64,
        sig: SigCheck,
    ) -> Result<ImportOutcome, ImportError> {
        let hash = block.hash();
        if self.blocks.contains_key(hash.0).map_err(StoreError::from)? {
            return Ok(ImportOutcome::AlreadyKnown);
        }
        let parent = self
            .block(&block.header.parent)?
            .ok_or(ImportError::UnknownParent(block.header.parent))?;
        let invalid = |error| ImportError::Invalid { hash, error };
        rules::validate_header(&self.genesis, &parent.header, &block.header, now_ms, sig)
            .map_err(invalid)?;
        rules::validate_body(&self.genesis, &block).map_err(invalid)?;

        if !self.is_better(block.header.height, &hash) {
            self.blocks
                .insert(hash.0, wire::encode_block(&block))
                .map_err(StoreError::from)?;
            return Ok(ImportOutcome::SideChain { hash });
        }

        // Walk back to the canonical chain: `fork` ends with `block`, ascending.
        let mut fork = vec![block];
        loop {
            let first = &fork[0].header;
            let parent_height = first.height.saturating_sub(1);
            if self.canonical_hash(parent_height)? == Some(first.parent) {
                break;
            }
            let depth = self.tip.height.saturating_sub(parent_height);
            if depth > self.max_reorg_depth || fork.len() as u64 > self.max_reorg_depth {
                return Err(ImportError::ReorgTooDeep {
                    depth,
                    max: self.max_reorg_depth,
                });
            }
            let p = self.block(&first.parent)?.ok_or_else(|| {
                StoreError::Corrupt(format!("side-chain block {} lost its parent", first.parent))
            })?;
            fork.insert(0, p);
        }
        let ancestor = fork[0].header.height.saturating_sub(1);
        let depth = self.tip.height.saturating_sub(ancestor);
        if depth > self.max_reorg_depth {
            return Err(ImportError::ReorgTooDeep {
                depth,
                max: self.max_reorg_depth,
            });
        }

        let mut ov = Overlay::new(&self.accounts, self.state_hash.clone());
        let mut reverted = Vec::new();
        for h in (ancestor + 1..=self.tip.height).rev() {
            let bh = self
                .canonical_hash(h)?
                .ok_or_else(|| StoreError::Corrupt(format!("canonical height {h} is missing")))?;
            let b = self
                .block(&bh)?
                .ok_or_else(|| StoreError::Corrupt(format!("canonical block {bh} is missing")))?;
            let rec = self
                .undo
                .get(bh.0)
                .map_err(StoreError::from)?
                .and_then(|v| UndoRecord::decode(&v))
                .ok_or_else(|| StoreError::Corrupt(format!("undo record of {bh} is missing")))?;
            ov.undo(&rec)?;
            reverted.push(b);
        }
        reverted.reverse();

        let mut undos = Vec::with_capacity(fork.len());
        let last = fork.len() - 1;
        for (i, b) in fork.iter().enumerate() {
            let sig = if i == last { sig } else { SigCheck::Verify };
            match rules::execute_block(&self.genesis, &self.genesis_hash, &mut ov, b, sig)? {
                Ok(u) => undos.push(u),
                Err(error) => {
                    let bad = b.hash();
                    if bad != hash {
                        // A stored side block turned out invalid: forget it so that it is
                        // not tried again (its descendants fail on the missing parent).
                        self.blocks.remove(bad.0).map_err(StoreError::from)?;
                    }
                    return Err(ImportError::Invalid { hash: bad, error });
                }
            }
        }

        let (changes, new_state) = ov.into_parts();
        // `fork` starts as `[block]` and only grows at the front.
        let Some(new_block) = fork.last() else {
            return Err(StoreError::Corrupt("empty fork".into()).into());
        };
        let new_tip = Tip {
            hash,
            height: new_block.header.height,
            slot: new_block.header.slot,
        };
        // The fork's earlier blocks are stored already (as side-chain blocks).
        let new_blocks = [(hash, wire::encode_block(new_block))];
        self.commit(
            &new_blocks,
            &reverted,
            &fork,
            &undos,
            &changes,
            &new_state,
            &new_tip,
        )?;

        self.state_hash = new_state;
        self.tip = new_tip.clone();
        if !reverted.is_empty() {
            tracing::info!(
                depth = reverted.len(),
                new_tip = %hash,
                height = new_tip.height,
                "reorganised to a better fork"
            );
        }
        Ok(ImportOutcome::NewTip {
            tip: new_tip,
            applied: fork,
            reverted,
        })
    }

    /// Writes a change of the canonical chain as one transaction over every tree: new
    /// blocks, canonical index, undo records and tx index (for `reverted` out, `applied`
    /// in), account changes, tip and state hash.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        new_blocks: &[(Hash, Vec<u8>)],
        reverted: &[Block],
        applied: &[Block],
        undos: &[UndoRecord],
        changes: &std::collections::BTreeMap<Address, Option<Account>>,
        new_state: &StateHash,
        new_tip: &Tip,
    ) -> Result<(), ImportError> {
        let state_bytes = new_state.encode();
        // The tx index of the new blocks goes ahead of the transaction as a plain batch:
        // inside a sled transaction every insert costs a read first, and a large block
        // has thousands. An entry whose block does not become canonical (a crash between
        // the two writes) is ignored by readers (`StoreReader::tx_block` checks), and is
        // rewritten when the block is imported again.
        if applied.iter().any(|b| !b.txs.is_empty()) {
            let mut index = sled::Batch::default();
            for b in applied {
                let bh = b.hash();
                for tx in &b.txs {
                    index.insert(&tx.id().0, &bh.0);
                }
            }
            self.tx_index.apply_batch(index).map_err(StoreError::from)?;
        }
        // Transactions of reverted blocks leave the index, unless a new block has them.
        let kept: std::collections::HashSet<Hash> = if reverted.is_empty() {
            Default::default()
        } else {
            applied
                .iter()
                .flat_map(|b| b.txs.iter().map(Tx::id))
                .collect()
        };
        (
            &self.blocks,
            &self.canonical,
            &self.accounts.0,
            &self.undo,
            &self.tx_index,
            &self.meta,
        )
            .transaction(|(bt, ct, at, ut, xt, mt)| {
                for (h, bytes) in new_blocks {
                    bt.insert(&h.0, bytes.as_slice())?;
                }
                for b in reverted {
                    let bh = b.hash();
                    ut.remove(&bh.0)?;
                    ct.remove(&b.header.height.to_be_bytes())?;
                    for tx in &b.txs {
                        let id = tx.id();
                        if !kept.contains(&id) {
                            xt.remove(&id.0)?;
                        }
                    }
                }
                for (b, u) in applied.iter().zip(undos) {
                    let bh = b.hash();
                    ct.insert(&b.header.height.to_be_bytes(), &bh.0)?;
                    ut.insert(&bh.0, u.encode())?;
                }
                for (addr, v) in changes {
                    match v {
                        Some(a) => at.insert(&addr.0, &a.encode())?,
                        None => at.remove(&addr.0)?,
                    };
                }
                mt.insert(META_TIP, &new_tip.hash.0)?;
                mt.insert(META_STATE, state_bytes.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(txn_err)?;
        self.cache
            .committed(changes.iter().map(|(a, v)| (a, v.as_ref())));
        Ok(())
    }

    /// Imports a run of blocks that extend our tip one after the other, as one atomic
    /// write (sync's common case: one transaction per batch instead of per block).
    ///
    /// Takes the longest prefix of `blocks` that extends the tip and is valid; returns how
    /// many blocks that is, and the error of the block that stopped it, if one was invalid.
    /// A block that does not extend the run (known, a fork) stops it without an error:
    /// the caller imports that one with [`Store::import`].
    pub fn extend(
        &mut self,
        blocks: &[Block],
        now_ms: u64,
        sig: SigCheck,
    ) -> Result<(usize, Option<ImportError>), ImportError> {
        let Some(tip_block) = self.block(&self.tip.hash)? else {
            return Err(
                StoreError::Corrupt(format!("tip block {} is missing", self.tip.hash)).into(),
            );
        };
        let mut parent = tip_block.header;
        let mut ov = Overlay::new(&self.accounts, self.state_hash.clone());
        let mut undos = Vec::new();
        let mut failed = None;
        for b in blocks {
            let hash = b.hash();
            if b.header.parent != parent.hash()
                || self.blocks.contains_key(hash.0).map_err(StoreError::from)?
            {
                break;
            }
            let invalid = |error| ImportError::Invalid { hash, error };
            let checked = rules::validate_header(&self.genesis, &parent, &b.header, now_ms, sig)
                .and_then(|()| rules::validate_body(&self.genesis, b));
            if let Err(e) = checked {
                failed = Some(invalid(e));
                break;
            }
            match rules::execute_block(&self.genesis, &self.genesis_hash, &mut ov, b, sig)? {
                Ok(u) => undos.push(u),
                Err(e) => {
                    failed = Some(invalid(e));
                    break;
                }
            }
            parent = b.header.clone();
        }
        let n = undos.len();
        if failed.is_some() && n > 0 {
            // The failed block left partial changes in the overlay: replay the valid
            // prefix on a fresh one (rare, so no copy on the common path).
            ov = Overlay::new(&self.accounts, self.state_hash.clone());
            undos.clear();
            for b in &blocks[..n] {
                match rules::execute_block(&self.genesis, &self.genesis_hash, &mut ov, b, sig)? {
                    Ok(u) => undos.push(u),
                    Err(e) => {
                        return Err(StoreError::Corrupt(format!(
                            "replay of a valid block failed: {e}"
                        ))
                        .into());
                    }
                }
            }
        }
        if n == 0 {
            return Ok((0, failed));
        }
        let run = &blocks[..n];
        let (changes, new_state) = ov.into_parts();
        let new_blocks: Vec<(Hash, Vec<u8>)> = run
            .iter()
            .map(|b| (b.hash(), wire::encode_block(b)))
            .collect();
        let last = &run[n - 1].header;
        let new_tip = Tip {
            hash: new_blocks[n - 1].0,
            height: last.height,
            slot: last.slot,
        };
        self.commit(
            &new_blocks,
            &[],
            run,
            &undos,
            &changes,
            &new_state,
            &new_tip,
        )?;
        self.state_hash = new_state;
        self.tip = new_tip;
        Ok((n, failed))
    }

    /// Builds and signs a block for `slot` on the current tip from `candidates` (best
    /// first), skipping those that no longer apply and stopping at the chain's limits.
    /// Candidates' signatures are not checked again: they come from the mempool.
    pub fn build_block(
        &self,
        key: &Keypair,
        slot: u64,
        candidates: impl IntoIterator<Item = Tx>,
    ) -> Result<BuiltBlock, StoreError> {
        let limits = &self.genesis.limits;
        let producer = key.public();
        let timestamp_ms = self
            .genesis
            .slot_start(slot)
            .ok_or_else(|| StoreError::Corrupt(format!("slot {slot} is out of range")))?;
        let mut ov = Overlay::new(&self.accounts, self.state_hash.clone());
        let mut txs = Vec::new();
        let mut invalid = Vec::new();
        // Header and framing overhead stay well below this.
        let mut size = 512usize;
        for tx in candidates {
            if txs.len() >= limits.max_block_txs as usize {
                break;
            }
            let tx_size = wire::encode_tx(&tx).len() + 4;
            if (size + tx_size) as u64 > limits.max_block_bytes {
                break;
            }
            let mut scratch = UndoRecord::default();
            match apply_tx(
                &mut ov,
                &tx,
                &self.genesis_hash,
                limits.min_fee,
                &producer,
                &mut scratch,
                // Candidates come from the mempool, which admits verified transactions
                // only; the cost of checking again would fall on every produced block.
                SigCheck::AlreadyVerified,
            ) {
                Ok(()) => {
                    size += tx_size;
                    txs.push(tx);
                }
                Err(ApplyError::Tx(e)) => invalid.push((tx.id(), e)),
                Err(ApplyError::Store(e)) => return Err(e),
            }
        }
        let mut header = Header {
            parent: self.tip.hash,
            height: self.tip.height + 1,
            slot,
            timestamp_ms,
            tx_root: Block::tx_root(&txs),
            state_root: ov.hash().root(),
            producer,
            signature: Signature::ZERO,
        };
        header.sign(key);
        Ok(BuiltBlock {
            block: Block { header, txs },
            invalid,
        })
    }
}

fn read_block(tree: &sled::Tree, hash: &Hash) -> Result<Option<Block>, StoreError> {
    match tree.get(hash.0)? {
        None => Ok(None),
        Some(v) => wire::decode_block(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("block {hash}: {e}"))),
    }
}

fn read_canonical(tree: &sled::Tree, height: u64) -> Result<Option<Hash>, StoreError> {
    match tree.get(height.to_be_bytes())? {
        None => Ok(None),
        Some(v) => Hash::from_slice(&v)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("canonical entry at {height}"))),
    }
}

/// Read-only, cloneable view for API handlers; sled serves reads concurrently with the
/// writer. Readers may see a block a moment before it is flushed.
#[derive(Clone)]
pub struct StoreReader {
    blocks: sled::Tree,
    canonical: sled::Tree,
    accounts: sled::Tree,
    tx_index: sled::Tree,
    cache: Arc<AccountCache>,
}

impl StoreReader {
    pub fn block(&self, hash: &Hash) -> Result<Option<Block>, StoreError> {
        read_block(&self.blocks, hash)
    }

    pub fn canonical_hash(&self, height: u64) -> Result<Option<Hash>, StoreError> {
        read_canonical(&self.canonical, height)
    }

    pub fn block_at(&self, height: u64) -> Result<Option<Block>, StoreError> {
        match self.canonical_hash(height)? {
            Some(h) => self.block(&h),
            None => Ok(None),
        }
    }

    /// Whether `hash` is on the canonical chain.
    pub fn is_canonical(&self, b: &Block) -> Result<bool, StoreError> {
        Ok(self.canonical_hash(b.header.height)? == Some(b.hash()))
    }

    /// A confirmed account: from the cache if it is there (no wait behind a commit),
    /// else from sled.
    pub fn account(&self, addr: &Address) -> Result<Account, StoreError> {
        if let Some(a) = self.cache.get(addr) {
            return Ok(a);
        }
        let generation = self.cache.generation();
        let account = AccountsTree(self.accounts.clone())
            .read_account(addr)?
            .unwrap_or_default();
        self.cache.fill(*addr, account, generation);
        Ok(account)
    }

    /// The canonical block that includes transaction `id`, if any.
    pub fn tx_block(&self, id: &Hash) -> Result<Option<Block>, StoreError> {
        match self.tx_index.get(id.0)? {
            None => Ok(None),
            Some(v) => {
                let bh = Hash::from_slice(&v)
                    .ok_or_else(|| StoreError::Corrupt(format!("tx index entry of {id}")))?;
                // The index is written just ahead of the canonical chain (see
                // `Store::commit`): an entry is believed only once its block is canonical.
                match self.block(&bh)? {
                    Some(b) if self.canonical_hash(b.header.height)? == Some(bh) => Ok(Some(b)),
                    _ => Ok(None),
                }
            }
        }
    }
}

/// Serving peers and building locators: reads of the canonical chain.
impl StoreReader {
    /// Canonical hashes at `tip`, `tip-1`, `tip-2`, `tip-4`, … and genesis (at most 64),
    /// so a peer finds the highest block we share in O(log height) entries.
    pub fn locator(&self, tip_height: u64) -> Result<Vec<(u64, Hash)>, StoreError> {
        let mut out = Vec::new();
        let mut h = tip_height;
        let mut step = 1u64;
        loop {
            if let Some(hash) = self.canonical_hash(h)? {
                out.push((h, hash));
            }
            if h == 0 || out.len() >= 63 {
                break;
            }
            if out.len() >= 2 {
                step = step.saturating_mul(2);
            }
            h = h.saturating_sub(step);
        }
        if out.last().map(|(h, _)| *h) != Some(0)
            && let Some(g) = self.canonical_hash(0)?
        {
            out.push((0, g));
        }
        Ok(out)
    }

    /// Canonical headers after the first locator hash that is on our canonical chain
    /// (genesis if none is), at most `max`.
    pub fn headers_after(&self, locator: &[Hash], max: u32) -> Result<Vec<Header>, StoreError> {
        let mut from = 0u64;
        for h in locator {
            if let Some(b) = self.block(h)?
                && self.canonical_hash(b.header.height)? == Some(*h)
            {
                from = b.header.height;
                break;
            }
        }
        let mut out = Vec::new();
        let mut height = from + 1;
        while out.len() < max as usize {
            match self.block_at(height)? {
                Some(b) => out.push(b.header),
                None => break,
            }
            height += 1;
        }
        Ok(out)
    }

    /// Blocks by hash in the order asked, skipping unknown ones, stopping before the
    /// encoded total would pass `max_bytes`.
    pub fn blocks_by_hash(
        &self,
        hashes: &[Hash],
        max_bytes: usize,
    ) -> Result<Vec<Block>, StoreError> {
        let mut out = Vec::new();
        let mut size = 0usize;
        for h in hashes {
            let Some(raw) = self.blocks.get(h.0)? else {
                continue;
            };
            if size + raw.len() + 8 > max_bytes {
                break;
            }
            size += raw.len() + 8;
            out.push(
                wire::decode_block(&raw)
                    .map_err(|e| StoreError::Corrupt(format!("block {h}: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Canonical blocks `from..from+count`, with the same byte cap.
    pub fn block_range(
        &self,
        from: u64,
        count: u32,
        max_bytes: usize,
    ) -> Result<Vec<Block>, StoreError> {
        let mut hashes = Vec::new();
        for h in from..from.saturating_add(u64::from(count)) {
            match self.canonical_hash(h)? {
                Some(x) => hashes.push(x),
                None => break,
            }
        }
        self.blocks_by_hash(&hashes, max_bytes)
    }
}
