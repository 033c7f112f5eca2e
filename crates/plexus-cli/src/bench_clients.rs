//! The `http-clients` scenario: what a client feels. `plexus serve` runs as its own
//! process on loopback; 50 concurrent clients in this process (real sockets, one
//! keep-alive HTTP connection each) submit one-step `builtin: noop` workflows and wait
//! for each result — first by long poll (`POST /api/v1/runs?wait=`), then the way
//! `plexus run --server` follows a run (a light submit, then the run's WebSocket until
//! `finished`). Beside them: the same runs submitted in-process (the baseline), the
//! server's CPU per workflow, and W1 (40 sequential noops) and W3 (1,000-step fan-out
//! and join) timed at the client against the engine's own time for the same run.

use crate::http_client::Client;
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients.
pub(crate) const CLIENTS: usize = 50;

pub(crate) const ONE_STEP: &str =
    "version: plexus/v1\nname: one\nsteps:\n  - {id: a, builtin: noop}\n";

/// A `plexus serve` of this binary, killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    url: String,
    key: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A preset admin key for bench servers.
pub(crate) fn bench_key() -> String {
    let random = || uuid::Uuid::now_v7().simple().to_string();
    format!("plx_benchadmin_{}{}", random(), random())
}

impl Server {
    async fn start(dir: &Path) -> Result<Server> {
        Server::start_with(dir, None, &bench_key(), &[]).await
    }

