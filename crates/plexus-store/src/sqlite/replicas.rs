//! [`ReplicaStore`] on SQLite: one machine, usually one replica, listed the same way.

use super::*;

/// Rows of replicas silent this long are dropped at the next heartbeat.
const FORGET_AFTER: Millis = 24 * 3600 * 1000;

#[async_trait::async_trait]
impl ReplicaStore for SqliteStore {
    async fn heartbeat(&self, r: &Replica) -> Result<()> {
        let r = r.clone();
        self.write(move |conn| {
            conn.execute_cached(
                "INSERT INTO replicas (id, host, address, version, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, address = excluded.address",
                params![r.id, r.host, r.address, r.version, r.started_at as i64, r.heartbeat_at as i64],
            )
            .map_err(db_err)?;
            conn.execute_cached(
                "DELETE FROM replicas WHERE heartbeat_at < ?1",
                [r.heartbeat_at.saturating_sub(FORGET_AFTER) as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn replicas(&self) -> Result<Vec<Replica>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT p.id, p.host, p.address, p.version, p.started_at, p.heartbeat_at, \
                       (SELECT COUNT(*) FROM runs r WHERE r.owner = p.id \
                          AND r.status NOT IN ('succeeded', 'failed', 'cancelled')) \
                     FROM replicas p ORDER BY p.heartbeat_at DESC, p.id",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Replica {
                        id: r.get(0)?,
                        host: r.get(1)?,
                        address: r.get(2)?,
                        version: r.get(3)?,
                        started_at: r.get::<_, i64>(4)? as u64,
                        heartbeat_at: r.get::<_, i64>(5)? as u64,
                        runs: r.get::<_, i64>(6)? as u64,
                    })
                })
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_err)?;
            Ok(rows)
        })
        .await
    }

    async fn forget_replica(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.write(move |conn| {
            conn.execute_cached("DELETE FROM replicas WHERE id = ?1", [&id])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }
}
