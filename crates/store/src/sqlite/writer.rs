//! The single writer: one thread owns the write connection and commits
//! everything that arrived while the previous commit was syncing in one
//! transaction (group commit). Each job runs in its own savepoint, so a
//! refused job leaves no trace while its neighbours commit.
//!
//! Hot-path jobs ([`Writer::write_cached`]) read and change accounts through the
//! writer's [`AccountCache`] and check idempotency keys against its [`KeyFilter`], so
//! they do no reads; the changed accounts are written back once, just before the group's
//! COMMIT. Every other job ([`Writer::write`]) works on the database alone: the cache is
//! written back before it and emptied after it, since such a job may change accounts with
//! SQL of its own.
//!
//! Usage charges ([`Writer::write_charges`]) skip the savepoint when they can: a charge on
//! a cached account with no hold due decides everything (price, balance, tier) before its
//! first write, so a refusal leaves nothing to undo. A savepoint copies every page it
//! touches to a sub-journal first, which was over a third of the writer's time. Should such
//! a charge fail after writing (an I/O error, an overflow), the group is failed as a whole
//! ([`guarded`]).

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tollgate_core::Timestamp;

use super::StoreRules;
use super::account_cache::{AccountCache, ExternalWrites, KeyFilter};
use crate::{StoreError, StoreResult};

/// Most jobs committed together; bounds the time one commit holds replies back.
pub const MAX_JOBS_PER_COMMIT: usize = 512;
/// Jobs that may wait for the writer before callers feel back-pressure.
pub const WRITER_QUEUE_CAPACITY: usize = 16_384;

/// What a job sees: the open transaction, the time, and the rules.
pub struct WriteContext<'a> {
    /// The write connection, inside a transaction and the job's savepoint.
    pub connection: &'a Connection,
    /// The time of this job, read once.
    pub now: Timestamp,
    /// Price book, tier basis.
    pub rules: &'a StoreRules,
    /// The writer's accounts, for hot-path jobs; `None` for jobs that work on the
    /// database alone.
    pub cache: Option<&'a RefCell<AccountCache>>,
    /// The idempotency keys the journal may hold (every job keeps it up to date).
    pub keys: &'a RefCell<KeyFilter>,
    /// Set when a write without a savepoint failed halfway: the group cannot commit.
    pub poisoned: &'a RefCell<Option<String>>,
}

impl WriteContext<'_> {
    fn poison(&self, why: String) {
        self.poisoned.borrow_mut().get_or_insert(why);
    }
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type Operation = Box<dyn FnOnce(&WriteContext<'_>) -> Completion + Send>;

/// How a job runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JobKind {
    /// On the database alone, in a savepoint.
    Database,
    /// Through the account cache, in a savepoint.
    Cached,
    /// Through the account cache, choosing per charge whether it needs a savepoint.
    Charges,
}

/// A job and how it runs.
struct Job {
    kind: JobKind,
    operation: Operation,
}

/// A handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// Runs `operation` inside a savepoint: its writes, and its changes to the account
/// cache, stay only if it succeeds.
pub fn in_savepoint<T>(
    context: &WriteContext<'_>,
    name: &str,
    operation: impl FnOnce() -> StoreResult<T>,
) -> StoreResult<T> {
    let connection = context.connection;
    // Savepoints here always nest inside the group transaction. Some errors
    // (disk full, I/O, out of memory) make SQLite roll that transaction back
    // entirely; a SAVEPOINT would then open a transaction of its own and its
    // RELEASE would commit it, while the group's COMMIT fails and the caller
    // is told nothing was written. Refuse instead: the group is lost.
    if connection.is_autocommit() {
        return Err(StoreError::Database(
            "the group transaction was rolled back by an earlier error; nothing was written".to_owned(),
        ));
    }
    // Cached statements: a savepoint per job is on the hot path.
    let run = |sql: String| -> StoreResult<()> {
        connection.prepare_cached(&sql)?.execute([])?;
        Ok(())
    };
    run(format!("SAVEPOINT {name}"))?;
    let mark = context.cache.map(|cache| cache.borrow().mark());
    let result = match catch_unwind(AssertUnwindSafe(operation)) {
        Ok(result) => result,
        Err(_) => Err(StoreError::Database("a store operation panicked".to_owned())),
    };
    if result.is_err() {
        if let (Some(cache), Some(mark)) = (context.cache, mark) {
            cache.borrow_mut().undo_to(mark);
        }
        run(format!("ROLLBACK TO {name}"))?;
    }
    run(format!("RELEASE {name}"))?;
    result
}

