//! The shared store suite against a real SQLite file, plus SQLite-specific behaviour.

use plexus_store::{RunStore, SqliteOptions, SqliteStore};

async fn fresh_store() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("plexus.db"), SqliteOptions::default()).unwrap();
    (store, dir)
}

/// The shared suite: one test per behaviour, each on a fresh store.
mod conformance {
    use super::fresh_store;
    plexus_store::store_conformance!(fresh_store);
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

/// What the database holds is read as what it is, or refused: an unknown command kind is
/// not taken for another, and a JSON column that does not parse is an error naming it.
#[tokio::test]
async fn unknown_values_and_corrupt_json_are_errors() {
    let (store, dir) = fresh_store().await;
    let path = dir.path().join("plexus.db");
    let now = 1_000;
    store
        .create_run(plexus_store::NewRun {
            id: "00000000-0000-0000-0000-0000000000c1".into(),
            workflow: "wf".into(),
            manifest: "version: plexus/v1\nname: wf\nsteps: [{id: a, run: 'true'}]\n".into(),
            base_dir: None,
            inputs: serde_json::json!({"x": 1}),
            step_ids: vec!["a".into()],
            parent: None,
            owner: Some("me".into()),
            lease_until: Some(now + 60_000),
            created_at: now,
            idempotency_key: None,
            workflow_version: None,
            newest_version: false,
            started_by: None,
            mode: None,
            plan: None,
            responsible: Vec::new(),
        })
        .await
        .unwrap();
    let run = "00000000-0000-0000-0000-0000000000c1";
    store
        .add_command(
            run,
            plexus_store::CommandKind::Approve,
            Some("a"),
            serde_json::json!({}),
            "user:ada",
            now,
        )
        .await
        .unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE commands SET kind = 'explode'", [])
        .unwrap();
    let err = store.pending_commands("me").await.unwrap_err().to_string();
    assert!(err.contains("unknown command kind `explode`"), "{err}");

    raw.execute("UPDATE runs SET inputs = '{not json'", [])
        .unwrap();
    let err = store.get_run(run).await.unwrap_err().to_string();
    assert!(err.contains("index: 5"), "names the column: {err}");
}

/// A store from before run definitions and attempt records: its runs' manifests move out
/// of the `runs` rows when it opens (those runs have no stored options), and its process
/// records become the local executor's attempt records.
#[tokio::test]
async fn older_runs_keep_their_manifest_after_the_upgrade() {
    let (store, dir) = fresh_store().await;
    drop(store);
    let path = dir.path().join("plexus.db");
    let raw = rusqlite::Connection::open(&path).unwrap();
    // Back to schema 7, with one run written the old way.
    raw.execute_batch(
        "DROP TABLE run_definitions; ALTER TABLE events DROP COLUMN schema; DROP INDEX users_by_name_nocase; \
         DROP INDEX sessions_by_key; ALTER TABLE sessions DROP COLUMN api_key_id; \
         ALTER TABLE runs DROP COLUMN responsible; ALTER TABLE workflows DROP COLUMN applied_by; \
         ALTER TABLE schedules DROP COLUMN changed_by; \
         DROP INDEX users_by_email_nocase; ALTER TABLE users DROP COLUMN email; \
         DROP TABLE attempt_records; DROP TABLE llm_usage; DROP TABLE replicas; DROP INDEX runs_by_owner; \
         CREATE TABLE processes (run_id TEXT NOT NULL, step_id TEXT NOT NULL, item INTEGER NOT NULL, \
           attempt INTEGER NOT NULL, host TEXT NOT NULL, pgid INTEGER NOT NULL, start_ticks INTEGER NOT NULL, \
           PRIMARY KEY (run_id, step_id, item, attempt)) WITHOUT ROWID; \
         INSERT INTO processes VALUES ('00000000-0000-0000-0000-0000000000d1', 'a', -1, 1, 'h', 77, 5); \
         DELETE FROM schema_migrations WHERE version >= 8; \
         INSERT INTO runs (id, workflow, status, manifest, inputs, created_at, updated_at, last_seq) \
         VALUES ('00000000-0000-0000-0000-0000000000d1', 'wf', 'running', 'version: plexus/v1\nname: wf\nsteps: [{id: a, run: x}]\n', '{}', 1, 1, 0);",
    )
    .unwrap();
    drop(raw);
    let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
    let def = store
        .run_definition("00000000-0000-0000-0000-0000000000d1")
        .await
        .unwrap();
    assert!(def.manifest.contains("name: wf"), "{def:?}");
    assert_eq!(def.plan, None);
    let records = store
        .attempt_records("00000000-0000-0000-0000-0000000000d1")
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].executor, "local");
    assert_eq!(
        records[0].data,
        serde_json::json!({"host": "h", "pgid": 77, "start_ticks": 5})
    );
    assert_eq!(
        store
            .get_run("00000000-0000-0000-0000-0000000000d1")
            .await
            .unwrap()
            .status,
        "running"
    );
}
