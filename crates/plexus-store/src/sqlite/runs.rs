//! [`RunStore`] on SQLite: runs, their events and everything that belongs to them.

use super::*;

/// The most steps, and bytes of their outputs, read on the calling thread (see `steps`).
const INLINE_STEPS: i64 = 100;
const INLINE_OUTPUT_BYTES: i64 = 64 * 1024;

/// A run's steps in the manifest's order.
fn step_rows(conn: &Connection, run_id: &str) -> Result<Vec<StepRow>> {
    let mut stmt = conn
        .prepare_cached("SELECT step_id, status, attempt, started_at, finished_at, output, error FROM steps WHERE run_id = ?1 ORDER BY position")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok(StepRow {
                step_id: r.get(0)?,
                status: r.get(1)?,
                attempt: r.get::<_, i64>(2)? as u32,
                started_at: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                finished_at: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                output: json_at(r, 5)?,
                error: r.get(6)?,
            })
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    Ok(rows)
}

/// The newest version of workflow `?1`, unless deleted.
pub(super) const NEWEST_VERSION: &str = "SELECT version FROM workflows WHERE name = ?1 \
     AND deleted_at IS NULL ORDER BY version DESC LIMIT 1";

#[async_trait::async_trait]
impl RunStore for SqliteStore {
    async fn create_run(&self, run: NewRun) -> Result<bool> {
        self.write(move |conn| {
            if run.newest_version {
                let newest: Option<i64> = conn
                    .prepare_cached(NEWEST_VERSION)
                    .and_then(|mut q| q.query_row(params![run.workflow], |r| r.get(0)).optional())
                    .map_err(db_err)?;
                if newest != run.workflow_version.map(i64::from) {
                    return Err(StoreError::WorkflowChanged(run.workflow));
                }
            }
            let inserted = conn
                .execute_cached(
                    "INSERT OR IGNORE INTO runs (id, workflow, status, manifest, base_dir, inputs, parent_run_id, parent_step_id, \
                     parent_item, parent_attempt, created_at, updated_at, owner, lease_until, idempotency_key, workflow_version, started_by, mode, \
                     responsible) \
                     VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                    params![
                        run.id,
                        run.workflow,
                        // Kept in `run_definitions`, out of the row every commit rewrites.
                        "",
                        run.base_dir,
                        run.inputs.to_string(),
                        run.parent.as_ref().map(|p| p.run_id.clone()),
                        run.parent.as_ref().map(|p| p.step_id.clone()),
                        run.parent.as_ref().and_then(|p| p.item),
                        run.parent.as_ref().map(|p| p.attempt),
                        run.created_at as i64,
                        run.owner,
                        run.lease_until.map(|t| t as i64),
                        run.idempotency_key,
                        run.workflow_version,
                        run.started_by,
                        run.mode,
                        serde_json::to_string(&run.responsible).unwrap_or_else(|_| "[]".into()),
                    ],
                )
                .map_err(db_err)?;
            if inserted == 0 {
                return Ok(false);
            }
            conn.execute_cached(
                "INSERT INTO run_definitions (run_id, manifest, plan) VALUES (?1, ?2, ?3)",
                params![run.id, run.manifest, run.plan],
            )
            .map_err(db_err)?;
            let mut step = conn
                .prepare_cached("INSERT INTO steps (run_id, step_id, position, status) VALUES (?1, ?2, ?3, 'pending')")
                .map_err(db_err)?;
            for (i, id) in run.step_ids.iter().enumerate() {
                step.execute(params![run.id, id, i as i64]).map_err(db_err)?;
            }
            Ok(true)
        })
        .await
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let chain = batch.chain.clone();
        self.write_chained(chain, move |conn| apply_batch(conn, &batch))
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
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        self.write(move |conn| {
            conn.query_row_cached(
                "UPDATE runs SET owner = ?2, lease_until = ?3, fence = fence + 1 WHERE id = ?1 \
                 AND (?5 OR owner IS NULL OR owner = ?2 OR lease_until IS NULL OR lease_until < ?4) RETURNING fence",
                params![run_id, owner, lease_until as i64, now as i64, force],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|fence| fence.map(|f| f as u64))
            .map_err(db_err)
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
        let owner = owner.to_owned();
        self.write(move |conn| {
            let mut claim = conn
                .prepare_cached(
                    "UPDATE runs SET owner = ?1, lease_until = ?2, fence = fence + 1 WHERE id IN \
                       (SELECT id FROM runs WHERE status NOT IN ('succeeded', 'failed', 'cancelled') \
                          AND parent_run_id IS NULL AND owner IS NOT ?1 \
                          AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?3) \
                        ORDER BY created_at LIMIT ?4) \
                     RETURNING id, fence",
                )
                .map_err(db_err)?;
            let claimed = claim
                .query_map(
                    params![owner, lease_until as i64, now as i64, limit as i64],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
                )
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
            let mut out = Vec::with_capacity(claimed.len());
            for (id, fence) in claimed {
                let row = conn
                    .query_row_cached(&sql, [&id], run_from_row)
                    .map_err(db_err)?;
                out.push((row, fence));
            }
            out.sort_by_key(|(r, _)| r.created_at);
            Ok(out)
        })
        .await
    }

    /// Another process cannot tell this one that it handed runs back: SQLite waits.
    async fn orphans_may_be_waiting(&self, wait: std::time::Duration) {
        tokio::time::sleep(wait).await;
    }

    async fn renew_leases(&self, owner: &str, lease_until: Millis) -> Result<()> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            conn.execute_cached(
                "UPDATE runs SET lease_until = ?2 WHERE owner = ?1 AND status NOT IN ('succeeded', 'failed', 'cancelled')",
                params![owner, lease_until as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn release_runs(&self, owner: &str) -> Result<()> {
        let owner = owner.to_owned();
        self.write(move |conn| {
            conn.execute_cached(
                "UPDATE runs SET owner = NULL, lease_until = NULL WHERE owner = ?1",
                params![owner],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn get_run(&self, id_or_prefix: &str) -> Result<RunRow> {
        let key = id_or_prefix.to_owned();
        self.read_point(move |conn| {
            // `last`: the newest run, so a person never has to copy an id.
            if key == "last" {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC, id DESC LIMIT 1"
                );
                return conn
                    .query_row_cached(&sql, [], run_from_row)
                    .optional()
                    .map_err(db_err)?
                    .ok_or(StoreError::RunNotFound(key));
            }
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(StoreError::RunNotFound(key));
            }
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
            if let Some(run) = conn
                .query_row_cached(&sql, [&key], run_from_row)
                .optional()
                .map_err(db_err)?
            {
                return Ok(run);
            }
            // A range on the primary key (`LIKE` would scan: it ignores case, the index
            // does not); ids are hex digits and dashes, all below `~`.
            let sql =
                format!("SELECT {RUN_COLUMNS} FROM runs WHERE id >= ?1 AND id < ?1 || '~' LIMIT 2");
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let mut rows: Vec<RunRow> = stmt
                .query_map([&key], run_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(db_err)?;
            match rows.len() {
                0 => Err(StoreError::RunNotFound(key)),
                1 => Ok(rows.remove(0)),
                _ => Err(StoreError::Ambiguous(key)),
            }
        })
        .await
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<Vec<RunRow>> {
        self.read(move |conn| {
            let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
            let mut args: Vec<String> = Vec::new();
            if let Some(s) = &filter.status {
                args.push(s.clone());
                sql.push_str(&format!(" AND status = ?{}", args.len()));
            }
            if let Some(w) = &filter.workflow {
                args.push(w.clone());
                sql.push_str(&format!(" AND workflow = ?{}", args.len()));
            }
            if let Some(cursor) = &filter.before {
                args.push(cursor.clone());
                let n = args.len();
                sql.push_str(&format!(
                    " AND (created_at, id) < (SELECT created_at, id FROM runs WHERE id = ?{n})"
                ));
            }
            if let Some(t) = filter.created_since {
                sql.push_str(&format!(" AND created_at >= {t}"));
            }
            if let Some(t) = filter.created_until {
                sql.push_str(&format!(" AND created_at < {t}"));
            }
            if filter.active {
                sql.push_str(" AND status NOT IN ('succeeded', 'failed', 'cancelled')");
            }
            if let Some(owner) = &filter.not_owned_by {
                args.push(owner.clone());
                sql.push_str(&format!(" AND owner IS NOT ?{}", args.len()));
            }
            if let Some(prefix) = &filter.owner_prefix {
                args.push(prefix.clone());
                let n = args.len();
                sql.push_str(&format!(" AND substr(owner, 1, length(?{n})) = ?{n}"));
            }
            let limit = if filter.limit == 0 { 50 } else { filter.limit };
            sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT {limit}"));
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), run_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn count_runs_by_status(&self) -> Result<Vec<(String, u64)>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRow>> {
        // A run with few steps and small outputs (most runs) is read on the calling
        // thread, sparing the blocking pool's two thread hand-offs (half the time of
        // answering a finished run); a larger one is read on the pool.
        let id = run_id.to_owned();
        let small = self
            .read_point(move |conn| {
                let (steps, bytes): (i64, i64) = conn
                    .query_row_cached(
                        "SELECT COUNT(*), COALESCE(SUM(octet_length(output)), 0) FROM steps WHERE run_id = ?1",
                        [&id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .map_err(db_err)?;
                if steps > INLINE_STEPS || bytes > INLINE_OUTPUT_BYTES {
                    return Ok(None);
                }
                step_rows(conn, &id).map(Some)
            })
            .await?;
        match small {
            Some(rows) => Ok(rows),
            None => {
                let id = run_id.to_owned();
                self.read(move |conn| step_rows(conn, &id)).await
            }
        }
    }

    async fn run_definition(&self, run_id: &str) -> Result<RunDefinition> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            conn.query_row_cached(
                "SELECT manifest, plan FROM run_definitions WHERE run_id = ?1",
                [&run_id],
                |r| {
                    Ok(RunDefinition {
                        manifest: r.get(0)?,
                        plan: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)?
            .ok_or(StoreError::RunNotFound(run_id))
        })
        .await
    }

    async fn events(&self, run_id: &str, after: u64, limit: usize) -> Result<Vec<Event>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT data, schema FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(db_err)?;
            let limit = if limit == 0 { i64::MAX } else { limit as i64 };
            let mut out = Vec::new();
            let mut rows = stmt
                .query(params![run_id, after as i64, limit])
                .map_err(db_err)?;
            while let Some(row) = rows.next().map_err(db_err)? {
                let data: String = row.get(0).map_err(db_err)?;
                let schema: i64 = row.get(1).map_err(db_err)?;
                if schema > i64::from(EVENT_SCHEMA) {
                    return Err(StoreError::Db(format!(
                        "an event of run `{run_id}` was written in event schema {schema}, newer \
                         than this plexus understands ({EVENT_SCHEMA}); upgrade plexus"
                    )));
                }
                out.push(serde_json::from_str(&data).map_err(json_err)?);
            }
            Ok(out)
        })
        .await
    }

    async fn children(&self, run_id: &str) -> Result<Vec<RunRow>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = ?1 ORDER BY created_at"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map([&run_id], run_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
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
        let (run_id, step_id, actor) = (
            run_id.to_owned(),
            step_id.map(str::to_owned),
            actor.to_owned(),
        );
        let id = self
            .write(move |conn| {
                conn.execute_cached(
                    "INSERT INTO commands (run_id, kind, step_id, data, actor, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![run_id, kind.as_str(), step_id, data.to_string(), actor, now as i64],
                )
                .map_err(db_err)?;
                Ok(conn.last_insert_rowid())
            })
            .await?;
        // An engine of this process that waits for commands learns of it at once.
        self.commands_added.notify_waiters();
        Ok(id)
    }

    /// Another process cannot tell this one that it stored a command, so SQLite is
    /// polled: this resolves after `wait`, or at once when this process stored one.
    async fn commands_may_be_waiting(&self, _owner: &str, wait: std::time::Duration) {
        tokio::select! {
            _ = self.commands_added.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// One machine: its engine's notices are the feed.
    fn committed_events(&self) -> Option<tokio::sync::broadcast::Receiver<CommittedEvents>> {
        None
    }

    async fn pending_commands(&self, owner: &str) -> Result<Vec<Command>> {
        let owner = owner.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {COMMAND_COLUMNS} FROM commands c JOIN runs r ON r.id = c.run_id \
                 WHERE c.consumed_at IS NULL AND r.owner = ?1 ORDER BY c.id"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map([&owner], command_from_row)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn command(&self, id: i64) -> Result<Option<Command>> {
        self.read(move |conn| {
            let sql = format!("SELECT {COMMAND_COLUMNS} FROM commands c WHERE c.id = ?1");
            conn.query_row_cached(&sql, [id], command_from_row)
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn find_run_by_key(&self, key: &str) -> Result<Option<RunRow>> {
        let key = key.to_owned();
        self.read_point(move |conn| {
            let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE idempotency_key = ?1");
            conn.query_row_cached(&sql, [&key], run_from_row)
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn attempt_records(&self, run_id: &str) -> Result<Vec<AttemptRecord>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT run_id, step_id, item, attempt, executor, data FROM attempt_records WHERE run_id = ?1",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([&run_id], |r| {
                    let item: i64 = r.get(2)?;
                    Ok(AttemptRecord {
                        key: AttemptKey {
                            run_id: r.get(0)?,
                            step_id: r.get(1)?,
                            item: u32::try_from(item).ok(),
                            attempt: r.get::<_, i64>(3)? as u32,
                        },
                        executor: r.get(4)?,
                        data: json_at(r, 5)?,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn step_logs(
        &self,
        run_id: &str,
        step_id: &str,
        item: Option<u32>,
        attempt: u32,
    ) -> Result<Option<StepLogs>> {
        let (run_id, step_id) = (run_id.to_owned(), step_id.to_owned());
        self.read(move |conn| {
            conn.query_row_cached(
                "SELECT stdout, stderr, exit_code FROM step_logs \
                 WHERE run_id = ?1 AND step_id = ?2 AND item = ?3 AND attempt = ?4",
                params![run_id, step_id, item.map_or(-1, i64::from), attempt],
                |r| {
                    Ok(StepLogs {
                        run_id: run_id.clone(),
                        step_id: step_id.clone(),
                        item,
                        attempt,
                        stdout: r.get(0)?,
                        stderr: r.get(1)?,
                        exit_code: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn awaiting_approvals(&self) -> Result<Vec<PendingApproval>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT s.run_id, r.workflow, s.step_id, r.started_by, \
                       (SELECT data FROM events e WHERE e.run_id = s.run_id AND e.step_id = s.step_id \
                          AND e.type = 'step_awaiting_approval' ORDER BY e.seq DESC LIMIT 1), \
                       r.responsible \
                     FROM steps s JOIN runs r ON r.id = s.run_id \
                     WHERE s.status = 'awaiting_approval' ORDER BY r.created_at, s.position",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(PendingApproval {
                        run_id: r.get(0)?,
                        workflow: r.get(1)?,
                        step_id: r.get(2)?,
                        requested_by: r.get(3)?,
                        request: json_at(r, 4)?,
                        responsible: serde_json::from_value(json_at(r, 5)?)
                            .map_err(|e| bad_column(5, e.to_string()))?,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        match file_identity(&self.path) {
            Ok(id) if id == self.identity => {}
            Ok(_) => {
                return Err(StoreError::Db(format!(
                    "{} was replaced by another file while the store was open",
                    self.path.display()
                )));
            }
            Err(e) => {
                return Err(StoreError::Db(format!(
                    "the database file {} is gone: {e}",
                    self.path.display()
                )));
            }
        }
        if self.writer.lock().map_or(true, |w| w.is_none()) {
            return Err(StoreError::Closed);
        }
        if let Some(e) = self.last_commit_error.lock().ok().and_then(|e| e.clone()) {
            // Whether writing works again: a write of its own (one that commits clears
            // the last error).
            let probe = self
                .write(|conn| {
                    conn.execute_cached(
                        "UPDATE schema_migrations SET applied_at = applied_at WHERE version = 1",
                        [],
                    )
                    .map(|_| ())
                    .map_err(db_err)
                })
                .await;
            if probe.is_err() {
                return Err(StoreError::Db(format!("the last commit failed: {e}")));
            }
        }
        self.read(|conn| {
            conn.query_row_cached("SELECT 1", [], |_| Ok(()))
                .map_err(db_err)
        })
        .await
    }

    async fn artifacts(&self, run_id: &str) -> Result<Vec<Artifact>> {
        let run_id = run_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT sha256, run_id, step_id, attempt, name, size FROM artifacts WHERE run_id = ?1 ORDER BY step_id, name")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([&run_id], |r| {
                    Ok(Artifact {
                        sha256: r.get(0)?,
                        run_id: r.get(1)?,
                        step_id: r.get(2)?,
                        attempt: r.get::<_, i64>(3)? as u32,
                        name: r.get(4)?,
                        size: r.get::<_, i64>(5)? as u64,
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
