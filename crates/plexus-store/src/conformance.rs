//! The behaviour every [`Store`] must have, as one suite that each implementation runs
//! against a real database (`tests/sqlite.rs`; a PostgreSQL store runs the same).

use crate::*;
use plexus_core::machine::{Event, EventKind};
use serde_json::json;

fn run(id: &str, owner: Option<&str>, now: Millis) -> NewRun {
    NewRun {
        id: id.into(),
        workflow: "wf".into(),
        manifest:
            "version: plexus/v1\nname: wf\nsteps: [{id: a, run: 'true'}, {id: b, run: 'true'}]\n"
                .into(),
        base_dir: Some("/tmp".into()),
        inputs: json!({"x": 1}),
        step_ids: vec!["a".into(), "b".into()],
        parent: None,
        owner: owner.map(str::to_owned),
        lease_until: owner.map(|_| now + 10_000),
        created_at: now,
        idempotency_key: None,
        workflow_version: None,
        newest_version: false,
        started_by: Some("user:ada".into()),
        mode: Some("guided".into()),
        plan: Some(format!("{{\"format\": 1, \"run\": \"{id}\"}}")),
        responsible: vec!["user:ada".into(), "user:grace".into()],
    }
}

fn ev(seq: u64, kind: EventKind) -> Event {
    Event {
        seq,
        time: 1_000 + seq,
        kind,
    }
}

/// One test per check, each on a fresh store from `$fresh` (an async fn returning the
/// store and whatever must live as long as it, e.g. its temporary directory), so one
/// broken behaviour does not hide the others. A backend's test file says
/// `plexus_store::store_conformance!(fresh_store);`.
#[macro_export]
macro_rules! store_conformance {
    ($fresh:path) => {
        $crate::store_conformance!(@each $fresh; creates_runs_once, commits_events_and_rows_atomically, refuses_a_second_writer_of_the_same_event, leases_decide_who_drives_a_run, fences_out_a_replaced_owner, commands_wait_for_their_owner, wakes_for_new_commands, finds_runs_by_prefix_and_filters, remembers_attempts_until_they_end, versions_workflows, finds_runs_by_idempotency_key, schedules_advance_once, events_trigger_and_dead_letters, keeps_logs_per_attempt, keeps_users_keys_and_sessions, chains_audit_records, keeps_settings, a_broken_chain_writes_nothing_after_the_break, sums_model_calls, lists_replicas_and_what_they_drive, claims_runs_nobody_drives, reads_the_steps_of_runs_large_and_small);
    };
    (@each $fresh:path; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (store, _keep) = $fresh().await;
                $crate::conformance::$check(&store).await;
            }
        )*
    };
}

/// Runs every check on one store; panics with a message naming the first broken behaviour.
pub async fn check_all(store: &dyn Store) {
    creates_runs_once(store).await;
    commits_events_and_rows_atomically(store).await;
    refuses_a_second_writer_of_the_same_event(store).await;
    leases_decide_who_drives_a_run(store).await;
    fences_out_a_replaced_owner(store).await;
    commands_wait_for_their_owner(store).await;
    wakes_for_new_commands(store).await;
    finds_runs_by_prefix_and_filters(store).await;
    remembers_attempts_until_they_end(store).await;
    versions_workflows(store).await;
    finds_runs_by_idempotency_key(store).await;
    schedules_advance_once(store).await;
    events_trigger_and_dead_letters(store).await;
    keeps_logs_per_attempt(store).await;
    keeps_users_keys_and_sessions(store).await;
    chains_audit_records(store).await;
    keeps_settings(store).await;
    a_broken_chain_writes_nothing_after_the_break(store).await;
    sums_model_calls(store).await;
    lists_replicas_and_what_they_drive(store).await;
    claims_runs_nobody_drives(store).await;
    reads_the_steps_of_runs_large_and_small(store).await;
}