/// Runs a hot-path `operation` with no savepoint. Only for operations that make every
/// decision that can refuse them before their first write: a refusal then wrote nothing,
/// and only the account cache is undone. A failure after a write cannot be undone alone,
/// so it fails the whole group (every caller in it is told nothing was written).
pub fn guarded<T>(context: &WriteContext<'_>, operation: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    let connection = context.connection;
    if connection.is_autocommit() {
        let why = "the group transaction was rolled back by an earlier error; nothing was written";
        context.poison(why.to_owned());
        return Err(StoreError::Database(why.to_owned()));
    }
    let changes_before = connection.total_changes();
    let mark = context.cache.map(|cache| cache.borrow().mark());
    let result = match catch_unwind(AssertUnwindSafe(operation)) {
        Ok(result) => result,
        Err(_) => Err(StoreError::Database("a store operation panicked".to_owned())),
    };
    if let Err(error) = &result {
        if let (Some(cache), Some(mark)) = (context.cache, mark) {
            cache.borrow_mut().undo_to(mark);
        }
        if connection.total_changes() != changes_before || connection.is_autocommit() {
            context.poison(format!(
                "a write failed halfway and could not be undone alone: {error}"
            ));
        }
    }
    result
}

impl Writer {
    /// Starts the writer thread on `connection`.
    pub fn start(connection: Connection, rules: Arc<StoreRules>) -> std::io::Result<Writer> {
        let (sender, receiver) = mpsc::channel(WRITER_QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("tollgate-sqlite-writer".to_owned())
            .spawn(move || run(connection, receiver, rules))?;
        Ok(Writer { jobs: sender })
    }

    /// Runs `operation` in the next group commit and returns its result once
    /// that commit is durable. An `Err` from the operation undoes its writes.
    /// The operation sees no account cache (`context.cache` is `None`).
    pub async fn write<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteContext<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.submit(JobKind::Database, operation).await
    }

    /// Like [`Writer::write`], for operations that read and change accounts only
    /// through `context.cache` (the hot path: usage, holds, grants).
    pub async fn write_cached<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteContext<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.submit(JobKind::Cached, operation).await
    }

    /// Like [`Writer::write_cached`], for usage charges: the job has no savepoint of its
    /// own; it runs each charge [`guarded`] when it can refuse only before writing, else in
    /// [`in_savepoint`]. The operation must not write outside those.
    pub async fn write_charges<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteContext<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.submit(JobKind::Charges, operation).await
    }

    async fn submit<T, F>(&self, kind: JobKind, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteContext<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, replied) = oneshot::channel();
        let operation: Operation = Box::new(move |context| {
            let result = match kind {
                JobKind::Charges => guarded(context, || operation(context)),
                JobKind::Database | JobKind::Cached => in_savepoint(context, "job", || operation(context)),
            };
            Box::new(move |committed: Result<(), String>| {
                let outcome = match (result, committed) {
                    (Err(error), _) => Err(error),
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(message)) => Err(StoreError::Database(message)),
                };
                // The caller may have gone away; the commit stands regardless.
                let _ = reply.send(outcome);
            })
        });
        let job = Job { kind, operation };
        self.jobs.send(job).await.map_err(|_| StoreError::Unavailable)?;
        replied.await.map_err(|_| StoreError::Unavailable)?
    }
}

/// What the writer thread keeps between groups.
struct WriterState {
    cache: RefCell<AccountCache>,
    keys: RefCell<KeyFilter>,
    external: ExternalWrites,
    poisoned: RefCell<Option<String>>,
}

impl WriterState {
    fn open(connection: &Connection) -> StoreResult<WriterState> {
        Ok(WriterState {
            cache: RefCell::new(AccountCache::default()),
            keys: RefCell::new(KeyFilter::load(connection)?),
            external: ExternalWrites::new(connection)?,
            poisoned: RefCell::new(None),
        })
    }

