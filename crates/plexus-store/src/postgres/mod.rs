//! The store on PostgreSQL, for several engine replicas sharing one database. Writes go
//! through one writer task per process that commits everything queued since its last
//! commit in one transaction (group commit, as on SQLite), with set-based statements so a
//! commit costs a few round-trips whatever it holds; reads use a small pool. Run
//! ownership is fenced (see [`RunStore::claim_run`]), audit appends from every replica are
//! serialised by an advisory lock, and new commands are announced with `NOTIFY`.

use crate::*;
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Row};
use std::str::FromStr;
use std::sync::Arc;

mod audit_chain;
mod auth;
mod batch;
mod catalog;
mod create;
mod replicas;
mod rows;
mod runs;
mod usage;
mod writer;

use writer::{LastCommitError, Writer};

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_replicas.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_partial_run_indexes.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_run_definitions_unchecked.sql"),
    ),
];

/// Keys of the transaction-level advisory locks the store takes.
pub(crate) mod locks {
    /// Held while migrations run, so replicas starting together migrate once.
    pub const MIGRATE: i64 = 0x706c_6578_0001;
    /// Held by every transaction that appends to the audit chain, so the chain never
    /// forks however many replicas append.
    pub const AUDIT: i64 = 0x706c_6578_0002;
}

/// The channel new commands are announced on (payload: the run id).
pub(crate) const COMMANDS_CHANNEL: &str = "plexus_commands";
/// The channel commits announce their runs' new events on: one notification per commit
/// (per [`EVENTS_PER_NOTIFICATION`] runs), its payload `RUN FIRST LAST` for each run,
/// joined by `;`.
pub(crate) const EVENTS_CHANNEL: &str = "plexus_events";
/// Runs announced by one notification: each takes at most 77 bytes (an id of 36, two
/// numbers of up to 19 digits), and a payload must stay under 8,000.
pub(crate) const EVENTS_PER_NOTIFICATION: i64 = 80;
/// The channel a replica announces on that it handed its runs back (payload: its id).
pub(crate) const RELEASED_CHANNEL: &str = "plexus_runs_released";

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections in the pool, for reads and for making runs (the writer and the
    /// listener have their own).
    pub readers: u32,
    /// How long an operation waits for a connection before the database counts as
    /// unavailable.
    pub acquire_timeout: std::time::Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            readers: 8,
            acquire_timeout: std::time::Duration::from_secs(10),
        }
    }
}

pub struct PgStore {
    pool: PgPool,
    writer: Writer,
    last_commit_error: LastCommitError,
    /// Woken by this process's commands and by every `NOTIFY` of another replica's.
    commands_added: Arc<tokio::sync::Notify>,
    /// Woken by every `NOTIFY` that a replica handed its runs back.
    runs_released: Arc<tokio::sync::Notify>,
    /// Every replica's committed events, as announced.
    committed: tokio::sync::broadcast::Sender<CommittedEvents>,
    listener: tokio::task::JoinHandle<()>,
    /// Makes new runs, several in one statement when they come at once.
    run_maker: create::RunMaker,
    /// The audit chain's head as this replica last appended it.
    audit_head: audit_chain::AuditHead,
    /// Where it is, for messages (never the password).
    shown: String,
}

/// What a URL names, without its password, for messages and logs.
pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = match rest.rsplit_once('@') {
                Some((user, host)) => {
                    let user = user.split(':').next().unwrap_or_default();
                    format!("{user}@{host}")
                }
                None => rest.to_owned(),
            };
            let rest = rest.split('?').next().unwrap_or_default();
            format!("{scheme}://{rest}")
        }
        None => "(a database URL)".into(),
    }
}

