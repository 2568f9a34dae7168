//! WAL checkpoints off the writer's path. SQLite checkpoints from inside the commit that
//! pushes the WAL past its limit, so one group in every few hundred paid for copying the
//! WAL into the database and syncing it (8% of the writer's time under batch load). A
//! thread of its own does it instead, with its own connection, while the writer goes on;
//! the writer's own automatic checkpoint stays as a backstop at a larger limit.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

use crate::StoreResult;

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_INTERVAL_MS: u64 = 250;
/// WAL pages after which the writer checkpoints itself, should the checkpointer fall behind.
pub const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// Runs passive checkpoints until dropped.
pub struct Checkpointer {
    // Dropping it disconnects the thread's receiver: the thread ends at once.
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts the checkpoint thread on its own connection to `path`.
    pub fn start(path: &Path) -> StoreResult<Checkpointer> {
        let connection = Connection::open(path)?;
        connection.execute_batch("PRAGMA busy_timeout = 5000;")?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("tollgate-ckpt".to_owned())
            .spawn(move || run(&connection, &stopped))
            .map_err(|error| {
                crate::StoreError::Database(format!("could not start the checkpointer: {error}"))
            })?;
        Ok(Checkpointer { _stop: stop })
    }
}

fn run(connection: &Connection, stopped: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) =
        stopped.recv_timeout(Duration::from_millis(CHECKPOINT_INTERVAL_MS))
    {
        // PASSIVE: copies what no reader still needs and never waits for the writer.
        if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "WAL checkpoint failed; the writer's own checkpoint is the backstop");
        }
    }
}