    /// A server on `database` (its own SQLite file when `None`), with `key` as its
    /// admin's key and `env` besides.
    pub(crate) async fn start_with(
        dir: &Path,
        database: Option<&str>,
        key: &str,
        env: &[(&str, String)],
    ) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let key = key.to_owned();
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env_remove("PLEXUS_DATABASE_URL");
        if let Some(url) = database {
            cmd.args(["--database-url", url]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["serve", "--listen-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--grpc-addr", "127.0.0.1:0"])
            .env("PLEXUS_DATA_DIR", dir)
            .env("PLEXUS_BOOTSTRAP_API_KEY", &key)
            .env_remove("PLEXUS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its log stays beside its data, for when a scenario goes wrong.
            .stderr(std::fs::File::create(dir.join("serve.log"))?)
            .current_dir(dir);
        // The server dies with the bench even when the bench is killed.
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start plexus serve")?;
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            key,
        };
        let probe = server.client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(probe.request("GET", "/healthz", None).await, Ok((200, _))) {
            if Instant::now() > deadline {
                bail!("plexus serve did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    pub(crate) fn client(&self) -> Result<Client> {
        let mut client = Client::new(&self.url)?;
        client.credential = Some(crate::login::Credential::ApiKey(self.key.clone()));
        Ok(client)
    }

    /// Bytes the server has sent to storage so far (`write_bytes` of `/proc/PID/io`: the
    /// write-ahead log, checkpoints; not sockets or pipes).
    fn disk_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/io", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The engine's commits so far (`plexus_store_commit_seconds_count` of `/metrics`).
    async fn commits(&self) -> Result<f64> {
        let (status, text) = self.client()?.request("GET", "/metrics", None).await?;
        let Some(text) = text.as_str().filter(|_| status == 200) else {
            bail!("/metrics answered {status}: {text}");
        };
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("plexus_store_commit_seconds_count "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// The server's CPU time so far (user + system).
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) : utime is the 14th
        // field of the line, stime the 15th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
        // SAFETY: sysconf with a constant name.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_micros(ticks * 1_000_000 / hz)
    }
}

/// Latencies of one way of waiting, and its wall time.
pub(crate) struct Phase {
    pub(crate) wall: Duration,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) server_cpu: Duration,
    /// What the server wrote to storage, and its engine's commits (when measured).
    pub(crate) disk: Option<(u64, f64)>,
}

impl Phase {
    pub(crate) fn json(&mut self) -> Json {
        self.latencies.sort();
        let n = self.latencies.len().max(1);
        let pct = |p: f64| {
            let i = ((self.latencies.len().saturating_sub(1)) as f64 * p).round() as usize;
            self.latencies.get(i).copied().unwrap_or_default()
        };
        let mut phase = json!({
            "workflows_per_second": self.latencies.len() as f64 / self.wall.as_secs_f64(),
            "p50_ms": ms(pct(0.5)), "p99_ms": ms(pct(0.99)),
            "server_cpu_ms_per_workflow": ms(self.server_cpu) / n as f64,
        });
        if let Some((bytes, commits)) = self.disk {
            phase["disk_bytes_per_workflow"] = json!(bytes / n as u64);
            phase["commits_per_second"] = json!(commits / self.wall.as_secs_f64());
            phase["workflows_per_commit"] = json!(n as f64 / commits.max(1.0));
        }
        phase
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Makes `n` calls of `one` from [`CLIENTS`] tasks at once, each task with its own
/// `state()` (a client and its connection); every call's latency, and the wall time.
pub(crate) async fn timed<S, F, Fut>(
    n: usize,
    mut state: impl FnMut() -> Result<S>,
    one: F,
) -> Result<(Vec<Duration>, Duration)>
where
    S: Clone + Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let per_client = n.div_ceil(CLIENTS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (state, one) = (state()?, one.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                one(state.clone()).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((latencies, started.elapsed()))
}

/// [`timed`] calls against the server, each client with its own connection.
async fn clients<F, Fut>(server: &Server, n: usize, one: F) -> Result<Phase>
where
    F: Fn(Arc<Client>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let (cpu, disk, commits) = (server.cpu(), server.disk_bytes(), server.commits().await?);
    let (latencies, wall) = timed(n, || Ok(Arc::new(server.client()?)), one).await?;
    Ok(Phase {
        wall,
        latencies,
        server_cpu: server.cpu().saturating_sub(cpu),
        disk: Some((
            server.disk_bytes().saturating_sub(disk),
            server.commits().await? - commits,
        )),
    })
}

/// One workflow, waited for by long poll: the start answers when the run ended.
pub(crate) async fn by_long_poll(client: Arc<Client>) -> Result<()> {
    let body = json!({"workflow": "one"}).to_string();
    let (status, run) = client
        .request("POST", "/api/v1/runs?wait=30s&view=light", Some(&body))
        .await?;
    if status != 200 || run["state"] != "succeeded" {
        bail!("a long-polled start answered {status}: {run}");
    }
    Ok(())
}

/// One workflow, followed as `plexus run --server` does: a light submit, then the run's
/// WebSocket until `finished`.
async fn by_websocket(client: Arc<Client>) -> Result<()> {
    let body = json!({"workflow": "one"}).to_string();
    let (status, run) = client.request("POST", "/api/v1/runs", Some(&body)).await?;
    let Some(id) = run["id"].as_str().filter(|_| status == 201) else {
        bail!("a start answered {status}: {run}");
    };
    let url = client.ws_url(&format!("/ws?run={id}&after=0"));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
    if let Some(cred) = &client.credential {
        let value = format!("Bearer {}", cred.bearer(&client).await?);
        request
            .headers_mut()
            .insert("authorization", value.parse()?);
    }
    let stream = client.connect().await?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    while let Some(msg) = ws.next().await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg? {
            let m: Json = serde_json::from_str(&t).unwrap_or(Json::Null);
            if m["type"] == "finished" {
                if m["state"] != "succeeded" {
                    bail!("run {id} ended {}", m["state"]);
                }
                return Ok(());
            }
        }
    }
    bail!("the WebSocket of run {id} closed before `finished`")
}

/// Timed runs of [`client_and_engine`] after its warm-up. The engine's times are whole
/// milliseconds, so each sample's gap is off by up to a millisecond either way; the
/// median of many is not.
const GAP_SAMPLES: usize = 15;

/// A workflow timed at the client (a waiting start) and by the engine (the run's
/// `finished_at - created_at`): the medians of [`GAP_SAMPLES`] runs after a warm-up,
/// and the median of each run's difference.
async fn client_and_engine(server: &Server, name: &str) -> Result<Json> {
    let client = server.client()?;
    let body = json!({"workflow": name}).to_string();
    let mut samples = Vec::new();
    for round in 0..=GAP_SAMPLES {
        let t = Instant::now();
        let (status, run) = client
            .request("POST", "/api/v1/runs?wait=60s", Some(&body))
            .await?;
        let client_ms = ms(t.elapsed());
        if status != 200 || run["state"] != "succeeded" {
            bail!("{name} answered {status}: {}", run["state"]);
        }
        let engine_ms = (run["finished_at"].as_u64().unwrap_or(0))
            .saturating_sub(run["created_at"].as_u64().unwrap_or(0)) as f64;
        if round > 0 {
            samples.push((client_ms, engine_ms));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(json!({
        "client_ms": median(samples.iter().map(|s| s.0).collect()),
        "engine_ms": median(samples.iter().map(|s| s.1).collect()),
        "gap_ms": median(samples.iter().map(|s| s.0 - s.1).collect()),
        "samples": samples.len(),
    }))
}

fn sequential(n: usize) -> String {
    let mut m = String::from("version: plexus/v1\nname: w1\nsteps:\n");
    for i in 0..n {
        let needs = if i > 0 {
            format!(", needs: [s{}]", i - 1)
        } else {
            String::new()
        };
        m.push_str(&format!("  - {{id: s{i}, builtin: noop{needs}}}\n"));
    }
    m
}

fn fan_out(n: usize) -> String {
    let mut m = String::from("version: plexus/v1\nname: w3\nsteps:\n");
    for i in 0..n {
        m.push_str(&format!("  - {{id: s{i}, builtin: noop}}\n"));
    }
    let all: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    m.push_str(&format!(
        "  - {{id: join, builtin: noop, needs: [{}]}}\n",
        all.join(", ")
    ));
    m
}

/// The in-process baseline: the same one-step runs, [`CLIENTS`] submitters at once.
async fn in_process(b: &Arc<crate::bench::Bench>, n: usize) -> Result<Phase> {
    let run =
        |b: Arc<crate::bench::Bench>| async move { b.run(ONE_STEP.to_owned()).await.map(|_| ()) };
    // The engine and its submitters share this process: its CPU is what the runs cost
    // without HTTP (the submitters' share is small next to the engine's).
    let cpu = crate::bench::cpu_times().0;
    let (latencies, wall) = timed(n, || Ok(b.clone()), run).await?;
    Ok(Phase {
        wall,
        latencies,
        server_cpu: crate::bench::cpu_times().0.saturating_sub(cpu),
        disk: None,
    })
}

pub async fn run(b: &Arc<crate::bench::Bench>, root: &Path, n: usize) -> Result<Json> {
    let mut baseline = in_process(b, n).await?;
    let server = Server::start(&root.join("served")).await?;
    let admin = server.client()?;
    for manifest in [ONE_STEP.to_owned(), sequential(40), fan_out(1_000)] {
        let (status, answer) = admin
            .request("POST", "/api/v1/workflows", Some(&manifest))
            .await?;
        if status != 201 && status != 200 {
            bail!("applying a bench workflow answered {status}: {answer}");
        }
    }
    // A warm-up round opens every client's connection and the server's plan cache.
    clients(&server, CLIENTS, by_long_poll).await?;
    let mut long_poll = clients(&server, n, by_long_poll).await?;
    let mut websocket = clients(&server, n, by_websocket).await?;
    let w1 = client_and_engine(&server, "w1").await?;
    let w3 = client_and_engine(&server, "w3").await?;
    let (lp, ws, base) = (long_poll.json(), websocket.json(), baseline.json());
    let rate = lp["workflows_per_second"].as_f64().unwrap_or(0.0);
    let p99 = lp["p99_ms"].as_f64().unwrap_or(f64::MAX);
    let gap = w1["gap_ms"].as_f64().unwrap_or(f64::MAX);
    Ok(json!({
        "runs": long_poll.latencies.len() + websocket.latencies.len(), "clients": CLIENTS,
        "seconds": (long_poll.wall + websocket.wall).as_secs_f64(),
        "long_poll": lp, "websocket": ws, "in_process": base, "w1": w1, "w3": w3,
        "result": format!(
            "long poll {rate:.0}/s (p50 {:.1} ms, p99 {p99:.1} ms, server CPU {:.2} ms/run, {:.0} commits/s, {:.1} KiB/run to disk); WebSocket {:.0}/s (p99 {:.1} ms); in-process {:.0}/s ({:.2} ms CPU/run); W1 client-engine gap {gap:.1} ms, W3 {:.1} ms",
            lp["p50_ms"].as_f64().unwrap_or(0.0),
            lp["server_cpu_ms_per_workflow"].as_f64().unwrap_or(0.0),
            lp["commits_per_second"].as_f64().unwrap_or(0.0),
            lp["disk_bytes_per_workflow"].as_f64().unwrap_or(0.0) / 1024.0,
            ws["workflows_per_second"].as_f64().unwrap_or(0.0),
            ws["p99_ms"].as_f64().unwrap_or(0.0),
            base["workflows_per_second"].as_f64().unwrap_or(0.0),
            base["server_cpu_ms_per_workflow"].as_f64().unwrap_or(0.0),
            w3["gap_ms"].as_f64().unwrap_or(0.0),
        ),
        "target": ">= 4,000 workflows/s, p99 < 50 ms, client-engine gap < 2 ms",
        "target_met": rate >= 4000.0 && p99 < 50.0 && gap < 2.0,
    }))
}