/// The [`StoreError`] an error of the driver or the database means: out of space, gone
/// for now (connections, shutdowns, deadlocks and serialisation failures, which another
/// try may pass), or a fault to report.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            let text = match d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                Some(pg) => match pg.detail() {
                    Some(detail) => format!("{} ({detail})", pg.message()),
                    None => pg.message().to_owned(),
                },
                None => d.message().to_owned(),
            };
            match code.as_str() {
                "53100" => StoreError::Full(text),
                "40001" | "40P01" | "55P03" | "53300" => StoreError::Unavailable(text),
                // Shut down, or this session ended by the server (a transaction left idle
                // too long: this process was paused mid-commit).
                "57P01" | "57P02" | "57P03" | "25P03" => StoreError::Unreachable(text),
                c if c.starts_with("08") => StoreError::Unreachable(text),
                _ => StoreError::Db(text),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unreachable(e.to_string()),
        _ => StoreError::Db(e.to_string()),
    }
}

/// Whether `e` is the violation of a unique constraint (the caller says what it means).
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") => {
            Some(d.constraint().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

pub(crate) fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("bad JSON in the database: {e}"))
}

/// How long a transaction may sit open with nothing to do before PostgreSQL ends it: a
/// replica paused (or cut off) in the middle of a commit would otherwise hold its row
/// and advisory locks, and every other replica's commits would wait behind it.
const IDLE_IN_TRANSACTION: &str = "5s";

fn options(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map(|o| {
            // No JIT: every statement here is a short lookup or write, and PostgreSQL
            // compiled the ones it thought costly (a scan of the small `replicas`
            // table on the writer's connection, where scans are priced out) for ~70 ms
            // of CPU per call.
            o.application_name("plexus").options([
                ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION),
                ("jit", "off"),
            ])
        })
        .map_err(|e| {
            StoreError::Db(format!(
                "`{}` is not a PostgreSQL URL: {e}",
                redacted_url(url)
            ))
        })
}

