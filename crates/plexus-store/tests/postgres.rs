//! The shared store suite against a real PostgreSQL server, plus what is PostgreSQL's own:
//! migrations, notifications across connections, several stores on one database.

use plexus_store::test_postgres::fresh_database;
use plexus_store::{PgStore, PostgresOptions, RunStore};
use sqlx::Connection as _;

/// A run of one step, as the tests make them.
fn new_run(
    id: impl Into<String>,
    owner: Option<String>,
    lease_until: Option<u64>,
    created_at: u64,
) -> plexus_store::NewRun {
    plexus_store::NewRun {
        id: id.into(),
        workflow: "wf".into(),
        manifest: "version: plexus/v1\nname: wf\nsteps: [{id: a, run: 'true'}]\n".into(),
        base_dir: None,
        inputs: serde_json::json!({}),
        step_ids: vec!["a".into()],
        parent: None,
        owner,
        lease_until,
        created_at,
        idempotency_key: None,
        workflow_version: None,
        newest_version: false,
        started_by: None,
        mode: None,
        plan: None,
        responsible: Vec::new(),
    }
}

async fn fresh_store() -> (PgStore, ()) {
    let url = fresh_database().await;
    let store = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    (store, ())
}

/// The shared suite: one test per behaviour, each on a fresh database.
mod conformance {
    use super::fresh_store;
    plexus_store::store_conformance!(fresh_store);
}

#[tokio::test]
async fn reopening_keeps_everything_and_migrations_run_once() {
    let url = fresh_database().await;
    let before = {
        let store = PgStore::open(&url, PostgresOptions::default())
            .await
            .unwrap();
        plexus_store::conformance::check_all(&store).await;
        store.list_runs(Default::default()).await.unwrap()
    };
    let store = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    let after = store.list_runs(Default::default()).await.unwrap();
    assert!(!after.is_empty());
    assert_eq!(after, before, "every run is still there, unchanged");
}

#[tokio::test]
async fn a_database_from_a_newer_plexus_is_refused() {
    let url = fresh_database().await;
    drop(
        PgStore::open(&url, PostgresOptions::default())
            .await
            .unwrap(),
    );
    let mut raw = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)")
        .execute(&mut raw)
        .await
        .unwrap();
    let err = PgStore::open(&url, PostgresOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("newer than this plexus understands"),
        "{err}"
    );
}

/// A database that cannot be reached is unavailable (worth trying again), named without
/// its password, and found out within the configured wait.
#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_its_password_is_not_shown() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // free, and closed again
    let url = format!("postgres://plexus:s3cret-pw@127.0.0.1:{port}/plexus");
    let opts = PostgresOptions {
        acquire_timeout: std::time::Duration::from_secs(3),
        ..Default::default()
    };
    let err = PgStore::open(&url, opts).await.err().expect("refused");
    let text = err.to_string();
    assert!(err.is_retryable(), "{err:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}/plexus")), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

