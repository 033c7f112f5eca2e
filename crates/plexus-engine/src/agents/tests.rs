//! The registry: turns between instances, health, silence, permission floors.

use super::*;

fn instance(name: &str, id: &str, permission: Permission) -> Instance {
    let schema = serde_json::json!({"type": "object"});
    let action = ActionSpec {
        id: "act".into(),
        description: String::new(),
        permission,
        params: Params {
            schema: schema.clone(),
            strings: false,
        },
        validator: Arc::new(jsonschema::validator_for(&schema).unwrap()),
        output_schema: None,
        intents: Vec::new(),
    };
    Instance {
        name: name.into(),
        instance_id: id.into(),
        addr: format!("127.0.0.1:1{id}"),
        version: "1".into(),
        description: String::new(),
        style: Style::Go,
        source: Source::Registered,
        actions: BTreeMap::from([("act".to_owned(), action)]),
        info: Default::default(),
        registered_at: 0,
        healthy: true,
        health_message: String::new(),
        last_seen: Instant::now(),
        link: Link::Plugin(
            Peer::lazy(
                "mirastack.plugin.v1.PluginService",
                &format!("127.0.0.1:1{id}"),
            )
            .unwrap(),
        ),
    }
}

#[tokio::test]
async fn instances_of_one_agent_share_the_work_in_turn_and_the_unhealthy_get_none() {
    let agents = Agents::new(AgentsConfig::default());
    for id in ["1", "2", "3"] {
        agents
            .lock()
            .instances
            .push(instance("ops", id, Permission::Read));
    }
    let picks: Vec<String> = (0..6)
        .map(|_| agents.pick("ops", "act").unwrap().0.instance_id)
        .collect();
    assert_eq!(picks, ["1", "2", "3", "1", "2", "3"]);
    agents.set_health("ops", "2", false, "backend down");
    let picks: Vec<String> = (0..4)
        .map(|_| agents.pick("ops", "act").unwrap().0.instance_id)
        .collect();
    assert!(!picks.contains(&"2".to_owned()), "{picks:?}");
    agents.set_health("ops", "1", false, "x");
    agents.set_health("ops", "3", false, "y");
    assert!(matches!(
        agents.pick("ops", "act"),
        Err(Unavailable::Unhealthy { .. })
    ));
    assert!(matches!(
        agents.pick("ops", "nope"),
        Err(Unavailable::NoAction { .. })
    ));
    assert!(matches!(
        agents.pick("other", "act"),
        Err(Unavailable::Unknown(_))
    ));
}

#[tokio::test]
async fn an_agent_silent_for_three_heartbeats_gets_no_work_until_it_beats_again() {
    let agents = Agents::new(AgentsConfig {
        heartbeat_interval: Duration::from_millis(10),
        ..AgentsConfig::default()
    });
    agents
        .lock()
        .instances
        .push(instance("ops", "1", Permission::Read));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(
        agents.pick("ops", "act"),
        Err(Unavailable::Unhealthy { .. })
    ));
    assert_eq!(agents.list()[0].health, "silent");
    assert!(agents.heartbeat("ops", "1"));
    assert!(agents.pick("ops", "act").is_ok());
    assert!(
        !agents.heartbeat("ops", "unknown"),
        "strangers register again"
    );
}

#[tokio::test]
async fn floors_are_the_highest_permission_any_instance_declares() {
    let agents = Agents::new(AgentsConfig::default());
    agents
        .lock()
        .instances
        .push(instance("ops", "1", Permission::Read));
    agents
        .lock()
        .instances
        .push(instance("ops", "2", Permission::Modify));
    let floors = agents.floors(&[("ops".into(), "act".into()), ("ops".into(), "none".into())]);
    assert_eq!(
        floors,
        BTreeMap::from([("ops/act".to_owned(), Permission::Modify)])
    );
}
