//! The embedded store: one SQLite file in WAL mode. A single writer thread owns the write
//! connection and commits everything queued since its last commit in one transaction
//! (group commit), so durable throughput is bounded by fsyncs, not by callers.

use crate::*;
use plexus_core::machine::EVENT_SCHEMA;
use plexus_core::machine::Event;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

mod cached;
mod catalog;
mod replicas;
mod rows;
mod runs;
mod usage;
mod writer;
pub(crate) use cached::Cached;
use rows::*;
use writer::{Job, LastCommitError, writer_loop};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_processes.sql"),
    ),
    (
        3,
        include_str!("../../migrations/sqlite/0003_workflows.sql"),
    ),
    (
        4,
        include_str!("../../migrations/sqlite/0004_schedules.sql"),
    ),
    (5, include_str!("../../migrations/sqlite/0005_events.sql")),
    (
        6,
        include_str!("../../migrations/sqlite/0006_step_logs.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_governance.sql"),
    ),
    (
        8,
        include_str!("../../migrations/sqlite/0008_pinned_plans.sql"),
    ),
    (
        9,
        include_str!("../../migrations/sqlite/0009_attempt_records.sql"),
    ),
    (
        10,
        include_str!("../../migrations/sqlite/0010_usernames_nocase.sql"),
    ),
    (
        11,
        include_str!("../../migrations/sqlite/0011_session_keys.sql"),
    ),
    (
        12,
        include_str!("../../migrations/sqlite/0012_responsible.sql"),
    ),
    (
        13,
        include_str!("../../migrations/sqlite/0013_user_email.sql"),
    ),
    (
        14,
        include_str!("../../migrations/sqlite/0014_llm_usage.sql"),
    ),
    (
        15,
        include_str!("../../migrations/sqlite/0015_replicas.sql"),
    ),
];

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `synchronous=FULL` (the default): a commit survives power loss, not just a crash.
    pub synchronous_full: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous_full: true,
        }
    }
}

/// Name of the thread that makes every write of a store (Linux shows its first 15 bytes).
pub const WRITER_THREAD: &str = "plexus-sqlite-writer";

/// Read connections per store.
const READERS: usize = 4;

pub struct SqliteStore {
    path: PathBuf,
    /// (device, inode) of the database file when opened: a file deleted or replaced
    /// under a running server is not the store it writes to any more.
    identity: (u64, u64),
    last_commit_error: LastCommitError,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    /// A few read connections (WAL lets them read while the writer commits), so that
    /// concurrent API requests do not queue behind one another.
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: std::sync::atomic::AtomicUsize,
    /// Woken when this process stores a command (see `commands_may_be_waiting`).
    commands_added: tokio::sync::Notify,
}

fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

pub(crate) fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DiskFull => StoreError::Full(e.to_string()),
            C::DatabaseBusy | C::DatabaseLocked | C::CannotOpen | C::SystemIoFailure => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Db(e.to_string()),
        },
        _ => StoreError::Db(e.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("bad JSON in the database: {e}"))
}

fn connect(path: &Path, opts: &SqliteOptions) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db_err)?;
    // Every fixed statement of the store stays prepared (see `cached`).
    conn.set_prepared_statement_cache_capacity(256);
    // Plans must not depend on bound values: otherwise SQLite marks a statement whose
    // plan it chose by a parameter's value (an equality before `ORDER BY ... LIMIT`, as
    // in "the newest version of workflow ?1") as expired when the parameter is bound
    // again, and compiles it anew on every call — 7% of the writer's CPU under load.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(db_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db_err)?;
    let sync = if opts.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;"
    ))
    .map_err(db_err)?;
    crate::wal::keep_when_closed(&conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db_err)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        .map_err(db_err)?;
    let current: i64 = tx
        .query_row_cached(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    for (version, sql) in MIGRATIONS {
        if *version > current {
            tx.execute_batch(sql).map_err(db_err)?;
            tx.execute_cached("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))", [version])
                .map_err(db_err)?;
        }
    }
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(StoreError::Db(format!(
            "the database has schema version {current}, newer than this plexus understands ({newest}); upgrade plexus"
        )));
    }
    tx.commit().map_err(db_err)
}

