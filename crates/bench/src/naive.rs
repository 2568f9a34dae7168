//! The servers Tollgate is compared against, with the same routes and
//! request bodies as Tollgate so one load generator drives them all.
//!
//! - H: a trivial handler answering `200 ok`: the ceiling of this HTTP stack
//!   and load generator on this machine.
//! - B0 (SQLite) and P0 (PostgreSQL): what a competent engineer writes first:
//!   axum, one SQL transaction per event (idempotency lookup, balance read,
//!   debit, usage insert, commit), prepared statements, durable commits,
//!   a Mutex'd SQLite connection or a PostgreSQL pool. Not a strawman: no
//!   extra round trips, no per-request connection setup.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Json, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::load::account_id;

/// Price of the only action the bench sends (`api`, $0.02, as in the default price book).
const API_PRICE_MICROS: i64 = 20_000;

/// A server on a loopback port, stopped when dropped or by [`Server::stop`].
pub struct Server {
    pub base: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `router` on 127.0.0.1 (loopback only) on a free port.
    pub async fn start(router: Router) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Server {
            base,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Stops accepting, drains in-flight requests and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            // The load has finished; a connection that lingers must not hold the next scenario back.
            if tokio::time::timeout(std::time::Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// H: the trivial handler, on the same path and method as the usage route.
pub fn trivial_router() -> Router {
    async fn ok() -> &'static str {
        "ok"
    }
    Router::new()
        .route("/v1/accounts/{id}/usage", post(ok))
        .route("/v1/usage/batch", post(ok))
}

#[derive(Deserialize)]
struct UsageBody {
    action: String,
    quantity: i64,
    idempotency_key: String,
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| given == token)
}

/// The event's price, or why it is refused (answered `400`).
fn price(body: &UsageBody) -> Result<i64, &'static str> {
    if body.action != "api" || !(1..=1_000_000_000_000).contains(&body.quantity) {
        return Err("invalid event");
    }
    body.quantity.checked_mul(API_PRICE_MICROS).ok_or("too large")
}

fn charged(id: i64, account: &str, amount: i64, balance: i64, replayed: bool) -> Response {
    Json(serde_json::json!({
        "id": id, "object": "usage", "account_id": account,
        "amount_micros": amount, "balance_micros": balance, "replayed": replayed,
    }))
    .into_response()
}

// ---------------------------------------------------------------- SQLite (B0)

struct SqliteState {
    connection: Mutex<rusqlite::Connection>,
    token: String,
}

const NAIVE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS accounts (
        id TEXT PRIMARY KEY,
        balance_micros INTEGER NOT NULL CHECK (balance_micros >= 0)
    );
    CREATE TABLE IF NOT EXISTS usage_events (
        id INTEGER PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts (id),
        idempotency_key TEXT NOT NULL,
        action TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        amount_micros INTEGER NOT NULL,
        created_at_micros INTEGER NOT NULL,
        UNIQUE (account_id, idempotency_key)
    );";

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as i64)
}

/// Creates the B0 database at `path` with `accounts` accounts of `balance` micro-dollars each.
pub fn sqlite_setup(path: &Path, accounts: usize, balance: i64) -> anyhow::Result<()> {
    let mut connection = sqlite_connection(path)?;
    connection.execute_batch(NAIVE_SCHEMA)?;
    // Setup is not measured: one transaction for all accounts.
    let transaction = connection.transaction()?;
    {
        let mut insert = transaction.prepare("INSERT INTO accounts (id, balance_micros) VALUES (?1, ?2)")?;
        for index in 0..accounts.max(1) {
            insert.execute(rusqlite::params![account_id(index), balance])?;
        }
    }
    transaction.commit()?;
    Ok(())
}

fn sqlite_connection(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open(path)?;
    // The same durability Tollgate promises: a commit is on disk before the answer.
    connection.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(connection)
}

/// B0's router on the database at `path` (made by [`sqlite_setup`]).
pub fn sqlite_router(path: &Path, token: &str) -> anyhow::Result<Router> {
    let state = Arc::new(SqliteState {
        connection: Mutex::new(sqlite_connection(path)?),
        token: token.to_owned(),
    });
    Ok(Router::new()
        .route("/v1/accounts/{id}/usage", post(sqlite_charge))
        .with_state(state))
}

