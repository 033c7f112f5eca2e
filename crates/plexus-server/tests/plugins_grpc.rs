//! The plugin service (`mirastack.plugin.v1.EngineService`) over a real socket: who may
//! call it, method by method.

mod common;
use common::Api;
use plexus_agent::rpc::{EngineServiceName, Peer, ServiceName};
use plexus_server::auth::{Access, Role};
use serde_json::json;
use std::time::Duration;

async fn serve(api: &Api) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = plexus_server::plugins::service(api.state.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap()
    });
    addr.to_string()
}

fn peer(addr: &str, key: Option<&str>) -> Peer {
    let peer = Peer::lazy(EngineServiceName::NAME, addr).unwrap();
    match key {
        Some(k) => peer.with_header("authorization", format!("Bearer {k}")),
        None => peer,
    }
}

/// Every method with every role: a key is checked even from loopback (plugin and admin
/// pass, other roles are refused, audited); without a key, loopback callers pass while
/// `plugins.allow_loopback_unauthenticated` is on, and are refused once it is off.
#[tokio::test]
async fn every_plugin_method_checks_its_caller() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let mut callers = vec![(None, None)];
    for role in Role::ALL {
        let key = api
            .user_key(&format!("p-{}", role.as_str()), role.as_str())
            .await;
        callers.push((Some(role), Some(key)));
    }
    let denied_before = api.audit_count("permission.denied").await;
    let mut denied = 0;
    for (role, key) in &callers {
        let p = peer(&addr, key.as_deref());
        for method in plexus_server::plugins::METHODS {
            // RequestApproval with a timeout of one second, so an allowed call returns.
            let body = if *method == "RequestApproval" {
                json!({"execution_id": "no-such-run", "required_permission": 2, "timeout_seconds": 1})
            } else {
                json!({})
            };
            let code = p
                .call(method, body, Duration::from_secs(10))
                .await
                .err()
                .and_then(|e| e.code());
            let allowed = role.is_none() || Access::Plugin.allows(*role);
            if allowed {
                assert!(
                    !matches!(
                        code,
                        Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
                    ),
                    "{method} as {role:?} was refused: {code:?}"
                );
            } else {
                assert_eq!(
                    code,
                    Some(tonic::Code::PermissionDenied),
                    "{method} as {role:?}"
                );
                denied += 1;
            }
        }
    }
    assert_eq!(
        api.audit_count("permission.denied").await - denied_before,
        denied,
        "every refusal is audited"
    );
    // Loopback without a key, once that is off.
    let (status, _) = api
        .call(
            "PUT",
            "/api/v1/settings/plugins.allow_loopback_unauthenticated",
            json!({"value": false}).to_string(),
            &[("content-type", "application/json")],
        )
        .await;
    assert!(status.is_success(), "{status}");
    let err = peer(&addr, None)
        .call("Heartbeat", json!({}), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated));
    assert!(err.to_string().contains("plugin role"), "{err}");
    // A bad key is refused whatever the setting.
    let err = peer(&addr, Some("pk_nonsense"))
        .call("Heartbeat", json!({}), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unauthenticated));
}

/// A key of a `plugin` user acts for the plugin named like the user, and for no other:
/// not its configuration (secrets), not its name.
#[tokio::test]
async fn a_plugin_key_speaks_for_its_own_plugin_only() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let key = api.user_key("metrics", "plugin").await;
    let (status, _) = api
        .call(
            "PUT",
            "/api/v1/settings/plugin.billing.api_token",
            json!({"value": "s3cr3t"}).to_string(),
            &[("content-type", "application/json")],
        )
        .await;
    assert!(status.is_success());
    let p = peer(&addr, Some(&key));
    let own = p
        .call(
            "GetConfig",
            json!({"plugin_name": "metrics"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(own["config"], json!({}));
    for body in [
        json!({"plugin_name": "billing"}),
        json!({"name": "billing", "instance_id": "i"}),
        json!({"caller_plugin": "billing", "target_plugin": "x"}),
    ] {
        let err = p
            .call("GetConfig", body.clone(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{body}");
        assert!(
            err.to_string().contains("acts for the plugin `metrics`"),
            "{err}"
        );
    }
}

/// Unknown instances are told to register again (OK, never NOT_FOUND: the SDKs only log
/// errors); a registration whose plugin cannot be reached fails with a reason.
#[tokio::test]
async fn heartbeats_of_strangers_ask_them_to_register() {
    let api = Api::new().await;
    let addr = serve(&api).await;
    let p = peer(&addr, None);
    let beat = p
        .call(
            "Heartbeat",
            json!({"name": "ghost", "instance_id": "i-1"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(beat["acknowledged"], true);
    assert_eq!(beat["re_register_required"], true);
    assert_eq!(beat["heartbeat_interval_seconds"], 30);
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let answer = p
        .call(
            "RegisterPlugin",
            json!({"name": "ghost", "version": "1", "grpc_addr": dead, "plugin_type": 1}),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(answer["success"], false);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("cannot read the plugin's Info"),
        "{answer}"
    );
    let answer = p
        .call(
            "RegisterPlugin",
            json!({"name": "x"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        answer["error"].as_str().unwrap().contains("grpc_addr"),
        "{answer}"
    );
    // A method the service does not have.
    let err = p
        .call("NoSuchMethod", json!({}), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unimplemented));
}
