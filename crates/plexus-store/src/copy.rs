//! `plexus store migrate`: a single-machine SQLite store copied into an empty PostgreSQL
//! database, table by table, in one PostgreSQL transaction (all of it or nothing). The
//! SQLite side is read in one read transaction, so the copy is one consistent moment of
//! the store even while something else writes to it. Runs, their whole history, users,
//! keys, sessions, settings and the audit chain arrive as they were (the chain's hashes
//! cover the records' text, which is copied byte for byte); runs in flight lose their
//! owner, so that the first replica takes them over.

use crate::postgres::{PgStore, PostgresOptions, db_err};
use crate::{Result, StoreError};
use rusqlite::types::Value;
use sqlx::Connection as _;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Int,
    Bool,
    Real,
}

use Kind::*;

/// A table as both stores have it: its columns in order, and whether PostgreSQL numbers
/// its `id` (an identity column, whose sequence must continue after the copied ids).
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    identity: bool,
}

/// Every table, parents before children.
const TABLES: &[Table] = &[
    Table {
        name: "runs",
        columns: &[
            ("id", Text),
            ("workflow", Text),
            ("status", Text),
            ("base_dir", Text),
            ("inputs", Text),
            ("outputs", Text),
            ("error", Text),
            ("parent_run_id", Text),
            ("parent_step_id", Text),
            ("parent_item", Int),
            ("parent_attempt", Int),
            ("created_at", Int),
            ("updated_at", Int),
            ("finished_at", Int),
            ("fence", Int),
            ("last_seq", Int),
            ("idempotency_key", Text),
            ("workflow_version", Int),
            ("started_by", Text),
            ("mode", Text),
            ("responsible", Text),
        ],
        identity: false,
    },
    Table {
        name: "run_definitions",
        columns: &[("run_id", Text), ("manifest", Text), ("plan", Text)],
        identity: false,
    },
    Table {
        name: "steps",
        columns: &[
            ("run_id", Text),
            ("step_id", Text),
            ("position", Int),
            ("status", Text),
            ("attempt", Int),
            ("started_at", Int),
            ("finished_at", Int),
            ("output", Text),
            ("error", Text),
        ],
        identity: false,
    },
    Table {
        name: "events",
        columns: &[
            ("run_id", Text),
            ("seq", Int),
            ("time", Int),
            ("type", Text),
            ("step_id", Text),
            ("attempt", Int),
            ("data", Text),
            ("schema", Int),
        ],
        identity: false,
    },
    Table {
        name: "commands",
        columns: &[
            ("id", Int),
            ("run_id", Text),
            ("kind", Text),
            ("step_id", Text),
            ("data", Text),
            ("actor", Text),
            ("created_at", Int),
            ("consumed_at", Int),
            ("result", Text),
        ],
        identity: true,
    },
    Table {
        name: "artifacts",
        columns: &[
            ("sha256", Text),
            ("run_id", Text),
            ("step_id", Text),
            ("attempt", Int),
            ("name", Text),
            ("size", Int),
            ("created_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "attempt_records",
        columns: &[
            ("run_id", Text),
            ("step_id", Text),
            ("item", Int),
            ("attempt", Int),
            ("executor", Text),
            ("data", Text),
        ],
        identity: false,
    },
    Table {
        name: "step_logs",
        columns: &[
            ("run_id", Text),
            ("step_id", Text),
            ("item", Int),
            ("attempt", Int),
            ("stdout", Text),
            ("stderr", Text),
            ("exit_code", Int),
        ],
        identity: false,
    },
    Table {
        name: "workflows",
        columns: &[
            ("name", Text),
            ("version", Int),
            ("manifest", Text),
            ("created_at", Int),
            ("deleted_at", Int),
            ("applied_by", Text),
        ],
        identity: false,
    },
    Table {
        name: "schedules",
        columns: &[
            ("name", Text),
            ("workflow", Text),
            ("cron", Text),
            ("inputs", Text),
            ("catch_up", Text),
            ("paused", Bool),
            ("next_fire_at", Int),
            ("last_fired_at", Int),
            ("from_manifest", Bool),
            ("created_at", Int),
            ("changed_by", Text),
        ],
        identity: false,
    },
    Table {
        name: "triggers",
        columns: &[("event_type", Text), ("workflow", Text)],
        identity: false,
    },
    Table {
        name: "received_events",
        columns: &[
            ("id", Text),
            ("type", Text),
            ("payload", Text),
            ("dedupe_key", Text),
            ("received_at", Int),
            ("runs", Text),
        ],
        identity: false,
    },
    Table {
        name: "dead_letters",
        columns: &[
            ("id", Int),
            ("kind", Text),
            ("target", Text),
            ("payload", Text),
            ("reason", Text),
            ("created_at", Int),
        ],
        identity: true,
    },
    Table {
        name: "users",
        columns: &[
            ("id", Text),
            ("username", Text),
            ("password_hash", Text),
            ("role", Text),
            ("active", Bool),
            ("created_at", Int),
            ("updated_at", Int),
            ("email", Text),
        ],
        identity: false,
    },
    Table {
        name: "api_keys",
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("name", Text),
            ("secret_hash", Text),
            ("created_at", Int),
            ("revoked_at", Int),
        ],
        identity: false,
    },
    Table {
        name: "sessions",
        columns: &[
            ("id", Text),
            ("user_id", Text),
            ("refresh_hash", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("revoked_at", Int),
            ("api_key_id", Text),
        ],
        identity: false,
    },
    Table {
        name: "audit",
        columns: &[
            ("seq", Int),
            ("time", Int),
            ("actor", Text),
            ("domain", Text),
            ("action", Text),
            ("target", Text),
            ("details", Text),
            ("prev_hash", Text),
            ("hash", Text),
        ],
        identity: false,
    },
    Table {
        name: "settings",
        columns: &[
            ("key", Text),
            ("value", Text),
            ("secret", Bool),
            ("updated_at", Int),
            ("updated_by", Text),
        ],
        identity: false,
    },
    Table {
        name: "llm_usage",
        columns: &[
            ("id", Int),
            ("time", Int),
            ("actor", Text),
            ("api_key", Text),
            ("run_id", Text),
            ("step_id", Text),
            ("source", Text),
            ("provider", Text),
            ("model", Text),
            ("prompt_tokens", Int),
            ("completion_tokens", Int),
            ("cost_usd", Real),
        ],
        identity: true,
    },
];

/// Rows copied per statement.
const CHUNK: usize = 2_000;

/// What was copied: rows per table, in copy order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Copied {
    pub tables: Vec<(String, u64)>,
}

/// One column of a chunk, as the array PostgreSQL receives.
enum ColumnValues {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Real(Vec<Option<f64>>),
}

fn bad(table: &str, column: &str, v: &Value) -> StoreError {
    StoreError::Db(format!(
        "{table}.{column} holds {v:?}, which is not what the column keeps; the SQLite store is damaged"
    ))
}

impl ColumnValues {
    fn new(kind: Kind) -> Self {
        match kind {
            Text => ColumnValues::Text(Vec::new()),
            Int => ColumnValues::Int(Vec::new()),
            Bool => ColumnValues::Bool(Vec::new()),
            Real => ColumnValues::Real(Vec::new()),
        }
    }

    fn push(&mut self, v: Value, table: &str, column: &str) -> Result<()> {
        if v == Value::Null {
            self.push_null();
            return Ok(());
        }
        match (self, v) {
            (ColumnValues::Text(c), Value::Text(s)) => c.push(Some(s)),
            (ColumnValues::Text(c), Value::Integer(i)) => c.push(Some(i.to_string())),
            (ColumnValues::Int(c), Value::Integer(i)) => c.push(Some(i)),
            (ColumnValues::Bool(c), Value::Integer(i)) => c.push(Some(i != 0)),
            (ColumnValues::Real(c), Value::Real(f)) => c.push(Some(f)),
            (ColumnValues::Real(c), Value::Integer(i)) => c.push(Some(i as f64)),
            (_, v) => return Err(bad(table, column, &v)),
        }
        Ok(())
    }

    fn push_null(&mut self) {
        match self {
            ColumnValues::Text(c) => c.push(None),
            ColumnValues::Int(c) => c.push(None),
            ColumnValues::Bool(c) => c.push(None),
            ColumnValues::Real(c) => c.push(None),
        }
    }

    fn cast(&self) -> &'static str {
        match self {
            ColumnValues::Text(_) => "text[]",
            ColumnValues::Int(_) => "int8[]",
            ColumnValues::Bool(_) => "bool[]",
            ColumnValues::Real(_) => "float8[]",
        }
    }
}

