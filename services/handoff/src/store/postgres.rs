//! [`PostgresStore`]: opening a PostgreSQL pool for the handoff store. The
//! queries themselves are shared, in `sql.rs`.

use sqlx::PgPool;

use chatai_kit::db;

use super::error::StoreError;
use super::sql::impl_handoff_store;

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
        Ok(Self::from_pool(db::connect_postgres(url).await?))
    }
}

impl_handoff_store!(PostgresStore, PgPool);
