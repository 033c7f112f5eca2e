//! The README's "Try it" block, run as it stands: each line in order, in one shell, on a
//! fresh data directory, so the first thing a newcomer types can never drift from the
//! binary.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn the_readme_try_it_block_runs_as_written() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("## Try it")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|s| s.split("\n```").next())
        .expect("README.md has a `## Try it` block of sh");
    let mut lines = block.lines();
    // The first line builds the binary and puts it on PATH; the test has built it.
    assert_eq!(
        lines.next(),
        Some("cargo build --release && export PATH=$PWD/target/release:$PATH")
    );
    let script = lines.collect::<Vec<_>>().join("\n");

    let p = Plexus::new();
    // A directory of its own (files the block writes land there), with the examples.
    let work = p.dir.path().join("try");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink(root.join("examples"), work.join("examples")).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_plexus"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    use std::os::unix::process::CommandExt;
    let mut shell = std::process::Command::new("bash");
    shell
        .args(["-e", "-x", "-c", &script])
        .current_dir(&work)
        .env("PATH", path)
        .env("PLEXUS_DATA_DIR", p.data_dir())
        .env("XDG_CONFIG_HOME", p.dir.path().join("config"))
        .env_remove("PLEXUS_SERVER")
        .env_remove("PLEXUS_API_KEY")
        .env_remove("PLEXUS_CONFIG")
        .stdin(std::process::Stdio::null());
    // Into a file, not a pipe: what the block leaves running in the background would
    // hold a pipe open after the shell ended.
    let log = p.dir.path().join("try.log");
    let file = std::fs::File::create(&log).unwrap();
    shell
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        // Its own process group: what the block starts in the background ends with it.
        .process_group(0);
    let mut child = shell.spawn().unwrap();
    let pgid = child.id() as i32;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: signals the process group this test made.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the block did not end in 2 minutes:\n{text}"));
    assert_eq!(status.code(), Some(0), "the block failed:\n{text}");
    // What the block claims happened, happened.
    assert!(text.contains("acting on OPS-1"), "{text}");
    assert!(text.contains("announce skipped: rejected by"), "{text}");
    assert!(text.contains("hello, server"), "{text}");
    assert!(text.contains("intact"), "{text}");
}
