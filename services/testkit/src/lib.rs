//! What the test suites of every ChatAI crate share:
//! - [`database`]: a fresh SQLite or PostgreSQL database per test, removed
//!   after it (re-exported here), and [`on_both_databases!`], which runs a
//!   suite's cases on each;
//! - [`gateway`]: a test gateway's `EventStream/Attach` stream to a service,
//!   to subscribe recipients and read what the service delivers.

pub mod database;
pub mod gateway;

pub use database::{
    CaseOutcome, DEFAULT_POSTGRES_URL, TestDatabase, on_postgres, on_sqlite, postgres_admin_url,
    with_database,
};
pub use gateway::TestGateway;
