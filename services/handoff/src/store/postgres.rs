//! [`PostgresStore`]: opening a PostgreSQL pool for the handoff store. The
//! queries themselves are shared, in `sql.rs`.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use chatai_kit::db;

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
        let pool = db::open_postgres(url).await?;
        db::migrate_postgres(&pool, &MIGRATIONS).await?;
        Ok(Self::from_pool(pool))
    }
}

impl_handoff_store!(PostgresStore, PgPool);
