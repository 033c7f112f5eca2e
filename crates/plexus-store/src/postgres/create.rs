//! Making runs on PostgreSQL. Each run is one statement in a transaction of its own on a
//! pool connection, beside the writer (a new run depends on no other write); the runs
//! that clients start at the same moment are made together, by one statement over
//! arrays — a round-trip, a plan's start-up and a commit for all of them rather than for
//! each. A few such statements run at once, so a start never waits behind more than the
//! batch in flight before it.

use super::*;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most runs one statement makes.
const BATCH: usize = 256;
/// Statements making runs at once.
const IN_FLIGHT: usize = 2;

type Reply = oneshot::Sender<Result<bool>>;

/// Where `create_run` queues its runs.
pub(super) struct RunMaker {
    tx: mpsc::UnboundedSender<(NewRun, Reply)>,
}

impl RunMaker {
    pub(super) fn start(pool: PgPool) -> RunMaker {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(make_runs(pool, rx));
        RunMaker { tx }
    }

    /// Makes `run` (see [`RunStore::create_run`]): whether it was made.
    pub(super) async fn create(&self, run: NewRun) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((run, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn make_runs(pool: PgPool, mut rx: mpsc::UnboundedReceiver<(NewRun, Reply)>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first: while every slot is busy, starts queue up into the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let (runs, replies): (Vec<NewRun>, Vec<Reply>) = batch.into_iter().unzip();
            // Runs with the same id (only a caller's mistake) are made one after the
            // other, so that each gets the answer it would alone.
            let ids: std::collections::HashSet<&str> = runs.iter().map(|r| r.id.as_str()).collect();
            let results = match runs.as_slice() {
                [one] => vec![create_one(&pool, one).await],
                _ if ids.len() < runs.len() => one_by_one(&pool, &runs).await,
                _ => match create_many(&pool, &runs).await {
                    Ok(made) => made,
                    // One run the database refuses must not fail the others: each again
                    // on its own, with its own answer.
                    Err(e) => {
                        tracing::debug!(error = %e, runs = runs.len(), "making runs together failed; one at a time");
                        one_by_one(&pool, &runs).await
                    }
                },
            };
            for (reply, result) in replies.into_iter().zip(results) {
                // The caller may have given up waiting; the run stands either way.
                reply.send(result).ok();
            }
            drop(slot);
        });
    }
}

async fn one_by_one(pool: &PgPool, runs: &[NewRun]) -> Vec<Result<bool>> {
    let mut each = Vec::with_capacity(runs.len());
    for run in runs {
        each.push(create_one(pool, run).await);
    }
    each
}

fn responsible(run: &NewRun) -> String {
    serde_json::to_string(&run.responsible).unwrap_or_else(|_| "[]".into())
}

/// One run: the run, its definition and its steps in one statement. A run that exists
/// already inserts nothing at all; with `newest_version`, the run is made only if its
/// version is still the newest (checked on the statement's snapshot).
async fn create_one(pool: &PgPool, run: &NewRun) -> Result<bool> {
    let positions: Vec<i64> = (0..run.step_ids.len() as i64).collect();
    let (inserted, newest): (i64, bool) = sqlx::query_as(
        "WITH v AS (SELECT NOT $21 OR (SELECT version FROM workflows WHERE name = $2 AND deleted_at IS NULL \
           ORDER BY version DESC LIMIT 1) IS NOT DISTINCT FROM $13 AS newest), \
         r AS (INSERT INTO runs (id, workflow, status, base_dir, inputs, parent_run_id, parent_step_id, \
           parent_item, parent_attempt, created_at, updated_at, owner, lease_until, idempotency_key, \
           workflow_version, started_by, mode, responsible) \
           SELECT $1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12, $13, $14, $15, $16 \
           FROM v WHERE v.newest \
           ON CONFLICT DO NOTHING RETURNING id), \
         d AS (INSERT INTO run_definitions (run_id, manifest, plan) SELECT id, $17, $18 FROM r), \
         s AS (INSERT INTO steps (run_id, step_id, position, status) \
           SELECT r.id, t.s, t.p, 'pending' FROM r, UNNEST($19::text[], $20::int8[]) AS t(s, p)) \
         SELECT (SELECT COUNT(*) FROM r), (SELECT newest FROM v)",
    )
    .bind(&run.id)
    .bind(&run.workflow)
    .bind(&run.base_dir)
    .bind(run.inputs.to_string())
    .bind(run.parent.as_ref().map(|p| p.run_id.as_str()))
    .bind(run.parent.as_ref().map(|p| p.step_id.as_str()))
    .bind(run.parent.as_ref().and_then(|p| p.item).map(i64::from))
    .bind(run.parent.as_ref().map(|p| i64::from(p.attempt)))
    .bind(run.created_at as i64)
    .bind(&run.owner)
    .bind(run.lease_until.map(|t| t as i64))
    .bind(&run.idempotency_key)
    .bind(run.workflow_version.map(i64::from))
    .bind(&run.started_by)
    .bind(&run.mode)
    .bind(responsible(run))
    .bind(&run.manifest)
    .bind(&run.plan)
    .bind(&run.step_ids)
    .bind(&positions)
    .bind(run.newest_version)
    .fetch_one(pool)
    .await
    .map_err(db_err)?;
    if !newest {
        return Err(StoreError::WorkflowChanged(run.workflow.clone()));
    }
    Ok(inserted == 1)
}

