//! [`PostgresStore`]: opening a PostgreSQL pool for the notification store.
//! The queries themselves are shared, in `sql.rs`.

use sqlx::PgPool;

use chatai_kit::db;

use super::error::StoreError;
use super::sql::impl_notification_store;

/// The notification store on PostgreSQL, for production and replicas.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Opens a pool to `postgres://…` and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Ok(Self::from_pool(db::connect_postgres(url).await?))
    }
}

impl_notification_store!(PostgresStore, PgPool);
