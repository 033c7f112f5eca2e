//! Credentials of the CLI as a client: `PLEXUS_API_KEY` for scripts, or the session that
//! `plexus login` keeps in the context file (mode 0600), refreshed before it expires.

use crate::http_client::Client;
use anyhow::{Context, Result, bail};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Mutex;

/// Refresh an access token when it has less than this left.
const REFRESH_MARGIN_MS: u64 = 30_000;

#[derive(Debug, Clone)]
pub enum Credential {
    ApiKey(String),
    Session(Arc<Mutex<Session>>),
}

#[derive(Debug)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    /// ms since the epoch.
    pub expires_at: u64,
    /// Where to save refreshed tokens.
    pub context: PathBuf,
}

fn now_ms() -> u64 {
    plexus_engine::now_ms()
}

impl Credential {
    /// The bearer value to send now, refreshing the session first if it is about to expire.
    pub async fn bearer(&self, client: &Client) -> Result<String> {
        let session = match self {
            Credential::ApiKey(k) => return Ok(k.clone()),
            Credential::Session(s) => s,
        };
        let mut s = session.lock().await;
        if now_ms() + REFRESH_MARGIN_MS < s.expires_at {
            return Ok(s.access_token.clone());
        }
        let mut plain = client.clone();
        plain.credential = None;
        let body = json!({"refresh_token": s.refresh_token}).to_string();
        let answer = Box::pin(plain.call("POST", "/api/v1/auth/refresh", Some(&body)))
            .await
            .context("the saved session could not be refreshed; run `plexus login` again")?;
        s.access_token = text(&answer, "access_token")?;
        s.refresh_token = text(&answer, "refresh_token")?;
        s.expires_at = now_ms() + answer["expires_in"].as_u64().unwrap_or(0) * 1000;
        save_tokens(&s.context, &s.access_token, &s.refresh_token, s.expires_at)?;
        Ok(s.access_token.clone())
    }
}

fn text(v: &Json, key: &str) -> Result<String> {
    v[key]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the server's answer has no `{key}`"))
}

/// The credential for a server: `PLEXUS_API_KEY`, else what the context file saved for
/// that same server.
pub fn credential_for(addr: &str, context: Option<(&Path, &toml::Table)>) -> Option<Credential> {
    if let Ok(key) = std::env::var("PLEXUS_API_KEY")
        && !key.trim().is_empty()
    {
        return Some(Credential::ApiKey(key.trim().to_owned()));
    }
    let (path, ctx) = context?;
    let same_server = ctx
        .get("server")
        .and_then(|v| v.as_str())
        .is_some_and(|s| s.trim_end_matches('/').ends_with(addr));
    if !same_server {
        return None;
    }
    if let Some(key) = ctx.get("api_key").and_then(|v| v.as_str()) {
        return Some(Credential::ApiKey(key.to_owned()));
    }
    let access = ctx.get("access_token")?.as_str()?.to_owned();
    let refresh = ctx.get("refresh_token")?.as_str()?.to_owned();
    let expires_at = ctx
        .get("expires_at")
        .and_then(|v| v.as_integer())
        .unwrap_or(0) as u64;
    Some(Credential::Session(Arc::new(Mutex::new(Session {
        access_token: access,
        refresh_token: refresh,
        expires_at,
        context: path.to_path_buf(),
    }))))
}

/// Rewrites the context file with new tokens, keeping its other keys.
fn save_tokens(path: &Path, access: &str, refresh: &str, expires_at: u64) -> Result<()> {
    let mut ctx = read_context(path)?.unwrap_or_default();
    ctx.remove("api_key");
    ctx.insert("access_token".into(), access.into());
    ctx.insert("refresh_token".into(), refresh.into());
    ctx.insert("expires_at".into(), toml::Value::Integer(expires_at as i64));
    write_context(path, &ctx)
}

pub fn read_context(path: &Path) -> Result<Option<toml::Table>> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not valid TOML", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn write_context(path: &Path, ctx: &toml::Table) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = format!(
        "# written by `plexus init` / `plexus login`; holds credentials: keep it private\n{}",
        toml::to_string(ctx).context("encoding the context")?
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode on open: make sure it is private.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Reads a line from the terminal without echoing it.
/// A user's password: one line of stdin (`--password-stdin`), else asked on the terminal.
pub fn read_password(from_stdin: bool, user: &str) -> Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    read_secret(&format!("password for {user}: "))
}

fn read_secret(prompt: &str) -> Result<String> {
    use std::io::{BufRead, Write};
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios calls on stdin with a zeroed struct that tcgetattr fills.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    let is_tty = unsafe { libc::tcgetattr(fd, &mut term) } == 0;
    if is_tty {
        let mut quiet = term;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if is_tty {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub struct LoginArgs {
    pub server: String,
    pub username: Option<String>,
    pub password_stdin: bool,
    pub api_key: Option<String>,
}

/// Signs in and saves the session (and the server) in the context file.
pub async fn login(args: LoginArgs, context: &Path) -> Result<i32> {
    let client = Client::new(&args.server)?;
    let body = match (&args.api_key, &args.username) {
        (Some(key), _) => json!({"api_key": key}),
        (None, Some(user)) => {
            let password = read_password(args.password_stdin, user)?;
            json!({"username": user, "password": password})
        }
        (None, None) => bail!("give --username NAME (the password is asked for) or --api-key KEY"),
    };
    let answer = client
        .call("POST", "/api/v1/auth/login", Some(&body.to_string()))
        .await?;
    let access = text(&answer, "access_token")?;
    let refresh = text(&answer, "refresh_token")?;
    let expires_at = now_ms() + answer["expires_in"].as_u64().unwrap_or(0) * 1000;
    let mut ctx = read_context(context)?.unwrap_or_default();
    ctx.insert("server".into(), client.base_url().into());
    write_context(context, &ctx)?;
    save_tokens(context, &access, &refresh, expires_at)?;
    let mut me = client.clone();
    me.credential = Some(Credential::ApiKey(access));
    let me = me.call("GET", "/api/v1/auth/me", None).await?;
    println!(
        "logged in to {} as {} ({}); session saved in {}",
        client.base_url(),
        me["username"].as_str().unwrap_or("?"),
        me["role"].as_str().unwrap_or("?"),
        context.display()
    );
    Ok(0)
}

/// Ends the saved session on the server and forgets it here.
pub async fn logout(client: &Client, context: &Path) -> Result<i32> {
    if matches!(client.credential, Some(Credential::Session(_))) {
        client.call("POST", "/api/v1/auth/logout", None).await?;
    }
    if let Some(mut ctx) = read_context(context)? {
        for k in ["access_token", "refresh_token", "expires_at", "api_key"] {
            ctx.remove(k);
        }
        write_context(context, &ctx)?;
    }
    println!("logged out");
    Ok(0)
}