/// The store holds users, password hashes and sealed secrets: its files are readable by
/// their owner only. The database file is created `0600` before SQLite opens it, so the
/// `-wal` and `-shm` files SQLite makes later copy that mode; files of an older install
/// are narrowed to it.
fn owner_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StoreError::Db(format!("cannot open {}: {e}", path.display()));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            _ => {}
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        owner_only(&path)?;
        let mut write_conn = connect(&path, &opts)?;
        migrate(&mut write_conn)?;
        crate::wal::preallocate(&write_conn, &path);
        let readers = (0..READERS)
            .map(|_| connect(&path, &opts).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        let identity = file_identity(&path)
            .map_err(|e| StoreError::Db(format!("cannot read {}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let last_commit_error = LastCommitError::default();
        let last = last_commit_error.clone();
        std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || writer_loop(write_conn, rx, last))
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            path,
            identity,
            last_commit_error,
            writer: Mutex::new(Some(tx)),
            readers: Arc::new(readers),
            next_reader: Default::default(),
            commands_added: tokio::sync::Notify::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside the next group commit; resolves once that commit is durable.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.write_chained(None, f).await
    }

    /// [`Self::write`] on a [`CommitChain`] (see [`writer::chained`]).
    async fn write_chained<T: Send + 'static>(
        &self,
        chain: Option<CommitChain>,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (job, rx) = writer::chained(chain, f);
        let sender = self
            .writer
            .lock()
            .expect("writer lock")
            .clone()
            .ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A read of a few rows by key (tens of microseconds): run on the calling thread when
    /// a connection is free, sparing the two thread hand-offs of [`Self::read`] — at
    /// thousands of requests a second those hand-offs were the server's largest cost.
    /// Never for reads whose size the caller does not bound (lists, a run's steps).
    pub(crate) async fn read_point<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let n = self.readers.len();
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(conn) = (0..n).find_map(|i| self.readers[(start + i) % n].try_lock().ok()) {
            return f(&conn);
        }
        self.read(f).await
    }

    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = Arc::clone(&self.readers);
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            // A free connection if there is one, else wait for this call's turn.
            let n = readers.len();
            let free = (0..n).find_map(|i| readers[(start + i) % n].try_lock().ok());
            let conn = match free {
                Some(c) => c,
                None => readers[start % n].lock().map_err(|_| StoreError::Closed)?,
            };
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Db(format!("read task failed: {e}")))?
    }
}

/// The cost of one durable commit on this disk: `n` sequential single-row transactions in
/// a scratch database with the store's settings. Benchmarks use it as their floor.
pub fn measure_commit_latency(
    dir: &Path,
    n: usize,
    opts: &SqliteOptions,
) -> Result<std::time::Duration> {
    let path = dir.join("commit-probe.db");
    let _ = std::fs::remove_file(&path);
    let conn = connect(&path, opts)?;
    conn.execute_batch("CREATE TABLE probe (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        .map_err(db_err)?;
    // Under the same conditions as the store's commits.
    crate::wal::preallocate(&conn, &path);
    let started = std::time::Instant::now();
    for i in 0..n {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
        conn.execute_cached("INSERT INTO probe (id, data) VALUES (?1, 'x')", [i as i64])
            .map_err(db_err)?;
        conn.execute_batch("COMMIT").map_err(db_err)?;
    }
    let took = started.elapsed();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("commit-probe.db{suffix}")));
    }
    Ok(took / n.max(1) as u32)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Appends a workflow audit record for a run event, in the commit that stores the event.
