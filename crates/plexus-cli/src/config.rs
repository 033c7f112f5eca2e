//! Where things live and how big the pools are: flags, then environment, then
//! `plexus.toml` (in the working directory, else the user's config directory).

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    /// The server's keys (token signing, the secrets key): every replica of one store
    /// needs the same ones. Default: `keys/` in the data directory.
    pub keys_dir: Option<PathBuf>,
    #[serde(default)]
    pub pools: BTreeMap<String, u32>,
    /// `false` trades durability on power loss for speed (SQLite synchronous=NORMAL).
    pub fsync: Option<bool>,
    /// `plexus serve`: address of the HTTP API.
    pub listen_addr: Option<String>,
    /// `plexus serve`: address of the gRPC API.
    pub grpc_addr: Option<String>,
    /// `plexus serve`: largest request body, in bytes.
    pub body_limit: Option<usize>,
    /// `plexus serve`: how long running steps may finish after SIGTERM, e.g. "30s".
    pub shutdown_grace: Option<String>,
    /// `plexus serve`: PEM certificate chain; with `tls_key`, the HTTP API is HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// `plexus serve`: PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `plexus serve`: browser origins (`https://dash.example.com`) allowed to open the
    /// WebSocket besides the server's own.
    pub allowed_origins: Option<Vec<String>>,
    /// `plexus serve`: agent plugins (`[plugins]`).
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Where runs and everything else are kept (`[store]`).
    #[serde(default)]
    pub store: StoreConfig,
    /// Run leases between replicas (`[leases]`).
    #[serde(default)]
    pub leases: LeasesConfig,
}

/// `[leases]` in `plexus.toml`: how runs are owned when several replicas share a store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasesConfig {
    /// How long a run stays its replica's without a renewal, e.g. "15s" (the default):
    /// a replica that died is noticed this long after, and its runs taken over.
    pub duration: Option<String>,
    /// How often a replica renews the leases of all its runs (one write), e.g. "5s"
    /// (the default); at most half the duration.
    pub renew_every: Option<String>,
}

/// `[store]` in `plexus.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` to share one PostgreSQL database between
    /// replicas; `sqlite:PATH` for a SQLite file elsewhere than the data directory.
    /// Unset: the SQLite file in the data directory.
    pub url: Option<String>,
}

/// `[plugins]` in `plexus.toml`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Plugins `plexus serve` starts, watches and stops: `DIR/<name>/<executable>` or
    /// executables directly in DIR.
    pub dir: Option<PathBuf>,
    /// How often each plugin is asked whether it is healthy, e.g. "30s".
    pub health_check_interval: Option<String>,
    /// How long after a start a step waits for its agent to register (plugins register
    /// again at their next heartbeat), e.g. "70s" (the default).
    pub registration_grace: Option<String>,
    /// Plugins running elsewhere, dialled at start (`[[plugins.external]]` with `name`
    /// and `addr`); one that registers itself under the same name takes precedence.
    #[serde(default)]
    pub external: Vec<ExternalPlugin>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalPlugin {
    pub name: String,
    pub addr: String,
}

/// Settings of `plexus serve` given as flags or environment variables.
#[derive(Debug, Default)]
pub struct ServeFlags {
    pub listen_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub body_limit: Option<usize>,
    pub shutdown_grace: Option<std::time::Duration>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allowed_origins: Option<Vec<String>>,
}

impl ServeFlags {
    /// The environment alone (for commands other than `serve`, such as `config show`).
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(ServeFlags {
            listen_addr: var("PLEXUS_LISTEN_ADDR"),
            grpc_addr: var("PLEXUS_GRPC_ADDR"),
            body_limit: match var("PLEXUS_BODY_LIMIT") {
                Some(v) => {
                    Some(v.parse().with_context(|| {
                        format!("PLEXUS_BODY_LIMIT={v} is not a number of bytes")
                    })?)
                }
                None => None,
            },
            shutdown_grace: match var("PLEXUS_SHUTDOWN_GRACE") {
                Some(v) => Some(
                    plexus_core::duration::parse_duration(&v)
                        .map_err(|e| anyhow::anyhow!("PLEXUS_SHUTDOWN_GRACE: {e}"))?,
                ),
                None => None,
            },
            tls_cert: var("PLEXUS_TLS_CERT").map(PathBuf::from),
            tls_key: var("PLEXUS_TLS_KEY").map(PathBuf::from),
            allowed_origins: var("PLEXUS_ALLOWED_ORIGINS")
                .map(|v| v.split(',').map(|o| o.trim().to_owned()).collect()),
        })
    }
}

pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("plexus"))
}

/// The user's data directory for Plexus: `$XDG_DATA_HOME/plexus` or `~/.local/share/plexus`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("plexus")
}

