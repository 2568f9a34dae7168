//! What the writer remembers between jobs so that the hot path does no reads: accounts
//! (balances, spend, plan, journal position, the earliest expiry of their active holds)
//! and a filter of the idempotency keys in the journal.
//!
//! The writer is the only writer of the database file while the store is open, so its
//! own copy of an account is the truth. Changes are written back once per group commit
//! (per-account coalescing), and undone with the savepoint they were made in. Anything
//! the cache cannot follow (a job that writes accounts with its own SQL, another process
//! writing the file, a failed commit) empties it; it then refills from the database.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

use rusqlite::{Connection, params};
use tollgate_core::clock::from_unix_micros;
use tollgate_core::{AccountId, IdempotencyKey, Timestamp};

use super::rows::{self, StoredAccount};
use crate::StoreResult;

/// Accounts kept at most; past it the cache is emptied at the next commit and refills
/// with the accounts in use. Bounds the writer's memory whatever the number of accounts.
pub const MAX_CACHED_ACCOUNTS: usize = 200_000;

/// One account as the writer last left it.
#[derive(Clone)]
pub struct CachedAccount {
    /// The account, spend rolled to when it was last used.
    pub stored: StoredAccount,
    /// No active hold of the account expires before this (`None`: it has no active
    /// hold). A lower bound: a hold closed since may make it early, never late.
    pub earliest_hold_expiry: Option<Timestamp>,
}

struct Undo {
    id: AccountId,
    previous: Option<CachedAccount>,
    was_dirty: bool,
}

/// The writer's account cache; see the module documentation.
#[derive(Default)]
pub struct AccountCache {
    entries: HashMap<AccountId, CachedAccount>,
    /// Changed since the last write-back; sorted so write-backs run in a stable order.
    dirty: BTreeSet<AccountId>,
    /// Changes of the open group, newest last. Bounded by the group's size: at most
    /// `MAX_JOBS_PER_COMMIT` jobs of at most `MAX_BATCH_EVENTS` events, a few puts each.
    undo: Vec<Undo>,
}

impl AccountCache {
    /// The cached copy of an account, if any.
    pub fn get(&self, id: &AccountId) -> Option<&CachedAccount> {
        self.entries.get(id)
    }

    /// Stores an account's state; `dirty`: changed, to be written back before the commit.
    pub fn put(&mut self, account: CachedAccount, dirty: bool) {
        let id = account.stored.record.id.clone();
        let was_dirty = self.dirty.contains(&id);
        if dirty {
            self.dirty.insert(id.clone());
        }
        let previous = self.entries.insert(id.clone(), account);
        self.undo.push(Undo {
            id,
            previous,
            was_dirty,
        });
    }

    /// A mark to undo back to ([`AccountCache::undo_to`]) if a savepoint rolls back.
    pub fn mark(&self) -> usize {
        self.undo.len()
    }

    /// Forgets every change made since `mark`, as the savepoint's rollback did.
    pub fn undo_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            let Some(undo) = self.undo.pop() else { break };
            match undo.previous {
                Some(previous) => {
                    self.entries.insert(undo.id.clone(), previous);
                }
                None => {
                    self.entries.remove(&undo.id);
                }
            }
            if !undo.was_dirty {
                self.dirty.remove(&undo.id);
            }
        }
    }

    /// Writes every changed account back, inside the open transaction.
    pub fn write_back(&mut self, connection: &Connection) -> StoreResult<()> {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(account) = self.entries.get(&id) {
                rows::save_account(connection, &account.stored)?;
            }
        }
        Ok(())
    }

    /// The group is durable: its changes can no longer be undone.
    pub fn committed(&mut self) {
        debug_assert!(self.dirty.is_empty(), "written back before the commit");
        self.undo.clear();
        if self.entries.len() > MAX_CACHED_ACCOUNTS {
            self.clear();
        }
    }

    /// Forgets everything: the database is the truth again.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.dirty.clear();
        self.undo.clear();
    }
}

/// The earliest expiry of an account's active holds, from the database.
pub fn earliest_hold_expiry(connection: &Connection, id: &AccountId) -> StoreResult<Option<Timestamp>> {
    let earliest: Option<i64> = connection
        .prepare_cached("SELECT MIN(expires_at) FROM holds WHERE account_id = ?1 AND status = 'active'")?
        .query_row(params![id.as_str()], |row| row.get(0))?;
    Ok(earliest.map(from_unix_micros))
}

/// Bits of the key filter: 8 MiB, so about 5 million keys at under 0.3% false positives
/// (more keys only raise that rate). Pages are touched, and so counted in memory, only
/// as bits are set.
const KEY_FILTER_BITS: usize = 1 << 26;
/// Bits set per key.
const KEY_FILTER_HASHES: u64 = 5;
/// Rows read per statement while loading keys, so one load never holds a huge result.
const KEY_LOAD_BATCH: i64 = 50_000;

