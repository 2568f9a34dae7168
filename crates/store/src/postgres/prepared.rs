//! Every statement prepared once per connection and kept there (deadpool's statement
//! cache, which `RecyclingMethod::Fast` preserves). Sent as text, each statement cost a
//! parse and a plan on the server and an extra round trip: under load, parsing was the
//! largest part of PostgreSQL's CPU per charge. The SQL is always one of the store's own
//! constants, so the cache holds a bounded set of statements.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Query methods that prepare (once per connection) before they run.
#[async_trait]
pub(super) trait Prepared: GenericClient {
    /// All rows of `sql`.
    async fn query_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    /// At most one row of `sql`.
    async fn query_opt_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_opt(&statement, params).await
    }

    /// Exactly one row of `sql`.
    async fn query_one_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_one(&statement, params).await
    }

    /// Rows changed by `sql`.
    async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

impl<C: GenericClient + ?Sized> Prepared for C {}