/// Two replicas on one database: a command stored through one wakes the owner waiting on
/// the other at once (LISTEN/NOTIFY), and audit appends from both form one chain (each
/// replica's remembered head going stale, and rolled back).
#[tokio::test]
async fn replicas_share_commands_and_one_audit_chain() {
    use plexus_core::audit::{AuditEntry, Domain};
    use plexus_store::{AuthStore, CommandKind};
    let url = fresh_database().await;
    let a = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    let b = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    let id = "00000000-0000-0000-0000-0000000000f1";
    a.create_run(new_run(id, Some("replica-a".into()), Some(u64::MAX / 2), 1))
        .await
        .unwrap();
    // Let the listener of `a` connect before the command is sent.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let waited = std::time::Instant::now();
    let waiting = a.commands_may_be_waiting("replica-a", std::time::Duration::from_secs(30));
    let sending = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        b.add_command(
            id,
            CommandKind::Cancel,
            None,
            serde_json::json!({}),
            "user:ada",
            2,
        )
        .await
        .unwrap();
    };
    tokio::join!(waiting, sending);
    assert!(
        waited.elapsed() < std::time::Duration::from_secs(10),
        "woken by the notification, not the wait: {:?}",
        waited.elapsed()
    );
    assert_eq!(a.pending_commands("replica-a").await.unwrap().len(), 1);

    fn append(
        store: &PgStore,
        i: u32,
    ) -> impl Future<Output = plexus_store::Result<plexus_core::audit::AuditRecord>> + '_ {
        store.append_audit(AuditEntry {
            time: u64::from(i),
            actor: format!("user:{i}"),
            domain: Domain::Security,
            action: "test.append".into(),
            target: "chain".into(),
            details: "{}".into(),
        })
    }
    let mut appends = Vec::new();
    for i in 0..40 {
        appends.push(append(if i % 2 == 0 { &a } else { &b }, i));
    }
    for r in futures_util::future::join_all(appends).await {
        r.unwrap();
    }
    // An append whose transaction is rolled back (another job of the same group commit
    // failed) and run again: the head this replica remembers was never committed.
    let user = |id: &str| plexus_store::auth::User {
        id: id.into(),
        username: "ada".into(),
        password_hash: None,
        role: "admin".into(),
        active: true,
        created_at: 1,
        email: None,
    };
    a.create_user(user("u1")).await.unwrap();
    for i in 40..50 {
        let (appended, duplicate) = tokio::join!(
            append(if i % 3 == 0 { &b } else { &a }, i),
            a.create_user(user(&format!("u{i}")))
        );
        appended.unwrap();
        assert!(duplicate.is_err(), "a second user named ada");
    }
    let records = a.audit(Default::default()).await.unwrap();
    assert_eq!(records.len(), 50);
    let mut chain = plexus_core::audit::ChainVerifier::default();
    for r in &records {
        chain.push(r).expect("one unbroken chain");
    }
}

