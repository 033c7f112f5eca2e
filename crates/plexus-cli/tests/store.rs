//! The store as a user chooses it: the embedded SQLite file, or a PostgreSQL database
//! (`--database-url`), and the move from one to the other (`plexus store migrate`).

mod common;
use common::{Plexus, examples};

fn fresh_database() -> String {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(plexus_store::test_postgres::fresh_database())
}

/// Ids and states, newest first, as `runs list` shows them.
fn runs(p: &Plexus, extra: &[&str]) -> Vec<(String, String)> {
    let list = p.json(&[&["runs", "list"], extra].concat());
    list.as_array()
        .expect("a list")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_single_machine_store_moves_to_postgres_whole() {
    let p = Plexus::new();
    for file in ["hello.yaml", "fan-out-fan-in.yaml", "foreach.yaml"] {
        p.run_file(&examples().join(file), &[], 0);
    }
    let url = fresh_database();
    // The test server trusts loopback: any password does, and none may be shown.
    let with_password = url.replacen("://plexus@", "://plexus:pw-secret@", 1);
    let out = p.json(&["store", "migrate", "--to", &with_password]);
    assert_eq!(out["tables"]["runs"], 3, "{out}");
    assert!(out["tables"]["events"].as_u64().unwrap() > 10, "{out}");
    assert!(!out.to_string().contains("pw-secret"), "{out}");

    let on_pg = ["--database-url", url.as_str()];
    assert_eq!(runs(&p, &on_pg), runs(&p, &[]), "every run arrived");
    let id = runs(&p, &[])[0].0.clone();
    let show = |extra: &[&str]| p.json(&[&["runs", "show", id.as_str()], extra].concat());
    assert_eq!(show(&on_pg), show(&[]), "with its steps and outputs");
    let verify = p.run(&[&["audit", "verify"], &on_pg[..]].concat());
    assert!(
        verify.status.success(),
        "the audit chain verifies after the copy: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("intact"));

    // A second copy into the same database is refused, and says why.
    let again = p.run(&["store", "migrate", "--to", &url]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // And the PostgreSQL store runs workflows like the file did.
    p.run_file(&examples().join("hello.yaml"), &on_pg, 0);
    assert_eq!(runs(&p, &on_pg).len(), 4);
    assert_eq!(runs(&p, &[]).len(), 3, "the SQLite store is left as it was");
}

#[test]
fn a_bad_store_url_is_a_clear_error() {
    let p = Plexus::new();
    let out = p.run(&["runs", "list", "--database-url", "mysql://x@y/z"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a store URL"), "{err}");
    let out = p.run(&[
        "runs",
        "list",
        "--database-url",
        "postgres://plexus:hunter2@127.0.0.1:1/plexus",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password is never shown: {err}"
    );
}
