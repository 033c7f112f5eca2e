//! One group commit of run progress on PostgreSQL in a fixed number of statements,
//! whatever it holds: the changes its events make to each `runs` and `steps` row are
//! folded into one patch per row first (the same result as applying them one by one, as
//! the SQLite store does), then every table is written with one statement over arrays.

use super::audit_chain::AuditHead;
use super::{db_err, now_ms, unique_violation};
use crate::*;
use plexus_core::machine::EVENT_SCHEMA;
use sqlx::Row;
use sqlx::postgres::PgConnection;
use std::collections::{BTreeMap, HashMap};

/// What a commit does to one `runs` row.
#[derive(Default)]
struct RunPatch {
    status: Option<&'static str>,
    /// Reopened: the end, outputs and error are the patch's, not kept.
    reset: bool,
    finished: Option<i64>,
    outputs: Option<String>,
    error: Option<String>,
    /// The first and last sequence numbers of the commit's events (0: none).
    first: i64,
    seq: i64,
    time: i64,
    fence: Option<i64>,
}

/// What a commit does to one `steps` row.
#[derive(Default)]
struct StepPatch {
    status: Option<&'static str>,
    attempt: Option<i64>,
    /// Reset: `started_at` is the patch's, not the row's.
    reset: bool,
    started: Option<i64>,
    finished: Option<Option<i64>>,
    output: Option<Option<String>>,
    error: Option<Option<String>>,
}

impl StepPatch {
    fn apply(&mut self, c: StepChange) {
        self.status = Some(c.status);
        if let Some(a) = c.attempt {
            self.attempt = Some(i64::from(a));
        }
        // The row keeps its first start (the first of this commit's when it has none).
        if self.started.is_none() {
            self.started = c.started.map(|t| t as i64);
        }
        if let Some(t) = c.finished {
            self.finished = Some(Some(t as i64));
        }
        if let Some(o) = c.output {
            self.output = Some(Some(o.to_string()));
        }
        if let Some(e) = c.error {
            self.error = Some(e);
        }
    }

    fn reopen(&mut self) {
        *self = StepPatch {
            status: Some("pending"),
            attempt: self.attempt,
            reset: true,
            started: None,
            finished: Some(None),
            output: Some(None),
            error: Some(None),
        };
    }
}

pub(super) async fn apply_batch(
    conn: &mut PgConnection,
    batch: &Batch,
    head: &AuditHead,
) -> Result<()> {
    let mut runs: BTreeMap<&str, RunPatch> = BTreeMap::new();
    let mut steps: BTreeMap<(&str, String), StepPatch> = BTreeMap::new();
    let mut audits = Vec::new();
    for (run_id, e) in &batch.events {
        let run = runs.entry(run_id.as_str()).or_default();
        if run.first == 0 {
            run.first = e.seq as i64;
        }
        run.seq = run.seq.max(e.seq as i64);
        run.time = run.time.max(e.time as i64);
        match materialize(e) {
            RowChange::Step(c) => steps
                .entry((run_id, c.step_id.clone()))
                .or_default()
                .apply(c),
            RowChange::StepReopened { step_id } => {
                steps.entry((run_id, step_id)).or_default().reopen()
            }
            RowChange::Run {
                status,
                finished,
                outputs,
                error,
            } => {
                run.status = Some(status);
                if let Some(t) = finished {
                    run.finished = Some(t as i64);
                }
                if let Some(o) = outputs {
                    run.outputs = Some(o.to_string());
                }
                if let Some(e) = error {
                    run.error = Some(e);
                }
            }
            RowChange::RunReopened => {
                run.status = Some("running");
                run.reset = true;
                (run.finished, run.outputs, run.error) = (None, None, None);
            }
            RowChange::None => {}
        }
        if let Some(audit) = run_audit(e) {
            audits.push((run_id.as_str(), e.time, audit));
        }
    }
    for (run_id, fence) in &batch.fences {
        runs.entry(run_id.as_str()).or_default().fence = Some(*fence as i64);
    }
    let updated = write_progress(conn, &runs, batch, &steps).await?;
    if !audits.is_empty() {
        append_run_audits(conn, head, audits, &updated).await?;
    }
    write_the_rest(conn, batch).await
}

/// The runs a commit updated: each one's workflow and who started it (for its audit
/// records, read by the same statement).
type Updated = HashMap<String, (String, Option<String>)>;

