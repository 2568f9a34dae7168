//! Test support shared by this crate's tests and the web tests: one store
//! per test, SQLite or PostgreSQL, chosen by `TOLLGATE_TEST_STORE`.
//!
//! PostgreSQL tests get a fresh database each, copied from a migrated
//! template (`CREATE DATABASE … TEMPLATE …`, fast and isolated) and dropped
//! when the [`TestDatabase`] is. The server is `TOLLGATE_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); an unreachable
//! server fails the test, it never skips it.

use std::sync::Arc;

use crate::{SharedStore, StoreRules};

/// The PostgreSQL server tests use when `TOLLGATE_TEST_POSTGRES_URL` is unset.
pub const DEFAULT_TEST_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Connections each test store keeps at most.
const TEST_POOL_SIZE: usize = 8;

/// Which store the tests run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on a PostgreSQL server.
    Postgres,
}

impl Backend {
    /// `TOLLGATE_TEST_STORE`: `sqlite` (default) or `postgres`; anything else panics.
    pub fn from_env() -> Backend {
        match std::env::var("TOLLGATE_TEST_STORE").as_deref() {
            Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
            Ok("postgres") | Ok("postgresql") => Backend::Postgres,
            Ok(other) => panic!("TOLLGATE_TEST_STORE must be `sqlite` or `postgres`, not {other:?}"),
        }
    }
}

/// The PostgreSQL server URL for tests.
pub fn postgres_server_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_TEST_POSTGRES_URL.to_owned())
}

enum Place {
    Sqlite(tempfile::TempDir),
    Postgres { server: String, name: String },
}

/// One test's own database; dropped with it.
pub struct TestDatabase {
    place: Place,
    url: String,
}

/// Runs `future` to completion on a runtime of its own, on a thread of its
/// own, so it works inside and outside the caller's runtime alike.
fn block_on_own_runtime<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime starts")
            .block_on(future)
    })
    .join()
    .expect("the test database helper does not panic")
}

/// Replaces the database name in a `postgres://` URL.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let scheme_end = base.find("://").map_or(0, |index| index + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Name of the template for the current migrations: a new schema gets a new template.
/// Every migration counts, so adding one never reuses a template built without it.
fn template_name() -> String {
    let hash = crate::postgres::migrations_fingerprint();
    format!("tollgate_test_template_{:012x}", hash & 0xffff_ffff_ffff)
}

async fn admin(server: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is not reachable at {server} ({error}); start it (scripts/test does: \
                 pg_ctlcluster <version> main start) or set TOLLGATE_TEST_POSTGRES_URL"
            )
        });
    tokio::spawn(connection);
    client
}

/// Creates the migrated template once per schema; parallel test binaries may
/// race: each builds under a unique name and renames, the losers drop theirs.
async fn ensure_template(server: &str) -> String {
    let template = template_name();
    let client = admin(server).await;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await
        .expect("pg_database is readable")
        .is_some();
    if exists {
        return template;
    }
    let building = format!("tollgate_test_build_{}", uuid::Uuid::now_v7().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {building}"))
        .await
        .expect("the test role may create databases");
    crate::postgres::migrate(&with_database(server, &building))
        .await
        .expect("the template database migrates");
    if client
        .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
        .await
        .is_err()
    {
        // Someone else's template won the race: it is the same schema.
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
            .await;
    }
    template
}

impl TestDatabase {
    /// A fresh database of the backend `TOLLGATE_TEST_STORE` names.
    pub fn new() -> TestDatabase {
        TestDatabase::of(Backend::from_env())
    }

    /// A fresh database of `backend`.
    pub fn of(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
                TestDatabase {
                    place: Place::Sqlite(dir),
                    url,
                }
            }
            Backend::Postgres => {
                let server = postgres_server_url();
                let name = format!("tollgate_test_{}", uuid::Uuid::now_v7().simple());
                let url = with_database(&server, &name);
                let (admin_server, new_name) = (server.clone(), name.clone());
                block_on_own_runtime(async move {
                    let template = ensure_template(&admin_server).await;
                    let client = admin(&admin_server).await;
                    let mut last = None;
                    // The template is briefly busy while another binary renames it.
                    for _ in 0..50 {
                        match client
                            .batch_execute(&format!("CREATE DATABASE {new_name} TEMPLATE {template}"))
                            .await
                        {
                            Ok(()) => {
                                // Tests check logic, not the server's fsync: not waiting for
                                // the WAL flush makes them several times faster. Per
                                // database, so production settings are untouched.
                                client
                                    .batch_execute(&format!(
                                        "ALTER DATABASE {new_name} SET synchronous_commit = off"
                                    ))
                                    .await
                                    .expect("the test database accepts settings");
                                return;
                            }
                            Err(error) => last = Some(error),
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    panic!("could not create test database {new_name}: {last:?}");
                });
                TestDatabase {
                    place: Place::Postgres { server, name },
                    url,
                }
            }
        }
    }

    /// A fresh SQLite database in a new directory under `parent` (e.g. /dev/shm).
    pub fn sqlite_in(parent: &std::path::Path) -> TestDatabase {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-test-")
            .tempdir_in(parent)
            .expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("tollgate.db").display());
        TestDatabase {
            place: Place::Sqlite(dir),
            url,
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.place {
            Place::Sqlite(_) => Backend::Sqlite,
            Place::Postgres { .. } => Backend::Postgres,
        }
    }

    /// `TOLLGATE_DATABASE_URL` for this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SQLite file, when this is SQLite.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        match &self.place {
            Place::Sqlite(dir) => Some(dir.path().join("tollgate.db")),
            Place::Postgres { .. } => None,
        }
    }

    /// Opens a store on it (already migrated for PostgreSQL; SQLite migrates on open).
    pub fn open(&self, rules: StoreRules) -> SharedStore {
        match &self.place {
            Place::Sqlite(dir) => Arc::new(
                crate::sqlite::SqliteStore::open(&dir.path().join("tollgate.db"), rules)
                    .expect("the SQLite test store opens"),
            ),
            Place::Postgres { .. } => Arc::new(
                crate::postgres::PgStore::connect(&self.url, rules, TEST_POOL_SIZE)
                    .expect("the PostgreSQL test store opens"),
            ),
        }
    }
}

impl Default for TestDatabase {
    fn default() -> TestDatabase {
        TestDatabase::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Place::Postgres { server, name } = &self.place {
            let (server, name) = (server.clone(), name.clone());
            // FORCE ends connections a store may still hold; failures only leave litter.
            block_on_own_runtime(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&server, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        }
    }
}
