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
