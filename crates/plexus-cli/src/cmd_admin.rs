//! Governance commands: users, API keys, approvals, the audit log and settings. Most talk
//! to a server; `audit verify|list` and `approval list` also work on a local data
//! directory (a stopped server's, or the one `plexus run` uses).

use crate::http_client::{Client, segment};
use crate::output::{self, Format, ago, one_line};
use anyhow::{Context, Result};
use clap::Subcommand;
use plexus_store::Store;
use plexus_store::auth::AuditFilter;
use serde_json::{Value as Json, json};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Every user with role and state (admin)
    List,
    /// Add a user; the password is read from the terminal, or stdin with --password-stdin
    ///
    /// Examples:
    ///   plexus user create olga --role operator
    ///   plexus user create --email alice@example.com --role engineer   (signs in as the email)
    ///   echo "$PW" | plexus user create ci-bot --role engineer --password-stdin
    #[command(verbatim_doc_comment)]
    Create {
        /// The name to sign in with [default: the email]
        #[arg(required_unless_present = "email")]
        username: Option<String>,
        /// An email address; it signs in like the username
        #[arg(long)]
        email: Option<String>,
        /// operator (reads), engineer (+ runs, workflows, approves MODIFY), admin (+ users,
        /// settings, approves ADMIN); plugin: an agent's own account (the plugin service
        /// on the gRPC port, nothing else)
        #[arg(long)]
        role: String,
        /// Read the password from stdin (for scripts)
        #[arg(long)]
        password_stdin: bool,
        /// No password: the user signs in with API keys only
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
    },
    /// Change a user's role
    SetRole { username: String, role: String },
    /// Stop a user at once: their sessions end and their keys stop working
    Deactivate { username: String },
    /// Let a deactivated user in again
    Activate { username: String },
}

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Make a key (the secret is printed once)
    Create {
        /// What the key is for
        name: String,
        /// For another user (admin)
        #[arg(long)]
        user: Option<String>,
    },
    /// Your keys (`--all`: everyone's, admin)
    List {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key now
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum ApprovalCommand {
    /// Steps waiting for a decision, with what they will run and who may decide
    List,
    /// Approve a waiting step (same as `plexus approve`)
    Approve {
        run: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a waiting step: it is skipped with reason `rejected`
    Reject {
        run: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the whole hash chain; names the first bad record (exit 1 if any)
    Verify,
    /// Records, oldest first
    List {
        /// Only the newest N
        #[arg(long)]
        last: Option<u32>,
        /// At or after this time (RFC 3339, e.g. 2026-11-22 or 2026-11-22T10:00:00Z)
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// security or workflow
        #[arg(long)]
        domain: Option<String>,
    },
    /// Every record as JSON lines (admin)
    Export {
        #[arg(long)]
        domain: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SettingsCommand {
    /// Every setting (secrets show only that they are set)
    List,
    Get {
        key: String,
    },
    /// Set KEY to VALUE (JSON, or plain text); keys naming a key, token, secret or password
    /// are stored sealed and never shown again
    Set {
        key: String,
        value: String,
        /// Store it sealed even if its name does not say so
        #[arg(long)]
        secret: bool,
    },
    Unset {
        key: String,
    },
}

fn show(format: Format, value: &Json, header: &[&str], rows: Vec<Vec<String>>) {
    if format.is_data() {
        output::data(format, value);
    } else {
        output::table(header, &rows);
    }
}

/// The list under `key` of an answer (empty when there is none).
fn items<'a>(v: &'a Json, key: &str) -> &'a [Json] {
    v[key].as_array().map_or(&[], Vec::as_slice)
}

fn s(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

pub async fn user(c: &Client, cmd: &UserCommand, format: Format) -> Result<i32> {
    let patch = |name: &str, body: Json| {
        let path = format!("/api/v1/users/{}", segment(name));
        let c = c.clone();
        async move { c.call("PATCH", &path, Some(&body.to_string())).await }
    };
    let answer = match cmd {
        UserCommand::List => {
            let v = c.call("GET", "/api/v1/users", None).await?;
            let rows = items(&v, "users")
                .iter()
                .map(|u| {
                    vec![
                        s(&u["username"]),
                        s(&u["role"]),
                        if u["active"] == true {
                            "active"
                        } else {
                            "deactivated"
                        }
                        .into(),
                        u["created_at"].as_u64().map(ago).unwrap_or_default(),
                    ]
                })
                .collect();
            show(format, &v, &["USER", "ROLE", "STATE", "CREATED"], rows);
            return Ok(0);
        }
        UserCommand::Create {
            username,
            email,
            role,
            password_stdin,
            no_password,
        } => {
            let name = username.as_deref().or(email.as_deref()).unwrap_or_default();
            let password = if *no_password {
                None
            } else {
                Some(crate::login::read_password(*password_stdin, name)?)
            };
            let body =
                json!({"username": username, "email": email, "role": role, "password": password});
            c.call("POST", "/api/v1/users", Some(&body.to_string()))
                .await?
        }
        UserCommand::SetRole { username, role } => patch(username, json!({"role": role})).await?,
        UserCommand::Deactivate { username } => patch(username, json!({"active": false})).await?,
        UserCommand::Activate { username } => patch(username, json!({"active": true})).await?,
    };
    if format.is_data() {
        output::data(format, &answer);
    } else {
        let state = if answer["active"] == true {
            "active"
        } else {
            "deactivated"
        };
        println!(
            "{}: {}, {state}",
            s(&answer["username"]),
            s(&answer["role"])
        );
    }
    Ok(0)
}

pub async fn api_key(c: &Client, cmd: &ApiKeyCommand, format: Format) -> Result<i32> {
    match cmd {
        ApiKeyCommand::Create { name, user } => {
            let body = json!({"name": name, "username": user});
            let v = c
                .call("POST", "/api/v1/api-keys", Some(&body.to_string()))
                .await?;
            if format.is_data() {
                output::data(format, &v);
            } else {
                println!("api_key_id={}  api_secret={}", s(&v["id"]), s(&v["secret"]));
                eprintln!(
                    "the secret is shown once; scripts send it as `Authorization: Bearer <secret>` or PLEXUS_API_KEY"
                );
            }
        }
        ApiKeyCommand::List { all } => {
            let path = if *all {
                "/api/v1/api-keys?all=true"
            } else {
                "/api/v1/api-keys"
            };
            let v = c.call("GET", path, None).await?;
            let rows = items(&v, "api_keys")
                .iter()
                .map(|k| {
                    let state = match k["revoked_at"].as_u64() {
                        Some(t) => format!("revoked {}", ago(t)),
                        None => "live".into(),
                    };
                    vec![
                        s(&k["id"]),
                        s(&k["name"]),
                        state,
                        k["created_at"].as_u64().map(ago).unwrap_or_default(),
                    ]
                })
                .collect();
            show(format, &v, &["ID", "NAME", "STATE", "CREATED"], rows);
        }
        ApiKeyCommand::Revoke { id } => {
            let v = c
                .call("DELETE", &format!("/api/v1/api-keys/{}", segment(id)), None)
                .await?;
            if format.is_data() {
                output::data(format, &v);
            } else {
                println!("API key {id} revoked");
            }
        }
    }
    Ok(0)
}

fn approval_rows(items: &[Json]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|a| {
            let what = a["detail"]["command"]
                .as_str()
                .or(a["detail"]["script"].as_str())
                .or(a["detail"]["message"].as_str())
                .map_or_else(|| s(&a["detail"]), str::to_owned);
            vec![
                s(&a["run_id"]),
                s(&a["step_id"]),
                s(&a["permission"]),
                s(&a["approver_role"]),
                s(&a["requested_by"]),
                one_line(&what, 60),
            ]
        })
        .collect()
}

const APPROVAL_HEADER: &[&str] = &["RUN", "STEP", "PERMISSION", "APPROVER", "ASKED BY", "WHAT"];

pub async fn approvals_remote(c: &Client, format: Format) -> Result<i32> {
    let v = c.call("GET", "/api/v1/approvals", None).await?;
    show(
        format,
        &v,
        APPROVAL_HEADER,
        approval_rows(items(&v, "approvals")),
    );
    Ok(0)
}

pub async fn approvals_local(store: &dyn Store, format: Format) -> Result<i32> {
    let pending = store.awaiting_approvals().await?;
    let items: Vec<Json> = pending
        .iter()
        .map(|p| {
            json!({"run_id": p.run_id, "workflow": p.workflow, "step_id": p.step_id,
                   "requested_by": p.requested_by, "permission": p.request["permission"],
                   "approver_role": "local user", "detail": p.request["detail"]})
        })
        .collect();
    let v = json!({ "approvals": items });
    show(format, &v, APPROVAL_HEADER, approval_rows(&items));
    Ok(0)
}

fn print_verify(v: &Json, format: Format) -> i32 {
    if format.is_data() {
        output::data(format, v);
    } else if v["ok"] == true {
        println!(
            "audit chain intact: {} records, head {}",
            v["records"],
            s(&v["head"])
        );
    } else {
        println!(
            "audit chain BROKEN at record {}: {}",
            v["seq"],
            s(&v["problem"])
        );
    }
    if v["ok"] == true { 0 } else { 1 }
}

/// RFC 3339 date or date-time to ms since the epoch.
pub fn parse_since(text: &str) -> Result<u64> {
    plexus_core::schedule::parse_time(text).with_context(|| {
        format!("--since {text}: give a date like 2026-11-22 or 2026-11-22T10:00:00Z")
    })
}

pub async fn audit_remote(c: &Client, cmd: &AuditCommand, format: Format) -> Result<i32> {
    match cmd {
        AuditCommand::Verify => {
            let v = c.call("GET", "/api/v1/audit/verify", None).await?;
            Ok(print_verify(&v, format))
        }
        AuditCommand::List {
            last,
            since,
            domain,
        } => {
            let mut q = vec![];
            if let Some(n) = last {
                q.push(format!("last={n}"));
            }
            if let Some(t) = since {
                q.push(format!("since={}", parse_since(t)?));
            }
            if let Some(d) = domain {
                q.push(format!("domain={}", segment(d)));
            }
            let v = c
                .call("GET", &format!("/api/v1/audit?{}", q.join("&")), None)
                .await?;
            show(format, &v, AUDIT_HEADER, audit_rows(items(&v, "records")));
            Ok(0)
        }
        AuditCommand::Export { domain } => {
            let path = match domain {
                Some(d) => format!("/api/v1/audit/export?domain={}", segment(d)),
                None => "/api/v1/audit/export".into(),
            };
            let v = c.call("GET", &path, None).await?;
            // The body is JSON lines; print it as it came.
            match v {
                Json::String(lines) => print!("{lines}"),
                other => println!("{other}"),
            }
            Ok(0)
        }
    }
}

const AUDIT_HEADER: &[&str] = &["SEQ", "WHEN", "DOMAIN", "ACTOR", "ACTION", "TARGET"];

fn audit_rows(records: &[Json]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| {
            vec![
                s(&r["seq"]),
                r["time"].as_u64().map(ago).unwrap_or_default(),
                s(&r["domain"]),
                s(&r["actor"]),
                s(&r["action"]),
                one_line(&s(&r["target"]), 50),
            ]
        })
        .collect()
}

/// `audit verify|list|export` on a data directory (a stopped server's, or the local one).
pub async fn audit_local(store: &dyn Store, cmd: &AuditCommand, format: Format) -> Result<i32> {
    match cmd {
        AuditCommand::Verify => {
            let v = plexus_server::audit_chain(store)
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            Ok(print_verify(&v, format))
        }
        AuditCommand::List {
            last,
            since,
            domain,
        } => {
            let records = store
                .audit(AuditFilter {
                    domain: domain.clone(),
                    since: since.as_deref().map(parse_since).transpose()?,
                    last: *last,
                    limit: 10_000,
                    ..Default::default()
                })
                .await?;
            let v = json!({ "records": records });
            let rows = audit_rows(items(&v, "records"));
            show(format, &v, AUDIT_HEADER, rows);
            Ok(0)
        }
        AuditCommand::Export { domain } => {
            let mut after = 0;
            loop {
                let page = store
                    .audit(AuditFilter {
                        domain: domain.clone(),
                        after_seq: Some(after),
                        limit: 10_000,
                        ..Default::default()
                    })
                    .await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for r in &page {
                    println!("{}", serde_json::to_string(r)?);
                }
            }
            Ok(0)
        }
    }
}

pub async fn settings(c: &Client, cmd: &SettingsCommand, format: Format) -> Result<i32> {
    let answer = match cmd {
        SettingsCommand::List => {
            let v = c.call("GET", "/api/v1/settings", None).await?;
            let rows = items(&v, "settings")
                .iter()
                .map(|st| {
                    let value = if st["secret"] == true {
                        "(secret, set)".to_owned()
                    } else {
                        st["value"].to_string()
                    };
                    vec![s(&st["key"]), one_line(&value, 60), s(&st["updated_by"])]
                })
                .collect();
            show(format, &v, &["KEY", "VALUE", "SET BY"], rows);
            return Ok(0);
        }
        SettingsCommand::Get { key } => {
            c.call("GET", &format!("/api/v1/settings/{}", segment(key)), None)
                .await?
        }
        SettingsCommand::Set { key, value, secret } => {
            // JSON when it parses as JSON, else the text itself.
            let value: Json =
                serde_json::from_str(value).unwrap_or_else(|_| Json::String(value.clone()));
            let body = json!({"value": value, "secret": secret});
            c.call(
                "PUT",
                &format!("/api/v1/settings/{}", segment(key)),
                Some(&body.to_string()),
            )
            .await?
        }
        SettingsCommand::Unset { key } => {
            c.call(
                "DELETE",
                &format!("/api/v1/settings/{}", segment(key)),
                None,
            )
            .await?
        }
    };
    if format.is_data() {
        output::data(format, &answer);
    } else if answer["deleted"] == true {
        println!("{} unset", s(&answer["key"]));
    } else if answer["secret"] == true {
        println!("{} = (secret, set)", s(&answer["key"]));
    } else {
        println!("{} = {}", s(&answer["key"]), answer["value"]);
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum TokenKeysCommand {
    /// Add a new signing key: servers started afterwards issue tokens with it, and tokens
    /// made with older keys still verify until they expire
    Rotate,
}

pub fn rotate_token_key(keys_dir: &std::path::Path, format: Format) -> Result<i32> {
    let path = keys_dir.join("token-keys.json");
    let kid = plexus_server::auth::tokens::Keyring::rotate(&path, plexus_engine::now_ms())
        .with_context(|| format!("rotating the token key in {}", path.display()))?;
    if format.is_data() {
        output::data(format, &json!({"kid": kid, "file": path}));
    } else {
        println!(
            "new token key {kid} in {}; restart the server(s) to issue with it (tokens of older keys still work)",
            path.display()
        );
    }
    Ok(0)
}

pub fn needs_server(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`plexus {what}` manages a server's users and settings: pass --server URL or run `plexus init --server URL` (a local store has one user: you, as admin)"
    )
}