enum Charge {
    Done {
        id: i64,
        amount: i64,
        balance: i64,
        replayed: bool,
    },
    NotFound,
    Insufficient,
}

fn sqlite_charge_blocking(
    connection: &mut rusqlite::Connection,
    account: &str,
    body: &UsageBody,
    amount: i64,
) -> rusqlite::Result<Charge> {
    use rusqlite::OptionalExtension;
    let transaction = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let existing = transaction
        .prepare_cached(
            "SELECT id, amount_micros FROM usage_events WHERE account_id = ?1 AND idempotency_key = ?2",
        )?
        .query_row(rusqlite::params![account, body.idempotency_key], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .optional()?;
    let balance: Option<i64> = transaction
        .prepare_cached("SELECT balance_micros FROM accounts WHERE id = ?1")?
        .query_row([account], |row| row.get(0))
        .optional()?;
    let Some(balance) = balance else {
        return Ok(Charge::NotFound);
    };
    if let Some((id, amount)) = existing {
        return Ok(Charge::Done {
            id,
            amount,
            balance,
            replayed: true,
        });
    }
    if balance < amount {
        return Ok(Charge::Insufficient);
    }
    transaction
        .prepare_cached("UPDATE accounts SET balance_micros = balance_micros - ?1 WHERE id = ?2")?
        .execute(rusqlite::params![amount, account])?;
    transaction
        .prepare_cached(
            "INSERT INTO usage_events (account_id, idempotency_key, action, quantity, amount_micros, created_at_micros)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(rusqlite::params![
            account,
            body.idempotency_key,
            body.action,
            body.quantity,
            amount,
            now_micros()
        ])?;
    let id = transaction.last_insert_rowid();
    transaction.commit()?;
    Ok(Charge::Done {
        id,
        amount,
        balance: balance - amount,
        replayed: false,
    })
}

async fn sqlite_charge(
    State(state): State<Arc<SqliteState>>,
    UrlPath(account): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<UsageBody>,
) -> Response {
    if !authorized(&headers, &state.token) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let amount = match price(&body) {
        Ok(amount) => amount,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    // The commit waits for fsync: keep it off the async worker threads.
    let result = tokio::task::spawn_blocking(move || {
        let mut connection = state.connection.lock().map_err(|_| "poisoned".to_owned())?;
        sqlite_charge_blocking(&mut connection, &account, &body, amount)
            .map(|charge| (account, charge))
            .map_err(|error| error.to_string())
    })
    .await;
    render(result.map_err(|error| error.to_string()).and_then(|inner| inner))
}

fn render(result: Result<(String, Charge), String>) -> Response {
    match result {
        Ok((
            account,
            Charge::Done {
                id,
                amount,
                balance,
                replayed,
            },
        )) => charged(id, &account, amount, balance, replayed),
        Ok((_, Charge::NotFound)) => StatusCode::NOT_FOUND.into_response(),
        Ok((_, Charge::Insufficient)) => StatusCode::PAYMENT_REQUIRED.into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
    }
}

/// Usage events B0 stored.
pub fn sqlite_usage_count(path: &Path) -> anyhow::Result<u64> {
    let connection = rusqlite::Connection::open(path)?;
    let count: i64 = connection.query_row("SELECT COUNT(*) FROM usage_events", [], |row| row.get(0))?;
    Ok(count as u64)
}

// ------------------------------------------------------------ PostgreSQL (P0)

struct PgState {
    pool: deadpool_postgres::Pool,
    token: String,
}

/// Connections P0 keeps: the same as Tollgate's PostgreSQL store default.
pub const PG_POOL_SIZE: usize = tollgate_store::postgres::DEFAULT_POOL_SIZE;

/// Creates P0's schema in the (fresh) database at `url` with `accounts` funded accounts.
pub async fn pg_setup(url: &str, accounts: usize, balance: i64) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE accounts (
                 id TEXT PRIMARY KEY,
                 balance_micros BIGINT NOT NULL CHECK (balance_micros >= 0)
             );
             CREATE TABLE usage_events (
                 id BIGSERIAL PRIMARY KEY,
                 account_id TEXT NOT NULL REFERENCES accounts (id),
                 idempotency_key TEXT NOT NULL,
                 action TEXT NOT NULL,
                 quantity BIGINT NOT NULL,
                 amount_micros BIGINT NOT NULL,
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                 UNIQUE (account_id, idempotency_key)
             );",
        )
        .await?;
    client
        .execute(
            "INSERT INTO accounts (id, balance_micros)
             SELECT 'acct_' || lpad(i::text, 7, '0'), $2 FROM generate_series(0::bigint, $1::bigint - 1) AS i",
            &[&(accounts.max(1) as i64), &balance],
        )
        .await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// P0's router on the database at `url`.
