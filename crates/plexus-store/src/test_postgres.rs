//! A fresh PostgreSQL database per test, on the server `scripts/test` starts (its URL in
//! `PLEXUS_TEST_DATABASE_URL`). Tests never skip for want of one: without the variable
//! they fail and say how to get a server.

use sqlx::Connection as _;

/// The variable naming the test server (any database on it; tests make their own).
pub const TEST_DATABASE_URL: &str = "PLEXUS_TEST_DATABASE_URL";

/// The URL of the test server, or a panic that says how to start one.
pub fn server_url() -> String {
    std::env::var(TEST_DATABASE_URL).unwrap_or_else(|_| {
        panic!(
            "{TEST_DATABASE_URL} is not set: run the tests with scripts/test, which starts \
             PostgreSQL, or start one with `scripts/postgres start DIR` and export the URL \
             it prints as {TEST_DATABASE_URL}"
        )
    })
}

/// Makes a new, empty database on the test server and returns its URL.
pub async fn fresh_database() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let server = server_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "plexus_test_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the test PostgreSQL at {}: {e}",
                crate::redacted_url(&server)
            )
        });
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create a test database: {e}"));
    conn.close().await.ok();
    with_database(&server, &name)
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}