    /// Inside a new group's transaction: takes in what other connections committed.
    fn follow_external_writes(&mut self, connection: &Connection) -> StoreResult<()> {
        if self.external.happened(connection)? {
            self.cache.borrow_mut().clear();
            self.keys.borrow_mut().catch_up(connection)?;
        }
        Ok(())
    }
}

fn run(connection: Connection, mut receiver: mpsc::Receiver<Job>, rules: Arc<StoreRules>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut completions: Vec<Completion> = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut state = match WriterState::open(&connection) {
        Ok(state) => state,
        Err(error) => {
            // Dropping the receiver fails every caller with Unavailable.
            tracing::error!(%error, "the sqlite writer could not load its state; writes are refused");
            return;
        }
    };
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(error) = connection.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(%error, "could not begin a write transaction");
            // Dropping the jobs drops their reply channels: callers see Unavailable.
            batch.clear();
            continue;
        }
        let mut group_failure: Option<String> = state
            .follow_external_writes(&connection)
            .err()
            .map(|error| error.to_string());
        for job in batch.drain(..) {
            if group_failure.is_some() {
                // The group cannot commit: the job is dropped unrun, and its caller
                // told the store is unavailable.
                continue;
            }
            let cached = job.kind != JobKind::Database;
            if !cached && let Err(error) = state.cache.borrow_mut().write_back(&connection) {
                // Its SQL would read stale accounts, and the group rolls back anyway.
                group_failure = Some(error.to_string());
                continue;
            }
            let context = WriteContext {
                connection: &connection,
                now: rules.clock.now(),
                rules: &rules,
                cache: cached.then_some(&state.cache),
                keys: &state.keys,
                poisoned: &state.poisoned,
            };
            completions.push((job.operation)(&context));
            if let Some(why) = state.poisoned.borrow_mut().take() {
                group_failure = Some(why);
            }
            if !cached {
                // It may have changed accounts with its own SQL.
                state.cache.borrow_mut().clear();
            }
        }
        if group_failure.is_none()
            && let Err(error) = state.cache.borrow_mut().write_back(&connection)
        {
            group_failure = Some(error.to_string());
        }
        let committed = match group_failure {
            None => connection
                .execute_batch("COMMIT")
                .map_err(|error| error.to_string()),
            Some(failure) => Err(failure),
        };
        let committed = committed.map_err(|error| {
            tracing::error!(%error, "group commit failed; rolling back");
            let _ = connection.execute_batch("ROLLBACK");
            state.cache.borrow_mut().clear();
            error
        });
        if committed.is_ok() {
            state.cache.borrow_mut().committed();
            state.keys.borrow_mut().committed(&connection);
        }
        metrics_group_size(completions.len());
        for complete in completions.drain(..) {
            complete(committed.clone());
        }
    }
    tracing::debug!("sqlite writer stopped");
}

