//! The writer task: every write of a PostgreSQL store is a job, and the jobs queued since
//! the last commit share one transaction (group commit). The transaction is first tried
//! plainly — one `BEGIN`, the jobs' statements, one `COMMIT` — and only when a job fails
//! is it run again with a savepoint around each job, so one bad job does not sink the
//! others while the usual commit pays no savepoint round-trips. Jobs may therefore run
//! more than once; they only act on the database. A deadlock or serialisation failure
//! (two replicas' commits crossing) tries the whole transaction again.
//!
//! A failure the writer cannot confine to one job (no connection, a failed `BEGIN`,
//! `COMMIT` or savepoint) fails every job of that transaction with the real error; the
//! connection is then dropped and made again for the next transaction.

use super::{PgConnectOptions, PgConnection, db_err, locks};
use crate::{CommitChain, Result, StoreError};
use futures_util::future::BoxFuture;
use sqlx::Connection as _;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// The error of the last commit if it failed (a full disk, a lost database), for health.
pub(super) type LastCommitError = Arc<Mutex<Option<StoreError>>>;

/// How many times a transaction that deadlocked with another replica's is tried again.
const DEADLOCK_TRIES: usize = 3;

/// Most jobs one transaction takes.
const GROUP: usize = 1024;

/// How long the writer waits for a connection, and for a transaction: a database that
/// stops answering (a partition, a host that froze) fails the commit as unavailable
/// instead of holding it forever.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const TRANSACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

trait Job: Send {
    /// Whether its transaction must hold the audit chain's lock.
    fn audited(&self) -> bool;
    fn chain(&self) -> Option<&CommitChain>;
    /// Runs it and keeps the outcome; returns the error if it failed.
    fn run<'c>(&'c mut self, conn: &'c mut PgConnection) -> BoxFuture<'c, Option<StoreError>>;
    /// Fails it without running it.
    fn refuse(&mut self, e: StoreError);
    /// Answers the caller once the transaction's fate is known (`Some`: it failed).
    fn reply(self: Box<Self>, commit_error: Option<StoreError>);
}

struct Pending<T, F> {
    f: F,
    chain: Option<CommitChain>,
    audited: bool,
    outcome: Option<Result<T>>,
    tx: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send + 'static,
    F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T>> + Send + Sync + 'static,
{
    fn audited(&self) -> bool {
        self.audited
    }

    fn chain(&self) -> Option<&CommitChain> {
        self.chain.as_ref()
    }

    fn run<'c>(&'c mut self, conn: &'c mut PgConnection) -> BoxFuture<'c, Option<StoreError>> {
        Box::pin(async move {
            let result = (self.f)(conn).await;
            let error = result.as_ref().err().cloned();
            self.outcome = Some(result);
            error
        })
    }

    fn refuse(&mut self, e: StoreError) {
        self.outcome = Some(Err(e));
    }

    fn reply(self: Box<Self>, commit_error: Option<StoreError>) {
        let outcome = match (self.outcome, commit_error) {
            (Some(Ok(v)), None) => Ok(v),
            (Some(Err(e)), _) | (_, Some(e)) => Err(e),
            (None, None) => Err(StoreError::Db("a write was not run".into())),
        };
        if let (Err(_), Some(c)) = (&outcome, &self.chain) {
            c.break_chain();
        }
        // The caller may have given up waiting; the outcome stands either way.
        self.tx.send(outcome).ok();
    }
}

pub(super) struct Writer {
    tx: Mutex<Option<mpsc::UnboundedSender<Box<dyn Job>>>>,
}

impl Writer {
    pub(super) fn start(
        conn: PgConnection,
        connect: PgConnectOptions,
        last: LastCommitError,
    ) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_loop(Some(conn), connect, rx, last));
        Writer {
            tx: Mutex::new(Some(tx)),
        }
    }

    pub(super) async fn submit<T, F>(
        &self,
        chain: Option<CommitChain>,
        audited: bool,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T>> + Send + Sync + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(Pending {
            f,
            chain,
            audited,
            outcome: None,
            tx,
        });
        let sender = self
            .tx
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Ends the writer once the jobs already queued are committed.
    pub(super) fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.tx.lock().map_or(true, |tx| tx.is_none())
    }
}

async fn writer_loop(
    mut conn: Option<PgConnection>,
    connect: PgConnectOptions,
    mut rx: mpsc::UnboundedReceiver<Box<dyn Job>>,
    last: LastCommitError,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let error = commit_group(&mut conn, &connect, &mut jobs).await;
        if let Ok(mut l) = last.lock() {
            *l = error.clone();
        }
        for job in jobs {
            job.reply(error.clone());
        }
    }
    if let Some(c) = conn {
        c.close().await.ok();
    }
}

