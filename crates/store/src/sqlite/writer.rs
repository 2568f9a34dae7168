//! The single writer: one thread owns the write connection and commits
//! everything that arrived while the previous commit was syncing in one
//! transaction (group commit). Each job runs in its own savepoint, so a
//! refused job leaves no trace while its neighbours commit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tollgate_core::Timestamp;

use super::StoreRules;
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
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&WriteContext<'_>) -> Completion + Send>;

/// A handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// Runs `operation` inside a savepoint: its writes stay only if it succeeds.
pub fn in_savepoint<T>(
    connection: &Connection,
    name: &str,
    operation: impl FnOnce() -> StoreResult<T>,
) -> StoreResult<T> {
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
    let result = match catch_unwind(AssertUnwindSafe(operation)) {
        Ok(result) => result,
        Err(_) => Err(StoreError::Database("a store operation panicked".to_owned())),
    };
    if result.is_err() {
        run(format!("ROLLBACK TO {name}"))?;
    }
    run(format!("RELEASE {name}"))?;
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
    pub async fn write<T, F>(&self, operation: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteContext<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, replied) = oneshot::channel();
        let job: Job = Box::new(move |context| {
            let result = in_savepoint(context.connection, "job", || operation(context));
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
        self.jobs.send(job).await.map_err(|_| StoreError::Unavailable)?;
        replied.await.map_err(|_| StoreError::Unavailable)?
    }
}

fn run(connection: Connection, mut receiver: mpsc::Receiver<Job>, rules: Arc<StoreRules>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    let mut completions: Vec<Completion> = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
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
        for job in batch.drain(..) {
            let context = WriteContext {
                connection: &connection,
                now: rules.clock.now(),
                rules: &rules,
            };
            completions.push(job(&context));
        }
        let committed = connection.execute_batch("COMMIT").map_err(|error| {
            tracing::error!(%error, "group commit failed; rolling back");
            let _ = connection.execute_batch("ROLLBACK");
            error.to_string()
        });
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
                 CREATE TRIGGER boom BEFORE INSERT ON t WHEN NEW.x LIKE 'boom%'
                 BEGIN SELECT RAISE(ROLLBACK, 'boom'); END;",
            )
            .unwrap();
        let rules = Arc::new(StoreRules {
            price_book: Arc::new(default_price_book()),
            tier_basis: TierBasis::Cycle,
            clock: Arc::new(ManualClock::new(datetime!(2026-01-01 0:00 UTC))),
            balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
        });
        let writer = Writer::start(connection, rules).unwrap();
        // A slow job holds the writer so the next four queue up and share
        // one group commit.
        let slow = writer.write(|_| {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        });
        let group = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tokio::join!(
                writer.write(|context| insert(context.connection, "a")),
                writer.write(|context| insert(context.connection, "boom")),
                writer.write(|context| insert(context.connection, "c")),
                writer.write(|context| {
                    // A batch: each event in its own savepoint.
                    for event in ["d1", "boom-d2", "d3"] {
                        let _ =
                            in_savepoint(context.connection, "event", || insert(context.connection, event));
                    }
                    Ok(())
                }),
            )
        };
        let (slow, (a, boom, c, batch)) = tokio::join!(slow, group);
        slow.unwrap();
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
                    let _ = in_savepoint(context.connection, "event", || insert(context.connection, event));
                }
                Ok(())
            })
            .await;
        assert!(batch.is_err());
        assert_eq!(rows(&path), vec!["e".to_owned()]);
    }
}