/// The run patches, the events and the step patches of a commit in one statement (one
/// round-trip; PostgreSQL runs data-modifying CTEs on the same snapshot, and these
/// touch different tables). The fencing tokens are checked by the `runs` update, which
/// also locks the rows (a claim of the same run waits for this transaction, or this
/// statement for the claim's); the events and steps of a run fenced out are not
/// written, and the job fails as `taken over` (and is undone).
/// Every replica hears of the new events (for the followers of these runs) when the
/// transaction commits, by one notification for the commit's runs (a notification
/// each was as many wake-ups of every replica's listener).
async fn write_progress(
    conn: &mut PgConnection,
    runs: &BTreeMap<&str, RunPatch>,
    batch: &Batch,
    steps: &BTreeMap<(&str, String), StepPatch>,
) -> Result<Updated> {
    if runs.is_empty() && batch.events.is_empty() && steps.is_empty() {
        return Ok(Updated::new());
    }
    let ids: Vec<&str> = runs.keys().copied().collect();
    let p = runs.values();
    let status: Vec<Option<&str>> = p.clone().map(|r| r.status).collect();
    let reset: Vec<bool> = p.clone().map(|r| r.reset).collect();
    let finished: Vec<Option<i64>> = p.clone().map(|r| r.finished).collect();
    let outputs: Vec<Option<&str>> = p.clone().map(|r| r.outputs.as_deref()).collect();
    let error: Vec<Option<&str>> = p.clone().map(|r| r.error.as_deref()).collect();
    let seq: Vec<i64> = p.clone().map(|r| r.seq).collect();
    let time: Vec<i64> = p.clone().map(|r| r.time).collect();
    let fence: Vec<Option<i64>> = p.clone().map(|r| r.fence).collect();
    let first: Vec<i64> = p.map(|r| r.first).collect();

    let n = batch.events.len();
    let mut e_run = Vec::with_capacity(n);
    let mut e_seq = Vec::with_capacity(n);
    let mut e_time = Vec::with_capacity(n);
    let mut e_kind = Vec::with_capacity(n);
    let mut e_step = Vec::with_capacity(n);
    let mut e_attempt = Vec::with_capacity(n);
    let mut e_data = Vec::with_capacity(n);
    for (run_id, e) in &batch.events {
        e_run.push(run_id.as_str());
        e_seq.push(e.seq as i64);
        e_time.push(e.time as i64);
        e_kind.push(e.kind.type_name());
        e_step.push(e.kind.step_id());
        e_attempt.push(e.kind.attempt().map(i64::from));
        e_data.push(serde_json::to_string(e).map_err(super::json_err)?);
    }

    let s_run: Vec<&str> = steps.keys().map(|k| k.0).collect();
    let s_step: Vec<&str> = steps.keys().map(|k| k.1.as_str()).collect();
    let q = steps.values();
    let s_status: Vec<Option<&str>> = q.clone().map(|s| s.status).collect();
    let s_attempt: Vec<Option<i64>> = q.clone().map(|s| s.attempt).collect();
    let s_reset: Vec<bool> = q.clone().map(|s| s.reset).collect();
    let s_started: Vec<Option<i64>> = q.clone().map(|s| s.started).collect();
    let s_set_finished: Vec<bool> = q.clone().map(|s| s.finished.is_some()).collect();
    let s_finished: Vec<Option<i64>> = q.clone().map(|s| s.finished.flatten()).collect();
    let s_set_output: Vec<bool> = q.clone().map(|s| s.output.is_some()).collect();
    let s_output: Vec<Option<&str>> = q
        .clone()
        .map(|s| s.output.as_ref().and_then(|o| o.as_deref()))
        .collect();
    let s_set_error: Vec<bool> = q.clone().map(|s| s.error.is_some()).collect();
    let s_error: Vec<Option<&str>> = q
        .map(|s| s.error.as_ref().and_then(|e| e.as_deref()))
        .collect();

    let rows = sqlx::query(
        "WITH u AS (UPDATE runs r SET status = COALESCE(p.status, r.status), \
           finished_at = CASE WHEN p.reset THEN p.finished ELSE COALESCE(p.finished, r.finished_at) END, \
           outputs = CASE WHEN p.reset THEN p.outputs ELSE COALESCE(p.outputs, r.outputs) END, \
           error = CASE WHEN p.reset THEN p.error ELSE COALESCE(p.error, r.error) END, \
           last_seq = GREATEST(r.last_seq, p.seq), updated_at = GREATEST(r.updated_at, p.time) \
         FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::int8[], $5::text[], $6::text[], $7::int8[], $8::int8[], \
                     $9::int8[], $10::int8[]) \
           AS p(id, status, reset, finished, outputs, error, seq, time, fence, first) \
         WHERE r.id = p.id AND (p.fence IS NULL OR r.fence = p.fence) \
           RETURNING r.id, p.first, r.last_seq, r.workflow, r.started_by), \
         e AS (INSERT INTO events (run_id, seq, time, type, step_id, attempt, data, schema) \
           SELECT r, s, t, k, st, a, d, $19 FROM UNNEST($12::text[], $13::int8[], $14::int8[], $15::text[], \
             $16::text[], $17::int8[], $18::text[]) AS e(r, s, t, k, st, a, d) WHERE e.r IN (SELECT id FROM u)), \
         s AS (UPDATE steps s SET status = COALESCE(p.status, s.status), attempt = COALESCE(p.attempt, s.attempt), \
           started_at = CASE WHEN p.reset THEN p.started ELSE COALESCE(s.started_at, p.started) END, \
           finished_at = CASE WHEN p.set_finished THEN p.finished ELSE s.finished_at END, \
           output = CASE WHEN p.set_output THEN p.output ELSE s.output END, \
           error = CASE WHEN p.set_error THEN p.error ELSE s.error END \
         FROM UNNEST($20::text[], $21::text[], $22::text[], $23::int8[], $24::bool[], $25::int8[], $26::bool[], \
                     $27::int8[], $28::bool[], $29::text[], $30::bool[], $31::text[]) \
           AS p(run_id, step_id, status, attempt, reset, started, set_finished, finished, set_output, output, \
                set_error, error) \
         WHERE s.run_id = p.run_id AND s.step_id = p.step_id AND p.run_id IN (SELECT id FROM u)), \
         n AS (SELECT pg_notify($11, string_agg(c.id || ' ' || c.first || ' ' || c.last_seq, ';')) \
           FROM (SELECT id, first, last_seq, row_number() OVER () / $32 AS chunk FROM u WHERE first > 0) AS c \
           GROUP BY c.chunk) \
         SELECT u.id, u.workflow, u.started_by, (SELECT count(*) FROM n) FROM u",
    )
    .bind(&ids)
    .bind(&status)
    .bind(&reset)
    .bind(&finished)
    .bind(&outputs)
    .bind(&error)
    .bind(&seq)
    .bind(&time)
    .bind(&fence)
    .bind(&first)
    .bind(super::EVENTS_CHANNEL)
    .bind(&e_run)
    .bind(&e_seq)
    .bind(&e_time)
    .bind(&e_kind)
    .bind(&e_step)
    .bind(&e_attempt)
    .bind(&e_data)
    .bind(EVENT_SCHEMA as i32)
    .bind(&s_run)
    .bind(&s_step)
    .bind(&s_status)
    .bind(&s_attempt)
    .bind(&s_reset)
    .bind(&s_started)
    .bind(&s_set_finished)
    .bind(&s_finished)
    .bind(&s_set_output)
    .bind(&s_output)
    .bind(&s_set_error)
    .bind(&s_error)
    .bind(super::EVENTS_PER_NOTIFICATION)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| match unique_violation(&e) {
        Some(_) => StoreError::Conflict(format!(
            "an event of this commit was already written by another process: {}",
            db_err(e)
        )),
        None => db_err(e),
    })?;
    let updated: Updated = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    if updated.len() < runs.len() {
        // A run whose token moved on, or one that does not exist: either way this
        // engine's commit does not belong in it.
        if let Some((id, _)) = runs
            .iter()
            .find(|(id, p)| p.fence.is_some() && !updated.contains_key(**id))
        {
            return Err(fenced_out(id));
        }
    }
    Ok(updated)
}

