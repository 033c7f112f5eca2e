//! `/api/v1/audit`: list, verify the hash chain, export as JSON lines.

use crate::AppState;
use crate::auth::{Caller, audit};
use crate::error::{ApiError, ApiResult};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use plexus_core::audit::{ChainVerifier, Domain};
use plexus_store::auth::AuditFilter;
use serde::Deserialize;
use serde_json::{Value as Json_, json};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    domain: Option<String>,
    /// At or after this time (ms since the epoch).
    since: Option<u64>,
    /// Only the newest N records.
    last: Option<u32>,
    /// Records after this sequence number (for paging).
    after: Option<u64>,
    limit: Option<u32>,
}

fn filter(q: &AuditQuery) -> ApiResult<AuditFilter> {
    if let Some(d) = &q.domain
        && Domain::parse(d).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "unknown domain `{d}`; domains are security and workflow"
        )));
    }
    Ok(AuditFilter {
        domain: q.domain.clone(),
        since: q.since,
        after_seq: q.after,
        last: q.last,
        limit: q.limit.unwrap_or(1000).min(10_000),
    })
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Json_>> {
    let records = state.store.audit(filter(&q)?).await?;
    let next = records.last().map(|r| r.seq);
    Ok(Json(json!({"records": records, "next_after": next})))
}

/// Checks the whole chain, a page at a time.
pub async fn verify_chain(store: &dyn plexus_store::Store) -> ApiResult<Json_> {
    let mut verifier = ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = store
            .audit(AuditFilter {
                after_seq: Some(after),
                limit: 5_000,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            if let Err(broken) = verifier.push(r) {
                return Ok(json!({"ok": false, "seq": broken.seq, "problem": broken.problem}));
            }
        }
    }
    let (records, head) = verifier.finish();
    Ok(json!({"ok": true, "records": records, "head": head}))
}

pub async fn verify(State(state): State<AppState>) -> ApiResult<Json<Json_>> {
    Ok(Json(verify_chain(state.store.as_ref()).await?))
}

/// Every record (or the filtered ones) as JSON lines, oldest first.
pub async fn export(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    let mut f = filter(&q)?;
    f.limit = 10_000;
    let mut out = String::new();
    let mut count = 0u64;
    loop {
        let page = state.store.audit(f.clone()).await?;
        let Some(last) = page.last() else { break };
        f.after_seq = Some(last.seq);
        for r in &page {
            out.push_str(&serde_json::to_string(r).unwrap_or_default());
            out.push('\n');
            count += 1;
        }
        if f.last.is_some() {
            break; // `last` already chose the records
        }
    }
    audit(
        state.store.as_ref(),
        &caller.actor(),
        "audit.exported",
        "audit",
        json!({"records": count, "domain": q.domain}),
    )
    .await;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out))
}