/// What a store holds, read through the trait, with what a copy changes on purpose (who
/// drives runs in flight) left out.
async fn everything(store: &dyn plexus_store::Store) -> serde_json::Value {
    let mut runs = store
        .list_runs(plexus_store::RunFilter {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut per_run = Vec::new();
    for r in &mut runs {
        (r.owner, r.lease_until) = (None, None);
        per_run.push(serde_json::json!({
            "steps": store.steps(&r.id).await.unwrap(),
            "events": store.events(&r.id, 0, 0).await.unwrap(),
            "definition": format!("{:?}", store.run_definition(&r.id).await.unwrap()),
            "artifacts": store.artifacts(&r.id).await.unwrap(),
            "records": store.attempt_records(&r.id).await.unwrap(),
            "children": store.children(&r.id).await.unwrap().len(),
        }));
    }
    let users = store.users().await.unwrap();
    let mut sessions = Vec::new();
    for k in store.api_keys(None).await.unwrap() {
        sessions.push(format!("{:?}", store.key_with_user(&k.id).await.unwrap()));
    }
    let mut usage = Vec::new();
    for by in [
        plexus_store::UsageGroup::Run,
        plexus_store::UsageGroup::User,
        plexus_store::UsageGroup::Key,
        plexus_store::UsageGroup::Model,
    ] {
        usage.push(store.llm_usage(by, 0).await.unwrap());
    }
    serde_json::json!({
        "runs": runs,
        "per_run": per_run,
        "by_status": store.count_runs_by_status().await.unwrap(),
        "approvals": store.awaiting_approvals().await.unwrap(),
        "users": users,
        "keys": sessions,
        "audit": store.audit(Default::default()).await.unwrap(),
        "settings": store.settings().await.unwrap(),
        "workflows": store.list_workflows().await.unwrap(),
        "schedules": store.list_schedules().await.unwrap(),
        "dead_letters": store.dead_letters(1000).await.unwrap(),
        "usage": usage,
    })
}

/// `plexus store migrate`: everything a single-machine store holds arrives in PostgreSQL
/// as it was — runs and their history, users, keys, settings, the audit chain (which
/// still verifies) — and the new database goes on numbering where the old one stopped.
#[tokio::test]
async fn a_sqlite_store_is_copied_whole_into_postgres() {
    use plexus_store::{AuthStore, CatalogStore};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plexus.db");
    let sqlite = plexus_store::SqliteStore::open(&path, Default::default()).unwrap();
    plexus_store::conformance::check_all(&sqlite).await;
    let before = everything(&sqlite).await;
    drop(sqlite);
    assert!(before["runs"].as_array().unwrap().len() > 10);
    assert!(!before["audit"].as_array().unwrap().is_empty());

    let url = fresh_database().await;
    let mut heard = Vec::new();
    let copied = plexus_store::copy_sqlite_to_postgres(&path, &url, &mut |t, n| {
        heard.push((t.to_owned(), n))
    })
    .await
    .unwrap();
    let events = copied.tables.iter().find(|t| t.0 == "events").unwrap().1;
    assert!(events > 0, "{copied:?}");
    assert!(heard.iter().any(|(t, _)| t == "audit"), "progress is told");

    let pg = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    let after = everything(&pg).await;
    for key in before.as_object().unwrap().keys() {
        assert_eq!(after[key], before[key], "{key} arrived as it was");
    }
    let mut chain = plexus_core::audit::ChainVerifier::default();
    for r in pg.audit(Default::default()).await.unwrap() {
        chain
            .push(&r)
            .expect("the audit chain verifies after the copy");
    }
    // Numbering goes on: a new dead letter gets a new id, not a copied one's.
    let newest = pg.dead_letters(1).await.unwrap()[0].id;
    let id = pg
        .add_dead_letter("event", "x", serde_json::json!({}), "test", 5)
        .await
        .unwrap();
    assert!(id > newest);

    // A second copy into the same database is refused and changes nothing.
    let err = plexus_store::copy_sqlite_to_postgres(&path, &url, &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

/// Two replicas claiming the same orphaned runs at the same moment share them: every run
/// is claimed once, and neither waits on the other's locks (`SKIP LOCKED`).
#[tokio::test]
async fn replicas_claiming_at_once_take_each_run_once() {
    let url = fresh_database().await;
    let a = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    let b = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    let n = 200;
    for i in 0..n {
        a.create_run(new_run(
            format!("00000000-0000-0000-0000-{i:012}"),
            None,
            None,
            i,
        ))
        .await
        .unwrap();
    }
    async fn claim(store: &PgStore, me: &str) -> Vec<String> {
        let mut mine = Vec::new();
        loop {
            let got = store
                .claim_orphans(me, u64::MAX / 4, 1_000, 7)
                .await
                .unwrap();
            if got.is_empty() {
                return mine;
            }
            mine.extend(got.into_iter().map(|(r, _)| r.id));
        }
    }
    let (ra, rb) = tokio::join!(claim(&a, "replica-a"), claim(&b, "replica-b"));
    let mut all: Vec<String> = ra.iter().chain(&rb).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), ra.len() + rb.len(), "no run was claimed twice");
    assert_eq!(all.len(), n as usize, "every run was claimed");
    assert!(
        !ra.is_empty() && !rb.is_empty(),
        "both took a share: {} / {}",
        ra.len(),
        rb.len()
    );
}

/// Events one replica commits are announced to the others (for the followers of runs
/// driven elsewhere), with the range of sequence numbers to read.
#[tokio::test]
async fn committed_events_are_announced_to_every_replica() {
    use plexus_core::machine::{Event, EventKind};
    let url = fresh_database().await;
    let a = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    let b = PgStore::open(&url, PostgresOptions::default())
        .await
        .unwrap();
    let mut heard = b.committed_events().expect("PostgreSQL announces commits");
    let id = "00000000-0000-0000-0000-0000000000e9";
    a.create_run(new_run(id, Some("replica-a".into()), Some(u64::MAX / 4), 1))
        .await
        .unwrap();
    // The listener of `b` is connected once it hears anything; give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ev = |seq, kind| Event {
        seq,
        time: seq,
        kind,
    };
    a.commit(plexus_store::Batch {
        events: vec![
            (
                id.into(),
                ev(
                    1,
                    EventKind::RunStarted {
                        inputs: serde_json::json!({}),
                    },
                ),
            ),
            (
                id.into(),
                ev(
                    2,
                    EventKind::RunCancelled {
                        reason: "test".into(),
                    },
                ),
            ),
        ],
        fences: vec![(id.into(), 0)],
        ..Default::default()
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), heard.recv())
        .await
        .expect("announced within seconds")
        .unwrap();
    assert_eq!((&*got.run_id, got.first_seq, got.last_seq), (id, 1, 2));
    assert_eq!(b.events(id, got.first_seq - 1, 0).await.unwrap().len(), 2);

    // One commit of many runs (more than one notification's worth): each run is heard
    // of once, with its own events.
    let ids: Vec<String> = (0..200)
        .map(|i| format!("00000000-0000-0000-0001-{i:012}"))
        .collect();
    for id in &ids {
        a.create_run(new_run(id, Some("replica-a".into()), Some(u64::MAX / 4), 1))
            .await
            .unwrap();
    }
    let mut events = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let started = EventKind::RunStarted {
            inputs: serde_json::json!({}),
        };
        events.push((id.clone(), ev(1, started)));
        if i % 2 == 0 {
            let reason = "test".to_owned();
            events.push((id.clone(), ev(2, EventKind::RunCancelled { reason })));
        }
    }
    a.commit(plexus_store::Batch {
        events,
        fences: ids.iter().map(|id| (id.clone(), 0)).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < ids.len() {
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), heard.recv())
            .await
            .expect("every run announced within seconds")
            .unwrap();
        let before = seen.insert(got.run_id.to_string(), (got.first_seq, got.last_seq));
        assert!(before.is_none(), "{} announced twice", got.run_id);
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(seen[id], (1, if i % 2 == 0 { 2 } else { 1 }), "{id}");
    }
}

