//! The single writer thread: every write of a store is a job, and the jobs queued since the
//! last commit share one transaction (group commit), each in a savepoint so one bad job
//! does not sink the others. A failure the writer cannot confine to one job (no
//! transaction, no savepoint, a savepoint that will not end, a failed `COMMIT`) fails
//! every job of that transaction with the real error and rolls it all back.

use crate::{CommitChain, Result, StoreError};
use rusqlite::Connection;
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::oneshot;

use super::{Cached, db_err};

/// Answers a job's caller once the transaction's fate is known (`Some` = it failed).
pub(super) type Reply = Box<dyn FnOnce(Option<StoreError>) + Send>;
/// A write: given the connection inside a savepoint (or the error that kept it from
/// getting one), whether it succeeded and how to answer its caller.
pub(super) type Job = Box<dyn FnOnce(Result<&Connection, StoreError>) -> (bool, Reply) + Send>;

/// The error of the last commit if it failed (a full disk, a read-only file), for health.
pub(super) type LastCommitError = Arc<Mutex<Option<StoreError>>>;

/// Makes a job of `f` on `chain`: nothing is applied once an earlier write of the chain
/// failed, and any failure of this one — its own, or its transaction's — breaks the chain
/// before the writer takes a later job, so no later commit applies over a gap.
pub(super) fn chained<T: Send + 'static>(
    chain: Option<CommitChain>,
    f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
) -> (Job, oneshot::Receiver<Result<T>>) {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |conn| {
        let result = match (&chain, conn) {
            (Some(c), _) if c.is_broken() => Err(StoreError::Conflict(
                "an earlier commit of this engine failed; nothing after it is written".into(),
            )),
            (_, Ok(conn)) => f(conn),
            (_, Err(e)) => Err(e),
        };
        let ok = result.is_ok();
        if let (false, Some(c)) = (ok, &chain) {
            c.break_chain(); // before a later job of the chain in this same transaction
        }
        let reply: Reply = Box::new(move |commit_error| {
            let outcome = match (result, commit_error) {
                (Ok(v), None) => Ok(v),
                (Ok(_), Some(e)) | (Err(e), _) => Err(e),
            };
            if let (Err(_), Some(c)) = (&outcome, &chain) {
                c.break_chain();
            }
            // The caller may have given up waiting; the outcome stands either way.
            tx.send(outcome).ok();
        });
        (ok, reply)
    });
    (job, rx)
}

pub(super) fn writer_loop(conn: Connection, rx: mpsc::Receiver<Job>, last_error: LastCommitError) {
    let remember = |e: Option<StoreError>| {
        if let Ok(mut last) = last_error.lock() {
            *last = e;
        }
    };
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < 1024 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let outcome = commit_jobs(&conn, jobs);
        remember(outcome.error.clone());
        for reply in outcome.replies {
            reply(outcome.error.clone());
        }
    }
}

struct Committed {
    replies: Vec<Reply>,
    /// Why the whole transaction failed, if it did.
    error: Option<StoreError>,
}