/// The workflow audit records of a commit's run events, appended to the chain in event
/// order (the writer's transaction holds the chain's lock).
async fn append_run_audits(
    conn: &mut PgConnection,
    head: &AuditHead,
    audits: Vec<(&str, Millis, RunAudit)>,
    known: &Updated,
) -> Result<()> {
    let mut entries = Vec::with_capacity(audits.len());
    for (run_id, time, audit) in audits {
        let (workflow, started_by) = known
            .get(run_id)
            .ok_or_else(|| StoreError::RunNotFound(run_id.to_owned()))?;
        entries.push(run_audit_entry(
            run_id,
            time,
            audit,
            workflow,
            started_by.clone(),
        ));
    }
    head.append(conn, &entries).await?;
    Ok(())
}

/// Consumed commands, artifacts, attempt records and logs. Rows a commit writes twice
/// are written once, with the last value (what writing them in order would leave).
async fn write_the_rest(conn: &mut PgConnection, batch: &Batch) -> Result<()> {
    if !batch.consumed.is_empty() {
        let ids: Vec<i64> = batch.consumed.iter().map(|c| c.0).collect();
        let results: Vec<Option<&str>> = batch.consumed.iter().map(|c| c.1.as_deref()).collect();
        sqlx::query(
            "UPDATE commands c SET consumed_at = $3, result = p.result \
             FROM UNNEST($1::int8[], $2::text[]) AS p(id, result) WHERE c.id = p.id",
        )
        .bind(&ids)
        .bind(&results)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    if !batch.artifacts.is_empty() {
        let last: BTreeMap<_, &Artifact> = batch
            .artifacts
            .iter()
            .map(|a| ((&a.run_id, &a.step_id, a.attempt, &a.name), a))
            .collect();
        let a = last.values();
        sqlx::query(
            "INSERT INTO artifacts (sha256, run_id, step_id, attempt, name, size, created_at) \
             SELECT *, $7 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[]) \
             ON CONFLICT (run_id, step_id, attempt, name) DO UPDATE SET sha256 = excluded.sha256, \
               size = excluded.size, created_at = excluded.created_at",
        )
        .bind(a.clone().map(|a| a.sha256.as_str()).collect::<Vec<_>>())
        .bind(a.clone().map(|a| a.run_id.as_str()).collect::<Vec<_>>())
        .bind(a.clone().map(|a| a.step_id.as_str()).collect::<Vec<_>>())
        .bind(a.clone().map(|a| i64::from(a.attempt)).collect::<Vec<_>>())
        .bind(a.clone().map(|a| a.name.as_str()).collect::<Vec<_>>())
        .bind(a.map(|a| a.size as i64).collect::<Vec<_>>())
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    let item = |i: Option<u32>| i.map_or(-1, i64::from);
    if !batch.records.is_empty() {
        let last: BTreeMap<_, &AttemptRecord> = batch
            .records
            .iter()
            .map(|r| {
                (
                    (
                        &r.key.run_id,
                        &r.key.step_id,
                        item(r.key.item),
                        r.key.attempt,
                    ),
                    r,
                )
            })
            .collect();
        let r = last.values();
        sqlx::query(
            "INSERT INTO attempt_records (run_id, step_id, item, attempt, executor, data) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[]) \
             ON CONFLICT (run_id, step_id, item, attempt) DO UPDATE SET executor = excluded.executor, data = excluded.data",
        )
        .bind(r.clone().map(|r| r.key.run_id.as_str()).collect::<Vec<_>>())
        .bind(r.clone().map(|r| r.key.step_id.as_str()).collect::<Vec<_>>())
        .bind(r.clone().map(|r| item(r.key.item)).collect::<Vec<_>>())
        .bind(r.clone().map(|r| i64::from(r.key.attempt)).collect::<Vec<_>>())
        .bind(r.clone().map(|r| r.executor.as_str()).collect::<Vec<_>>())
        .bind(r.map(|r| r.data.to_string()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    if !batch.records_done.is_empty() {
        let k = batch.records_done.iter();
        sqlx::query(
            "DELETE FROM attempt_records r USING UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) \
               AS d(run_id, step_id, item, attempt) \
             WHERE r.run_id = d.run_id AND r.step_id = d.step_id AND r.item = d.item AND r.attempt = d.attempt",
        )
        .bind(k.clone().map(|k| k.run_id.as_str()).collect::<Vec<_>>())
        .bind(k.clone().map(|k| k.step_id.as_str()).collect::<Vec<_>>())
        .bind(k.clone().map(|k| item(k.item)).collect::<Vec<_>>())
        .bind(k.map(|k| i64::from(k.attempt)).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    if !batch.logs.is_empty() {
        let last: BTreeMap<_, &StepLogs> = batch
            .logs
            .iter()
            .map(|l| ((&l.run_id, &l.step_id, item(l.item), l.attempt), l))
            .collect();
        let l = last.values();
        sqlx::query(
            "INSERT INTO step_logs (run_id, step_id, item, attempt, stdout, stderr, exit_code) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::int4[]) \
             ON CONFLICT (run_id, step_id, item, attempt) DO UPDATE SET stdout = excluded.stdout, \
               stderr = excluded.stderr, exit_code = excluded.exit_code",
        )
        .bind(l.clone().map(|l| l.run_id.as_str()).collect::<Vec<_>>())
        .bind(l.clone().map(|l| l.step_id.as_str()).collect::<Vec<_>>())
        .bind(l.clone().map(|l| item(l.item)).collect::<Vec<_>>())
        .bind(l.clone().map(|l| i64::from(l.attempt)).collect::<Vec<_>>())
        .bind(l.clone().map(|l| l.stdout.as_str()).collect::<Vec<_>>())
        .bind(l.clone().map(|l| l.stderr.as_str()).collect::<Vec<_>>())
        .bind(l.map(|l| l.exit_code).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}