/// Runs started at the same moment are made together (one statement), each with the
/// answer it would get alone: made, a second start of an idempotency key not made, a
/// version no longer the newest refused, and a run the database refuses failing alone.
#[tokio::test]
async fn runs_made_together_answer_each_as_alone() {
    use plexus_store::{CatalogStore, StoreError};
    let (store, ()) = fresh_store().await;
    store.put_workflow("wf", "v: 1", None, 1).await.unwrap();
    store.put_workflow("wf", "v: 2", None, 2).await.unwrap();
    let id = |i: usize| format!("00000000-0000-0000-00aa-{i:012}");
    let runs: Vec<plexus_store::NewRun> = (0..160)
        .map(|i| {
            let mut run = new_run(id(i), Some("me".into()), Some(u64::MAX / 4), i as u64);
            run.step_ids = (0..=i % 3).map(|s| format!("s{s}")).collect();
            match i % 10 {
                // Two starts of one key: the first is made.
                1 | 2 => run.idempotency_key = Some(format!("key-{}", i / 10)),
                // Of the newest version, and of one that is not any more.
                3 => (run.workflow_version, run.newest_version) = (Some(2), true),
                4 => (run.workflow_version, run.newest_version) = (Some(1), true),
                // Text PostgreSQL cannot store (in a second round: the first is made by
                // one statement, the second one run at a time once it failed).
                5 if i == 155 => run.manifest = "nul \0 byte".into(),
                _ => {}
            }
            run
        })
        .collect();
    let mut answers =
        futures_util::future::join_all(runs[..120].iter().cloned().map(|r| store.create_run(r)))
            .await;
    answers.extend(
        futures_util::future::join_all(runs[120..].iter().cloned().map(|r| store.create_run(r)))
            .await,
    );
    for (i, answer) in answers.into_iter().enumerate() {
        match (i % 10, answer) {
            (2, Ok(made)) => assert!(!made, "run {i}: its key was used by run {}", i - 1),
            (4, Err(StoreError::WorkflowChanged(w))) => assert_eq!(w, "wf"),
            (5, Err(e)) if i == 155 => assert!(matches!(e, StoreError::Db(_)), "{e}"),
            (_, Ok(true)) => {
                let steps = store.steps(&id(i)).await.unwrap();
                assert_eq!(steps.len(), i % 3 + 1, "run {i}'s steps");
                let definition = store.run_definition(&id(i)).await.unwrap();
                assert_eq!(definition.manifest, runs[i].manifest);
            }
            (_, other) => panic!("run {i}: {other:?}"),
        }
    }
    for i in [4, 14, 155, 2, 152] {
        assert!(store.get_run(&id(i)).await.is_err(), "run {i} was not made");
    }
}