fn metrics_group_size(size: usize) {
    tracing::trace!(size, "group commit");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;
    use tollgate_core::pricing::default_price_book;
    use tollgate_core::{ManualClock, TierBasis};

    use super::*;

    fn insert(connection: &Connection, value: &str) -> StoreResult<()> {
        connection.execute("INSERT INTO t (x) VALUES (?1)", [value])?;
        Ok(())
    }

    fn rows(path: &std::path::Path) -> Vec<String> {
        let connection = Connection::open(path).unwrap();
        let mut statement = connection.prepare("SELECT x FROM t ORDER BY x").unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A charge job runs without a savepoint: a refusal that wrote nothing leaves its
    /// neighbours in the group alone, but one that fails after writing fails the whole
    /// group, since its writes cannot be undone alone.
    #[tokio::test]
    async fn a_charge_that_fails_after_writing_fails_its_group_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE t (x TEXT NOT NULL);
                 CREATE TABLE journal_transactions (account_id TEXT, idempotency_key TEXT);",
            )
            .unwrap();
        let writer = Writer::start(connection, test_rules()).unwrap();
        let refused = || StoreError::IdempotencyConflict { key: "k".to_owned() };
        // A refusal before any write: its neighbours commit.
        let group = in_one_group(&writer, async {
            tokio::join!(
                writer.write_charges(|context| insert(context.connection, "a")),
                writer.write_charges(move |_| Err::<(), _>(refused())),
                writer.write_charges(|context| insert(context.connection, "b")),
            )
        });
        let (a, refusal, b) = group.await;
        a.unwrap();
        b.unwrap();
        assert!(
            matches!(refusal, Err(StoreError::IdempotencyConflict { .. })),
            "{refusal:?}"
        );
        assert_eq!(rows(&path), vec!["a".to_owned(), "b".to_owned()]);
        // A failure after a write: the whole group is lost, and says so.
        let group = in_one_group(&writer, async {
            tokio::join!(
                writer.write_charges(|context| insert(context.connection, "c")),
                writer.write_charges(move |context| {
                    insert(context.connection, "half")?;
                    Err::<(), _>(refused())
                }),
                writer.write_charges(|context| insert(context.connection, "d")),
            )
        });
        let (c, half, d) = group.await;
        assert!(c.is_err() && half.is_err() && d.is_err(), "{c:?} {half:?} {d:?}");
        assert_eq!(rows(&path), vec!["a".to_owned(), "b".to_owned()]);
        // The writer carries on.
        writer
            .write_charges(|context| insert(context.connection, "e"))
            .await
            .unwrap();
        assert_eq!(rows(&path), vec!["a".to_owned(), "b".to_owned(), "e".to_owned()]);
    }

    /// Runs `group` while a slow job holds the writer, so the jobs it submits queue up
    /// and share one group commit.
    async fn in_one_group<T>(writer: &Writer, group: impl std::future::Future<Output = T>) -> T {
        let slow = writer.write(|_| {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        });
        let late = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            group.await
        };
        let (slow, out) = tokio::join!(slow, late);
        slow.unwrap();
        out
    }

    fn test_rules() -> Arc<StoreRules> {
        Arc::new(StoreRules {
            price_book: Arc::new(default_price_book()),
            tier_basis: TierBasis::Cycle,
            clock: Arc::new(ManualClock::new(datetime!(2026-01-01 0:00 UTC))),
            balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
        })
    }

    /// Some errors (disk full, I/O errors; here a trigger's `RAISE(ROLLBACK)`)
    /// make SQLite roll back the whole group transaction. The jobs after it
    /// in the same group, and the events after it in the same batch, must
    /// then write nothing: run in autocommit mode, each savepoint would
    /// commit on its own while the caller is told the write failed.
    #[tokio::test]
    async fn a_rolled_back_group_writes_nothing_after_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let connection = Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE t (x TEXT NOT NULL);
                 CREATE TABLE journal_transactions (account_id TEXT, idempotency_key TEXT);
                 CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.x LIKE 'boom%'
                 BEGIN SELECT RAISE(ROLLBACK, 'boom'); END;",
            )
            .unwrap();
        let writer = Writer::start(connection, test_rules()).unwrap();
        // The four share one group commit.
        let group = in_one_group(&writer, async {
            tokio::join!(
                writer.write(|context| insert(context.connection, "a")),
                writer.write(|context| insert(context.connection, "boom")),
                writer.write(|context| insert(context.connection, "c")),
                writer.write(|context| {
                    // A batch: each event in its own savepoint.
                    for event in ["d1", "boom-d2", "d3"] {
                        let _ = in_savepoint(context, "event", || insert(context.connection, event));
                    }
                    Ok(())
                }),
            )
        });
        let (a, boom, c, batch) = group.await;
        assert!(boom.is_err());
        // The group is lost as a whole: every job reports failure…
        assert!(
            a.is_err() && c.is_err() && batch.is_err(),
            "{a:?} {c:?} {batch:?}"
        );
        // …and, as reported, nothing of it was written.
        assert_eq!(rows(&path), Vec::<String>::new());
        // The writer carries on with the next group.
        writer
            .write(|context| insert(context.connection, "e"))
            .await
            .unwrap();
        assert_eq!(rows(&path), vec!["e".to_owned()]);
        // Inside one batch: the events after the failure write nothing either.
        let batch = writer
            .write(|context| {
                for event in ["f1", "boom-f2", "f3"] {
                    let _ = in_savepoint(context, "event", || insert(context.connection, event));
                }
                Ok(())
            })
            .await;
        assert!(batch.is_err());
        assert_eq!(rows(&path), vec!["e".to_owned()]);
    }
}
