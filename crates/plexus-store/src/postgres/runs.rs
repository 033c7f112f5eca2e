//! [`RunStore`] on PostgreSQL: runs, their events and everything that belongs to them.

use super::rows::*;
use super::*;
use plexus_core::machine::{EVENT_SCHEMA, Event};

/// Statuses of runs nobody drives any more.
const ENDED: &str = "('succeeded', 'failed', 'cancelled')";

#[async_trait::async_trait]
impl RunStore for PgStore {
    async fn create_run(&self, run: NewRun) -> Result<bool> {
        self.run_maker.create(run).await
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() && batch.fences.is_empty() {
            return Ok(());
        }
        let chain = batch.chain.clone();
        let audited = batch.events.iter().any(|(_, e)| run_audit(e).is_some());
        let batch = Arc::new(batch);
        let head = self.audit_head.clone();
        self.write_chained(chain, audited, move |conn| {
            let (batch, head) = (Arc::clone(&batch), head.clone());
            Box::pin(async move { batch::apply_batch(conn, &batch, &head).await })
        })
        .await
    }

    async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        lease_until: Millis,
        now: Millis,
        force: bool,
    ) -> Result<Option<u64>> {
        let (run_id, owner) = (Arc::<str>::from(run_id), Arc::<str>::from(owner));
        self.write(move |conn| {
            let (run_id, owner) = (Arc::clone(&run_id), Arc::clone(&owner));
            Box::pin(async move {
                let fence: Option<i64> = sqlx::query_scalar(
                    "UPDATE runs SET owner = $2, lease_until = $3, fence = fence + 1 WHERE id = $1 \
                     AND ($5 OR owner IS NULL OR owner = $2 OR lease_until IS NULL OR lease_until < $4) RETURNING fence",
                )
                .bind(&*run_id)
                .bind(&*owner)
                .bind(lease_until as i64)
                .bind(now as i64)
                .bind(force)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
                Ok(fence.map(|f| f as u64))
            })
        })
        .await
    }

    async fn claim_orphans(
        &self,
        owner: &str,
        lease_until: Millis,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(RunRow, u64)>> {
        let owner = Arc::<str>::from(owner);
        let columns: Vec<String> = RUN_COLUMNS
            .split(',')
            .map(|c| format!("r.{}", c.trim()))
            .collect();
        let sql = Arc::new(format!(
            "WITH picked AS (SELECT id FROM runs WHERE status NOT IN {ENDED} AND parent_run_id IS NULL \
               AND owner IS DISTINCT FROM $1 AND (owner IS NULL OR lease_until IS NULL OR lease_until < $3) \
               ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             UPDATE runs r SET owner = $1, lease_until = $2, fence = r.fence + 1 FROM picked \
             WHERE r.id = picked.id RETURNING {}, r.fence",
            columns.join(", ")
        ));
        let mut claimed = self
            .write(move |conn| {
                let (owner, sql) = (Arc::clone(&owner), Arc::clone(&sql));
                Box::pin(async move {
                    let rows = query(sql.to_string())
                        .bind(&*owner)
                        .bind(lease_until as i64)
                        .bind(now as i64)
                        .bind(limit as i64)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(db_err)?;
                    all(rows, |r| Ok((run_from_row(r)?, count(r, 20)?)))
                })
            })
            .await?;
        claimed.sort_by_key(|(r, _)| r.created_at);
        Ok(claimed)
    }

    /// Resolves at a `NOTIFY` that a replica handed its runs back, or after `wait`.
    async fn orphans_may_be_waiting(&self, wait: std::time::Duration) {
        tokio::select! {
            _ = self.runs_released.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    async fn renew_leases(&self, owner: &str, lease_until: Millis) -> Result<()> {
        let owner = Arc::<str>::from(owner);
        self.write(move |conn| {
            let owner = Arc::clone(&owner);
            Box::pin(async move {
                query(format!(
                    "UPDATE runs SET lease_until = $2 WHERE owner = $1 AND status NOT IN {ENDED}"
                ))
                .bind(&*owner)
                .bind(lease_until as i64)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                Ok(())
            })
        })
        .await
    }

    async fn release_runs(&self, owner: &str) -> Result<()> {
        let owner = Arc::<str>::from(owner);
        self.write(move |conn| {
            let owner = Arc::clone(&owner);
            Box::pin(async move {
                let handed_back = sqlx::query(
                    "UPDATE runs SET owner = NULL, lease_until = NULL WHERE owner = $1",
                )
                .bind(&*owner)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?
                .rows_affected();
                if handed_back > 0 {
                    // The other replicas take them over now, not at their next look.
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(RELEASED_CHANNEL)
                        .bind(&*owner)
                        .execute(&mut *conn)
                        .await
                        .map_err(db_err)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<RunRow> {
        /// The length of a run id (a UUID's text form).
        const RUN_ID_LEN: usize = 36;
        let key = id_or_prefix;
        // `last`: the newest run, so a person never has to copy an id.
        if key == "last" {
            let row = query(format!(
                "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, id DESC LIMIT 1"
            ))
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
            return match row {
                Some(r) => run_from_row(&r),
                None => Err(StoreError::RunNotFound(key.to_owned())),
            };
        }
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(StoreError::RunNotFound(key.to_owned()));
        }
        // A whole id (what every client but a person typing sends) by the key alone: the
        // plan of the prefix query below costs more to start than the lookup itself.
        if key.len() == RUN_ID_LEN {
            let row = query(format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"))
                .bind(key)
                .fetch_optional(self.pool())
                .await
                .map_err(db_err)?;
            if let Some(r) = row {
                return run_from_row(&r);
            }
        }
        // The exact id, or a range on the key (ids compare byte by byte; they are hex
        // digits and dashes, all below `~`).
        let rows = query(format!(
            "(SELECT {RUN_COLUMNS}, 0 AS exact FROM runs WHERE id = $1) UNION ALL \
             (SELECT {RUN_COLUMNS}, 1 FROM runs WHERE id > $1 AND id < $1 || '~' LIMIT 2) ORDER BY exact LIMIT 2"
        ))
        .bind(key)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        match rows.as_slice() {
            [] => Err(StoreError::RunNotFound(key.to_owned())),
            [one] => run_from_row(one),
            [first, _] if get::<i32>(first, 20)? == 0 => run_from_row(first),
            _ => Err(StoreError::Ambiguous(key.to_owned())),
        }
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<Vec<RunRow>> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE TRUE");
        let mut args: Vec<String> = Vec::new();
        let arg = |v: &str, args: &mut Vec<String>| {
            args.push(v.to_owned());
            format!("${}", args.len())
        };
        if let Some(s) = &filter.status {
            sql.push_str(&format!(" AND status = {}", arg(s, &mut args)));
        }
        if let Some(w) = &filter.workflow {
            sql.push_str(&format!(" AND workflow = {}", arg(w, &mut args)));
        }
        if let Some(cursor) = &filter.before {
            let n = arg(cursor, &mut args);
            sql.push_str(&format!(
                " AND (created_at, id) < (SELECT created_at, id FROM runs WHERE id = {n})"
            ));
        }
        if let Some(t) = filter.created_since {
            sql.push_str(&format!(" AND created_at >= {t}"));
        }
        if let Some(t) = filter.created_until {
            sql.push_str(&format!(" AND created_at < {t}"));
        }
        if filter.active {
            sql.push_str(&format!(" AND status NOT IN {ENDED}"));
        }
        if let Some(owner) = &filter.not_owned_by {
            let n = arg(owner, &mut args);
            sql.push_str(&format!(" AND owner IS DISTINCT FROM {n}"));
        }
        if let Some(prefix) = &filter.owner_prefix {
            let n = arg(prefix, &mut args);
            sql.push_str(&format!(" AND starts_with(owner, {n})"));
        }
        let limit = if filter.limit == 0 { 50 } else { filter.limit };
        sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {limit}"));
        let mut q = query(sql);
        for a in &args {
            q = q.bind(a);
        }
        all(
            q.fetch_all(self.pool()).await.map_err(db_err)?,
            run_from_row,
        )
    }

    async fn count_runs_by_status(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")
            .fetch_all(self.pool())
            .await
            .map_err(db_err)?;
        all(rows, |r| Ok((get(r, 0)?, count(r, 1)?)))
    }

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRow>> {
        let rows = sqlx::query(
            "SELECT step_id, status, attempt, started_at, finished_at, output, error FROM steps \
             WHERE run_id = $1 ORDER BY position",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            Ok(StepRow {
                step_id: get(r, 0)?,
                status: get(r, 1)?,
                attempt: get::<i64>(r, 2)? as u32,
                started_at: count_opt(r, 3)?,
                finished_at: count_opt(r, 4)?,
                output: json_at(r, 5)?,
                error: get(r, 6)?,
            })
        })
    }

    async fn run_definition(&self, run_id: &str) -> Result<RunDefinition> {
        let row = sqlx::query("SELECT manifest, plan FROM run_definitions WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?
            .ok_or_else(|| StoreError::RunNotFound(run_id.to_owned()))?;
        Ok(RunDefinition {
            manifest: get(&row, 0)?,
            plan: get(&row, 1)?,
        })
    }

    async fn events(&self, run_id: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        let limit = if limit == 0 { i64::MAX } else { limit as i64 };
        let rows = sqlx::query(
            "SELECT data, schema FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(run_id)
        .bind(after as i64)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            let schema: i32 = get(r, 1)?;
            if schema as i64 > i64::from(EVENT_SCHEMA) {
                return Err(StoreError::Db(format!(
                    "an event of run `{run_id}` was written in event schema {schema}, newer \
                     than this plexus understands ({EVENT_SCHEMA}); upgrade plexus"
                )));
            }
            let data: String = get(r, 0)?;
            serde_json::from_str(&data).map_err(json_err)
        })
    }

    async fn children(&self, run_id: &str) -> Result<Vec<RunRow>> {
        let rows = query(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = $1 ORDER BY created_at, id"
        ))
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, run_from_row)
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
        let args = Arc::new((
            run_id.to_owned(),
            step_id.map(str::to_owned),
            data.to_string(),
            actor.to_owned(),
        ));
        let id = self
            .write(move |conn| {
                let args = Arc::clone(&args);
                Box::pin(async move {
                    let (run_id, step_id, data, actor) = &*args;
                    // Announced to every replica when the transaction commits.
                    sqlx::query_scalar(
                        "WITH c AS (INSERT INTO commands (run_id, kind, step_id, data, actor, created_at) \
                           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id) \
                         SELECT id FROM c, LATERAL (SELECT pg_notify($7, $1)) AS n",
                    )
                    .bind(run_id)
                    .bind(kind.as_str())
                    .bind(step_id)
                    .bind(data)
                    .bind(actor)
                    .bind(now as i64)
                    .bind(COMMANDS_CHANNEL)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db_err)
                })
            })
            .await?;
        // An engine of this process that waits for commands learns of it at once.
        self.commands_added.notify_waiters();
        Ok(id)
    }

    /// Resolves at a `NOTIFY` of a new command from any replica, or after `wait`.
    async fn commands_may_be_waiting(&self, _owner: &str, wait: std::time::Duration) {
        tokio::select! {
            _ = self.commands_added.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    fn committed_events(&self) -> Option<tokio::sync::broadcast::Receiver<CommittedEvents>> {
        Some(self.committed.subscribe())
    }

    async fn pending_commands(&self, owner: &str) -> Result<Vec<Command>> {
        let rows = query(format!(
            "SELECT {COMMAND_COLUMNS} FROM commands c JOIN runs r ON r.id = c.run_id \
             WHERE c.consumed_at IS NULL AND r.owner = $1 ORDER BY c.id"
        ))
        .bind(owner)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, command_from_row)
    }

    async fn command(&self, id: i64) -> Result<Option<Command>> {
        let row = query(format!(
            "SELECT {COMMAND_COLUMNS} FROM commands c WHERE c.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(command_from_row).transpose()
    }

    async fn artifacts(&self, run_id: &str) -> Result<Vec<Artifact>> {
        let rows = sqlx::query(
            "SELECT sha256, run_id, step_id, attempt, name, size FROM artifacts WHERE run_id = $1 \
             ORDER BY step_id, name",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            Ok(Artifact {
                sha256: get(r, 0)?,
                run_id: get(r, 1)?,
                step_id: get(r, 2)?,
                attempt: get::<i64>(r, 3)? as u32,
                name: get(r, 4)?,
                size: count(r, 5)?,
            })
        })
    }

    async fn awaiting_approvals(&self) -> Result<Vec<PendingApproval>> {
        let rows = sqlx::query(
            "SELECT s.run_id, r.workflow, s.step_id, r.started_by, \
               (SELECT data FROM events e WHERE e.run_id = s.run_id AND e.step_id = s.step_id \
                  AND e.type = 'step_awaiting_approval' ORDER BY e.seq DESC LIMIT 1), \
               r.responsible \
             FROM steps s JOIN runs r ON r.id = s.run_id \
             WHERE s.status = 'awaiting_approval' ORDER BY r.created_at, s.position",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            Ok(PendingApproval {
                run_id: get(r, 0)?,
                workflow: get(r, 1)?,
                step_id: get(r, 2)?,
                requested_by: get(r, 3)?,
                request: json_at(r, 4)?,
                responsible: parsed_at(r, 5)?,
            })
        })
    }

    async fn health(&self) -> Result<()> {
        if self.writer.is_closed() {
            return Err(StoreError::Closed);
        }
        if let Some(e) = self.last_commit_error.lock().ok().and_then(|e| e.clone()) {
            // Whether writing works again: a write of its own through the writer (one
            // that commits clears the last error).
            let probe = self
                .write(|conn| {
                    Box::pin(async move {
                        sqlx::query("UPDATE schema_migrations SET applied_at = applied_at WHERE version = 1")
                            .execute(&mut *conn)
                            .await
                            .map(|_| ())
                            .map_err(db_err)
                    })
                })
                .await;
            if let Err(now) = probe {
                return Err(match now {
                    StoreError::Unreachable(m) => StoreError::Unreachable(m),
                    _ => StoreError::Db(format!("the last commit failed: {e}")),
                });
            }
        }
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map(|_| ())
            .map_err(db_err)
    }

    async fn step_logs(
        &self,
        run_id: &str,
        step_id: &str,
        item: Option<u32>,
        attempt: u32,
    ) -> Result<Option<StepLogs>> {
        let row = sqlx::query(
            "SELECT stdout, stderr, exit_code FROM step_logs \
             WHERE run_id = $1 AND step_id = $2 AND item = $3 AND attempt = $4",
        )
        .bind(run_id)
        .bind(step_id)
        .bind(item.map_or(-1, i64::from))
        .bind(i64::from(attempt))
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.map(|r| {
            Ok(StepLogs {
                run_id: run_id.to_owned(),
                step_id: step_id.to_owned(),
                item,
                attempt,
                stdout: get(&r, 0)?,
                stderr: get(&r, 1)?,
                exit_code: get(&r, 2)?,
            })
        })
        .transpose()
    }

    async fn find_run_by_key(&self, key: &str) -> Result<Option<RunRow>> {
        let row = query(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE idempotency_key = $1"
        ))
        .bind(key)
        .fetch_optional(self.pool())
        .await
        .map_err(db_err)?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn attempt_records(&self, run_id: &str) -> Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(
            "SELECT run_id, step_id, item, attempt, executor, data FROM attempt_records WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            Ok(AttemptRecord {
                key: AttemptKey {
                    run_id: get(r, 0)?,
                    step_id: get(r, 1)?,
                    item: u32::try_from(get::<i64>(r, 2)?).ok(),
                    attempt: get::<i64>(r, 3)? as u32,
                },
                executor: get(r, 4)?,
                data: json_at(r, 5)?,
            })
        })
    }
}
