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

mod rows;
mod writer;
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
}

fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

pub(crate) fn db_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            StoreError::Full(e.to_string())
        }
        _ => StoreError::Db(e.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("bad JSON in the database: {e}"))
}

fn connect(path: &Path, opts: &SqliteOptions) -> Result<Connection> {
    let conn = Connection::open(path).map_err(db_err)?;
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
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    for (version, sql) in MIGRATIONS {
        if *version > current {
            tx.execute_batch(sql).map_err(db_err)?;
            tx.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))", [version])
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

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
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
        conn.execute("INSERT INTO probe (id, data) VALUES (?1, 'x')", [i as i64])
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
    let actor = audit
        .actor
        .or(started_by)
        .unwrap_or_else(|| "system".into());
    let target = match &audit.step_id {
        Some(step) => format!("run:{run_id}/{step}"),
        None => format!("run:{run_id}"),
    };
    let mut details = serde_json::json!({ "workflow": workflow });
    if let Json::Object(extra) = audit.details {
        details.as_object_mut().expect("an object").extend(extra);
    }
    // Workflow events also go to the JSON log.
    tracing::info!(target: "plexus::audit", actor, action = audit.action, target, "audit");
    crate::sqlite_auth::append_audit_tx(
        conn,
        &plexus_core::audit::AuditEntry {
            time,
            actor,
            domain: plexus_core::audit::Domain::Workflow,
            action: audit.action.to_owned(),
            target,
            details: details.to_string(),
        },
    )?;
    Ok(())
}

