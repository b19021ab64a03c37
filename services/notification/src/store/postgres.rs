//! [`PostgresStore`]: opening a PostgreSQL pool for the notification store.
//! The queries themselves are shared, in `sql.rs`.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use chatai_kit::db;

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
        let pool = db::open_postgres(url).await?;
        db::migrate_postgres(&pool, &MIGRATIONS).await?;
        Ok(Self::from_pool(pool))
    }
}

impl_notification_store!(PostgresStore, PgPool);
