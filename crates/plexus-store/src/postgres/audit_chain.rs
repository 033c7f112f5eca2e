//! Appending to the audit chain on PostgreSQL. Every replica appends to one chain: the
//! writer's transaction takes the chain's advisory lock first, so appends never
//! interleave. A replica remembers the head it wrote last and appends after it on the
//! condition, checked by the same statement, that it is still the head; only when
//! another replica appended meanwhile (or a transaction of this one was rolled back) is
//! the head read first — one round-trip per commit fewer in the usual case.

use super::rows::*;
use super::*;
use plexus_core::audit::{AuditEntry, AuditRecord};
use std::sync::Mutex;

/// The head of the chain (sequence number and hash) as this replica last wrote it.
/// Only ever a hint: an append after a stale head inserts nothing and is done again
/// after the real head.
#[derive(Clone, Default)]
pub(super) struct AuditHead(Arc<Mutex<Option<(u64, String)>>>);

impl AuditHead {
    fn get(&self) -> Option<(u64, String)> {
        self.0.lock().ok().and_then(|h| h.clone())
    }

    fn set(&self, records: &[AuditRecord]) {
        if let (Ok(mut h), Some(last)) = (self.0.lock(), records.last()) {
            *h = Some((last.seq, last.hash.clone()));
        }
    }

    /// Appends records after the current head, in order, inside the caller's transaction
    /// (which holds the chain's lock).
    pub(super) async fn append(
        &self,
        conn: &mut PgConnection,
        entries: &[AuditEntry],
    ) -> Result<Vec<AuditRecord>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(head) = self.get() {
            let records = chain(entries, Some(head.clone()));
            if insert(conn, &records, Some(&head)).await? == records.len() as u64 {
                self.set(&records);
                return Ok(records);
            }
            tracing::debug!(
                seq = head.0,
                "the audit chain moved on since this replica's last append; reading its head"
            );
        }
        let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        let head = match row {
            Some(r) => Some((count(&r, 0)?, get(&r, 1)?)),
            None => None,
        };
        let records = chain(entries, head);
        insert(conn, &records, None).await?;
        self.set(&records);
        Ok(records)
    }
}

fn chain(entries: &[AuditEntry], mut prev: Option<(u64, String)>) -> Vec<AuditRecord> {
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        let record = AuditRecord::chain(entry, prev.as_ref().map(|(s, h)| (*s, h.as_str())));
        prev = Some((record.seq, record.hash.clone()));
        records.push(record);
    }
    records
}

/// Inserts `records`; with `after`, only if that is still the chain's head (else nothing,
/// and the count is 0). Returns how many rows were inserted.
async fn insert(
    conn: &mut PgConnection,
    records: &[AuditRecord],
    after: Option<&(u64, String)>,
) -> Result<u64> {
    let r = records.iter();
    sqlx::query(
        "INSERT INTO audit (seq, time, actor, domain, action, target, details, prev_hash, hash) \
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
                              $7::text[], $8::text[], $9::text[]) \
         WHERE $10::int8 IS NULL OR EXISTS (SELECT 1 FROM \
           (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1) AS head \
           WHERE head.seq = $10 AND head.hash = $11)",
    )
    .bind(r.clone().map(|r| r.seq as i64).collect::<Vec<_>>())
    .bind(r.clone().map(|r| r.time as i64).collect::<Vec<_>>())
    .bind(r.clone().map(|r| r.actor.as_str()).collect::<Vec<_>>())
    .bind(r.clone().map(|r| r.domain.as_str()).collect::<Vec<_>>())
    .bind(r.clone().map(|r| r.action.as_str()).collect::<Vec<_>>())
    .bind(r.clone().map(|r| r.target.as_str()).collect::<Vec<_>>())
    .bind(r.clone().map(|r| r.details.as_str()).collect::<Vec<_>>())
    .bind(r.clone().map(|r| r.prev_hash.as_str()).collect::<Vec<_>>())
    .bind(r.map(|r| r.hash.as_str()).collect::<Vec<_>>())
    .bind(after.map(|h| h.0 as i64))
    .bind(after.map(|h| h.1.as_str()))
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected())
    .map_err(db_err)
}
