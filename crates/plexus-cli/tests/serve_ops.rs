//! Running `plexus serve` in production: one server per data directory, taking over
//! runs whose process died, the sockets it accepts, and the defaults automation relies on
//! (addresses, the bootstrap key).

mod common;
use common::server::*;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One server per data directory: a second refuses to start and names the holder, or
/// with `--wait-for-lock` starts once the first has stopped.
#[test]
fn a_second_server_on_one_data_directory_refuses_or_waits() {
    let p = Plexus::new();
    let (mut first, addr) = start_server(&p);
    let out = serve_command(&p).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another `plexus serve` holds"), "{err}");
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(err.contains("--wait-for-lock"), "{err}");
    let (_, health) = http(&addr, "GET", "/healthz", None);
    assert_eq!(
        health["status"], "ok",
        "the first one is untouched: {health}"
    );

    // The second starts in this thread (its parent-death signal is tied to the thread
    // that spawns it); another stops the first after a while.
    let first_pid = first.id() as i32;
    let stopped_first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stopped_first.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: signalling the server this test started.
        unsafe { libc::kill(first_pid, libc::SIGTERM) };
    });
    let (mut second, addr2) = start_server_with(&p, &["--wait-for-lock"]);
    assert!(
        stopped_first.load(std::sync::atomic::Ordering::SeqCst),
        "the second started only after the first was told to stop"
    );
    stopper.join().unwrap();
    assert_eq!(wait_exit(&mut first, Duration::from_secs(20)), 0);
    let (_, health) = http(&addr2, "GET", "/healthz", None);
    assert_eq!(health["status"], "ok", "{health}");
    stop(&mut second);
}

/// A `plexus run` killed while a server runs on the same data directory: the server
/// takes its run over within seconds and finishes it, every step once.
#[test]
fn a_live_server_takes_over_a_run_whose_process_died() {
    let p = Plexus::new();
    let (mut server, _addr) = start_server(&p);
    let flow = p.dir.path().join("slow.yaml");
    std::fs::write(
        &flow,
        "version: plexus/v1\nname: slow\nsteps:\n- {id: a, run: 'sleep 1'}\n- {id: b, needs: [a], builtin: noop}\n",
    )
    .unwrap();
    let (mut runner, run) = p.spawn(&["run", flow.to_str().unwrap(), "--server", "local"]);
    p.wait_until("step a to run", Duration::from_secs(20), || {
        p.step_status(&run, "a") == "running"
    });
    runner.kill().unwrap();
    runner.wait().unwrap();
    p.wait_until(
        "the server to finish the orphaned run",
        Duration::from_secs(30),
        || p.run_json(&run)["status"] == "succeeded",
    );
    let events = p.events(&run);
    for step in ["a", "b"] {
        let ends = events
            .iter()
            .filter(|e| e["step_id"] == step && e["type"] == "step_succeeded")
            .count();
        assert_eq!(ends, 1, "step {step} ended once: {events:?}");
    }
    stop(&mut server);
}

/// Whether the server's end of the connection between its `server_port` and our
/// `client_port` has TCP_NODELAY: the socket is found in the server's `/proc` and a copy
/// of it taken with `pidfd_getfd` (the server is our child).
fn server_side_nodelay(server: u32, server_port: u16, client_port: u16) -> Option<bool> {
    let pid = server as i32;
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (port(f[1]) == Some(server_port) && port(f[2]) == Some(client_port))
            .then(|| f[9].to_owned())
    })?;
    let wanted = format!("socket:[{inode}]");
    let fd: i32 = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == wanted))?
        .file_name()
        .to_str()?
        .parse()
        .ok()?;
    // SAFETY: pidfd_open/pidfd_getfd return new descriptors we own and close; getsockopt
    // writes one int into the buffer it is given.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        assert!(
            copy >= 0,
            "pidfd_getfd: {}",
            std::io::Error::last_os_error()
        );
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let r = libc::getsockopt(
            copy,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        );
        libc::close(copy);
        libc::close(pidfd);
        assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
        Some(on != 0)
    }
}