pub fn load_file_config(explicit: Option<&Path>) -> Result<(FileConfig, Option<PathBuf>)> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => [
            Some(PathBuf::from("plexus.toml")),
            config_dir().map(|d| d.join("plexus.toml")),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let cfg: FileConfig = toml::from_str(&text)
                    .with_context(|| format!("{} is not a valid plexus.toml", path.display()))?;
                return Ok((cfg, Some(path)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok((FileConfig::default(), None))
}

pub struct Settings {
    pub data_dir: PathBuf,
    /// `keys_dir` / `PLEXUS_KEYS_DIR`: the token keys and the secrets key.
    pub keys_dir: PathBuf,
    /// `--database-url` / `PLEXUS_DATABASE_URL` / `store.url`: `None` is the SQLite file
    /// in the data directory.
    pub database_url: Option<String>,
    pub pools: BTreeMap<String, u32>,
    pub fsync: bool,
    pub listen_addr: String,
    pub grpc_addr: String,
    pub body_limit: usize,
    pub shutdown_grace: std::time::Duration,
    /// Certificate and key when the HTTP API is served over TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Browser origins allowed on the WebSocket besides the server's own.
    pub allowed_origins: Vec<String>,
    pub plugins: PluginsConfig,
    /// `plugins.health_check_interval`, read.
    pub health_check_interval: std::time::Duration,
    /// `plugins.registration_grace`, read.
    pub registration_grace: std::time::Duration,
    pub config_file: Option<PathBuf>,
    /// `leases.duration`, read.
    pub lease: std::time::Duration,
    /// `leases.renew_every`, read.
    pub renew_every: std::time::Duration,
    /// Where each setting came from: `flag or environment`, `file`, `default`.
    pub sources: BTreeMap<&'static str, &'static str>,
}

pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Parses `name=N` pool flags.
pub fn parse_pool_flag(s: &str) -> Result<(String, u32)> {
    let (name, n) = s
        .split_once('=')
        .with_context(|| format!("`--pool {s}`: write NAME=SLOTS, e.g. --pool gpu=1"))?;
    let n: u32 = n
        .trim()
        .parse()
        .with_context(|| format!("`--pool {s}`: SLOTS must be a positive number"))?;
    if n == 0 {
        bail!("`--pool {s}`: a pool needs at least one slot");
    }
    Ok((name.trim().to_owned(), n))
}

pub fn resolve(
    data_dir_flag: Option<PathBuf>,
    database_url_flag: Option<String>,
    pool_flags: &[String],
    config_file: Option<&Path>,
    serve: ServeFlags,
) -> Result<Settings> {
    let (file, path) = load_file_config(config_file)?;
    let mut sources = BTreeMap::new();
    fn pick<T>(
        sources: &mut BTreeMap<&'static str, &'static str>,
        key: &'static str,
        flag: Option<T>,
        file: Option<T>,
        default: T,
    ) -> T {
        let (value, source) = match (flag, file) {
            (Some(v), _) => (v, "flag or environment"),
            (None, Some(v)) => (v, "file"),
            (None, None) => (default, "default"),
        };
        sources.insert(key, source);
        value
    }
    let data_dir = pick(
        &mut sources,
        "data_dir",
        data_dir_flag,
        file.data_dir,
        default_data_dir(),
    );
    let keys_dir = pick(
        &mut sources,
        "keys_dir",
        std::env::var_os("PLEXUS_KEYS_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        file.keys_dir,
        data_dir.join("keys"),
    );
    let database_url = match (database_url_flag.filter(|u| !u.is_empty()), file.store.url) {
        (Some(u), _) => {
            sources.insert("database_url", "flag or environment");
            Some(u)
        }
        (None, Some(u)) => {
            sources.insert("database_url", "file");
            Some(u)
        }
        (None, None) => None,
    };
    if let Some(url) = &database_url {
        StoreLocation::parse(url)?;
    }
    let mut pools = BTreeMap::from([("default".to_owned(), cores())]);
    let pools_source = if !pool_flags.is_empty() {
        "flag or environment"
    } else if file.pools.is_empty() {
        "default"
    } else {
        "file"
    };
    pools.extend(file.pools);
    for flag in pool_flags {
        let (name, n) = parse_pool_flag(flag)?;
        pools.insert(name, n);
    }
    sources.insert("pools", pools_source);
    let fsync = pick(&mut sources, "fsync", None, file.fsync, true);
    let listen_addr = pick(
        &mut sources,
        "listen_addr",
        serve.listen_addr,
        file.listen_addr,
        "0.0.0.0:8080".to_owned(),
    );
    // Without an address of its own, gRPC listens on the HTTP API's host (port 9090):
    // `--listen-addr 127.0.0.1:8080` alone keeps both on loopback.
    let grpc_default = match listen_addr.rsplit_once(':') {
        Some((host, _)) => format!("{host}:9090"),
        None => "0.0.0.0:9090".to_owned(),
    };
    let grpc_addr = pick(
        &mut sources,
        "grpc_addr",
        serve.grpc_addr,
        file.grpc_addr,
        grpc_default,
    );
    let body_limit = pick(
        &mut sources,
        "body_limit",
        serve.body_limit,
        file.body_limit,
        4 * 1024 * 1024,
    );
    let file_grace = match file.shutdown_grace {
        Some(g) => Some(
            plexus_core::duration::parse_duration(&g)
                .map_err(|e| anyhow::anyhow!("shutdown_grace in plexus.toml: {e}"))?,
        ),
        None => None,
    };
    let shutdown_grace = pick(
        &mut sources,
        "shutdown_grace",
        serve.shutdown_grace,
        file_grace,
        std::time::Duration::from_secs(30),
    );
    let tls_cert = serve.tls_cert.or(file.tls_cert);
    let tls_key = serve.tls_key.or(file.tls_key);
    let tls = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => {
            sources.insert("tls", "flag, environment or file");
            Some((c, k))
        }
        (None, None) => None,
        (Some(_), None) => bail!("tls_cert is set but tls_key is not: give both (--tls-key)"),
        (None, Some(_)) => bail!("tls_key is set but tls_cert is not: give both (--tls-cert)"),
    };
    let allowed_origins = pick(
        &mut sources,
        "allowed_origins",
        serve.allowed_origins,
        file.allowed_origins,
        Vec::new(),
    );
    for origin in &allowed_origins {
        if !(origin.starts_with("http://") || origin.starts_with("https://"))
            || origin.trim_end_matches('/').matches('/').count() != 2
        {
            bail!(
                "allowed origin `{origin}` is not scheme://host[:port] (e.g. https://dash.example.com)"
            );
        }
    }
    let health_check_interval = match &file.plugins.health_check_interval {
        Some(text) => {
            sources.insert("plugins", "file");
            plexus_core::duration::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| {
                    format!("plugins.health_check_interval `{text}` is not a duration such as 30s")
                })?
        }
        None => std::time::Duration::from_secs(30),
    };
    let registration_grace = match &file.plugins.registration_grace {
        Some(text) => plexus_core::duration::parse_duration(text)
            .ok()
            .with_context(|| {
                format!("plugins.registration_grace `{text}` is not a duration such as 70s")
            })?,
        // Two heartbeats of the SDKs (30 s) and some slack.
        None => std::time::Duration::from_secs(70),
    };
    let read = |key: &str, text: &Option<String>, default: u64| -> Result<std::time::Duration> {
        match text {
            Some(t) => plexus_core::duration::parse_duration(t)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("leases.{key} `{t}` is not a duration such as 15s")),
            None => Ok(std::time::Duration::from_secs(default)),
        }
    };
    let lease = read("duration", &file.leases.duration, 15)?;
    let renew_every = read("renew_every", &file.leases.renew_every, 5)?;
    if renew_every * 2 > lease {
        bail!(
            "leases.renew_every ({}) must be at most half of leases.duration ({}): a lease renewed that rarely runs out between renewals",
            plexus_core::duration::format_duration(renew_every),
            plexus_core::duration::format_duration(lease)
        );
    }
    if file.leases.duration.is_some() || file.leases.renew_every.is_some() {
        sources.insert("leases", "file");
    }
    if let Some(dir) = &file.plugins.dir {
        sources.insert("plugins", "file");
        if !dir.is_dir() {
            bail!("plugins.dir `{}` is not a directory", dir.display());
        }
    }
    for p in &file.plugins.external {
        if p.name.trim().is_empty() || p.addr.trim().is_empty() {
            bail!("every [[plugins.external]] needs a `name` and an `addr` (host:port)");
        }
        sources.insert("plugins", "file");
    }
    Ok(Settings {
        keys_dir,
        lease,
        renew_every,
        data_dir,
        database_url,
        pools,
        fsync,
        listen_addr,
        grpc_addr,
        body_limit,
        shutdown_grace,
        tls,
        allowed_origins,
        plugins: file.plugins,
        health_check_interval,
        registration_grace,
        config_file: path,
        sources,
    })
}

