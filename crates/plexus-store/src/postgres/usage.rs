//! [`UsageStore`] on PostgreSQL: one row per model call, summed on request.

use super::rows::*;
use super::*;

#[async_trait::async_trait]
impl UsageStore for PgStore {
    async fn record_llm_usage(&self, u: LlmUsage) -> Result<()> {
        let u = Arc::new(u);
        self.write(move |conn| {
            let u = Arc::clone(&u);
            Box::pin(async move {
                // A step's call is its run starter's.
                sqlx::query(
                    "INSERT INTO llm_usage (time, actor, api_key, run_id, step_id, source, provider, model, \
                     prompt_tokens, completion_tokens, cost_usd) \
                     VALUES ($1, COALESCE($2, (SELECT started_by FROM runs WHERE id = $4)), $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(u.time as i64)
                .bind(&u.actor)
                .bind(&u.api_key)
                .bind(&u.run_id)
                .bind(&u.step_id)
                .bind(&u.source)
                .bind(&u.provider)
                .bind(&u.model)
                .bind(u.prompt_tokens as i64)
                .bind(u.completion_tokens as i64)
                .bind(u.cost_usd)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                Ok(())
            })
        })
        .await
    }

    async fn tokens_used(&self, actor: &str, since: Millis) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0)::int8 FROM llm_usage \
             WHERE actor = $1 AND time >= $2",
        )
        .bind(actor)
        .bind(since as i64)
        .fetch_one(self.pool())
        .await
        .map_err(db_err)?;
        Ok(n.max(0) as u64)
    }

    async fn llm_usage(&self, by: UsageGroup, since: Millis) -> Result<Vec<UsageTotal>> {
        let column = match by {
            UsageGroup::Run => "run_id",
            UsageGroup::User => "actor",
            UsageGroup::Key => "api_key",
            UsageGroup::Provider => "provider",
            UsageGroup::Model => "provider || '/' || model",
        };
        let rows = query(format!(
            "SELECT COALESCE({column}, '-') COLLATE \"C\", COUNT(*), SUM(prompt_tokens)::int8, \
               SUM(completion_tokens)::int8, SUM(cost_usd) \
             FROM llm_usage WHERE time >= $1 GROUP BY 1 \
             ORDER BY 5 DESC, SUM(prompt_tokens + completion_tokens) DESC, 1"
        ))
        .bind(since as i64)
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            let (p, c) = (count(r, 2)?, count(r, 3)?);
            Ok(UsageTotal {
                group: get(r, 0)?,
                calls: count(r, 1)?,
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: p + c,
                cost_usd: get(r, 4)?,
            })
        })
    }
}
