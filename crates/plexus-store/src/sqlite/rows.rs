//! Rows to values: every column is read as what it must be. A value that is not (an
//! unknown kind, JSON that does not parse) is an error naming the column, never read as
//! something else.

use crate::*;
use rusqlite::Row;
use rusqlite::types::Type;

/// A JSON text column; SQL `NULL` is JSON `null`.
pub(super) fn json_at(r: &Row, idx: usize) -> rusqlite::Result<Json> {
    match r.get::<_, Option<String>>(idx)? {
        None => Ok(Json::Null),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))),
    }
}

/// A typed value from a JSON text column.
pub(super) fn parsed_at<T: serde::de::DeserializeOwned>(
    r: &Row,
    idx: usize,
) -> rusqlite::Result<T> {
    let text: String = r.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

/// A column whose value this version does not know.
pub(super) fn bad_column(idx: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, what.into())
}

/// Column 3 is the old place of the manifest text, empty since it moved to
/// `run_definitions`; it is kept here so the positions below stay as they are.
pub(super) const RUN_COLUMNS: &str = "id, workflow, status, manifest, base_dir, inputs, outputs, error, parent_run_id, parent_step_id, \
     parent_item, parent_attempt, created_at, updated_at, finished_at, owner, lease_until, last_seq, started_by, mode, responsible";

pub(super) fn run_from_row(r: &Row) -> rusqlite::Result<RunRow> {
    let parent_run: Option<String> = r.get(8)?;
    let parent = match parent_run {
        Some(run_id) => Some(ParentRef {
            run_id,
            step_id: r.get(9)?,
            item: r.get::<_, Option<i64>>(10)?.map(|v| v as u32),
            attempt: r.get::<_, Option<i64>>(11)?.unwrap_or(0) as u32,
        }),
        None => None,
    };
    Ok(RunRow {
        id: r.get(0)?,
        workflow: r.get(1)?,
        status: r.get(2)?,
        base_dir: r.get(4)?,
        inputs: json_at(r, 5)?,
        outputs: json_at(r, 6)?,
        error: r.get(7)?,
        parent,
        created_at: r.get::<_, i64>(12)? as u64,
        updated_at: r.get::<_, i64>(13)? as u64,
        finished_at: r.get::<_, Option<i64>>(14)?.map(|v| v as u64),
        owner: r.get(15)?,
        lease_until: r.get::<_, Option<i64>>(16)?.map(|v| v as u64),
        last_seq: r.get::<_, i64>(17)? as u64,
        started_by: r.get(18)?,
        mode: r.get(19)?,
        responsible: serde_json::from_value(json_at(r, 20)?)
            .map_err(|e| bad_column(20, e.to_string()))?,
    })
}

pub(super) fn command_from_row(r: &Row) -> rusqlite::Result<Command> {
    let kind: String = r.get(2)?;
    Ok(Command {
        id: r.get(0)?,
        run_id: r.get(1)?,
        kind: CommandKind::parse(&kind)
            .ok_or_else(|| bad_column(2, format!("unknown command kind `{kind}`")))?,
        step_id: r.get(3)?,
        data: json_at(r, 4)?,
        actor: r.get(5)?,
        created_at: r.get::<_, i64>(6)? as u64,
        consumed_at: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        result: r.get(8)?,
    })
}

pub(super) fn workflow_from_row(r: &Row) -> rusqlite::Result<WorkflowRow> {
    Ok(WorkflowRow {
        name: r.get(0)?,
        version: r.get::<_, i64>(1)? as u32,
        manifest: r.get(2)?,
        created_at: r.get::<_, i64>(3)? as u64,
        applied_by: r.get(4)?,
    })
}

pub(super) const SCHEDULE_COLUMNS: &str = "name, workflow, cron, inputs, catch_up, paused, next_fire_at, last_fired_at, from_manifest, created_at, changed_by";

pub(super) fn schedule_from_row(r: &Row) -> rusqlite::Result<ScheduleRow> {
    let catch_up: String = r.get(4)?;
    Ok(ScheduleRow {
        name: r.get(0)?,
        workflow: r.get(1)?,
        cron: r.get(2)?,
        inputs: json_at(r, 3)?,
        catch_up: plexus_core::schedule::CatchUp::parse(&catch_up)
            .ok_or_else(|| bad_column(4, format!("unknown catch-up policy `{catch_up}`")))?,
        paused: r.get(5)?,
        next_fire_at: r.get::<_, i64>(6)? as u64,
        last_fired_at: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        from_manifest: r.get(8)?,
        created_at: r.get::<_, i64>(9)? as u64,
        changed_by: r.get(10)?,
    })
}

pub(super) const COMMAND_COLUMNS: &str =
    "c.id, c.run_id, c.kind, c.step_id, c.data, c.actor, c.created_at, c.consumed_at, c.result";
