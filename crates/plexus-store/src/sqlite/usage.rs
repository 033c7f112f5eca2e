//! [`UsageStore`] on SQLite: one row per model call, summed on request.

use super::*;

#[async_trait::async_trait]
impl UsageStore for SqliteStore {
    async fn record_llm_usage(&self, u: LlmUsage) -> Result<()> {
        self.write(move |conn| {
            // A step's call is its run starter's.
            conn.execute_cached(
                "INSERT INTO llm_usage (time, actor, api_key, run_id, step_id, source, provider, model, prompt_tokens, completion_tokens, cost_usd) \
                 VALUES (?1, COALESCE(?2, (SELECT started_by FROM runs WHERE id = ?4)), ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    u.time as i64,
                    u.actor,
                    u.api_key,
                    u.run_id,
                    u.step_id,
                    u.source,
                    u.provider,
                    u.model,
                    u.prompt_tokens as i64,
                    u.completion_tokens as i64,
                    u.cost_usd
                ],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn tokens_used(&self, actor: &str, since: Millis) -> Result<u64> {
        let actor = actor.to_owned();
        self.read(move |conn| {
            conn.query_row_cached(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM llm_usage WHERE actor = ?1 AND time >= ?2",
                params![actor, since as i64],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db_err)
        })
        .await
    }

    async fn llm_usage(&self, by: UsageGroup, since: Millis) -> Result<Vec<UsageTotal>> {
        let column = match by {
            UsageGroup::Run => "run_id",
            UsageGroup::User => "actor",
            UsageGroup::Key => "api_key",
            UsageGroup::Provider => "provider",
            UsageGroup::Model => "provider || '/' || model",
        };
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT COALESCE({column}, '-'), COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd) \
                     FROM llm_usage WHERE time >= ?1 GROUP BY 1 \
                     ORDER BY 5 DESC, SUM(prompt_tokens + completion_tokens) DESC, 1"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map([since as i64], |r| {
                    let (p, c): (i64, i64) = (r.get(2)?, r.get(3)?);
                    Ok(UsageTotal {
                        group: r.get(0)?,
                        calls: r.get::<_, i64>(1)? as u64,
                        prompt_tokens: p as u64,
                        completion_tokens: c as u64,
                        total_tokens: (p + c) as u64,
                        cost_usd: r.get(4)?,
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
