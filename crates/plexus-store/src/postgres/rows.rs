//! Rows to values: every column is read as what it must be. A value that is not (an
//! unknown kind, JSON that does not parse) is an error naming the column, never read as
//! something else.

use super::db_err;
use crate::*;
use sqlx::Row;
use sqlx::postgres::PgRow;

pub(super) type RowResult<T> = std::result::Result<T, StoreError>;

pub(super) fn get<'r, T>(r: &'r PgRow, idx: usize) -> RowResult<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    r.try_get(idx).map_err(db_err)
}

/// A column of milliseconds (or another count that is never negative).
pub(super) fn count(r: &PgRow, idx: usize) -> RowResult<u64> {
    Ok(get::<i64>(r, idx)?.max(0) as u64)
}

pub(super) fn count_opt(r: &PgRow, idx: usize) -> RowResult<Option<u64>> {
    Ok(get::<Option<i64>>(r, idx)?.map(|v| v.max(0) as u64))
}

fn bad_column(idx: usize, what: impl std::fmt::Display) -> StoreError {
    StoreError::Db(format!("column index: {idx}: {what}"))
}

/// A JSON text column; SQL `NULL` is JSON `null`.
pub(super) fn json_at(r: &PgRow, idx: usize) -> RowResult<Json> {
    match get::<Option<String>>(r, idx)? {
        None => Ok(Json::Null),
        Some(text) => serde_json::from_str(&text).map_err(|e| bad_column(idx, e)),
    }
}

/// A typed value from a JSON text column.
pub(super) fn parsed_at<T: serde::de::DeserializeOwned>(r: &PgRow, idx: usize) -> RowResult<T> {
    let text: String = get(r, idx)?;
    serde_json::from_str(&text).map_err(|e| bad_column(idx, e))
}

pub(super) const RUN_COLUMNS: &str = "id, workflow, status, base_dir, inputs, outputs, error, parent_run_id, parent_step_id, \
     parent_item, parent_attempt, created_at, updated_at, finished_at, owner, lease_until, last_seq, started_by, mode, responsible";

pub(super) fn run_from_row(r: &PgRow) -> RowResult<RunRow> {
    let parent = match get::<Option<String>>(r, 7)? {
        Some(run_id) => Some(ParentRef {
            run_id,
            step_id: get::<Option<String>>(r, 8)?.unwrap_or_default(),
            item: get::<Option<i64>>(r, 9)?.map(|v| v as u32),
            attempt: get::<Option<i64>>(r, 10)?.unwrap_or(0) as u32,
        }),
        None => None,
    };
    Ok(RunRow {
        id: get(r, 0)?,
        workflow: get(r, 1)?,
        status: get(r, 2)?,
        base_dir: get(r, 3)?,
        inputs: json_at(r, 4)?,
        outputs: json_at(r, 5)?,
        error: get(r, 6)?,
        parent,
        created_at: count(r, 11)?,
        updated_at: count(r, 12)?,
        finished_at: count_opt(r, 13)?,
        owner: get(r, 14)?,
        lease_until: count_opt(r, 15)?,
        last_seq: count(r, 16)?,
        started_by: get(r, 17)?,
        mode: get(r, 18)?,
        responsible: parsed_at(r, 19)?,
    })
}

pub(super) const COMMAND_COLUMNS: &str =
    "c.id, c.run_id, c.kind, c.step_id, c.data, c.actor, c.created_at, c.consumed_at, c.result";

pub(super) fn command_from_row(r: &PgRow) -> RowResult<Command> {
    let kind: String = get(r, 2)?;
    Ok(Command {
        id: get(r, 0)?,
        run_id: get(r, 1)?,
        kind: CommandKind::parse(&kind)
            .ok_or_else(|| bad_column(2, format!("unknown command kind `{kind}`")))?,
        step_id: get(r, 3)?,
        data: json_at(r, 4)?,
        actor: get(r, 5)?,
        created_at: count(r, 6)?,
        consumed_at: count_opt(r, 7)?,
        result: get(r, 8)?,
    })
}

pub(super) const WORKFLOW_COLUMNS: &str = "name, version, manifest, created_at, applied_by";

pub(super) fn workflow_from_row(r: &PgRow) -> RowResult<WorkflowRow> {
    Ok(WorkflowRow {
        name: get(r, 0)?,
        version: get::<i64>(r, 1)? as u32,
        manifest: get(r, 2)?,
        created_at: count(r, 3)?,
        applied_by: get(r, 4)?,
    })
}

pub(super) const SCHEDULE_COLUMNS: &str = "name, workflow, cron, inputs, catch_up, paused, next_fire_at, last_fired_at, from_manifest, created_at, changed_by";

pub(super) fn schedule_from_row(r: &PgRow) -> RowResult<ScheduleRow> {
    let catch_up: String = get(r, 4)?;
    Ok(ScheduleRow {
        name: get(r, 0)?,
        workflow: get(r, 1)?,
        cron: get(r, 2)?,
        inputs: json_at(r, 3)?,
        catch_up: plexus_core::schedule::CatchUp::parse(&catch_up)
            .ok_or_else(|| bad_column(4, format!("unknown catch-up policy `{catch_up}`")))?,
        paused: get(r, 5)?,
        next_fire_at: count(r, 6)?,
        last_fired_at: count_opt(r, 7)?,
        from_manifest: get(r, 8)?,
        created_at: count(r, 9)?,
        changed_by: get(r, 10)?,
    })
}

pub(super) fn all<T>(rows: Vec<PgRow>, f: impl Fn(&PgRow) -> RowResult<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}