/// Copies the SQLite store at `from` (brought to the newest schema first) into the empty
/// PostgreSQL database at `to`. `progress` hears each table's name and rows as they go.
pub async fn copy_sqlite_to_postgres(
    from: &std::path::Path,
    to: &str,
    progress: &mut (dyn FnMut(&str, u64) + Send),
) -> Result<Copied> {
    if !from.exists() {
        return Err(StoreError::Db(format!(
            "there is no SQLite store at {}",
            from.display()
        )));
    }
    // Opening it applies any migration the file still lacks.
    drop(crate::SqliteStore::open(
        from,
        crate::SqliteOptions::default(),
    )?);
    // The schema is made by the store itself, then filled in one transaction.
    drop(PgStore::open(to, PostgresOptions::default()).await?);
    let mut pg = sqlx::PgConnection::connect(to).await.map_err(db_err)?;
    let mut tx = pg.begin().await.map_err(db_err)?;
    for table in ["runs", "users", "audit", "workflows", "settings"] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "the PostgreSQL database is not empty ({table} has {n} rows): copy into a new database"
            )));
        }
    }
    // Read on a thread of its own, a chunk at a time, however large the store.
    let (pieces, mut arriving) = tokio::sync::mpsc::channel(4);
    let path = from.to_path_buf();
    let reader = std::thread::spawn(move || {
        if let Err(e) = read_all(&path, &pieces) {
            pieces.blocking_send(Piece::Failed(e)).ok();
        }
    });
    let mut copied: Vec<(String, u64)> = Vec::new();
    let mut current = 0u64;
    while let Some(piece) = arriving.recv().await {
        match piece {
            Piece::Rows(i, rows) => {
                current += insert_rows(&mut tx, &TABLES[i], &rows).await?;
                progress(TABLES[i].name, current);
            }
            Piece::Done(i) => {
                finish_table(&mut tx, &TABLES[i]).await?;
                if current == 0 {
                    progress(TABLES[i].name, 0);
                }
                copied.push((TABLES[i].name.to_owned(), current));
                current = 0;
            }
            Piece::Failed(e) => return Err(e),
        }
    }
    reader
        .join()
        .map_err(|_| StoreError::Db("reading the SQLite store failed".into()))?;
    if copied.len() != TABLES.len() {
        return Err(StoreError::Db(
            "reading the SQLite store stopped early".into(),
        ));
    }
    // Runs in flight are nobody's until a replica claims them.
    sqlx::query(
        "UPDATE runs SET owner = NULL, lease_until = NULL WHERE status NOT IN ('succeeded', 'failed', 'cancelled')",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    pg.close().await.ok();
    Ok(Copied { tables: copied })
}