/// Commits `jobs` in one transaction; `Some` is the error that failed them all.
async fn commit_group(
    conn: &mut Option<PgConnection>,
    connect: &PgConnectOptions,
    jobs: &mut [Box<dyn Job>],
) -> Option<StoreError> {
    // A chain broken by an earlier transaction writes nothing more.
    let mut live: Vec<&mut Box<dyn Job>> = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        if job.chain().is_some_and(CommitChain::is_broken) {
            job.refuse(broken_chain());
        } else {
            live.push(job);
        }
    }
    if live.is_empty() {
        return None;
    }
    if conn.is_none() {
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(connect)).await {
            Ok(Ok(c)) => *conn = Some(c),
            Ok(Err(e)) => return Some(db_err(e)),
            Err(_) => {
                return Some(StoreError::Unreachable(format!(
                    "no connection to PostgreSQL within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
    }
    let c = conn.as_mut().expect("connected");
    let audited = live.iter().any(|j| j.audited());
    let attempt = async {
        let mut outcome = Tried::JobFailed;
        for _ in 0..DEADLOCK_TRIES {
            outcome = plainly(c, &mut live, audited).await;
            match &outcome {
                Tried::Deadlocked => continue,
                _ => break,
            }
        }
        match outcome {
            Tried::Committed => None,
            Tried::Failed(e) => Some(e),
            Tried::JobFailed | Tried::Deadlocked => with_savepoints(c, &mut live, audited).await,
        }
    };
    // Whether a transaction cut short committed is not known: its callers hear that
    // the database is unavailable, and the connection is dropped (its open transaction
    // with it).
    let error = tokio::time::timeout(TRANSACTION_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Some(StoreError::Unreachable(format!(
                "PostgreSQL did not finish a commit within {} s",
                TRANSACTION_TIMEOUT.as_secs()
            )))
        });
    if error.is_some() {
        // The connection's state is not known any more: the next transaction makes a
        // new one (and the old one's transaction ends with it, if still open).
        if let Some(old) = conn.take() {
            old.close().await.ok();
        }
    }
    error
}

fn broken_chain() -> StoreError {
    StoreError::Conflict(
        "an earlier commit of this engine failed; nothing after it is written".into(),
    )
}

enum Tried {
    Committed,
    /// A job failed: the transaction was rolled back, to be run with savepoints.
    JobFailed,
    /// Crossed with another transaction: rolled back, to be tried again.
    Deadlocked,
    /// The transaction itself failed (every job fails with this).
    Failed(StoreError),
}

async fn exec(conn: &mut PgConnection, sql: &'static str) -> Result<()> {
    sqlx::raw_sql(sql)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(db_err)
}

async fn begin(conn: &mut PgConnection, audited: bool) -> Result<()> {
    if audited {
        // One round-trip: the statements of a simple query run one after the other,
        // so every statement of the transaction after the lock sees what the chain's
        // previous holder committed.
        let sql = format!("BEGIN; SELECT pg_advisory_xact_lock({})", locks::AUDIT);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(|_| ())
            .map_err(db_err)
    } else {
        exec(conn, "BEGIN").await
    }
}

/// The whole group in one transaction without savepoints.
async fn plainly(conn: &mut PgConnection, jobs: &mut [&mut Box<dyn Job>], audited: bool) -> Tried {
    if let Err(e) = begin(conn, audited).await {
        return end_failed(conn, e).await;
    }
    for job in jobs.iter_mut() {
        if let Some(e) = job.run(conn).await {
            if let Err(rollback) = exec(conn, "ROLLBACK").await {
                return Tried::Failed(rollback);
            }
            return match e {
                StoreError::Unavailable(m) if is_crossing(&m) => Tried::Deadlocked,
                _ => Tried::JobFailed,
            };
        }
    }
    match exec(conn, "COMMIT").await {
        Ok(()) => Tried::Committed,
        Err(e) => Tried::Failed(e),
    }
}

/// Whether an error is a deadlock or a serialisation failure, which a new try may pass.
fn is_crossing(message: &str) -> bool {
    message.contains("deadlock") || message.contains("could not serialize")
}

async fn end_failed(conn: &mut PgConnection, e: StoreError) -> Tried {
    exec(conn, "ROLLBACK").await.ok();
    Tried::Failed(e)
}

/// The group again, each job in a savepoint: a failing job is undone alone, and the
/// later jobs of its chain are refused unapplied.
async fn with_savepoints(
    conn: &mut PgConnection,
    jobs: &mut [&mut Box<dyn Job>],
    audited: bool,
) -> Option<StoreError> {
    if let Err(e) = begin(conn, audited).await {
        exec(conn, "ROLLBACK").await.ok();
        return Some(e);
    }
    for job in jobs.iter_mut() {
        if job.chain().is_some_and(CommitChain::is_broken) {
            job.refuse(broken_chain());
            continue;
        }
        if let Err(e) = exec(conn, "SAVEPOINT job").await {
            exec(conn, "ROLLBACK").await.ok();
            return Some(e);
        }
        let ended = match job.run(conn).await {
            None => exec(conn, "RELEASE SAVEPOINT job").await,
            Some(_) => {
                if let Some(c) = job.chain() {
                    c.break_chain(); // before a later job of the chain in this transaction
                }
                exec(conn, "ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job").await
            }
        };
        if let Err(e) = ended {
            exec(conn, "ROLLBACK").await.ok();
            return Some(e);
        }
    }
    exec(conn, "COMMIT").await.err()
}
