//! [`ReplicaStore`] on PostgreSQL: the replicas sharing the database.

use super::rows::*;
use super::*;

/// Rows of replicas silent this long are dropped at the next heartbeat.
const FORGET_AFTER: Millis = 24 * 3600 * 1000;

#[async_trait::async_trait]
impl ReplicaStore for PgStore {
    async fn heartbeat(&self, r: &Replica) -> Result<()> {
        let r = Arc::new(r.clone());
        self.write(move |conn| {
            let r = Arc::clone(&r);
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO replicas (id, host, address, version, started_at, heartbeat_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, address = excluded.address",
                )
                .bind(&r.id)
                .bind(&r.host)
                .bind(&r.address)
                .bind(&r.version)
                .bind(r.started_at as i64)
                .bind(r.heartbeat_at as i64)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
                sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1")
                    .bind(r.heartbeat_at.saturating_sub(FORGET_AFTER) as i64)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_err)?;
                Ok(())
            })
        })
        .await
    }

    async fn replicas(&self) -> Result<Vec<Replica>> {
        let rows = sqlx::query(
            "SELECT p.id, p.host, p.address, p.version, p.started_at, p.heartbeat_at, COALESCE(o.n, 0) \
             FROM replicas p LEFT JOIN (SELECT owner, COUNT(*) AS n FROM runs \
               WHERE owner IS NOT NULL AND status NOT IN ('succeeded', 'failed', 'cancelled') GROUP BY owner) o \
               ON o.owner = p.id \
             ORDER BY p.heartbeat_at DESC, p.id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db_err)?;
        all(rows, |r| {
            Ok(Replica {
                id: get(r, 0)?,
                host: get(r, 1)?,
                address: get(r, 2)?,
                version: get(r, 3)?,
                started_at: count(r, 4)?,
                heartbeat_at: count(r, 5)?,
                runs: count(r, 6)?,
            })
        })
    }

    async fn forget_replica(&self, id: &str) -> Result<()> {
        self.execute("DELETE FROM replicas WHERE id = $1", vec![id.into()])
            .await?;
        Ok(())
    }
}
