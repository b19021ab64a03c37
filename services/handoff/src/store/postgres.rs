//! [`PostgresStore`]: opening a PostgreSQL pool for the handoff store. The
//! queries themselves are shared, in `sql.rs`.

use std::str::FromStr;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::error::StoreError;
use super::sql::impl_handoff_store;

/// The `migrations/postgres` folder, embedded at build time (the whole
/// folder: the services sharing the database share one migration history,
/// see `migrations/README.md`).
static MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// The handoff store on PostgreSQL, for production.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Opens a pool to `postgres://…` and applies the migrations (under
    /// PostgreSQL's migration lock, so services sharing the database may
    /// start together).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new().connect_with(options).await?;
        let store = Self::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations that this database lacks.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATIONS.run(&self.pool).await?;
        Ok(())
    }
}

impl_handoff_store!(PostgresStore, PgPool);
