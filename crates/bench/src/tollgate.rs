//! The real thing under test: `tollgate_web::app` on a store opened with
//! `tollgate_store::open`, exactly as `tollgate serve` wires them, except
//! that the rate limit is off (it would cap the figure, not measure it).

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use tollgate_core::commands::MAX_OPERATION_AMOUNT;
use tollgate_core::pricing::default_price_book;
use tollgate_core::{AccountId, Actor, GrantCommand, NewAccount, PriceBook, TierBasis};
use tollgate_store::{SharedStore, StoreRules, SystemClock};
use tollgate_web::{AppState, WebConfig};

use crate::load::account_id;
use crate::naive::Server;

/// The bearer token of the bench's operator key (the app hashes it once).
pub const OPERATOR_KEY: &str = "tg_sk_benchOperatorKey0123456789abcdef";

/// Operations in flight while creating accounts: enough to fill the
/// writer's group commits (512 jobs) or a PostgreSQL pool.
const SETUP_PARALLELISM: usize = 1_024;

fn price_book() -> Arc<PriceBook> {
    Arc::new(default_price_book())
}

fn rules(book: Arc<PriceBook>) -> StoreRules {
    StoreRules {
        price_book: book,
        tier_basis: TierBasis::default(),
        clock: Arc::new(SystemClock),
        balance_low_level: tollgate_core::DEFAULT_BALANCE_LOW_LEVEL,
    }
}

/// Opens (creating and migrating) the store `url` names, as the service does.
pub async fn open_store(url: &str) -> anyhow::Result<SharedStore> {
    Ok(tollgate_store::open(url, rules(price_book())).await?)
}

/// The `sqlite://` URL of a file.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Serves the real app on `store` on a loopback port.
pub async fn serve(store: SharedStore) -> anyhow::Result<Server> {
    let book = price_book();
    let mut config = WebConfig::new(book, Arc::new(SystemClock));
    config.operator_key = Some(OPERATOR_KEY.to_owned());
    config.rate_limit_per_second = 0;
    Server::start(tollgate_web::app(AppState::new(store, config))).await
}

/// Creates accounts `0..count` through the store API, each funded with the
/// largest single grant when `fund` is set. Not measured.
pub async fn create_accounts(store: &SharedStore, count: usize, fund: bool) -> anyhow::Result<()> {
    let mut results = futures::stream::iter(0..count)
        .map(|index| {
            let store = store.clone();
            async move {
                let id = AccountId::parse(&account_id(index))?;
                store
                    .create_account(NewAccount::new(id.clone(), "Bench", "bench@example.test")?)
                    .await?;
                if fund {
                    store
                        .grant(GrantCommand::new(
                            id,
                            MAX_OPERATION_AMOUNT,
                            "bench funding",
                            None,
                            Actor::System,
                        )?)
                        .await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(SETUP_PARALLELISM);
    let mut done = 0_usize;
    while let Some(result) = results.next().await {
        result?;
        done += 1;
    }
    anyhow::ensure!(done == count, "created {done} of {count} accounts");
    Ok(())
}

/// Where the usage records can be counted.
#[derive(Clone, Debug)]
pub enum Counter {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Counter {
    /// Usage records stored, read straight from the database (the store API has no count).
    pub async fn usage_records(&self) -> anyhow::Result<u64> {
        match self {
            Counter::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let connection = rusqlite::Connection::open(&path)?;
                    let count: i64 =
                        connection.query_row("SELECT COUNT(*) FROM usage_records", [], |row| row.get(0))?;
                    anyhow::Ok(count as u64)
                })
                .await?
            }
            Counter::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                let connection = tokio::spawn(connection);
                let count: i64 = client
                    .query_one("SELECT COUNT(*) FROM usage_records", &[])
                    .await?
                    .get(0);
                drop(client);
                let _ = connection.await;
                Ok(count as u64)
            }
        }
    }
}

/// The correctness check after a scenario: the ledger verifies clean and
/// holds exactly the events the load generator saw acknowledged.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub ledger_clean: bool,
    pub problems: Vec<String>,
    pub usage_records: u64,
    pub acknowledged: u64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.ledger_clean && self.usage_records == self.acknowledged
    }

    pub fn describe(&self) -> String {
        let ledger = if self.ledger_clean {
            "ledger clean".to_owned()
        } else {
            format!(
                "LEDGER NOT CLEAN ({} problems, first: {})",
                self.problems.len(),
                self.problems.first().map_or("", String::as_str)
            )
        };
        let count = if self.usage_records == self.acknowledged {
            format!("{} records = {} acked", self.usage_records, self.acknowledged)
        } else {
            format!(
                "MISMATCH {} records ≠ {} acked",
                self.usage_records, self.acknowledged
            )
        };
        format!("{ledger}, {count}")
    }
}

/// Runs `verify_ledger` and counts usage records against `acknowledged`
/// (cumulative over every scenario run on this store).
pub async fn check(store: &SharedStore, counter: &Counter, acknowledged: u64) -> anyhow::Result<Check> {
    let report = store.verify_ledger().await?;
    Ok(Check {
        ledger_clean: report.is_clean(),
        problems: report.problems,
        usage_records: counter.usage_records().await?,
        acknowledged,
    })
}