/// Which (account, idempotency key) pairs the journal may hold: a Bloom filter, so
/// "absent" is certain and "present" means look in the database. Most requests carry a
/// new key, and for them the writer reads nothing.
pub struct KeyFilter {
    bits: Vec<u64>,
    hasher: RandomState,
    /// The journal's rows up to this rowid are in the filter.
    loaded_up_to_rowid: i64,
    /// False once the filter may miss keys: every answer is then "may contain".
    trusted: bool,
}

impl KeyFilter {
    /// A filter holding every key of the journal in `connection`'s database.
    pub fn load(connection: &Connection) -> StoreResult<KeyFilter> {
        let mut filter = KeyFilter {
            bits: vec![0; KEY_FILTER_BITS / 64],
            hasher: RandomState::new(),
            loaded_up_to_rowid: 0,
            trusted: true,
        };
        filter.catch_up(connection)?;
        Ok(filter)
    }

    /// Adds the keys of journal rows written since the last load (by anyone).
    pub fn catch_up(&mut self, connection: &Connection) -> StoreResult<()> {
        let mut statement = connection.prepare_cached(
            "SELECT rowid, account_id, idempotency_key FROM journal_transactions \
             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        )?;
        loop {
            let mut rows = statement.query(params![self.loaded_up_to_rowid, KEY_LOAD_BATCH])?;
            let mut read = 0;
            while let Some(row) = rows.next()? {
                read += 1;
                self.loaded_up_to_rowid = row.get(0)?;
                let key: Option<String> = row.get(2)?;
                if let Some(key) = key {
                    let account: String = row.get(1)?;
                    self.insert_raw(&account, &key);
                }
            }
            if read < KEY_LOAD_BATCH {
                return Ok(());
            }
        }
    }

    /// Notes a key the writer is writing to the journal (kept even if its job rolls
    /// back: an extra "may contain" costs one read, never a wrong answer).
    pub fn insert(&mut self, account: &AccountId, key: &IdempotencyKey) {
        self.insert_raw(account.as_str(), key.as_str());
    }

    /// After a commit by the writer: every row now in the journal is in the filter (its
    /// own rows were inserted as written; older ones were caught up with), and another
    /// connection's rows can only come after the last one.
    pub fn committed(&mut self, connection: &Connection) {
        let last: rusqlite::Result<i64> = connection
            .prepare_cached("SELECT COALESCE(MAX(rowid), 0) FROM journal_transactions")
            .and_then(|mut statement| statement.query_row([], |row| row.get(0)));
        match last {
            Ok(last) => self.loaded_up_to_rowid = last,
            Err(error) => {
                // Without the journal's end another connection's keys could be missed:
                // from now on every key is looked up in the database.
                tracing::warn!(%error, "the idempotency key filter is off until restart");
                self.trusted = false;
            }
        }
    }

    /// False only if the journal certainly holds no transaction with this key.
    pub fn may_contain(&self, account: &AccountId, key: &IdempotencyKey) -> bool {
        !self.trusted
            || self
                .positions(account.as_str(), key.as_str())
                .all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn insert_raw(&mut self, account: &str, key: &str) {
        let positions: Vec<usize> = self.positions(account, key).collect();
        for bit in positions {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
    }

    /// Double hashing: position i is h1 + i·h2 (mod the size), from one 64-bit hash.
    fn positions(&self, account: &str, key: &str) -> impl Iterator<Item = usize> + use<> {
        let mut hasher = self.hasher.build_hasher();
        account.hash(&mut hasher);
        key.hash(&mut hasher);
        let hash = hasher.finish();
        let first = hash & 0xffff_ffff;
        // Odd, so the steps visit distinct positions.
        let step = (hash >> 32) | 1;
        let size = KEY_FILTER_BITS as u64;
        (0..KEY_FILTER_HASHES)
            .map(move |index| (first.wrapping_add(index.wrapping_mul(step)) % size) as usize)
    }
}

/// Writes to the database file by other connections since the last call, as SQLite
/// counts them (`PRAGMA data_version`): the cache must then be refilled.
pub struct ExternalWrites {
    data_version: i64,
}

impl ExternalWrites {
    /// Starts counting from now.
    pub fn new(connection: &Connection) -> StoreResult<ExternalWrites> {
        Ok(ExternalWrites {
            data_version: data_version(connection)?,
        })
    }

    /// True if another connection committed since the last call.
    pub fn happened(&mut self, connection: &Connection) -> StoreResult<bool> {
        let now = data_version(connection)?;
        let changed = now != self.data_version;
        self.data_version = now;
        Ok(changed)
    }
}

fn data_version(connection: &Connection) -> StoreResult<i64> {
    Ok(connection
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |row| row.get(0))?)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use tollgate_core::{AccountPlan, Balances, BillingMode, CycleAnchor, Micros, SpendState};

    use super::*;
    use crate::AccountRecord;

    fn account(id: &str, available_micros: i64) -> CachedAccount {
        let now = datetime!(2026-03-01 12:00 UTC);
        CachedAccount {
            stored: StoredAccount {
                record: AccountRecord {
                    id: AccountId::parse(id).unwrap(),
                    name: id.to_owned(),
                    email: format!("{id}@example.test"),
                    created_at: now,
                    mode: BillingMode::Prepaid,
                    balances: Balances {
                        available: Micros::new(available_micros),
                        held: Micros::ZERO,
                    },
                    spend: SpendState::new(CycleAnchor::from_created_at(now), now),
                    plan: AccountPlan::default(),
                    invoice_due_at: None,
                },
                journal_sequence: 0,
            },
            earliest_hold_expiry: None,
        }
    }

    fn available(cache: &AccountCache, id: &str) -> Option<i64> {
        cache
            .get(&AccountId::parse(id).unwrap())
            .map(|cached| cached.stored.record.balances.available.get())
    }

    /// A savepoint's rollback undoes exactly the changes made after its mark, in
    /// reverse, including whether an account still needs writing back.
    #[test]
    fn undo_restores_entries_and_dirtiness_as_of_the_mark() {
        let mut cache = AccountCache::default();
        cache.put(account("acct_a", 100), false);
        cache.put(account("acct_b", 200), true);
        let mark = cache.mark();
        cache.put(account("acct_a", 90), true);
        cache.put(account("acct_a", 80), true);
        cache.put(account("acct_b", 150), true);
        cache.put(account("acct_c", 5), true);
        assert_eq!(cache.dirty.len(), 3);
        cache.undo_to(mark);
        assert_eq!(available(&cache, "acct_a"), Some(100));
        assert_eq!(available(&cache, "acct_b"), Some(200));
        assert_eq!(available(&cache, "acct_c"), None);
        let dirty: Vec<&str> = cache.dirty.iter().map(AccountId::as_str).collect();
        assert_eq!(dirty, ["acct_b"]);
        // After a commit nothing can be undone any more.
        cache.dirty.clear();
        cache.committed();
        cache.put(account("acct_a", 1), true);
        cache.undo_to(0);
        assert_eq!(available(&cache, "acct_a"), Some(100));
        cache.clear();
        assert_eq!(available(&cache, "acct_a"), None);
    }

    fn journal(connection: &Connection) {
        connection
            .execute_batch(
                "CREATE TABLE journal_transactions (account_id TEXT NOT NULL, idempotency_key TEXT)",
            )
            .unwrap();
    }

    /// "Absent" must be certain: every key in the journal, written before the filter
    /// was loaded, by the writer, or by another connection since, is reported present.
    #[test]
    fn the_key_filter_never_misses_a_key_of_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let writer = Connection::open(&path).unwrap();
        journal(&writer);
        let insert = |connection: &Connection, account: &str, key: Option<&str>| {
            connection
                .execute(
                    "INSERT INTO journal_transactions (account_id, idempotency_key) VALUES (?1, ?2)",
                    params![account, key],
                )
                .unwrap();
        };
        // More rows than one load reads at a time; one transaction, or each insert syncs.
        writer.execute_batch("BEGIN").unwrap();
        for index in 0..(KEY_LOAD_BATCH + 10) {
            let key = (index % 3 != 0).then(|| format!("before-{index}"));
            insert(&writer, "acct_a", key.as_deref());
        }
        writer.execute_batch("COMMIT").unwrap();
        let mut filter = KeyFilter::load(&writer).unwrap();
        let id = |text: &str| AccountId::parse(text).unwrap();
        let key = |text: &str| IdempotencyKey::parse(text).unwrap();
        for index in (0..(KEY_LOAD_BATCH + 10)).filter(|index| index % 3 != 0) {
            assert!(filter.may_contain(&id("acct_a"), &key(&format!("before-{index}"))));
        }
        // The writer's own keys, noted as written.
        insert(&writer, "acct_b", Some("mine"));
        filter.insert(&id("acct_b"), &key("mine"));
        filter.committed(&writer);
        assert!(filter.may_contain(&id("acct_b"), &key("mine")));
        // Another connection's, once caught up with.
        let other = Connection::open(&path).unwrap();
        insert(&other, "acct_c", Some("theirs"));
        filter.catch_up(&writer).unwrap();
        assert!(filter.may_contain(&id("acct_c"), &key("theirs")));
        // Keys are per account, and unknown ones are (almost always) absent.
        let strangers = (0..1_000)
            .filter(|index| filter.may_contain(&id("acct_z"), &key(&format!("before-{index}"))))
            .count();
        assert!(strangers < 10, "{strangers} false positives in 1000");
    }

    #[test]
    fn another_connections_commit_is_noticed_and_the_writers_own_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("version.db");
        let writer = Connection::open(&path).unwrap();
        journal(&writer);
        let mut external = ExternalWrites::new(&writer).unwrap();
        writer
            .execute(
                "INSERT INTO journal_transactions (account_id) VALUES ('acct_a')",
                [],
            )
            .unwrap();
        assert!(!external.happened(&writer).unwrap());
        let other = Connection::open(&path).unwrap();
        other
            .execute(
                "INSERT INTO journal_transactions (account_id) VALUES ('acct_b')",
                [],
            )
            .unwrap();
        assert!(external.happened(&writer).unwrap());
        assert!(!external.happened(&writer).unwrap());
    }
}
