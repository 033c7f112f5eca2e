//! A full disk stops the run with a clear message and loses nothing: once there is room
//! again, `plexus resume` finishes it with no step completed twice. Uses a small tmpfs
//! (needs root, as CI has; set PLEXUS_SKIP_DISK_FULL=1 to skip on a machine without).

mod common;
use common::*;
use std::process::Command;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_cleanly_and_the_run_resumes_after() {
    if std::env::var_os("PLEXUS_SKIP_DISK_FULL").is_some() {
        eprintln!("skipped by PLEXUS_SKIP_DISK_FULL");
        return;
    }
    let p = Plexus::new();
    let data = p.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1500k", "tmpfs"])
        .arg(&data)
        .status()
        .map(|s| s.success());
    assert_eq!(
        ok.ok(),
        Some(true),
        "mounting a tmpfs needs root (set PLEXUS_SKIP_DISK_FULL=1 to skip this test)"
    );
    let _mount = Mount(data.clone());

    let mut y = String::from("version: plexus/v1\nname: big\nsteps:\n");
    for i in 0..10 {
        let needs = if i > 0 {
            format!("\n    needs: [s{}]", i - 1)
        } else {
            String::new()
        };
        y.push_str(&format!(
            "  - id: s{i}{needs}\n    run: head -c 300000 /dev/zero | tr '\\0' y\n"
        ));
    }
    let flow = p.dir.path().join("big.yaml");
    std::fs::write(&flow, y).unwrap();

    let out = p.run(&["run", flow.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the database is full or the disk is out of space"),
        "{err}"
    );
    assert!(
        err.contains("plexus resume"),
        "the message says how to continue: {err}"
    );

    let remount = Command::new("mount")
        .args(["-o", "remount,size=30m"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(remount.success());
    let run = p.json(&["runs", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = p.run(&["resume", &run]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = p.events(&run);
    for i in 0..10 {
        let done = events
            .iter()
            .filter(|e| e["type"] == "step_succeeded" && e["step_id"] == format!("s{i}").as_str())
            .count();
        assert_eq!(done, 1, "s{i} succeeded {done} times");
    }
}