async fn migrate(conn: &mut PgConnection) -> Result<()> {
    let mut tx = conn.begin().await.map_err(db_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(locks::MIGRATE)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > newest {
        return Err(StoreError::Db(format!(
            "the database has schema version {current}, newer than this plexus understands ({newest}); upgrade plexus"
        )));
    }
    for (version, sql) in MIGRATIONS {
        if *version > current {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(now_ms() / 1000)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
    }
    tx.commit().await.map_err(db_err)
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`),
    /// applies migrations, and starts the writer and the command listener.
    pub async fn open(url: &str, opts: PostgresOptions) -> Result<Self> {
        let connect = options(url)?;
        let shown = redacted_url(url);
        let reach = |e: sqlx::Error| match db_err(e) {
            StoreError::Unavailable(m) | StoreError::Unreachable(m) | StoreError::Db(m) => {
                StoreError::Unreachable(format!("cannot reach PostgreSQL at {shown}: {m}"))
            }
            other => other,
        };
        // The writer's statements all find their rows by key. A plan PostgreSQL caches
        // while a table is still small (a new database, before autovacuum's first
        // `ANALYZE`) scans the table instead, and the writer would go on scanning it on
        // every commit as it grows; on the writer's connection an index is always taken
        // where there is one.
        let writer_connect = connect.clone().options([("enable_seqscan", "off")]);
        let mut first = tokio::time::timeout(
            opts.acquire_timeout,
            PgConnection::connect_with(&writer_connect),
        )
        .await
        .map_err(|_| {
            StoreError::Unreachable(format!(
                "cannot reach PostgreSQL at {shown}: no answer in {:?}",
                opts.acquire_timeout
            ))
        })?
        .map_err(reach)?;
        migrate(&mut first).await?;
        let pool = PgPoolOptions::new()
            .max_connections(opts.readers.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_lazy_with(connect.clone());
        let last_commit_error = LastCommitError::default();
        let writer = Writer::start(first, writer_connect, last_commit_error.clone());
        let commands_added = Arc::new(tokio::sync::Notify::new());
        let runs_released = Arc::new(tokio::sync::Notify::new());
        let (committed, _) = tokio::sync::broadcast::channel(65_536);
        let listener = tokio::spawn(listen(
            pool.clone(),
            Arc::clone(&commands_added),
            Arc::clone(&runs_released),
            committed.clone(),
        ));
        let run_maker = create::RunMaker::start(pool.clone());
        Ok(PgStore {
            pool,
            run_maker,
            writer,
            last_commit_error,
            commands_added,
            runs_released,
            committed,
            listener,
            audit_head: Default::default(),
            shown,
        })
    }

    /// Where the store is (its URL without the password).
    pub fn location(&self) -> &str {
        &self.shown
    }

    /// Runs `job` inside the next group commit; resolves once that commit is durable.
    /// The job may run more than once (after a deadlock the transaction is tried
    /// again), so it must not act outside the database.
    pub(crate) async fn write<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T>> + Send + Sync + 'static,
    {
        self.writer.submit(None, false, job).await
    }

    /// [`Self::write`] on a [`CommitChain`]; `audited` when the job appends to the audit
    /// chain (its transaction takes the chain's lock first).
    pub(crate) async fn write_chained<T, F>(
        &self,
        chain: Option<CommitChain>,
        audited: bool,
        job: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T>> + Send + Sync + 'static,
    {
        self.writer.submit(chain, audited, job).await
    }

    /// One statement through the writer; returns the rows it changed.
    pub(crate) async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> Result<u64> {
        let args = Arc::new(args);
        self.write(move |conn| {
            let args = Arc::clone(&args);
            Box::pin(async move {
                bind_all(sqlx::query(sql), &args)
                    .execute(&mut *conn)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err(db_err)
            })
        })
        .await
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A statement whose text is made of the store's own fragments (column lists, fixed
/// clauses), never of values: those are always bound.
pub(crate) fn query(
    sql: String,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
}

/// An argument of a statement run by [`PgStore::execute`].
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(Some(v))
    }
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for a in args {
        q = match a {
            Arg::Text(v) => q.bind(v.as_deref()),
            Arg::Int(v) => q.bind(*v),
            Arg::Bool(v) => q.bind(*v),
        };
    }
    q
}

/// Wakes waiters of [`RunStore::commands_may_be_waiting`] on every `NOTIFY` of a new
/// command, and of [`RunStore::orphans_may_be_waiting`] on every hand-back, from any
/// replica. When the listening connection is lost, notifications may have been missed:
/// every waiter is woken to look, and the listener connects again.
async fn listen(
    pool: PgPool,
    commands: Arc<tokio::sync::Notify>,
    released: Arc<tokio::sync::Notify>,
    committed: tokio::sync::broadcast::Sender<CommittedEvents>,
) {
    let wake = |channel: Option<&str>, payload: &str| match channel {
        Some(COMMANDS_CHANNEL) => commands.notify_waiters(),
        Some(RELEASED_CHANNEL) => released.notify_waiters(),
        Some(EVENTS_CHANNEL) => {
            for run in payload.split(';') {
                let mut parts = run.split(' ');
                if let (Some(run), Some(Ok(first)), Some(Ok(last))) = (
                    parts.next(),
                    parts.next().map(str::parse),
                    parts.next().map(str::parse),
                ) {
                    // Nobody following is fine: the announcement is only for followers.
                    let _ = committed.send(CommittedEvents {
                        run_id: run.into(),
                        first_seq: first,
                        last_seq: last,
                    });
                }
            }
        }
        _ => {
            commands.notify_waiters();
            released.notify_waiters();
        }
    };
    let mut pause = std::time::Duration::from_millis(200);
    loop {
        let listening = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.ignore_pool_close_event(true);
            l.listen_all([COMMANDS_CHANNEL, RELEASED_CHANNEL, EVENTS_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listening.await {
            Ok(mut l) => {
                pause = std::time::Duration::from_millis(200);
                wake(None, "");
                loop {
                    match l.try_recv().await {
                        Ok(Some(n)) => wake(Some(n.channel()), n.payload()),
                        // The connection was lost (and will be made again).
                        Ok(None) => wake(None, ""),
                        Err(e) => {
                            tracing::warn!(error = %e, "listening for new commands failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot listen for new commands yet"),
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
        self.writer.close();
    }
}
