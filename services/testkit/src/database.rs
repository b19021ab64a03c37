//! A fresh database per test, on SQLite (a file in a temporary folder) or
//! on PostgreSQL (a database `chatai_test_<uuid>` created on the server at
//! `CHATAI_TEST_POSTGRES_URL`, default [`DEFAULT_POSTGRES_URL`], and dropped
//! `WITH (FORCE)` afterwards). An unreachable server fails the test: the
//! README's test command starts PostgreSQL, nothing is skipped.
//!
//! [`on_sqlite`] and [`on_postgres`] run a case on such a database in a task
//! of its own, so that its pools are gone and a panic is caught before the
//! database is dropped; the panic is then resumed.

use std::future::Future;
use std::path::PathBuf;

use sqlx::{Connection, PgConnection};

/// The PostgreSQL server the tests use when `CHATAI_TEST_POSTGRES_URL` is
/// unset: the local one, as on the project's machines.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The URL of a database on the test server that tests may connect to in
/// order to create and drop their own.
pub fn postgres_admin_url() -> String {
    std::env::var("CHATAI_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// A database that exists for one test: removed by [`TestDatabase::remove`],
/// or when dropped (a test that panicked leaves nothing behind either).
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    /// `None` once removed.
    place: Option<Place>,
}

#[derive(Debug)]
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDatabase {
    /// A SQLite file that does not exist yet, in a folder that does not
    /// either (opening it must create both); removed with the value.
    pub fn sqlite() -> TestDatabase {
        let folder = tempfile::tempdir().expect("a temporary folder");
        let file: PathBuf = folder.path().join("not").join("yet").join("chatai.db");
        TestDatabase {
            url: format!("sqlite://{}", file.display()),
            place: Some(Place::Sqlite(folder)),
        }
    }

    /// A new, empty database on the test server; panics (fails the test)
    /// when the server is unreachable. Drop it with [`TestDatabase::remove`].
    pub async fn postgres() -> TestDatabase {
        let admin_url = postgres_admin_url();
        let mut admin = admin(&admin_url).await;
        let name = format!("chatai_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        admin.close().await.expect("closing the admin connection");
        TestDatabase {
            url: with_database(&admin_url, &name),
            place: Some(Place::Postgres { admin_url, name }),
        }
    }

    /// The URL the code under test opens.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Removes the database, closing whatever is still connected to it.
    pub async fn remove(mut self) {
        if let Some(place) = self.place.take() {
            place.remove().await;
        }
    }
}

impl Drop for TestDatabase {
    /// Removes the database if [`TestDatabase::remove`] did not, on a thread
    /// of its own (no async in `drop`).
    fn drop(&mut self) {
        let Some(place) = self.place.take() else {
            return;
        };
        let removed = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to remove the test database")
                .block_on(place.remove());
        })
        .join();
        if removed.is_err() && !std::thread::panicking() {
            panic!("could not remove the test database");
        }
    }
}

impl Place {
    async fn remove(self) {
        match self {
            Place::Sqlite(folder) => drop(folder),
            Place::Postgres { admin_url, name } => {
                let mut admin = admin(&admin_url).await;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .expect("DROP DATABASE");
                admin.close().await.expect("closing the admin connection");
            }
        }
    }
}

async fn admin(admin_url: &str) -> PgConnection {
    match PgConnection::connect(admin_url).await {
        Ok(admin) => admin,
        Err(err) => panic!(
            "PostgreSQL must be reachable for the tests (CHATAI_TEST_POSTGRES_URL, \
             default {DEFAULT_POSTGRES_URL}; the README's test command starts it): {err}"
        ),
    }
}

/// Runs `case` with the URL of a fresh SQLite database, then removes it.
pub async fn on_sqlite<F, Fut, T>(case: F) -> T
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    run_on(TestDatabase::sqlite(), case).await
}

/// Runs `case` with the URL of a fresh PostgreSQL database, then drops it,
/// also when the case panicked.
pub async fn on_postgres<F, Fut, T>(case: F) -> T
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    run_on(TestDatabase::postgres().await, case).await
}

async fn run_on<F, Fut, T>(database: TestDatabase, case: F) -> T
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let outcome = tokio::spawn(case(database.url().to_owned())).await;
    database.remove().await;
    match outcome {
        Ok(value) => value,
        Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
    }
}

/// `url` with its database name replaced by `name`, keeping any `?params`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, params) = url
        .split_once('?')
        .map_or((url, None), |(b, p)| (b, Some(p)));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    match params {
        Some(params) => format!("{server}/{name}?{params}"),
        None => format!("{server}/{name}"),
    }
}

/// What a test case ends with: nothing, or a result whose error fails the
/// test (a panic has already failed it).
pub trait CaseOutcome {
    fn check(self);
}

impl CaseOutcome for () {
    fn check(self) {}
}

impl<E: std::fmt::Display + std::fmt::Debug> CaseOutcome for Result<(), E> {
    fn check(self) {
        if let Err(err) = self {
            panic!("the case failed: {err} ({err:?})");
        }
    }
}

/// Generates `sqlite::<case>` and `postgres::<case>` tests for every case,
/// each on a fresh database of its own ([`on_sqlite`], [`on_postgres`]):
///
/// ```ignore
/// chatai_testkit::on_both_databases! {
///     open: open,                 // async fn(&str) -> the store, for `stores` cases
///     stores: [case_taking_a_store],
///     urls: [case_taking_the_url],
/// }
/// chatai_testkit::on_both_databases! { urls: [case_taking_the_url] }
/// ```
///
/// A case returns `()` or `Result<(), E>`; an `Err` fails the test.
#[macro_export]
macro_rules! on_both_databases {
    (open: $open:ident, stores: [$($case:ident),* $(,)?], urls: [$($url_case:ident),* $(,)?] $(,)?) => {
        $crate::on_both_databases!(@backend sqlite, on_sqlite, $open, [$($case),*], [$($url_case),*]);
        $crate::on_both_databases!(@backend postgres, on_postgres, $open, [$($case),*], [$($url_case),*]);
    };
    (urls: [$($url_case:ident),* $(,)?] $(,)?) => {
        $crate::on_both_databases!(@backend sqlite, on_sqlite, no_open, [], [$($url_case),*]);
        $crate::on_both_databases!(@backend postgres, on_postgres, no_open, [], [$($url_case),*]);
    };
    (@backend $backend:ident, $run:ident, $open:ident, [$($case:ident),*], [$($url_case:ident),*]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    $crate::CaseOutcome::check(
                        $crate::$run(|url| async move {
                            super::$case(super::$open(&url).await).await
                        })
                        .await,
                    );
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $url_case() {
                    $crate::CaseOutcome::check($crate::$run(super::$url_case).await);
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    /// A PostgreSQL test database exists while the case runs and is gone
    /// after it.
    #[tokio::test]
    async fn postgres_databases_come_and_go() {
        let url = on_postgres(|url| async move {
            let connection = PgConnection::connect(&url).await.expect("connects");
            connection.close().await.expect("closes");
            url
        })
        .await;
        assert!(PgConnection::connect(&url).await.is_err(), "{url} is gone");
    }

    /// A database the test never removed (it panicked first, say) is
    /// removed when dropped.
    #[tokio::test]
    async fn a_dropped_database_is_removed() {
        let database = TestDatabase::postgres().await;
        let url = database.url().to_owned();
        let mut connection = PgConnection::connect(&url).await.expect("connects");
        drop(database);
        assert!(
            connection.ping().await.is_err(),
            "the connection was closed"
        );
        assert!(PgConnection::connect(&url).await.is_err(), "{url} is gone");
    }
}