/// Several runs (with different ids) in one statement, each with the answer
/// [`create_one`] would give it; of two with the same idempotency key, the first is made.
async fn create_many(pool: &PgPool, runs: &[NewRun]) -> Result<Vec<Result<bool>>> {
    let col = |f: fn(&NewRun) -> Option<String>| runs.iter().map(f).collect::<Vec<_>>();
    let num = |f: fn(&NewRun) -> Option<i64>| runs.iter().map(f).collect::<Vec<_>>();
    let (mut s_run, mut s_step, mut s_pos) = (Vec::new(), Vec::new(), Vec::new());
    for run in runs {
        for (i, step) in run.step_ids.iter().enumerate() {
            s_run.push(run.id.as_str());
            s_step.push(step.as_str());
            s_pos.push(i as i64);
        }
    }
    // `n` numbers the runs: they are inserted, and answered, in the caller's order.
    let rows: Vec<(i64, bool, bool)> = sqlx::query_as(
        "WITH p AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::int8[], $12::text[], \
             $13::int8[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::bool[]) \
           WITH ORDINALITY AS p(id, workflow, base_dir, inputs, parent_run_id, parent_step_id, parent_item, \
             parent_attempt, created_at, owner, lease_until, idempotency_key, workflow_version, started_by, \
             mode, responsible, manifest, plan, newest, n)), \
         v AS (SELECT p.*, NOT p.newest OR (SELECT w.version FROM workflows w WHERE w.name = p.workflow \
             AND w.deleted_at IS NULL ORDER BY w.version DESC LIMIT 1) IS NOT DISTINCT FROM p.workflow_version \
             AS fresh FROM p), \
         r AS (INSERT INTO runs (id, workflow, status, base_dir, inputs, parent_run_id, parent_step_id, \
           parent_item, parent_attempt, created_at, updated_at, owner, lease_until, idempotency_key, \
           workflow_version, started_by, mode, responsible) \
           SELECT id, workflow, 'queued', base_dir, inputs, parent_run_id, parent_step_id, parent_item, \
             parent_attempt, created_at, created_at, owner, lease_until, idempotency_key, workflow_version, \
             started_by, mode, responsible FROM v WHERE v.fresh ORDER BY v.n \
           ON CONFLICT DO NOTHING RETURNING id), \
         d AS (INSERT INTO run_definitions (run_id, manifest, plan) \
           SELECT v.id, v.manifest, v.plan FROM v JOIN r ON r.id = v.id), \
         s AS (INSERT INTO steps (run_id, step_id, position, status) \
           SELECT t.r, t.s, t.p, 'pending' \
           FROM UNNEST($20::text[], $21::text[], $22::int8[]) AS t(r, s, p) JOIN r ON r.id = t.r) \
         SELECT v.n, v.fresh, r.id IS NOT NULL FROM v LEFT JOIN r ON r.id = v.id ORDER BY v.n",
    )
    .bind(col(|r| Some(r.id.clone())))
    .bind(col(|r| Some(r.workflow.clone())))
    .bind(col(|r| r.base_dir.clone()))
    .bind(col(|r| Some(r.inputs.to_string())))
    .bind(col(|r| r.parent.as_ref().map(|p| p.run_id.clone())))
    .bind(col(|r| r.parent.as_ref().map(|p| p.step_id.clone())))
    .bind(num(|r| r.parent.as_ref().and_then(|p| p.item).map(i64::from)))
    .bind(num(|r| r.parent.as_ref().map(|p| i64::from(p.attempt))))
    .bind(num(|r| Some(r.created_at as i64)))
    .bind(col(|r| r.owner.clone()))
    .bind(num(|r| r.lease_until.map(|t| t as i64)))
    .bind(col(|r| r.idempotency_key.clone()))
    .bind(num(|r| r.workflow_version.map(i64::from)))
    .bind(col(|r| r.started_by.clone()))
    .bind(col(|r| r.mode.clone()))
    .bind(col(|r| Some(responsible(r))))
    .bind(col(|r| Some(r.manifest.clone())))
    .bind(col(|r| r.plan.clone()))
    .bind(runs.iter().map(|r| r.newest_version).collect::<Vec<_>>())
    .bind(&s_run)
    .bind(&s_step)
    .bind(&s_pos)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    if rows.len() != runs.len() {
        return Err(StoreError::Db(format!(
            "making {} runs answered {} rows",
            runs.len(),
            rows.len()
        )));
    }
    Ok(rows
        .into_iter()
        .zip(runs)
        .map(|((_, fresh, made), run)| {
            if !fresh {
                Err(StoreError::WorkflowChanged(run.workflow.clone()))
            } else {
                Ok(made)
            }
        })
        .collect())
}
