//! What a step and other users of the machine can reach of the engine's own state.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The data directory is the owner's alone (0700) and the store's files 0600, also for a
/// data directory an older version (or a loose umask) left open.
#[test]
fn the_data_directory_and_the_store_are_private() {
    let p = Plexus::new();
    let data = p.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = data.join("plexus.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let flow = p.dir.path().join("hello.yaml");
    std::fs::write(
        &flow,
        "version: plexus/v1\nname: hello\nsteps:\n- {id: a, run: 'true'}\n",
    )
    .unwrap();
    let out = p.run(&["run", flow.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&data), 0o700);
    for file in ["plexus.db", "plexus.db-wal", "plexus.db-shm"] {
        let path = data.join(file);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
    }
    assert_eq!(mode(&db), 0o600);

    // A fresh data directory is born private.
    let q = Plexus::new();
    let out = q.run(&["run", flow.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(mode(&q.data_dir()), 0o700);
    assert_eq!(mode(&q.data_dir().join("plexus.db")), 0o600);
}

/// The attack as found: a step with the default `read` permission rewrote the store from
/// its scratch directory (`update users set role='admin'`) and read the server's keys.
/// Now a step sees neither the store, nor the keys, nor another run's scratch space; its
/// own scratch, its working directory and a private /tmp work as before.
#[test]
fn a_step_cannot_reach_the_engines_state() {
    use common::server::*;
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    let (_, health) = http(&addr, "GET", "/healthz", None);
    if health["isolation"]["state"] != "on" {
        // A machine that cannot isolate says so; CI's can (it runs as root, or has user
        // namespaces), so this is not skipped there.
        panic!("isolation is off here: {health}");
    }
    let data = p.data_dir();
    let holder = "version: plexus/v1\nname: holder\nsteps:\n- id: hold\n  run: |\n    echo \"$PLEXUS_ARTIFACTS\" > holder-path\n    echo topsecret > \"$PLEXUS_ARTIFACTS/secret.txt\"\n    while [ ! -f prober-done ]; do sleep 0.05; done\n";
    let (s, a) = http(
        &addr,
        "POST",
        "/api/v1/runs",
        Some(&serde_json::json!({"manifest": holder})),
    );
    assert_eq!(s, 201, "{a}");
    let holder_path = p.dir.path().join("holder-path");
    p.wait_until(
        "the holder's scratch",
        std::time::Duration::from_secs(20),
        || std::fs::read_to_string(&holder_path).is_ok_and(|t| t.ends_with('\n')),
    );
    let probe = format!(
        r#"version: plexus/v1
name: prober
steps:
- id: probe
  env: {{DATA: "{data}"}}
  run: |
    try() {{ if eval "$2" >/dev/null 2>err; then echo "$1: DONE"; else echo "$1: refused ($(head -c 80 err))"; fi; }}
    try read-store 'head -c 16 "$DATA/plexus.db" | grep -q SQLite'
    try write-store 'python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"update users set role=\x27admin\x27\"); c.commit()" "$DATA/plexus.db"'
    try read-token-keys 'cat "$DATA/keys/token-keys.json"'
    try read-secrets-key 'cat "$DATA/keys/secrets.key"'
    try other-scratch 'cat "$(cat holder-path)/secret.txt"'
    try own-scratch 'echo mine > "$PLEXUS_ARTIFACTS/mine.txt" && cat "$PLEXUS_ARTIFACTS/mine.txt"'
    try workdir 'echo here > probe-was-here && cat probe-was-here'
    try private-tmp 'echo t > /tmp/probe && [ "$(ls /tmp)" = probe ]'
    touch prober-done
"#,
        data = data.display()
    );
    let (s, b) = http(
        &addr,
        "POST",
        "/api/v1/runs",
        Some(&serde_json::json!({"manifest": probe})),
    );
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    let mut run = serde_json::Value::Null;
    p.wait_until(
        "the probe to finish",
        std::time::Duration::from_secs(30),
        || {
            run = http(&addr, "GET", &format!("/api/v1/runs/{id}"), None).1;
            run["state"] == "succeeded" || run["state"] == "failed"
        },
    );
    let out = run["steps"][0]["output"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for refused in [
        "read-store",
        "write-store",
        "read-token-keys",
        "read-secrets-key",
        "other-scratch",
    ] {
        assert!(
            out.contains(&format!("{refused}: refused")),
            "{refused}:\n{out}"
        );
    }
    for allowed in ["own-scratch", "workdir", "private-tmp"] {
        assert!(
            out.contains(&format!("{allowed}: DONE")),
            "{allowed}:\n{out}"
        );
    }
    assert!(
        !std::path::Path::new("/tmp/probe").exists(),
        "the step's /tmp was its own"
    );
    // The store still says who is admin: only the bootstrap user.
    let (_, users) = http(&addr, "GET", "/api/v1/users", None);
    assert_eq!(users["users"].as_array().unwrap().len(), 1, "{users}");
    stop(&mut server);
}

/// An engine that is not root isolates its steps with a user namespace too. Run as root
/// (CI), the test drops to `nobody` with `setpriv` to take that path; run as anyone
/// else, it takes it as it is.
#[test]
fn an_unprivileged_engine_isolates_its_steps_too() {
    let p = Plexus::new();
    let flow = p.dir.path().join("peek.yaml");
    let data = p.data_dir();
    std::fs::write(
        &flow,
        format!(
            "version: plexus/v1\nname: peek\nsteps:\n- id: peek\n  run: |\n    cat \"{}/plexus.db\" >/dev/null 2>&1 && echo store-read || echo store-hidden\n    echo x > \"$PLEXUS_ARTIFACTS/x\" && echo scratch-ok\n",
            data.display()
        ),
    )
    .unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        // nobody must be able to enter the test's directory and write there.
        let chown = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p.dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_plexus"));
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
    };
    let out = cmd
        .args(["run", flow.to_str().unwrap(), "-o", "json"])
        .env("PLEXUS_DATA_DIR", &data)
        .env("HOME", p.dir.path())
        .env("XDG_CONFIG_HOME", p.dir.path().join("config"))
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stdout = run["steps"][0]["output"]["stdout"].as_str().unwrap();
    assert_eq!(stdout, "store-hidden\nscratch-ok\n", "{run}");
}
