//! [`CatalogStore`] on SQLite: workflows, schedules, triggers, received events and dead
//! letters.

use super::*;

#[async_trait::async_trait]
impl CatalogStore for SqliteStore {
    async fn put_workflow(
        &self,
        name: &str,
        manifest: &str,
        applied_by: Option<&str>,
        now: Millis,
    ) -> Result<(WorkflowRow, bool)> {
        let (name, manifest) = (name.to_owned(), manifest.to_owned());
        let applied_by = applied_by.map(str::to_owned);
        self.write(move |conn| {
            let latest: Option<(i64, String, Option<i64>)> = conn
                .query_row_cached(
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
            conn.execute_cached(
                "INSERT INTO workflows (name, version, manifest, created_at, applied_by) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, version, manifest, now as i64, applied_by],
            )
            .map_err(db_err)?;
            // Re-applying a deleted workflow brings the name back with a new version.
            conn.execute_cached("UPDATE workflows SET deleted_at = NULL WHERE name = ?1", [&name]).map_err(db_err)?;
            let row = workflow_row(conn, &name, Some(version as u32))?.expect("just written");
            Ok((row, true))
        })
        .await
    }

    async fn get_workflow(&self, name: &str, version: Option<u32>) -> Result<Option<WorkflowRow>> {
        let name = name.to_owned();
        self.read_point(move |conn| workflow_row(conn, &name, version))
            .await
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowRow>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT w.name, w.version, w.manifest, w.created_at, w.applied_by FROM workflows w \
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
                .execute_cached(
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
            conn.execute_cached(
                "INSERT OR REPLACE INTO schedules (name, workflow, cron, inputs, catch_up, paused, next_fire_at, last_fired_at, \
                 from_manifest, created_at, changed_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    s.created_at as i64,
                    s.changed_by
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
                .execute_cached("DELETE FROM schedules WHERE name = ?1", [&name])
                .map_err(db_err)?
                > 0)
        })
        .await
    }

    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        by: Option<&str>,
    ) -> Result<bool> {
        let name = name.to_owned();
        let by = by.map(str::to_owned);
        self.write(move |conn| {
            let n = conn
                .execute_cached(
                    "UPDATE schedules SET paused = ?2, changed_by = COALESCE(?3, changed_by) WHERE name = ?1",
                    params![name, paused, by],
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
                .execute_cached(
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
            conn.execute_cached("DELETE FROM triggers WHERE workflow = ?1", [&workflow])
                .map_err(db_err)?;
            for t in &types {
                conn.execute_cached(
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
                .execute_cached(
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
                .query_row_cached(
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
            conn.execute_cached(
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
            conn.execute_cached(
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
}