/// Runs `jobs` in one transaction and commits it.
fn commit_jobs(conn: &Connection, jobs: Vec<Job>) -> Committed {
    // The statements that frame every group commit come from the cache, not parsed anew.
    let run = |sql: &str| conn.execute_cached(sql, []).map(|_| ());
    if let Err(e) = run("BEGIN IMMEDIATE") {
        // Nothing runs; each caller gets the real error.
        let err = db_err(e);
        let replies = jobs
            .into_iter()
            .map(|job| job(Err(err.clone())).1)
            .collect();
        return Committed {
            replies,
            error: Some(err),
        };
    }
    let mut replies = Vec::with_capacity(jobs.len());
    // An error that leaves the transaction in doubt: everything is rolled back.
    let mut doomed: Option<StoreError> = None;
    for job in jobs {
        if let Some(err) = &doomed {
            replies.push(job(Err(err.clone())).1);
            continue;
        }
        let (ok, reply) = match run("SAVEPOINT job") {
            Ok(()) => job(Ok(conn)),
            // Without a savepoint the job could not be undone alone: it is not run, and
            // the transaction's state is not known any more.
            Err(e) => {
                let err = db_err(e);
                doomed = Some(err.clone());
                replies.push(job(Err(err)).1);
                continue;
            }
        };
        let ended = if ok {
            run("RELEASE job")
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Err(e) = ended {
            doomed = Some(db_err(e));
        }
        replies.push(reply);
    }
    let error = match doomed {
        Some(err) => {
            rollback(conn);
            Some(err)
        }
        None => match run("COMMIT") {
            Ok(()) => None,
            Err(e) => {
                rollback(conn);
                Some(db_err(e))
            }
        },
    };
    Committed { replies, error }
}

/// Ends a transaction that failed, if SQLite did not already end it.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "rolling back a failed group commit failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")
            .unwrap();
        c
    }

    fn insert(v: i64) -> impl FnOnce(&Connection) -> Result<()> + Send + 'static {
        move |c| {
            c.execute("INSERT INTO t (v) VALUES (?1)", [v])
                .map(|_| ())
                .map_err(db_err)
        }
    }

    fn rows(c: &Connection) -> i64 {
        c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Runs jobs through one transaction and returns each caller's outcome.
    fn run(c: &Connection, jobs: Vec<(Job, oneshot::Receiver<Result<()>>)>) -> Vec<Result<()>> {
        let (jobs, rxs): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
        let outcome = commit_jobs(c, jobs);
        for reply in outcome.replies {
            reply(outcome.error.clone());
        }
        rxs.into_iter()
            .map(|mut rx| rx.try_recv().expect("every caller is answered"))
            .collect()
    }

    #[test]
    fn a_failed_begin_reaches_every_caller_and_breaks_the_chain() {
        let c = conn();
        c.execute_batch("BEGIN").unwrap(); // so BEGIN IMMEDIATE fails
        let chain = CommitChain::default();
        let out = run(&c, vec![chained(Some(chain.clone()), insert(1))]);
        let err = out[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("within a transaction"), "{err}");
        assert!(chain.is_broken());
        c.execute_batch("ROLLBACK").unwrap();
        // A later commit of the same chain is refused unapplied.
        let out = run(&c, vec![chained(Some(chain), insert(2))]);
        assert!(matches!(out[0], Err(StoreError::Conflict(_))), "{out:?}");
        assert_eq!(rows(&c), 0);
    }

    #[test]
    fn one_failing_job_is_undone_alone() {
        let c = conn();
        let bad = |c: &Connection| -> Result<()> {
            insert(7)(c)?;
            Err(StoreError::Db("refused".into()))
        };
        let chain = CommitChain::default();
        let out = run(
            &c,
            vec![
                chained(None, insert(1)),
                chained(Some(chain.clone()), bad),
                chained(Some(chain.clone()), insert(3)),
                chained(None, insert(4)),
            ],
        );
        assert!(out[0].is_ok() && out[3].is_ok(), "{out:?}");
        assert!(matches!(&out[1], Err(StoreError::Db(m)) if m == "refused"));
        // The chain broke at the failed job: its later job in the same tick did not apply.
        assert!(matches!(out[2], Err(StoreError::Conflict(_))), "{out:?}");
        let values: Vec<i64> = c
            .prepare("SELECT v FROM t ORDER BY v")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(values, [1, 4]);
    }

    #[test]
    fn a_savepoint_that_cannot_end_fails_the_whole_transaction() {
        let c = conn();
        // A job that ends its own savepoint leaves the writer's RELEASE without one.
        let rogue = |c: &Connection| -> Result<()> {
            insert(2)(c)?;
            c.execute_batch("RELEASE job").map_err(db_err)
        };
        let chain = CommitChain::default();
        let out = run(
            &c,
            vec![
                chained(Some(chain.clone()), insert(1)),
                chained(None, rogue),
                chained(None, insert(3)),
            ],
        );
        assert!(out.iter().all(Result::is_err), "{out:?}");
        assert!(chain.is_broken());
        assert!(c.is_autocommit(), "the transaction was ended");
        assert_eq!(rows(&c), 0, "nothing of the transaction was kept");
    }

    /// A database another connection holds locked is unavailable for now (retryable),
    /// not a bug.
    #[test]
    fn a_busy_database_is_unavailable_and_retryable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (v INTEGER); BEGIN IMMEDIATE")
            .unwrap();
        let c = Connection::open(&path).unwrap();
        c.busy_timeout(std::time::Duration::ZERO).unwrap();
        let out = run(&c, vec![chained(None, insert(1))]);
        assert!(matches!(out[0], Err(StoreError::Unavailable(_))), "{out:?}");
        assert!(out[0].as_ref().unwrap_err().is_retryable());
    }
}