impl Settings {
    /// The effective configuration, with where each value came from.
    pub fn show(&self) -> serde_json::Value {
        let src = |k: &str| self.sources.get(k).copied().unwrap_or("default");
        serde_json::json!({
            "config_file": self.config_file,
            "data_dir": {"value": self.data_dir, "source": src("data_dir")},
            "keys_dir": {"value": self.keys_dir, "source": src("keys_dir")},
            "database_url": {
                "value": self.database_url.as_deref().map(plexus_store::redacted_url),
                "source": src("database_url"),
            },
            "pools": {"value": self.pools, "source": src("pools")},
            "fsync": {"value": self.fsync, "source": src("fsync")},
            "listen_addr": {"value": self.listen_addr, "source": src("listen_addr")},
            "grpc_addr": {"value": self.grpc_addr, "source": src("grpc_addr")},
            "body_limit": {"value": self.body_limit, "source": src("body_limit")},
            "shutdown_grace": {"value": plexus_core::duration::format_duration(self.shutdown_grace), "source": src("shutdown_grace")},
            "tls": {"value": self.tls.as_ref().map(|(c, k)| serde_json::json!({"cert": c, "key": k})), "source": src("tls")},
            "allowed_origins": {"value": self.allowed_origins, "source": src("allowed_origins")},
            "plugins": {"value": self.plugins, "source": src("plugins")},
            "leases": {
                "value": {
                    "duration": plexus_core::duration::format_duration(self.lease),
                    "renew_every": plexus_core::duration::format_duration(self.renew_every),
                },
                "source": src("leases"),
            },
        })
    }