pub fn pg_router(url: &str, token: &str) -> anyhow::Result<Router> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(PG_POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()?;
    let state = Arc::new(PgState {
        pool,
        token: token.to_owned(),
    });
    Ok(Router::new()
        .route("/v1/accounts/{id}/usage", post(pg_charge))
        .with_state(state))
}

async fn pg_charge_inner(
    state: &PgState,
    account: &str,
    body: &UsageBody,
    amount: i64,
) -> Result<Charge, String> {
    let error = |error: tokio_postgres::Error| error.to_string();
    let mut client = state.pool.get().await.map_err(|error| error.to_string())?;
    let transaction = client.transaction().await.map_err(error)?;
    // The row lock serialises writers of one account, as any correct PostgreSQL ledger must.
    let select_balance = transaction
        .prepare_cached("SELECT balance_micros FROM accounts WHERE id = $1 FOR UPDATE")
        .await
        .map_err(error)?;
    let Some(row) = transaction
        .query_opt(&select_balance, &[&account])
        .await
        .map_err(error)?
    else {
        return Ok(Charge::NotFound);
    };
    let balance: i64 = row.get(0);
    let select_existing = transaction
        .prepare_cached(
            "SELECT id, amount_micros FROM usage_events WHERE account_id = $1 AND idempotency_key = $2",
        )
        .await
        .map_err(error)?;
    if let Some(row) = transaction
        .query_opt(&select_existing, &[&account, &body.idempotency_key])
        .await
        .map_err(error)?
    {
        return Ok(Charge::Done {
            id: row.get(0),
            amount: row.get(1),
            balance,
            replayed: true,
        });
    }
    if balance < amount {
        return Ok(Charge::Insufficient);
    }
    let update = transaction
        .prepare_cached("UPDATE accounts SET balance_micros = balance_micros - $1 WHERE id = $2")
        .await
        .map_err(error)?;
    transaction
        .execute(&update, &[&amount, &account])
        .await
        .map_err(error)?;
    let insert = transaction
        .prepare_cached(
            "INSERT INTO usage_events (account_id, idempotency_key, action, quantity, amount_micros)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .await
        .map_err(error)?;
    let id: i64 = transaction
        .query_one(
            &insert,
            &[
                &account,
                &body.idempotency_key,
                &body.action,
                &body.quantity,
                &amount,
            ],
        )
        .await
        .map_err(error)?
        .get(0);
    transaction.commit().await.map_err(error)?;
    Ok(Charge::Done {
        id,
        amount,
        balance: balance - amount,
        replayed: false,
    })
}

async fn pg_charge(
    State(state): State<Arc<PgState>>,
    UrlPath(account): UrlPath<String>,
    headers: HeaderMap,
    Json(body): Json<UsageBody>,
) -> Response {
    if !authorized(&headers, &state.token) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let amount = match price(&body) {
        Ok(amount) => amount,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    let result = pg_charge_inner(&state, &account, &body, amount).await;
    render(result.map(|charge| (account, charge)))
}

/// Usage events P0 stored.
pub async fn pg_usage_count(url: &str) -> anyhow::Result<u64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let count: i64 = client
        .query_one("SELECT COUNT(*) FROM usage_events", &[])
        .await?
        .get(0);
    drop(client);
    let _ = connection.await;
    Ok(count as u64)
}
