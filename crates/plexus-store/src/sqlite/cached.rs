//! Statements through the connection's statement cache. `Connection::execute` and
//! `query_row` parse their SQL on every call; at thousands of runs a second that parsing
//! was 15% of the server's CPU, so every fixed statement goes through the cache.

use rusqlite::{Connection, Params, Row};

pub(crate) trait Cached {
    /// [`Connection::query_row`] with the statement from the cache.
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;

    /// [`Connection::execute`] with the statement from the cache.
    fn execute_cached<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl Cached for Connection {
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn execute_cached<P: Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}