/// What the reading thread hands over: rows of the table at an index, the end of a
/// table, or why it stopped.
enum Piece {
    Rows(usize, Vec<Vec<Value>>),
    Done(usize),
    Failed(StoreError),
}

/// Reads every table in one read transaction (one moment of the store), in chunks.
fn read_all(path: &std::path::Path, pieces: &tokio::sync::mpsc::Sender<Piece>) -> Result<()> {
    let err = crate::sqlite::db_err;
    let sqlite = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    sqlite.execute_batch("BEGIN").map_err(err)?;
    let gone = || StoreError::Db("the copy stopped".into());
    for (i, table) in TABLES.iter().enumerate() {
        let list: Vec<&str> = table.columns.iter().map(|c| c.0).collect();
        let mut stmt = sqlite
            .prepare(&format!("SELECT {} FROM {}", list.join(", "), table.name))
            .map_err(err)?;
        let width = table.columns.len();
        let mut rows = stmt.query([]).map_err(err)?;
        let mut chunk = Vec::with_capacity(CHUNK);
        while let Some(row) = rows.next().map_err(err)? {
            let values = (0..width)
                .map(|c| row.get::<_, Value>(c))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(err)?;
            chunk.push(values);
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                pieces
                    .blocking_send(Piece::Rows(i, full))
                    .map_err(|_| gone())?;
            }
        }
        if !chunk.is_empty() {
            pieces
                .blocking_send(Piece::Rows(i, chunk))
                .map_err(|_| gone())?;
        }
        pieces.blocking_send(Piece::Done(i)).map_err(|_| gone())?;
    }
    Ok(())
}

/// Inserts one chunk of a table's rows with one statement over arrays.
async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    table: &Table,
    rows: &[Vec<Value>],
) -> Result<u64> {
    let list: Vec<&str> = table.columns.iter().map(|c| c.0).collect();
    let mut columns: Vec<ColumnValues> = table
        .columns
        .iter()
        .map(|c| ColumnValues::new(c.1))
        .collect();
    for row in rows {
        for ((values, (name, _)), v) in columns.iter_mut().zip(table.columns).zip(row) {
            values.push(v.clone(), table.name, name)?;
        }
    }
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, c.cast()))
        .collect();
    let overriding = if table.identity {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO {} ({}){overriding} SELECT * FROM UNNEST({})",
        table.name,
        list.join(", "),
        arrays.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for c in &columns {
        q = match c {
            ColumnValues::Text(v) => q.bind(v),
            ColumnValues::Int(v) => q.bind(v),
            ColumnValues::Bool(v) => q.bind(v),
            ColumnValues::Real(v) => q.bind(v),
        };
    }
    q.execute(&mut *tx).await.map_err(db_err)?;
    Ok(rows.len() as u64)
}

/// After a table's rows: PostgreSQL's next id follows the copied ones.
async fn finish_table(tx: &mut sqlx::PgConnection, table: &Table) -> Result<()> {
    if table.identity {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE((SELECT MAX(id) FROM {0}), 0) + 1, false)",
            table.name
        )))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}