/// Small answers must not wait for the client's delayed ACK: every accepted HTTP,
/// WebSocket and gRPC connection has TCP_NODELAY.
#[test]
fn accepted_connections_have_tcp_nodelay() {
    let p = Plexus::new();
    let (mut server, addr) = start_server(&p);
    let grpc = GRPC.lock().unwrap().get(&addr).cloned().unwrap();
    for target in [&addr, &grpc] {
        let mut stream = TcpStream::connect(target.as_str()).unwrap();
        if target == &addr {
            // An answered request: the connection is accepted and kept alive.
            write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).unwrap();
        }
        let server_port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
        let client_port = stream.local_addr().unwrap().port();
        let mut seen = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen != Some(true) && Instant::now() < deadline {
            seen = server_side_nodelay(server.id(), server_port, client_port);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            seen,
            Some(true),
            "TCP_NODELAY on the server's side of {target}"
        );
    }
    stop(&mut server);
}

/// Scriptable defaults: gRPC follows the HTTP API's host; the bootstrap key is printed
/// as a plain line, or preset by the operator so nothing has to read it from a log.
#[test]
fn bootstrap_keys_and_addresses_for_automation() {
    let p = Plexus::new();
    let shown = p
        .cmd()
        .env("PLEXUS_LISTEN_ADDR", "127.0.0.1:8080")
        .args(["config", "show", "-o", "json"])
        .output()
        .unwrap();
    let config: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(config["grpc_addr"]["value"], "127.0.0.1:9090", "{config}");

    // A fresh data directory prints the key as a plain line (besides the JSON log).
    let mut child = serve_command(&p)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut plain = false;
    let mut line = String::new();
    let addr = loop {
        assert!(std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0);
        plain |= line.starts_with("bootstrap admin API key (shown once");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
        line.clear();
    };
    assert!(plain, "no plain bootstrap line");
    // Serving (its signal handlers in place) before it is stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    let healthy = || {
        let Ok(mut c) = TcpStream::connect(&addr) else {
            return false;
        };
        let _ = write!(
            c,
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let mut head = [0u8; 12];
        c.read_exact(&mut head).is_ok() && head.ends_with(b"200")
    };
    while !healthy() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(healthy());
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);

    // A preset key: refused when malformed, used as given otherwise, never printed.
    let q = Plexus::new();
    let bad = serve_command(&q)
        .env("PLEXUS_BOOTSTRAP_API_KEY", "plx_short_x")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("preset bootstrap key"));
    let preset = format!("plx_{}_{}", "a1b2c3d4e5f6", "s".repeat(40));
    std::fs::write(q.dir.path().join("admin.key"), &preset).unwrap();
    let file = q.dir.path().join("bootstrap.key");
    std::fs::write(&file, format!("{preset}\n")).unwrap();
    let (mut server, addr) =
        start_server_with(&q, &["--bootstrap-key-file", file.to_str().unwrap()]);
    let (s, me) = http(&addr, "GET", "/api/v1/auth/me", None);
    assert_eq!(
        (s, me["username"].clone()),
        (200, serde_json::json!("admin")),
        "{me}"
    );
    let log = std::fs::read_to_string(q.dir.path().join("serve.log")).unwrap_or_default();
    assert!(!log.contains(&preset), "the preset key reached the log");
    stop(&mut server);
}

/// A SIGTERM sent the moment the server says it listens stops it cleanly (exit 0): its
/// signal handlers are in place before it says so, as a supervisor stopping a server
/// that just started expects.
#[test]
fn a_sigterm_as_soon_as_it_listens_stops_it_cleanly() {
    for _ in 0..5 {
        let p = Plexus::new();
        let mut child = serve_command(&p)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("listening on") {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0);
        }
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        // Its stderr keeps being read so that its last log lines never block it.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), 0);
    }
}
