//! The shared store suite against a real SQLite file, plus SQLite-specific behaviour.

use plexus_store::{SqliteOptions, SqliteStore, Store};

#[tokio::test]
async fn sqlite_store_passes_the_shared_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("plexus.db"), SqliteOptions::default()).unwrap();
    plexus_store::conformance::check_all(&store).await;
}

#[tokio::test]
async fn reopening_keeps_everything_and_migrations_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plexus.db");
    let before = {
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        plexus_store::conformance::check_all(&store).await;
        store.list_runs(Default::default()).await.unwrap()
    };
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let after = store.list_runs(Default::default()).await.unwrap();
    assert!(!after.is_empty());
    assert_eq!(after, before, "every run is still there, unchanged");
}

#[tokio::test]
async fn a_database_from_a_newer_plexus_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plexus.db");
    drop(SqliteStore::open(&path, SqliteOptions::default()).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path, SqliteOptions::default())
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("newer than this plexus understands"),
        "{err}"
    );
}
