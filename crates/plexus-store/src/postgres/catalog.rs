//! [`CatalogStore`] on PostgreSQL: workflows, schedules, triggers, received events and
//! dead letters. Writes that read before they write take a lock first, so two replicas
//! applying the same workflow or schedule at once never both act on the same read.

use super::rows::*;
use super::*;

/// A version of a workflow (the newest when `version` is `None`), unless deleted.
async fn workflow_row(
    conn: &mut PgConnection,
    name: &str,
    version: Option<u32>,
) -> Result<Option<WorkflowRow>> {
    let row = query(format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = $1 AND deleted_at IS NULL \
         AND ($2::int8 IS NULL OR version = $2) ORDER BY version DESC LIMIT 1"
    ))
    .bind(name)
    .bind(version.map(i64::from))
    .fetch_optional(conn)
    .await
    .map_err(db_err)?;
    row.as_ref().map(workflow_from_row).transpose()
}

async fn schedule_row(
    conn: &mut PgConnection,
    name: &str,
    lock: bool,
) -> Result<Option<ScheduleRow>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = query(format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = $1{lock}"
    ))
    .bind(name)
    .fetch_optional(conn)
    .await
    .map_err(db_err)?;
    row.as_ref().map(schedule_from_row).transpose()
}

/// Serialises the transactions that act on `key` until they end, across replicas.
async fn lock_key(conn: &mut PgConnection, key: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

#[async_trait::async_trait]
impl CatalogStore for PgStore {
    async fn put_workflow(
        &self,
        name: &str,
        manifest: &str,
        applied_by: Option<&str>,
        now: Millis,
    ) -> Result<(WorkflowRow, bool)> {
        let args = Arc::new((
            name.to_owned(),
            manifest.to_owned(),
            applied_by.map(str::to_owned),
        ));
        self.write(move |conn| {
            let args = Arc::clone(&args);
            Box::pin(async move {
                let (name, manifest, applied_by) = &*args;
                lock_key(conn, &format!("workflow:{name}")).await?;
                let latest = sqlx::query(
                    "SELECT version, manifest, deleted_at FROM workflows WHERE name = $1 ORDER BY version DESC LIMIT 1",
                )
                .bind(name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
                let latest = match &latest {
                    Some(r) => Some((
                        get::<i64>(r, 0)?,
                        get::<String>(r, 1)?,
                        get::<Option<i64>>(r, 2)?,
                    )),
                    None => None,
                };
                if let Some((version, text, None)) = &latest
                    && text == manifest
                {
                    let row = workflow_row(conn, name, Some(*version as u32)).await?;
                    return Ok((row.expect("exists"), false));
                }
                let version = latest.map_or(1, |l| l.0 + 1);
                sqlx::query(
                    "INSERT INTO workflows (name, version, manifest, created_at, applied_by) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(name)
                .bind(version)
                .bind(manifest)
                .bind(now as i64)
                .bind(applied_by)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                // Re-applying a deleted workflow brings the name back with a new version.
                sqlx::query("UPDATE workflows SET deleted_at = NULL WHERE name = $1")
                    .bind(name)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
                let row = workflow_row(conn, name, Some(version as u32)).await?;
                Ok((row.expect("just written"), true))
            })
        })
        .await
    }

    async fn get_workflow(&self, name: &str, version: Option<u32>) -> Result<Option<WorkflowRow>> {
        let mut conn = self.pool().acquire().await.map_err(db_err)?;
        workflow_row(&mut conn, name, version).await
    }

    async fn list_workflows(&self) -> Result<Vec<WorkflowRow>> {
        let rows = sqlx::query(
            "SELECT name, version, manifest, created_at, applied_by FROM \
               (SELECT DISTINCT ON (name) * FROM workflows ORDER BY name, version DESC) AS newest \
             WHERE deleted_at IS NULL ORDER BY name",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, workflow_from_row)
    }

    async fn delete_workflow(&self, name: &str, now: Millis) -> Result<bool> {
        let n = self
            .execute(
                "UPDATE workflows SET deleted_at = $2 WHERE name = $1 AND deleted_at IS NULL",
                vec![name.into(), (now as i64).into()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn put_schedule(&self, schedule: ScheduleRow) -> Result<ScheduleRow> {
        let schedule = Arc::new(schedule);
        self.write(move |conn| {
            let mut s = (*schedule).clone();
            Box::pin(async move {
                lock_key(conn, &format!("schedule:{}", s.name)).await?;
                if let Some(old) = schedule_row(conn, &s.name, true).await?
                    && old.cron == s.cron
                {
                    s.next_fire_at = old.next_fire_at;
                    s.paused = old.paused;
                    s.last_fired_at = old.last_fired_at;
                    s.created_at = old.created_at;
                }
                sqlx::query(
                    "INSERT INTO schedules (name, workflow, cron, inputs, catch_up, paused, next_fire_at, last_fired_at, \
                     from_manifest, created_at, changed_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (name) DO UPDATE SET workflow = excluded.workflow, cron = excluded.cron, \
                       inputs = excluded.inputs, catch_up = excluded.catch_up, paused = excluded.paused, \
                       next_fire_at = excluded.next_fire_at, last_fired_at = excluded.last_fired_at, \
                       from_manifest = excluded.from_manifest, created_at = excluded.created_at, \
                       changed_by = excluded.changed_by",
                )
                .bind(&s.name)
                .bind(&s.workflow)
                .bind(&s.cron)
                .bind(s.inputs.to_string())
                .bind(s.catch_up.as_str())
                .bind(s.paused)
                .bind(s.next_fire_at as i64)
                .bind(s.last_fired_at.map(|t| t as i64))
                .bind(s.from_manifest)
                .bind(s.created_at as i64)
                .bind(&s.changed_by)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                Ok(s)
            })
        })
        .await
    }

    async fn get_schedule(&self, name: &str) -> Result<Option<ScheduleRow>> {
        let mut conn = self.pool().acquire().await.map_err(db_err)?;
        schedule_row(&mut conn, name, false).await
    }

    async fn list_schedules(&self) -> Result<Vec<ScheduleRow>> {
        let rows = query(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, schedule_from_row)
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let n = self
            .execute("DELETE FROM schedules WHERE name = $1", vec![name.into()])
            .await?;
        Ok(n > 0)
    }

    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        by: Option<&str>,
    ) -> Result<bool> {
        let n = self
            .execute(
                "UPDATE schedules SET paused = $2, changed_by = COALESCE($3, changed_by) WHERE name = $1",
                vec![name.into(), paused.into(), by.into()],
            )
            .await?;
        Ok(n > 0)
    }

    async fn due_schedules(&self, now: Millis) -> Result<Vec<ScheduleRow>> {
        let rows = query(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE NOT paused AND next_fire_at <= $1 ORDER BY next_fire_at"
        ))
        .bind(now as i64)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, schedule_from_row)
    }

    async fn advance_schedule(
        &self,
        name: &str,
        expected: Millis,
        next: Millis,
        fired_at: Millis,
    ) -> Result<bool> {
        let n = self
            .execute(
                "UPDATE schedules SET next_fire_at = $3, last_fired_at = $4 WHERE name = $1 AND next_fire_at = $2",
                vec![
                    name.into(),
                    (expected as i64).into(),
                    (next as i64).into(),
                    (fired_at as i64).into(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn set_triggers(&self, workflow: &str, event_types: &[String]) -> Result<()> {
        let args = Arc::new((workflow.to_owned(), event_types.to_vec()));
        self.write(move |conn| {
            let args = Arc::clone(&args);
            Box::pin(async move {
                let (workflow, types) = &*args;
                sqlx::query("DELETE FROM triggers WHERE workflow = $1")
                    .bind(workflow)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
                sqlx::query(
                    "INSERT INTO triggers (event_type, workflow) SELECT t, $2 FROM UNNEST($1::text[]) AS t \
                     ON CONFLICT DO NOTHING",
                )
                .bind(types)
                .bind(workflow)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                Ok(())
            })
        })
        .await
    }

    async fn triggered_by(&self, event_type: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT workflow FROM triggers WHERE event_type = $1 ORDER BY workflow")
            .bind(event_type)
            .fetch_all(self.pool())
            .await
            .map_err(db_err)
    }

    async fn record_event(&self, event: ReceivedEvent) -> Result<(ReceivedEvent, bool)> {
        let event = Arc::new(event);
        self.write(move |conn| {
            let event = Arc::clone(&event);
            Box::pin(async move {
                let n = sqlx::query(
                    "INSERT INTO received_events (id, type, payload, dedupe_key, received_at, runs) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(&event.id)
                .bind(&event.event_type)
                .bind(event.payload.to_string())
                .bind(&event.dedupe_key)
                .bind(event.received_at as i64)
                .bind(serde_json::to_string(&event.runs).unwrap_or_default())
                .execute(&mut *conn)
                .await
                .map_err(db_err)?
                .rows_affected();
                if n == 1 {
                    return Ok(((*event).clone(), true));
                }
                let r = sqlx::query(
                    "SELECT id, type, payload, dedupe_key, received_at, runs FROM received_events WHERE dedupe_key = $1",
                )
                .bind(&event.dedupe_key)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_err)?;
                let first = ReceivedEvent {
                    id: get(&r, 0)?,
                    event_type: get(&r, 1)?,
                    payload: json_at(&r, 2)?,
                    dedupe_key: get(&r, 3)?,
                    received_at: count(&r, 4)?,
                    runs: parsed_at(&r, 5)?,
                };
                Ok((first, false))
            })
        })
        .await
    }

    async fn set_event_runs(&self, id: &str, runs: &[String]) -> Result<()> {
        let runs = serde_json::to_string(runs).unwrap_or_default();
        self.execute(
            "UPDATE received_events SET runs = $2 WHERE id = $1",
            vec![id.into(), runs.as_str().into()],
        )
        .await?;
        Ok(())
    }

    async fn add_dead_letter(
        &self,
        kind: &str,
        target: &str,
        payload: Json,
        reason: &str,
        now: Millis,
    ) -> Result<i64> {
        let args = Arc::new((
            kind.to_owned(),
            target.to_owned(),
            payload.to_string(),
            reason.to_owned(),
        ));
        self.write(move |conn| {
            let args = Arc::clone(&args);
            Box::pin(async move {
                let (kind, target, payload, reason) = &*args;
                sqlx::query_scalar(
                    "INSERT INTO dead_letters (kind, target, payload, reason, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(kind)
                .bind(target)
                .bind(payload)
                .bind(reason)
                .bind(now as i64)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_err)
            })
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT id, kind, target, payload, reason, created_at FROM dead_letters ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.max(1) as i64)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            Ok(DeadLetter {
                id: get(r, 0)?,
                kind: get(r, 1)?,
                target: get(r, 2)?,
                payload: json_at(r, 3)?,
                reason: get(r, 4)?,
                created_at: count(r, 5)?,
            })
        })
    }
}