    /// `plexus config show`: the effective configuration as data or a table.
    pub fn print(&self, format: crate::output::Format) {
        let shown = self.show();
        if format.is_data() {
            crate::output::data(format, &shown);
            return;
        }
        let file = shown["config_file"].as_str().unwrap_or("(none found)");
        println!("configuration file: {file}\n");
        let keys = [
            "data_dir",
            "keys_dir",
            "database_url",
            "pools",
            "fsync",
            "listen_addr",
            "grpc_addr",
            "body_limit",
            "shutdown_grace",
            "tls",
            "allowed_origins",
            "plugins",
            "leases",
        ];
        let rows: Vec<Vec<String>> = keys
            .iter()
            .map(|k| {
                let v = &shown[*k]["value"];
                let value = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                let source = shown[*k]["source"].as_str().unwrap_or("");
                vec![k.to_string(), value, source.to_owned()]
            })
            .collect();
        crate::output::table(&["SETTING", "VALUE", "SOURCE"], &rows);
    }

    /// Opens the store: the PostgreSQL database or SQLite file of `database_url`, else
    /// the SQLite file in the data directory (which is made, owner-only, in any case:
    /// artifacts and scratch space live there).
    pub async fn open_store(&self) -> Result<std::sync::Arc<dyn plexus_store::Store>> {
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                self.data_dir.display()
            )
        })?;
        // The store, keys, scratch space and artifacts are the owner's alone.
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&self.data_dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| {
                    format!(
                        "cannot make the data directory {} private (0700)",
                        self.data_dir.display()
                    )
                })?;
        }
        self.store_location()?.open(self.fsync).await
    }

    /// Where the store is.
    pub fn store_location(&self) -> Result<StoreLocation> {
        Ok(match &self.database_url {
            Some(url) => StoreLocation::parse(url)?,
            None => StoreLocation::Sqlite(self.data_dir.join("plexus.db")),
        })
    }
}

/// Where a store is: what `--database-url`, `store.url` and `plexus store migrate`
/// accept.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreLocation {
    /// `sqlite:PATH` (or the data directory's file).
    Sqlite(PathBuf),
    /// `postgres://...` or `postgresql://...`.
    Postgres(String),
}

impl StoreLocation {
    pub fn parse(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(url.to_owned()));
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                bail!(
                    "`{url}` names no file: write sqlite:PATH, e.g. sqlite:/var/lib/plexus/plexus.db"
                );
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        bail!(
            "`{}` is not a store URL: write postgres://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:PATH",
            plexus_store::redacted_url(url)
        )
    }

    /// Where it is, for messages (never a password).
    pub fn shown(&self) -> String {
        match self {
            StoreLocation::Sqlite(p) => format!("sqlite:{}", p.display()),
            StoreLocation::Postgres(url) => plexus_store::redacted_url(url),
        }
    }

    pub async fn open(&self, fsync: bool) -> Result<std::sync::Arc<dyn plexus_store::Store>> {
        Ok(match self {
            StoreLocation::Sqlite(path) => std::sync::Arc::new(
                plexus_store::SqliteStore::open(
                    path,
                    plexus_store::SqliteOptions {
                        synchronous_full: fsync,
                    },
                )
                .with_context(|| format!("cannot open the store {}", path.display()))?,
            ),
            StoreLocation::Postgres(url) => std::sync::Arc::new(
                plexus_store::PgStore::open(url, plexus_store::PostgresOptions::default())
                    .await
                    .with_context(|| format!("cannot open the store {}", self.shown()))?,
            ),
        })
    }
}