/// A replica takes over the top-level unfinished runs that nobody drives — ownerless, or
/// whose lease ran out — each once, with a new fencing token; it leaves live leases,
/// finished runs and sub-workflow runs (their parent's engine re-attaches them) alone.
pub async fn claims_runs_nobody_drives(store: &dyn Store) {
    let id = |i: u32| format!("00000000-0000-0000-0000-00000000d00{i}");
    store.create_run(run(&id(1), None, 10)).await.unwrap(); // ownerless
    let mut expired = run(&id(2), Some("dead-replica"), 20);
    expired.lease_until = Some(500);
    store.create_run(expired).await.unwrap();
    let mut live = run(&id(3), Some("live-replica"), 30);
    live.lease_until = Some(1_000_000);
    store.create_run(live).await.unwrap();
    store.create_run(run(&id(4), None, 40)).await.unwrap();
    store
        .commit(Batch {
            events: vec![
                (id(4), ev(1, EventKind::RunStarted { inputs: json!({}) })),
                (id(4), ev(2, EventKind::RunSucceeded { outputs: json!({}) })),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut child = run(&id(5), None, 50);
    child.parent = Some(ParentRef {
        run_id: id(3),
        step_id: "a".into(),
        item: None,
        attempt: 1,
    });
    store.create_run(child).await.unwrap();
    // Its own run, even with a lease that ran out, is not taken from itself.
    let mut own = run(&id(6), Some("new-replica"), 60);
    own.lease_until = Some(500);
    store.create_run(own).await.unwrap();

    let claimed = store
        .claim_orphans("new-replica", 90_000, 1_000, 100)
        .await
        .unwrap();
    let mine: Vec<&str> = claimed
        .iter()
        .map(|(r, _)| r.id.as_str())
        .filter(|r| r.starts_with("00000000-0000-0000-0000-00000000d00"))
        .collect();
    assert_eq!(mine, [id(1), id(2)], "the oldest first");
    for (row, fence) in &claimed {
        assert_eq!(row.owner.as_deref(), Some("new-replica"));
        assert_eq!(row.lease_until, Some(90_000));
        assert!(*fence >= 1);
    }
    // The token is the run's: a commit naming it is accepted.
    let (row, fence) = &claimed[0];
    store
        .commit(Batch {
            events: vec![(
                row.id.clone(),
                ev(1, EventKind::RunStarted { inputs: json!({}) }),
            )],
            fences: vec![(row.id.clone(), *fence)],
            ..Default::default()
        })
        .await
        .unwrap();
    let others: Vec<String> = store
        .claim_orphans("another", 90_000, 1_000, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r.id)
        .filter(|r| r.starts_with("00000000-0000-0000-0000-00000000d00"))
        .collect();
    assert_eq!(
        others,
        [id(6)],
        "claimed runs are nobody else's; a lapsed lease is anyone else's"
    );
    let waited = std::time::Instant::now();
    store
        .orphans_may_be_waiting(std::time::Duration::from_millis(50))
        .await;
    assert!(waited.elapsed() < std::time::Duration::from_secs(5));
}

/// Replicas are listed by their latest heartbeat, each with the unfinished runs it
/// drives; a clean shutdown removes its row.
pub async fn lists_replicas_and_what_they_drive(store: &dyn Store) {
    let replica = |id: &str, beat: Millis| Replica {
        id: id.into(),
        host: "host-1".into(),
        address: "127.0.0.1:8080".into(),
        version: "0.1.0".into(),
        started_at: 1_000,
        heartbeat_at: beat,
        runs: 0,
    };
    store.heartbeat(&replica("replica-a", 5_000)).await.unwrap();
    store.heartbeat(&replica("replica-b", 6_000)).await.unwrap();
    for (i, owner) in ["replica-a", "replica-a", "replica-b"].iter().enumerate() {
        let id = format!("00000000-0000-0000-0000-0000000000c{i}");
        store.create_run(run(&id, Some(owner), 100)).await.unwrap();
    }
    // One of replica-a's runs ends: it drives one now.
    let done = "00000000-0000-0000-0000-0000000000c0";
    store
        .commit(Batch {
            events: vec![
                (
                    done.into(),
                    ev(1, EventKind::RunStarted { inputs: json!({}) }),
                ),
                (
                    done.into(),
                    ev(2, EventKind::RunSucceeded { outputs: json!({}) }),
                ),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    store.heartbeat(&replica("replica-a", 7_000)).await.unwrap();
    let listed: Vec<(String, Millis, u64)> = store
        .replicas()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.id.starts_with("replica-"))
        .map(|r| (r.id, r.heartbeat_at, r.runs))
        .collect();
    assert_eq!(
        listed,
        [
            ("replica-a".into(), 7_000, 2 - 1),
            ("replica-b".into(), 6_000, 1)
        ]
    );
    store.forget_replica("replica-b").await.unwrap();
    assert!(
        !store
            .replicas()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == "replica-b")
    );
}

/// Model calls are summed by run, user, key, provider and model; a step's call counts
/// for whoever started its run.
pub async fn sums_model_calls(store: &dyn Store) {
    let mut r = run("usage-run", None, 100);
    r.started_by = Some("user:ada".into());
    store.create_run(r).await.unwrap();
    let call = |time,
                actor: Option<&str>,
                key: Option<&str>,
                run: Option<&str>,
                model: &str,
                p,
                c,
                cost| LlmUsage {
        time,
        actor: actor.map(str::to_owned),
        api_key: key.map(str::to_owned),
        run_id: run.map(str::to_owned),
        step_id: run.map(|_| "ask".to_owned()),
        source: if run.is_some() { "step" } else { "gateway" }.into(),
        provider: "openai".into(),
        model: model.into(),
        prompt_tokens: p,
        completion_tokens: c,
        cost_usd: cost,
    };
    for u in [
        call(10, None, None, Some("usage-run"), "gpt-x", 100, 20, 0.5),
        call(20, None, None, Some("usage-run"), "gpt-x", 50, 10, 0.25),
        call(
            30,
            Some("user:bob"),
            Some("key-1"),
            None,
            "gpt-y",
            7,
            3,
            0.0,
        ),
        call(
            1,
            Some("user:bob"),
            Some("key-1"),
            None,
            "gpt-y",
            1000,
            1000,
            9.0,
        ),
    ] {
        store.record_llm_usage(u).await.unwrap();
    }
    assert_eq!(store.tokens_used("user:bob", 5).await.unwrap(), 10);
    assert_eq!(store.tokens_used("user:ada", 0).await.unwrap(), 180);
    assert_eq!(store.tokens_used("user:nobody", 0).await.unwrap(), 0);
    let by_user = store.llm_usage(UsageGroup::User, 5).await.unwrap();
    assert_eq!(
        by_user
            .iter()
            .map(|t| (t.group.as_str(), t.calls, t.total_tokens))
            .collect::<Vec<_>>(),
        [("user:ada", 2, 180), ("user:bob", 1, 10)],
        "a step's calls are its starter's; calls before `since` are left out"
    );
    assert!((by_user[0].cost_usd - 0.75).abs() < 1e-9);
    let by_run = store.llm_usage(UsageGroup::Run, 0).await.unwrap();
    assert_eq!(by_run.len(), 2);
    assert!(
        by_run
            .iter()
            .any(|t| t.group == "usage-run" && t.prompt_tokens == 150)
    );
    assert!(
        by_run.iter().any(|t| t.group == "-" && t.calls == 2),
        "{by_run:?}"
    );
    let by_key = store.llm_usage(UsageGroup::Key, 0).await.unwrap();
    assert_eq!(by_key[0].group, "key-1", "the costliest first");
    let by_model = store.llm_usage(UsageGroup::Model, 0).await.unwrap();
    assert_eq!(
        by_model
            .iter()
            .map(|t| t.group.as_str())
            .collect::<Vec<_>>(),
        ["openai/gpt-y", "openai/gpt-x"]
    );
}

/// Commits on one chain land in order or not at all: after one fails, later ones (even
/// sent before the failure was known, and grouped into the same transaction) are refused,
/// so a run never gets a gap in its events.
pub async fn a_broken_chain_writes_nothing_after_the_break(store: &dyn Store) {
    let id = "00000000-0000-0000-0000-000000000008";
    store.create_run(run(id, None, 20)).await.unwrap();
    let chain = CommitChain::default();
    let batch = |seq: u64| Batch {
        events: vec![(
            id.to_owned(),
            ev(seq, EventKind::RunStarted { inputs: json!({}) }),
        )],
        chain: Some(chain.clone()),
        ..Default::default()
    };
    store.commit(batch(1)).await.unwrap();
    // seq 1 again fails; seq 2 and 3, sent together with it, must not be written.
    let (clash, next, after) = tokio::join!(
        store.commit(batch(1)),
        store.commit(batch(2)),
        store.commit(batch(3))
    );
    assert!(matches!(clash, Err(StoreError::Conflict(_))));
    assert!(next.is_err() && after.is_err(), "{next:?} {after:?}");
    assert!(chain.is_broken());
    assert_eq!(store.events(id, 0, 0).await.unwrap().len(), 1);
    // Another chain (a restarted engine) writes on.
    let fresh = Batch {
        events: vec![(
            id.to_owned(),
            ev(2, EventKind::RunStarted { inputs: json!({}) }),
        )],
        chain: Some(CommitChain::default()),
        ..Default::default()
    };
    store.commit(fresh).await.unwrap();
}

pub async fn keeps_users_keys_and_sessions(store: &dyn Store) {
    use crate::auth::*;
    let user = |id: &str, name: &str| User {
        id: id.into(),
        username: name.into(),
        password_hash: Some("$argon2id$x".into()),
        role: "engineer".into(),
        active: true,
        created_at: 5,
        email: None,
    };
    let before = store.count_users().await.unwrap();
    store.create_user(user("u1", "ada")).await.unwrap();
    assert!(matches!(
        store.create_user(user("u2", "ada")).await,
        Err(StoreError::Conflict(_))
    ));
    // Names are unique whatever their case, and found whatever the case asked.
    assert!(matches!(
        store.create_user(user("u3", "ADA")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.count_users().await.unwrap(), before + 1);
    assert_eq!(
        store.user_by_name("ada").await.unwrap(),
        Some(user("u1", "ada"))
    );
    assert_eq!(
        store.user_by_name("Ada").await.unwrap(),
        Some(user("u1", "ada"))
    );
    // An email signs in like a username, whatever its case, and is unique.
    let alice = User {
        email: Some("Alice@Example.com".into()),
        ..user("u4", "alice")
    };
    store.create_user(alice.clone()).await.unwrap();
    assert_eq!(
        store.user_by_name("alice@example.com").await.unwrap(),
        Some(alice.clone())
    );
    let other = User {
        email: Some("ALICE@example.com".into()),
        ..user("u5", "alice2")
    };
    assert!(matches!(
        store.create_user(other).await,
        Err(StoreError::Conflict(m)) if m.contains("email")
    ));
    assert_eq!(store.user("u4").await.unwrap(), Some(alice));
    store
        .update_user("u1", Some("admin"), Some(false), None)
        .await
        .unwrap();
    let changed = store.user("u1").await.unwrap().unwrap();
    assert_eq!((changed.role.as_str(), changed.active), ("admin", false));
    assert_eq!(changed.password_hash.as_deref(), Some("$argon2id$x"));
    assert!(
        store
            .update_user("nobody", Some("admin"), None, None)
            .await
            .is_err()
    );

    let key = ApiKey {
        id: "k1".into(),
        user_id: "u1".into(),
        name: "ci".into(),
        secret_hash: "h".into(),
        created_at: 6,
        revoked_at: None,
    };
    store.create_api_key(key.clone()).await.unwrap();
    assert_eq!(store.api_key("k1").await.unwrap(), Some(key.clone()));
    assert_eq!(store.api_keys(Some("u1")).await.unwrap(), vec![key.clone()]);
    assert!(store.api_keys(Some("u9")).await.unwrap().is_empty());
    let (k, u) = store.key_with_user("k1").await.unwrap().unwrap();
    assert_eq!((k.id.as_str(), u.username.as_str()), ("k1", "ada"));
    assert!(store.revoke_api_key("k1", 7).await.unwrap());
    assert!(
        !store.revoke_api_key("k1", 8).await.unwrap(),
        "revoked once"
    );
    assert_eq!(
        store.api_key("k1").await.unwrap().unwrap().revoked_at,
        Some(7)
    );
    assert_eq!(store.key_with_user("nope").await.unwrap(), None);

    let session = Session {
        id: "s1".into(),
        user_id: "u1".into(),
        refresh_hash: "r1".into(),
        created_at: 1,
        expires_at: 100,
        revoked_at: None,
        api_key_id: None,
    };
    store.create_session(session.clone()).await.unwrap();
    // A session opened with a key ends when the key is revoked, in the same write.
    let key2 = ApiKey {
        id: "k2".into(),
        ..key.clone()
    };
    store.create_api_key(key2).await.unwrap();
    let keyed = Session {
        id: "s2".into(),
        api_key_id: Some("k2".into()),
        ..session.clone()
    };
    store.create_session(keyed).await.unwrap();
    assert_eq!(
        store
            .session("s2")
            .await
            .unwrap()
            .unwrap()
            .api_key_id
            .as_deref(),
        Some("k2")
    );
    assert!(store.revoke_api_key("k2", 8).await.unwrap());
    assert_eq!(
        store.session("s2").await.unwrap().unwrap().revoked_at,
        Some(8)
    );
    assert_eq!(store.session("s1").await.unwrap().unwrap().revoked_at, None);
    assert!(store.rotate_refresh("s1", "r1", "r2").await.unwrap());
    assert!(
        !store.rotate_refresh("s1", "r1", "r3").await.unwrap(),
        "a refresh hash works once"
    );
    let (s, u) = store.session_with_user("s1").await.unwrap().unwrap();
    assert_eq!((s.refresh_hash.as_str(), u.id.as_str()), ("r2", "u1"));
    store.revoke_user_sessions("u1", 9).await.unwrap();
    assert_eq!(
        store.session("s1").await.unwrap().unwrap().revoked_at,
        Some(9)
    );
    assert!(
        !store.rotate_refresh("s1", "r2", "r4").await.unwrap(),
        "revoked"
    );
}

pub async fn chains_audit_records(store: &dyn Store) {
    use crate::auth::AuditFilter;
    use plexus_core::audit::{AuditEntry, ChainVerifier, Domain};
    let before = store.audit(AuditFilter::default()).await.unwrap().len() as u64;
    for (i, domain) in [Domain::Security, Domain::Workflow, Domain::Security]
        .iter()
        .enumerate()
    {
        let r = store
            .append_audit(AuditEntry {
                time: 1_000 + i as u64,
                actor: "user:ada".into(),
                domain: *domain,
                action: format!("a{i}"),
                target: "t".into(),
                details: r#"{"k": 1}"#.into(),
            })
            .await
            .unwrap();
        assert_eq!(r.seq, before + i as u64 + 1);
    }
    let all = store.audit(AuditFilter::default()).await.unwrap();
    let mut v = ChainVerifier::default();
    for r in &all {
        v.push(r).unwrap();
    }
    assert_eq!(v.finish().0, before + 3);
    let security = store
        .audit(AuditFilter {
            domain: Some("security".into()),
            after_seq: Some(before),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        security
            .iter()
            .map(|r| r.action.as_str())
            .collect::<Vec<_>>(),
        ["a0", "a2"]
    );
    let last = store
        .audit(AuditFilter {
            last: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        last.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    let since = store
        .audit(AuditFilter {
            since: Some(1_001),
            after_seq: Some(before),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 2);
}

pub async fn keeps_settings(store: &dyn Store) {
    use crate::auth::Setting;
    let s = |key: &str, value: &str| Setting {
        key: key.into(),
        value: value.into(),
        secret: key.ends_with("api_key"),
        updated_at: 3,
        updated_by: "user:ada".into(),
    };
    store
        .put_setting(s("execution_mode", "\"guided\""))
        .await
        .unwrap();
    store
        .put_setting(s("execution_mode", "\"manual\""))
        .await
        .unwrap();
    store
        .put_setting(s("providers.x.api_key", "sealed:v1:abc"))
        .await
        .unwrap();
    let all = store.settings().await.unwrap();
    assert_eq!(
        all,
        vec![
            s("execution_mode", "\"manual\""),
            s("providers.x.api_key", "sealed:v1:abc")
        ]
    );
    assert!(store.delete_setting("execution_mode").await.unwrap());
    assert!(!store.delete_setting("execution_mode").await.unwrap());
    assert_eq!(store.settings().await.unwrap().len(), 1);
}

pub async fn keeps_logs_per_attempt(store: &dyn Store) {
    let id = "00000000-0000-0000-0000-000000000007";
    store.create_run(run(id, None, 300)).await.unwrap();
    let logs = |item: Option<u32>, attempt: u32, out: &str| StepLogs {
        run_id: id.into(),
        step_id: "a".into(),
        item,
        attempt,
        stdout: out.into(),
        stderr: "é\n".into(),
        exit_code: Some(0),
    };
    let batch = Batch {
        logs: vec![
            logs(None, 1, "one"),
            logs(None, 2, "two"),
            logs(Some(4), 1, "item"),
        ],
        ..Default::default()
    };
    store.commit(batch).await.unwrap();
    let got = |item, attempt| store.step_logs(id, "a", item, attempt);
    assert_eq!(got(None, 2).await.unwrap(), Some(logs(None, 2, "two")));
    assert_eq!(
        got(Some(4), 1).await.unwrap(),
        Some(logs(Some(4), 1, "item"))
    );
    assert_eq!(got(None, 3).await.unwrap(), None);
    assert_eq!(store.step_logs(id, "b", None, 1).await.unwrap(), None);
}

pub async fn events_trigger_and_dead_letters(store: &dyn Store) {
    store
        .set_triggers("deploy", &["git.push".into(), "release".into()])
        .await
        .unwrap();
    store
        .set_triggers("notify", &["release".into()])
        .await
        .unwrap();
    assert_eq!(
        store.triggered_by("release").await.unwrap(),
        ["deploy", "notify"]
    );
    store
        .set_triggers("deploy", &["git.push".into()])
        .await
        .unwrap();
    assert_eq!(
        store.triggered_by("release").await.unwrap(),
        ["notify"],
        "triggers are replaced, not added"
    );
    let ev = |id: &str| ReceivedEvent {
        id: id.into(),
        event_type: "release".into(),
        payload: json!({"v": 1}),
        dedupe_key: Some("r-1".into()),
        received_at: 5,
        runs: vec![],
    };
    let (first, new) = store.record_event(ev("e1")).await.unwrap();
    assert!(new);
    store
        .set_event_runs(&first.id, &["run-a".into()])
        .await
        .unwrap();
    let (again, new) = store.record_event(ev("e2")).await.unwrap();
    assert!(!new, "the same dedupe key is the same event");
    assert_eq!(
        (again.id.as_str(), again.runs.clone()),
        ("e1", vec!["run-a".to_owned()])
    );
    let id = store
        .add_dead_letter(
            "event",
            "nobody.listens",
            json!({"x": 1}),
            "no workflow starts on it",
            9,
        )
        .await
        .unwrap();
    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(
        (
            letters[0].id,
            letters[0].kind.as_str(),
            letters[0].payload.clone()
        ),
        (id, "event", json!({"x": 1}))
    );
}

pub async fn schedules_advance_once(store: &dyn Store) {
    let s = ScheduleRow {
        name: "nightly".into(),
        workflow: "wf".into(),
        cron: "0 2 * * *".into(),
        inputs: json!({"full": true}),
        catch_up: plexus_core::schedule::CatchUp::RunMissed,
        paused: false,
        next_fire_at: 1_000,
        last_fired_at: None,
        from_manifest: false,
        created_at: 1,
        changed_by: Some("user:ada".into()),
    };
    store.put_schedule(s.clone()).await.unwrap();
    assert_eq!(store.due_schedules(999).await.unwrap().len(), 0);
    assert_eq!(store.due_schedules(1_000).await.unwrap(), vec![s.clone()]);
    assert!(
        store
            .advance_schedule("nightly", 1_000, 2_000, 1_001)
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_schedule("nightly", 1_000, 2_000, 1_002)
            .await
            .unwrap(),
        "a tick is claimed once"
    );
    let again = ScheduleRow {
        next_fire_at: 5,
        inputs: json!({"full": false}),
        ..s.clone()
    };
    let kept = store.put_schedule(again).await.unwrap();
    assert_eq!(
        (kept.next_fire_at, kept.inputs.clone()),
        (2_000, json!({"full": false})),
        "same cron keeps its next tick"
    );
    assert!(
        store
            .set_schedule_paused("nightly", true, Some("user:grace"))
            .await
            .unwrap()
    );
    let paused = store.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!(
        paused.changed_by.as_deref(),
        Some("user:grace"),
        "who last changed it"
    );
    assert!(
        store.due_schedules(10_000).await.unwrap().is_empty(),
        "paused schedules do not fire"
    );
    assert_eq!(store.list_schedules().await.unwrap().len(), 1);
    assert!(store.delete_schedule("nightly").await.unwrap());
    assert!(store.get_schedule("nightly").await.unwrap().is_none());
}

pub async fn versions_workflows(store: &dyn Store) {
    let (v1, new) = store
        .put_workflow("deploy", "v: 1", Some("user:ada"), 10)
        .await
        .unwrap();
    assert_eq!((v1.version, new), (1, true));
    assert_eq!(v1.applied_by.as_deref(), Some("user:ada"));
    let (same, new) = store
        .put_workflow("deploy", "v: 1", None, 11)
        .await
        .unwrap();
    assert_eq!(
        (same.version, new),
        (1, false),
        "applying the same text again is not a new version"
    );
    let (v2, _) = store
        .put_workflow("deploy", "v: 2", None, 12)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    store.put_workflow("audit", "a", None, 13).await.unwrap();
    assert_eq!(
        store
            .get_workflow("deploy", None)
            .await
            .unwrap()
            .unwrap()
            .manifest,
        "v: 2"
    );
    assert_eq!(
        store
            .get_workflow("deploy", Some(1))
            .await
            .unwrap()
            .unwrap()
            .manifest,
        "v: 1"
    );
    let names: Vec<(String, u32)> = store
        .list_workflows()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.name, w.version))
        .collect();
    assert_eq!(names, [("audit".to_owned(), 1), ("deploy".to_owned(), 2)]);
    assert!(store.delete_workflow("deploy", 14).await.unwrap());
    assert!(
        !store.delete_workflow("deploy", 15).await.unwrap(),
        "already deleted"
    );
    assert!(store.get_workflow("deploy", None).await.unwrap().is_none());
    let (v3, _) = store
        .put_workflow("deploy", "v: 2", None, 16)
        .await
        .unwrap();
    assert_eq!(
        v3.version, 3,
        "a deleted name comes back with a new version"
    );

    // A run of what was read as the newest version is made only while it still is.
    let of = |id: &str, version: u32| NewRun {
        workflow: "deploy".into(),
        workflow_version: Some(version),
        newest_version: true,
        ..run(id, None, 20)
    };
    assert!(
        store
            .create_run(of("00000000-0000-0000-0000-0000000057a1", 3))
            .await
            .unwrap()
    );
    for stale in [2, 1] {
        let id = format!("00000000-0000-0000-0000-0000000057a{}", 1 + stale);
        assert!(
            matches!(
                store.create_run(of(&id, stale)).await,
                Err(StoreError::WorkflowChanged(w)) if w == "deploy"
            ),
            "version {stale} is not the newest"
        );
        assert!(matches!(
            store.get_run(&id).await,
            Err(StoreError::RunNotFound(_))
        ));
    }
    let older = NewRun {
        newest_version: false,
        ..of("00000000-0000-0000-0000-0000000057a4", 1)
    };
    assert!(
        store.create_run(older).await.unwrap(),
        "an older version asked for by number"
    );
    store.delete_workflow("deploy", 21).await.unwrap();
    assert!(matches!(
        store
            .create_run(of("00000000-0000-0000-0000-0000000057a5", 3))
            .await,
        Err(StoreError::WorkflowChanged(_))
    ));
}

pub async fn finds_runs_by_idempotency_key(store: &dyn Store) {
    let mut first = run("00000000-0000-0000-0000-000000000007", None, 400);
    first.idempotency_key = Some("order-1".into());
    assert!(store.create_run(first).await.unwrap());
    let mut again = run("00000000-0000-0000-0000-000000000008", None, 401);
    again.idempotency_key = Some("order-1".into());
    assert!(
        !store.create_run(again).await.unwrap(),
        "a second run with the same key is not created"
    );
    let found = store.find_run_by_key("order-1").await.unwrap().unwrap();
    assert_eq!(found.id, "00000000-0000-0000-0000-000000000007");
    assert!(store.find_run_by_key("order-2").await.unwrap().is_none());
}

pub async fn remembers_attempts_until_they_end(store: &dyn Store) {
    let id = "00000000-0000-0000-0000-000000000006";
    store.create_run(run(id, None, 300)).await.unwrap();
    let key = |step: &str, item: Option<u32>| AttemptKey {
        run_id: id.into(),
        step_id: step.into(),
        item,
        attempt: 1,
    };
    let rec = |step: &str, item: Option<u32>| AttemptRecord {
        key: key(step, item),
        executor: "local".into(),
        data: json!({"host": "h", "pgid": 4242, "start_ticks": 99}),
    };
    let batch = Batch {
        records: vec![rec("a", None), rec("b", Some(3))],
        ..Default::default()
    };
    store.commit(batch).await.unwrap();
    let mut found = store.attempt_records(id).await.unwrap();
    found.sort_by(|x, y| x.key.step_id.cmp(&y.key.step_id));
    assert_eq!(found, vec![rec("a", None), rec("b", Some(3))]);
    store
        .commit(Batch {
            records_done: vec![key("b", Some(3))],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.attempt_records(id).await.unwrap(),
        vec![rec("a", None)]
    );
}

pub async fn creates_runs_once(store: &dyn Store) {
    assert!(
        store
            .create_run(run("00000000-0000-0000-0000-000000000001", None, 1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .create_run(run("00000000-0000-0000-0000-000000000001", None, 2))
            .await
            .unwrap(),
        "second create is a no-op"
    );
    let steps = store
        .steps("00000000-0000-0000-0000-000000000001")
        .await
        .unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.step_id.as_str(), s.status.as_str()))
            .collect::<Vec<_>>(),
        [("a", "pending"), ("b", "pending")]
    );
    // The run keeps the plan it was created with, as given.
    let row = store
        .get_run("00000000-0000-0000-0000-000000000001")
        .await
        .unwrap();
    let first = run(&row.id, None, 1);
    assert_eq!(
        store.run_definition(&row.id).await.unwrap(),
        RunDefinition {
            manifest: first.manifest,
            plan: first.plan,
        }
    );
    assert!(matches!(
        store
            .run_definition("00000000-0000-0000-0000-0000000000ff")
            .await,
        Err(StoreError::RunNotFound(_))
    ));
}

pub async fn commits_events_and_rows_atomically(store: &dyn Store) {
    let id = "00000000-0000-0000-0000-000000000002";
    store.create_run(run(id, None, 10)).await.unwrap();
    let events = vec![
        ev(1, EventKind::RunStarted { inputs: json!({}) }),
        ev(
            2,
            EventKind::StepStarted {
                step_id: "a".into(),
                item: None,
                attempt: 1,
                key: "k".into(),
                detail: json!(null),
            },
        ),
        ev(
            3,
            EventKind::StepSucceeded {
                step_id: "a".into(),
                item: None,
                attempt: 1,
                output: json!({"ok": true}).into(),
            },
        ),
        ev(
            4,
            EventKind::StepSkipped {
                step_id: "b".into(),
                reason: "because".into(),
                by: None,
                comment: None,
            },
        ),
        ev(
            5,
            EventKind::RunSucceeded {
                outputs: json!({"n": 1}),
            },
        ),
    ];
    let batch = Batch {
        events: events.iter().cloned().map(|e| (id.to_owned(), e)).collect(),
        ..Default::default()
    };
    store.commit(batch).await.unwrap();
    let row = store.get_run(id).await.unwrap();
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.outputs, json!({"n": 1}));
    assert_eq!(row.last_seq, 5);
    assert_eq!(row.finished_at, Some(1_005));
    let steps = store.steps(id).await.unwrap();
    assert_eq!(steps[0].status, "succeeded");
    assert_eq!(steps[0].attempt, 1);
    assert_eq!(steps[0].output, json!({"ok": true}));
    assert_eq!(steps[0].started_at, Some(1_002));
    assert_eq!(steps[1].status, "skipped");
    assert_eq!(steps[1].error.as_deref(), Some("because"));
    assert_eq!(
        store.events(id, 0, 0).await.unwrap(),
        events,
        "events come back as written"
    );
    assert_eq!(
        store.events(id, 3, 1).await.unwrap(),
        events[3..4].to_vec(),
        "after and limit"
    );
}

/// A run's steps come back whole and in the manifest's order however many there are and
/// however large their outputs (a store may read small runs one way and large ones
/// another).
pub async fn reads_the_steps_of_runs_large_and_small(store: &dyn Store) {
    let many = "00000000-0000-0000-0000-000000005e71";
    let ids: Vec<String> = (0..150).map(|i| format!("s{:03}", 149 - i)).collect();
    store
        .create_run(NewRun {
            step_ids: ids.clone(),
            ..run(many, None, 10)
        })
        .await
        .unwrap();
    let read: Vec<String> = store
        .steps(many)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.step_id)
        .collect();
    assert_eq!(read, ids, "150 steps, in the manifest's order");
    let big = "00000000-0000-0000-0000-000000005e72";
    store.create_run(run(big, None, 10)).await.unwrap();
    let output = json!({"text": "x".repeat(100 * 1024)});
    let events = vec![
        ev(1, EventKind::RunStarted { inputs: json!({}) }),
        ev(
            2,
            EventKind::StepSucceeded {
                step_id: "a".into(),
                item: None,
                attempt: 1,
                output: output.clone().into(),
            },
        ),
    ];
    store
        .commit(Batch {
            events: events.into_iter().map(|e| (big.to_owned(), e)).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let steps = store.steps(big).await.unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].output, output, "a 100 KiB output, whole");
    assert_eq!(steps[1].status, "pending");
    assert!(
        store
            .steps("00000000-0000-0000-0000-000000005e73")
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn refuses_a_second_writer_of_the_same_event(store: &dyn Store) {
    let id = "00000000-0000-0000-0000-000000000003";
    store.create_run(run(id, None, 20)).await.unwrap();
    let first = Batch {
        events: vec![(
            id.to_owned(),
            ev(1, EventKind::RunStarted { inputs: json!({}) }),
        )],
        ..Default::default()
    };
    store.commit(first).await.unwrap();
    // A batch that repeats seq 1 fails as a whole: its other event is not written either.
    let clash = Batch {
        events: vec![
            (
                id.to_owned(),
                ev(
                    2,
                    EventKind::StepCancelled {
                        step_id: "a".into(),
                    },
                ),
            ),
            (
                id.to_owned(),
                ev(1, EventKind::RunStarted { inputs: json!({}) }),
            ),
        ],
        ..Default::default()
    };
    assert!(matches!(
        store.commit(clash).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.events(id, 0, 0).await.unwrap().len(), 1);
    assert_eq!(
        store.steps(id).await.unwrap()[0].status,
        "pending",
        "rows roll back with the events"
    );
}

pub async fn leases_decide_who_drives_a_run(store: &dyn Store) {
    let id = "00000000-0000-0000-0000-000000000004";
    store.create_run(run(id, Some("one"), 100)).await.unwrap();
    assert_eq!(
        store
            .claim_run(id, "two", 20_000, 200, false)
            .await
            .unwrap(),
        None,
        "a live lease is respected"
    );
    let two = store.claim_run(id, "two", 20_000, 200, true).await.unwrap();
    assert!(two.is_some(), "force takes over");
    let three = store
        .claim_run(id, "three", 40_000, 30_000, false)
        .await
        .unwrap();
    assert!(
        three > two,
        "an expired lease is taken over, with a higher token"
    );
    store.renew_leases("three", 90_000).await.unwrap();
    assert_eq!(store.get_run(id).await.unwrap().lease_until, Some(90_000));
    store.release_runs("three").await.unwrap();
    let row = store.get_run(id).await.unwrap();
    assert_eq!((row.owner, row.lease_until), (None, None));
}

/// A commit that names a fencing token the run has moved past writes nothing at all —
/// not its events, not its rows, not the other runs of the same commit.
pub async fn fences_out_a_replaced_owner(store: &dyn Store) {
    let (id, other) = (
        "00000000-0000-0000-0000-0000000000e1",
        "00000000-0000-0000-0000-0000000000e2",
    );
    store.create_run(run(id, None, 100)).await.unwrap();
    store.create_run(run(other, None, 100)).await.unwrap();
    let first = store
        .claim_run(id, "first", 10_000, 100, false)
        .await
        .unwrap()
        .expect("an ownerless run is claimed");
    let started = |run: &str, seq| {
        (
            run.to_owned(),
            ev(seq, EventKind::RunStarted { inputs: json!({}) }),
        )
    };
    store
        .commit(Batch {
            events: vec![started(id, 1)],
            fences: vec![(id.to_owned(), first)],
            ..Default::default()
        })
        .await
        .expect("the holder of the token writes");
    // The first owner stalls past its lease; another takes the run over.
    let second = store
        .claim_run(id, "second", 50_000, 20_000, false)
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert!(second > first);
    let stale = Batch {
        events: vec![
            (
                id.to_owned(),
                ev(2, EventKind::RunSucceeded { outputs: json!({}) }),
            ),
            started(other, 1),
        ],
        fences: vec![(id.to_owned(), first)],
        ..Default::default()
    };
    assert!(
        matches!(store.commit(stale).await, Err(StoreError::Conflict(_))),
        "the replaced owner is refused"
    );
    assert_eq!(store.events(id, 0, 0).await.unwrap().len(), 1);
    assert_eq!(store.get_run(id).await.unwrap().status, "running");
    assert!(
        store.events(other, 0, 0).await.unwrap().is_empty(),
        "nothing of the refused commit was written"
    );
    store
        .commit(Batch {
            events: vec![(
                id.to_owned(),
                ev(2, EventKind::RunSucceeded { outputs: json!({}) }),
            )],
            fences: vec![(id.to_owned(), second)],
            ..Default::default()
        })
        .await
        .expect("the new owner writes");
    assert_eq!(store.get_run(id).await.unwrap().status, "succeeded");
}

pub async fn commands_wait_for_their_owner(store: &dyn Store) {
    let id = "00000000-0000-0000-0000-000000000005";
    store
        .create_run(run(id, Some("driver"), 100))
        .await
        .unwrap();
    let c = store
        .add_command(
            id,
            CommandKind::Signal,
            Some("a"),
            json!({"data": 7}),
            "alice",
            150,
        )
        .await
        .unwrap();
    assert!(
        store
            .pending_commands("someone-else")
            .await
            .unwrap()
            .is_empty()
    );
    let pending = store.pending_commands("driver").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].kind,
            pending[0].actor.as_str(),
            pending[0].data.clone()
        ),
        (CommandKind::Signal, "alice", json!({"data": 7}))
    );
    store
        .commit(Batch {
            consumed: vec![(c, Some("refused".into()))],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.pending_commands("driver").await.unwrap().is_empty());
    assert_eq!(
        store.command(c).await.unwrap().unwrap().result.as_deref(),
        Some("refused")
    );
}

/// An engine waiting for commands learns of one stored through the same store at once,
/// long before its wait runs out (a backend with notifications: from any process).
pub async fn wakes_for_new_commands(store: &dyn Store) {
    let id = "00000000-0000-0000-0000-0000000000b1";
    store.create_run(run(id, Some("driver"), 30)).await.unwrap();
    let waiting = store.commands_may_be_waiting("driver", std::time::Duration::from_secs(60));
    let adding = async {
        // The waiter is registered before the command arrives.
        tokio::task::yield_now().await;
        store
            .add_command(id, CommandKind::Cancel, None, json!({}), "user:ada", 31)
            .await
            .unwrap();
    };
    let both = async { tokio::join!(waiting, adding) };
    tokio::time::timeout(std::time::Duration::from_secs(10), both)
        .await
        .expect("a stored command wakes its owner's wait");
    assert_eq!(store.pending_commands("driver").await.unwrap().len(), 1);
}

pub async fn finds_runs_by_prefix_and_filters(store: &dyn Store) {
    // Four runs of its own, one of them finished, one owned.
    for i in 1..=4 {
        let id = format!("00000000-0000-0000-0000-0000000000a{i}");
        let owner = (i == 4).then_some("keeper");
        store.create_run(run(&id, owner, 100 + i)).await.unwrap();
    }
    let others = store
        .list_runs(RunFilter {
            active: true,
            not_owned_by: Some("keeper".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        others.iter().any(|r| r.id.ends_with("a2")),
        "ownerless runs are listed"
    );
    assert!(
        !others.iter().any(|r| r.id.ends_with("a4")),
        "the owner's own runs are not"
    );
    let finished = "00000000-0000-0000-0000-0000000000a1";
    let events = [
        ev(1, EventKind::RunStarted { inputs: json!({}) }),
        ev(2, EventKind::RunSucceeded { outputs: json!({}) }),
    ];
    store
        .commit(Batch {
            events: events.map(|e| (finished.to_owned(), e)).into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let row = store.get_run("00000000-0000-0000-0000-0000000000a").await;
    assert!(matches!(row, Err(StoreError::Ambiguous(_))));
    assert!(matches!(
        store.get_run("not-a-run").await,
        Err(StoreError::RunNotFound(_))
    ));
    assert!(matches!(
        store.get_run("ffff").await,
        Err(StoreError::RunNotFound(_))
    ));
    // `last` is the newest run.
    let newest = "00000000-0000-0000-0000-0000000000af";
    store
        .create_run(run(newest, None, 9_000_000_000_000))
        .await
        .unwrap();
    assert_eq!(store.get_run("last").await.unwrap().id, newest);
    let done = store
        .list_runs(RunFilter {
            status: Some("succeeded".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Other checks may share this store (`check_all`): only this check's runs are counted.
    let mine: Vec<_> = done
        .iter()
        .filter(|r| r.id.starts_with("00000000-0000-0000-0000-0000000000a"))
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, finished);
    let active = store
        .list_runs(RunFilter {
            active: true,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(active.len(), 2, "limit applies");
    assert!(active.iter().all(|r| r.status != "succeeded"));
    let next = store
        .list_runs(RunFilter {
            active: true,
            limit: 2,
            before: Some(active[1].id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!next.is_empty());
    assert!(
        next.iter().all(|r| !active.iter().any(|a| a.id == r.id)),
        "the next page starts after the cursor"
    );
}