fn audit_run_event(conn: &Connection, run_id: &str, time: Millis, audit: RunAudit) -> Result<()> {
    let (workflow, started_by): (String, Option<String>) = conn
        .prepare_cached("SELECT workflow, started_by FROM runs WHERE id = ?1")
        .map_err(db_err)?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db_err)?;
    let entry = run_audit_entry(run_id, time, audit, &workflow, started_by);
    crate::sqlite_auth::append_audit_tx(conn, &entry)?;
    Ok(())
}

fn apply_batch(conn: &Connection, batch: &Batch) -> Result<()> {
    for (run_id, fence) in &batch.fences {
        let now: Option<i64> = conn
            .query_row_cached("SELECT fence FROM runs WHERE id = ?1", [run_id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db_err)?;
        if now != Some(*fence as i64) {
            return Err(fenced_out(run_id));
        }
    }
    let mut insert_event = conn
        .prepare_cached("INSERT INTO events (run_id, seq, time, type, step_id, attempt, data, schema) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
        .map_err(db_err)?;
    let mut update_step = conn
        .prepare_cached(
            "UPDATE steps SET status = ?3, attempt = COALESCE(?4, attempt), started_at = COALESCE(started_at, ?5), \
             finished_at = COALESCE(?6, finished_at), output = CASE WHEN ?7 IS NULL THEN output ELSE ?7 END, \
             error = CASE WHEN ?8 THEN ?9 ELSE error END WHERE run_id = ?1 AND step_id = ?2",
        )
        .map_err(db_err)?;
    let mut update_run = conn
        .prepare_cached(
            "UPDATE runs SET status = ?2, finished_at = COALESCE(?3, finished_at), outputs = COALESCE(?4, outputs), \
             error = COALESCE(?5, error) WHERE id = ?1",
        )
        .map_err(db_err)?;
    let mut last: HashMap<&str, (u64, u64)> = HashMap::new();
    for (run_id, e) in &batch.events {
        let data = serde_json::to_string(e).map_err(json_err)?;
        insert_event
            .execute(params![
                run_id,
                e.seq as i64,
                e.time as i64,
                e.kind.type_name(),
                e.kind.step_id(),
                e.kind.attempt(),
                data,
                EVENT_SCHEMA
            ])
            .map_err(|err| match db_err(err) {
                StoreError::Db(m) if m.contains("UNIQUE") => StoreError::Conflict(format!(
                    "event {} of run {run_id} was already written by another process",
                    e.seq
                )),
                other => other,
            })?;
        if let Some(audit) = run_audit(e) {
            audit_run_event(conn, run_id, e.time, audit)?;
        }
        match materialize(e) {
            RowChange::Step(StepChange {
                step_id,
                status,
                attempt,
                started,
                finished,
                output,
                error,
            }) => {
                let output = output.map(|o| o.to_string());
                let (set_error, error) = match error {
                    Some(v) => (true, v),
                    None => (false, None),
                };
                update_step
                    .execute(params![
                        run_id,
                        step_id,
                        status,
                        attempt,
                        started.map(|t| t as i64),
                        finished.map(|t| t as i64),
                        output,
                        set_error,
                        error
                    ])
                    .map_err(db_err)?;
            }
            RowChange::Run {
                status,
                finished,
                outputs,
                error,
            } => {
                update_run
                    .execute(params![
                        run_id,
                        status,
                        finished.map(|t| t as i64),
                        outputs.map(|o| o.to_string()),
                        error
                    ])
                    .map_err(db_err)?;
            }
            RowChange::RunReopened => {
                conn.execute_cached(
                    "UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, outputs = NULL WHERE id = ?1",
                    [run_id],
                )
                .map_err(db_err)?;
            }
            RowChange::StepReopened { step_id } => {
                conn.execute_cached(
                    "UPDATE steps SET status = 'pending', started_at = NULL, finished_at = NULL, output = NULL, error = NULL \
                     WHERE run_id = ?1 AND step_id = ?2",
                    params![run_id, step_id],
                )
                .map_err(db_err)?;
            }
            RowChange::None => {}
        }
        let entry = last.entry(run_id.as_str()).or_default();
        entry.0 = entry.0.max(e.seq);
        entry.1 = entry.1.max(e.time);
    }
    let mut bump = conn
        .prepare_cached("UPDATE runs SET last_seq = MAX(last_seq, ?2), updated_at = MAX(updated_at, ?3) WHERE id = ?1")
        .map_err(db_err)?;
    for (run_id, (seq, time)) in last {
        bump.execute(params![run_id, seq as i64, time as i64])
            .map_err(db_err)?;
    }
    let mut consume = conn
        .prepare_cached("UPDATE commands SET consumed_at = ?2, result = ?3 WHERE id = ?1")
        .map_err(db_err)?;
    for (id, result) in &batch.consumed {
        consume
            .execute(params![id, now_ms(), result])
            .map_err(db_err)?;
    }
    let mut artifact = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO artifacts (sha256, run_id, step_id, attempt, name, size, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db_err)?;
    let mut add_record = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO attempt_records (run_id, step_id, item, attempt, executor, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(db_err)?;
    for r in &batch.records {
        let k = &r.key;
        add_record
            .execute(params![
                k.run_id,
                k.step_id,
                k.item.map_or(-1, i64::from),
                k.attempt,
                r.executor,
                r.data.to_string()
            ])
            .map_err(db_err)?;
    }
    let mut forget_record = conn
        .prepare_cached(
            "DELETE FROM attempt_records WHERE run_id = ?1 AND step_id = ?2 AND item = ?3 AND attempt = ?4",
        )
        .map_err(db_err)?;
    for k in &batch.records_done {
        forget_record
            .execute(params![
                k.run_id,
                k.step_id,
                k.item.map_or(-1, i64::from),
                k.attempt
            ])
            .map_err(db_err)?;
    }
    let mut add_logs = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO step_logs (run_id, step_id, item, attempt, stdout, stderr, exit_code) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db_err)?;
    for l in &batch.logs {
        add_logs
            .execute(params![
                l.run_id,
                l.step_id,
                l.item.map_or(-1, i64::from),
                l.attempt,
                l.stdout,
                l.stderr,
                l.exit_code
            ])
            .map_err(db_err)?;
    }
    for a in &batch.artifacts {
        artifact
            .execute(params![
                a.sha256,
                a.run_id,
                a.step_id,
                a.attempt,
                a.name,
                a.size as i64,
                now_ms()
            ])
            .map_err(db_err)?;
    }
    Ok(())
}

/// A version of a workflow (the newest when `version` is `None`), unless deleted.
fn workflow_row(
    conn: &Connection,
    name: &str,
    version: Option<u32>,
) -> Result<Option<WorkflowRow>> {
    let sql = "SELECT name, version, manifest, created_at, applied_by FROM workflows \
               WHERE name = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1";
    conn.query_row_cached(sql, params![name, version], workflow_from_row)
        .optional()
        .map_err(db_err)
}

fn schedule_row(conn: &Connection, name: &str) -> Result<Option<ScheduleRow>> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?1");
    conn.query_row_cached(&sql, [name], schedule_from_row)
        .optional()
        .map_err(db_err)
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer thread once queued commits are done.
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite compiles a statement anew when a parameter its plan was chosen by is bound
    /// to another value, unless plans are kept stable (see `connect`).
    #[test]
    fn statements_stay_compiled_when_their_parameters_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("s.db"), &SqliteOptions::default()).unwrap();
        migrate(&mut conn).unwrap();
        for name in ["one", "two", "one", "three"] {
            let mut newest = conn.prepare_cached(runs::NEWEST_VERSION).unwrap();
            newest
                .query_row([name], |r| r.get::<_, i64>(0))
                .optional()
                .unwrap();
        }
        let newest = conn.prepare_cached(runs::NEWEST_VERSION).unwrap();
        assert_eq!(
            newest.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the newest-version lookup was compiled again"
        );
    }
}