fn apply_batch(conn: &Connection, batch: &Batch) -> Result<()> {
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
                conn.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, outputs = NULL WHERE id = ?1",
                    [run_id],
                )
                .map_err(db_err)?;
            }
            RowChange::StepReopened { step_id } => {
                conn.execute(
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
    let mut add_process = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO processes (run_id, step_id, item, attempt, host, pgid, start_ticks) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db_err)?;
    for p in &batch.processes {
        add_process
            .execute(params![
                p.run_id,
                p.step_id,
                p.item.map_or(-1, i64::from),
                p.attempt,
                p.host,
                p.pgid,
                p.start_ticks as i64
            ])
            .map_err(db_err)?;
    }
    let mut forget_process = conn
        .prepare_cached("DELETE FROM processes WHERE run_id = ?1 AND step_id = ?2 AND item = ?3 AND attempt = ?4")
        .map_err(db_err)?;
    for p in &batch.processes_done {
        forget_process
            .execute(params![
                p.run_id,
                p.step_id,
                p.item.map_or(-1, i64::from),
                p.attempt
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
    let sql = "SELECT name, version, manifest, created_at FROM workflows \
               WHERE name = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1";
    conn.query_row(sql, params![name, version], workflow_from_row)
        .optional()
        .map_err(db_err)
}

fn schedule_row(conn: &Connection, name: &str) -> Result<Option<ScheduleRow>> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = ?1");
    conn.query_row(&sql, [name], schedule_from_row)
        .optional()
        .map_err(db_err)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_run(&self, run: NewRun) -> Result<bool> {
        self.write(move |conn| {
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO runs (id, workflow, status, manifest, base_dir, inputs, parent_run_id, parent_step_id, \
                     parent_item, parent_attempt, created_at, updated_at, owner, lease_until, idempotency_key, workflow_version, started_by, mode) \
                     VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                    params![
                        run.id,
                        run.workflow,
                        // Kept in `run_definitions`, out of the row every commit rewrites.
                        "",
                        run.base_dir,
                        run.inputs.to_string(),
                        run.parent.as_ref().map(|p| p.run_id.clone()),
                        run.parent.as_ref().map(|p| p.step_id.clone()),
                        run.parent.as_ref().and_then(|p| p.item),
                        run.parent.as_ref().map(|p| p.attempt),
                        run.created_at as i64,
                        run.owner,
                        run.lease_until.map(|t| t as i64),
                        run.idempotency_key,
                        run.workflow_version,
                        run.started_by,
                        run.mode,
                    ],
                )
                .map_err(db_err)?;
            if inserted == 0 {
                return Ok(false);
            }
            conn.execute(
                "INSERT INTO run_definitions (run_id, manifest, plan) VALUES (?1, ?2, ?3)",
                params![run.id, run.manifest, run.plan],
            )
            .map_err(db_err)?;
            let mut step = conn
                .prepare_cached("INSERT INTO steps (run_id, step_id, position, status) VALUES (?1, ?2, ?3, 'pending')")
                .map_err(db_err)?;
            for (i, id) in run.step_ids.iter().enumerate() {
                step.execute(params![run.id, id, i as i64]).map_err(db_err)?;
            }
            Ok(true)
        })
        .await
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let chain = batch.chain.clone();
        self.write_chained(chain, move |conn| apply_batch(conn, &batch))
            .await
    }

    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        lease_until: Millis,
        now: Millis,
        force: bool,
    ) -> Result<bool> {
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE runs SET owner = ?2, lease_until = ?3, fence = fence + 1 WHERE id = ?1 \
                     AND (?5 OR owner IS NULL OR owner = ?2 OR lease_until IS NULL OR lease_until < ?4)",
                    params![run_id, owner, lease_until as i64, now as i64, force],
                )
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn renew_leases(&self, owner: &str, lease_until: Millis) -> Result<()> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE runs SET lease_until = ?2 WHERE owner = ?1 AND status NOT IN ('succeeded', 'failed', 'cancelled')",
                params![owner, lease_until as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn release_runs(&self, owner: &str) -> Result<()> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            conn.execute(
                "UPDATE runs SET owner = NULL, lease_until = NULL WHERE owner = ?1",
                params![owner],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<RunRow> {
        let key = id_or_prefix.to_owned();
        self.read(move |conn| {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(StoreError::RunNotFound(key));
            }
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
            if let Some(run) = conn
                .query_row(&sql, [&key], run_from_row)
                .optional()
                .map_err(db_err)?
            {
                return Ok(run);
            }
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id LIKE ?1 || '%' LIMIT 2");
            let mut stmt = conn.prepare(&sql).map_err(db_err)?;
            let mut rows: Vec<RunRow> = stmt
                .query_map([&key], run_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db_err)?;
            match rows.len() {
                0 => Err(StoreError::RunNotFound(key)),
                1 => Ok(rows.remove(0)),
                _ => Err(StoreError::Ambiguous(key)),
            }
        })
        .await
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<Vec<RunRow>> {
        self.read(move |conn| {
            let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
            let mut args: Vec<String> = Vec::new();
            if let Some(s) = &filter.status {
                args.push(s.clone());
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            if let Some(w) = &filter.workflow {
                args.push(w.clone());
                sql.push_str(&format!(" AND workflow = ?{}", args.len()));
            }
            if let Some(cursor) = &filter.before {
                args.push(cursor.clone());
                let n = args.len();
                sql.push_str(&format!(
                    " AND (created_at, id) < (SELECT created_at, id FROM runs WHERE id = ?{n})"
                ));
            }
            if let Some(t) = filter.created_since {
                sql.push_str(&format!(" AND created_at >= {t}"));
            }
            if let Some(t) = filter.created_until {
                sql.push_str(&format!(" AND created_at < {t}"));
            }
            if filter.active {
                sql.push_str(" AND status NOT IN ('succeeded', 'failed', 'cancelled')");
            }
            let limit = if filter.limit == 0 { 50 } else { filter.limit };
            sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {limit}"));
            let mut stmt = conn.prepare(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), run_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn count_runs_by_status(&self) -> Result<Vec<(String, u64)>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRow>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT step_id, status, attempt, started_at, finished_at, output, error FROM steps WHERE run_id = ?1 ORDER BY position")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([&run_id], |r| {
                    Ok(StepRow {
                        step_id: r.get(0)?,
                        status: r.get(1)?,
                        attempt: r.get::<_, i64>(2)? as u32,
                        started_at: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                        finished_at: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                        output: json_at(r, 5)?,
                        error: r.get(6)?,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn run_definition(&self, run_id: &str) -> Result<RunDefinition> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT manifest, plan FROM run_definitions WHERE run_id = ?1",
                [&run_id],
                |r| {
                    Ok(RunDefinition {
                        manifest: r.get(0)?,
                        plan: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)?
            .ok_or(StoreError::RunNotFound(run_id))
        })
        .await
    }

    async fn events(&self, run_id: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT data, schema FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(db_err)?;
            let limit = if limit == 0 { i64::MAX } else { limit as i64 };
            let mut out = Vec::new();
            let mut rows = stmt
                .query(params![run_id, after as i64, limit])
                .map_err(db_err)?;
            while let Some(row) = rows.next().map_err(db_err)? {
                let data: String = row.get(0).map_err(db_err)?;
                let schema: i64 = row.get(1).map_err(db_err)?;
                if schema > i64::from(EVENT_SCHEMA) {
                    return Err(StoreError::Db(format!(
                        "an event of run `{run_id}` was written in event schema {schema}, newer \
                         than this plexus understands ({EVENT_SCHEMA}); upgrade plexus"
                    )));
                }
                out.push(serde_json::from_str(&data).map_err(json_err)?);
            }
            Ok(out)
        })
        .await
    }

    async fn children(&self, run_id: &str) -> Result<Vec<RunRow>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = ?1 ORDER BY created_at"
            );
            let mut stmt = conn.prepare(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map([&run_id], run_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn add_command(
        &self,
        run_id: &str,
        kind: CommandKind,
        step_id: Option<&str>,
        data: Json,
        actor: &str,
        now: Millis,
    ) -> Result<i64> {
        let (run_id, step_id, actor) = (
            run_id.to_owned(),
            step_id.map(str::to_owned),
            actor.to_owned(),
        );
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO commands (run_id, kind, step_id, data, actor, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![run_id, kind.as_str(), step_id, data.to_string(), actor, now as i64],
            )
            .map_err(db_err)?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn pending_commands(&self, owner: &str) -> Result<Vec<Command>> {
        let owner = owner.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {COMMAND_COLUMNS} FROM commands c JOIN runs r ON r.id = c.run_id \
                 WHERE c.consumed_at IS NULL AND r.owner = ?1 ORDER BY c.id"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map([&owner], command_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn command(&self, id: i64) -> Result<Option<Command>> {
        self.read(move |conn| {
            let sql = format!("SELECT {COMMAND_COLUMNS} FROM commands c WHERE c.id = ?1");
            conn.query_row(&sql, [id], command_from_row)
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn find_run_by_key(&self, key: &str) -> Result<Option<RunRow>> {
        let key = key.to_owned();
        self.read(move |conn| {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE idempotency_key = ?1");
            conn.query_row(&sql, [&key], run_from_row)
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn put_workflow(
        &self,
        name: &str,
        manifest: &str,
        now: Millis,
    ) -> Result<(WorkflowRow, bool)> {
        let (name, manifest) = (name.to_owned(), manifest.to_owned());
        self.write(move |conn| {
            let latest: Option<(i64, String, Option<i64>)> = conn
                .query_row(
                    "SELECT version, manifest, deleted_at FROM workflows WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db_err)?;
            if let Some((version, text, None)) = &latest
                && *text == manifest
            {
                let row = workflow_row(conn, &name, Some(*version as u32))?.expect("exists");
                return Ok((row, false));
            }
            let version = latest.map_or(1, |l| l.0 + 1);
            conn.execute(
                "INSERT INTO workflows (name, version, manifest, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, version, manifest, now as i64],
            )
            .map_err(db_err)?;
            // Re-applying a deleted workflow brings the name back with a new version.
            conn.execute("UPDATE workflows SET deleted_at = NULL WHERE name = ?1", [&name]).map_err(db_err)?;
            let row = workflow_row(conn, &name, Some(version as u32))?.expect("just written");
            Ok((row, true))
        })
        .await
    }

    async fn get_workflow(&self, name: &str, version: Option<u32>) -> Result<Option<WorkflowRow>> {
        let name = name.to_owned();
        self.read(move |conn| workflow_row(conn, &name, version))
            .await
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowRow>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT w.name, w.version, w.manifest, w.created_at FROM workflows w \
                     WHERE w.deleted_at IS NULL AND w.version = (SELECT MAX(version) FROM workflows v WHERE v.name = w.name) \
                     ORDER BY w.name",
                )
                .map_err(db_err)?;
            let rows = stmt.query_map([], workflow_from_row).map_err(db_err)?.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn delete_workflow(&self, name: &str, now: Millis) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE workflows SET deleted_at = ?2 WHERE name = ?1 AND deleted_at IS NULL",
                    params![name, now as i64],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_schedule(&self, schedule: ScheduleRow) -> Result<ScheduleRow> {
        self.write(move |conn| {
            let mut s = schedule;
            if let Some(old) = schedule_row(conn, &s.name)?
                && old.cron == s.cron
            {
                s.next_fire_at = old.next_fire_at;
                s.paused = old.paused;
                s.last_fired_at = old.last_fired_at;
                s.created_at = old.created_at;
            }
            conn.execute(
                "INSERT OR REPLACE INTO schedules (name, workflow, cron, inputs, catch_up, paused, next_fire_at, last_fired_at, \
                 from_manifest, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    s.name,
                    s.workflow,
                    s.cron,
                    s.inputs.to_string(),
                    s.catch_up.as_str(),
                    s.paused,
                    s.next_fire_at as i64,
                    s.last_fired_at.map(|t| t as i64),
                    s.from_manifest,
                    s.created_at as i64
                ],
            )
            .map_err(db_err)?;
            Ok(s)
        })
        .await
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        let name = name.to_owned();
        self.read(move |conn| schedule_row(conn, &name)).await
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        self.read(move |conn| {
            let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name");
            let mut stmt = conn.prepare(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map([], schedule_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            Ok(conn
                .execute("DELETE FROM schedules WHERE name = ?1", [&name])
                .map_err(db_err)?
                > 0)
        })
        .await
    }

    async fn set_schedule_paused(&self, name: &str, paused: bool) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE schedules SET paused = ?2 WHERE name = ?1",
                    params![name, paused],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn due_schedules(&self, now: Millis) -> Result<Vec<ScheduleRow>> {
        self.read(move |conn| {
            let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE paused = 0 AND next_fire_at <= ?1 ORDER BY next_fire_at");
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt.query_map([now as i64], schedule_from_row).map_err(db_err)?.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn advance_schedule(
        &self,
        name: &str,
        expected: Millis,
        next: Millis,
        fired_at: Millis,
    ) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE schedules SET next_fire_at = ?3, last_fired_at = ?4 WHERE name = ?1 AND next_fire_at = ?2",
                    params![name, expected as i64, next as i64, fired_at as i64],
                )
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn set_triggers(&self, workflow: &str, event_types: &[String]) -> Result<()> {
        let (workflow, types) = (workflow.to_owned(), event_types.to_vec());
        self.write(move |conn| {
            conn.execute("DELETE FROM triggers WHERE workflow = ?1", [&workflow])
                .map_err(db_err)?;
            for t in &types {
                conn.execute(
                    "INSERT OR IGNORE INTO triggers (event_type, workflow) VALUES (?1, ?2)",
                    params![t, workflow],
                )
                .map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn triggered_by(&self, event_type: &str) -> Result<Vec<String>> {
        let event_type = event_type.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT workflow FROM triggers WHERE event_type = ?1 ORDER BY workflow",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([&event_type], |r| r.get(0))
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn record_event(&self, event: ReceivedEvent) -> Result<(ReceivedEvent, bool)> {
        self.write(move |conn| {
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO received_events (id, type, payload, dedupe_key, received_at, runs) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        event.id,
                        event.event_type,
                        event.payload.to_string(),
                        event.dedupe_key,
                        event.received_at as i64,
                        serde_json::to_string(&event.runs).unwrap_or_default()
                    ],
                )
                .map_err(db_err)?;
            if n == 1 {
                return Ok((event, true));
            }
            let first = conn
                .query_row(
                    "SELECT id, type, payload, dedupe_key, received_at, runs FROM received_events WHERE dedupe_key = ?1",
                    [&event.dedupe_key],
                    |r| {
                        Ok(ReceivedEvent {
                            id: r.get(0)?,
                            event_type: r.get(1)?,
                            payload: json_at(r, 2)?,
                            dedupe_key: r.get(3)?,
                            received_at: r.get::<_, i64>(4)? as u64,
                            runs: parsed_at(r, 5)?,
                        })
                    },
                )
                .map_err(db_err)?;
            Ok((first, false))
        })
        .await
    }

    async fn set_event_runs(&self, id: &str, runs: &[String]) -> Result<()> {
        let (id, runs) = (
            id.to_owned(),
            serde_json::to_string(runs).unwrap_or_default(),
        );
        self.write(move |conn| {
            conn.execute(
                "UPDATE received_events SET runs = ?2 WHERE id = ?1",
                params![id, runs],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn add_dead_letter(
        &self,
        kind: &str,
        target: &str,
        payload: Json,
        reason: &str,
        now: Millis,
    ) -> Result<i64> {
        let (kind, target, reason) = (kind.to_owned(), target.to_owned(), reason.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO dead_letters (kind, target, payload, reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![kind, target, payload.to_string(), reason, now as i64],
            )
            .map_err(db_err)?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT id, kind, target, payload, reason, created_at FROM dead_letters ORDER BY id DESC LIMIT ?1")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([limit.max(1) as i64], |r| {
                    Ok(DeadLetter {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        target: r.get(2)?,
                        payload: json_at(r, 3)?,
                        reason: r.get(4)?,
                        created_at: r.get::<_, i64>(5)? as u64,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn processes(&self, run_id: &str) -> Result<Vec<ProcessRecord>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT run_id, step_id, item, attempt, host, pgid, start_ticks FROM processes WHERE run_id = ?1")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([&run_id], |r| {
                    let item: i64 = r.get(2)?;
                    Ok(ProcessRecord {
                        run_id: r.get(0)?,
                        step_id: r.get(1)?,
                        item: u32::try_from(item).ok(),
                        attempt: r.get::<_, i64>(3)? as u32,
                        host: r.get(4)?,
                        pgid: r.get(5)?,
                        start_ticks: r.get::<_, i64>(6)? as u64,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn step_logs(
        &self,
        run_id: &str,
        step_id: &str,
        item: Option<u32>,
        attempt: u32,
    ) -> Result<Option<StepLogs>> {
        let (run_id, step_id) = (run_id.to_owned(), step_id.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT stdout, stderr, exit_code FROM step_logs \
                 WHERE run_id = ?1 AND step_id = ?2 AND item = ?3 AND attempt = ?4",
                params![run_id, step_id, item.map_or(-1, i64::from), attempt],
                |r| {
                    Ok(StepLogs {
                        run_id: run_id.clone(),
                        step_id: step_id.clone(),
                        item,
                        attempt,
                        stdout: r.get(0)?,
                        stderr: r.get(1)?,
                        exit_code: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn awaiting_approvals(&self) -> Result<Vec<PendingApproval>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT s.run_id, r.workflow, s.step_id, r.started_by, \
                       (SELECT data FROM events e WHERE e.run_id = s.run_id AND e.step_id = s.step_id \
                          AND e.type = 'step_awaiting_approval' ORDER BY e.seq DESC LIMIT 1) \
                     FROM steps s JOIN runs r ON r.id = s.run_id \
                     WHERE s.status = 'awaiting_approval' ORDER BY r.created_at, s.position",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(PendingApproval {
                        run_id: r.get(0)?,
                        workflow: r.get(1)?,
                        step_id: r.get(2)?,
                        requested_by: r.get(3)?,
                        request: json_at(r, 4)?,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        match file_identity(&self.path) {
            Ok(id) if id == self.identity => {}
            Ok(_) => {
                return Err(StoreError::Db(format!(
                    "{} was replaced by another file while the store was open",
                    self.path.display()
                )));
            }
            Err(e) => {
                return Err(StoreError::Db(format!(
                    "the database file {} is gone: {e}",
                    self.path.display()
                )));
            }
        }
        if self.writer.lock().map_or(true, |w| w.is_none()) {
            return Err(StoreError::Closed);
        }
        if let Some(e) = self.last_commit_error.lock().ok().and_then(|e| e.clone()) {
            return Err(StoreError::Db(format!("the last commit failed: {e}")));
        }
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))
            .await
    }

    async fn artifacts(&self, run_id: &str) -> Result<Vec<Artifact>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT sha256, run_id, step_id, attempt, name, size FROM artifacts WHERE run_id = ?1 ORDER BY step_id, name")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([&run_id], |r| {
                    Ok(Artifact {
                        sha256: r.get(0)?,
                        run_id: r.get(1)?,
                        step_id: r.get(2)?,
                        attempt: r.get::<_, i64>(3)? as u32,
                        name: r.get(4)?,
                        size: r.get::<_, i64>(5)? as u64,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer thread once queued commits are done.
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
    }
}
