//! [`PostgresStore`]: opening a PostgreSQL pool for the notification store.
//! The queries themselves are shared, in `sql.rs`.

use std::str::FromStr;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::error::StoreError;
use super::sql::impl_notification_store;

/// The `migrations/postgres` folder, embedded at build time (the whole
/// folder: the chat service's tables and ours share one history).
static MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// The notification store on PostgreSQL, for production and replicas.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Opens a pool to `postgres://…` and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new().connect_with(options).await?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations that this database lacks, under
    /// PostgreSQL's migration lock (sqlx takes an advisory lock), so the chat
    /// service, replicas and this service may start together.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATIONS.run(&self.pool).await?;
        Ok(())
    }
}

impl_notification_store!(PostgresStore, PgPool);
