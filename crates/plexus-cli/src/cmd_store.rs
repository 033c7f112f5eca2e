//! `plexus store migrate`: a single-machine store copied into PostgreSQL, for a team
//! moving to replicas.

use crate::config::{Settings, StoreLocation};
use crate::output::Format;
use anyhow::{Result, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Copy a SQLite store into a new, empty PostgreSQL database
    ///
    /// Runs with their whole history, users, API keys, sessions, settings, schedules and
    /// the audit chain arrive as they were (`plexus audit verify --database-url ...`
    /// passes after the copy); runs that were in flight are taken over by the first
    /// replica that starts. The copy is one transaction: all of it or nothing. No
    /// `plexus serve` may use the SQLite store meanwhile (the copy takes its data
    /// directory's lock). Afterwards give every replica the same `keys` directory
    /// (token keys and the key that seals secret settings) as the old data directory.
    ///
    /// Example:
    ///   plexus store migrate --from sqlite:/var/lib/plexus/plexus.db \
    ///       --to postgres://plexus:PASSWORD@db:5432/plexus
    #[command(verbatim_doc_comment)]
    Migrate {
        /// The SQLite store to copy (sqlite:PATH) [default: the data directory's]
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// The PostgreSQL database to copy into (postgres://...); it must be empty
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

pub async fn run(cmd: StoreCommand, settings: &Settings, format: Format) -> Result<i32> {
    match cmd {
        StoreCommand::Migrate { from, to } => migrate(from.as_deref(), &to, settings, format).await,
    }
}

async fn migrate(from: Option<&str>, to: &str, settings: &Settings, format: Format) -> Result<i32> {
    let source = match from {
        Some(url) => StoreLocation::parse(url)?,
        None => StoreLocation::Sqlite(settings.data_dir.join("plexus.db")),
    };
    let StoreLocation::Sqlite(path) = &source else {
        bail!(
            "--from must be a SQLite store (sqlite:PATH); PostgreSQL to PostgreSQL is pg_dump's job"
        );
    };
    let target = StoreLocation::parse(to)?;
    let StoreLocation::Postgres(url) = &target else {
        bail!("--to must be a PostgreSQL database (postgres://USER:PASSWORD@HOST:PORT/DATABASE)");
    };
    if !path.exists() {
        bail!("there is no SQLite store at {}", path.display());
    }
    // No server may write to the store while it is copied (what it wrote after the
    // copy's moment would not arrive).
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let _lock = crate::serve_lock::ServeLock::acquire(dir, false, "plexus store migrate").await?;
    crate::output::remark(&format!(
        "copying {} into {}",
        source.shown(),
        target.shown()
    ));
    let started = std::time::Instant::now();
    let mut last_told = std::time::Instant::now();
    let mut progress = |table: &str, rows: u64| {
        if last_told.elapsed() >= std::time::Duration::from_millis(500) {
            crate::output::remark(&format!("  {table}: {rows} rows"));
            last_told = std::time::Instant::now();
        }
    };
    let copied = plexus_store::copy_sqlite_to_postgres(path, url, &mut progress).await?;
    let took = started.elapsed();
    if format.is_data() {
        let tables: serde_json::Map<String, serde_json::Value> = copied
            .tables
            .iter()
            .map(|(t, n)| (t.clone(), serde_json::json!(n)))
            .collect();
        crate::output::data(
            format,
            &serde_json::json!({
                "from": source.shown(),
                "to": target.shown(),
                "tables": tables,
                "took_ms": took.as_millis() as u64,
            }),
        );
    } else {
        let rows: Vec<Vec<String>> = copied
            .tables
            .iter()
            .map(|(t, n)| vec![t.clone(), n.to_string()])
            .collect();
        crate::output::table(&["TABLE", "ROWS"], &rows);
        println!(
            "\ncopied in {:.1}s. Next: check it with `plexus audit verify --database-url {}`, give every replica the keys directory {} (keys_dir or PLEXUS_KEYS_DIR), and start them with --database-url.",
            took.as_secs_f64(),
            target.shown(),
            settings.keys_dir.display()
        );
    }
    Ok(0)
}
