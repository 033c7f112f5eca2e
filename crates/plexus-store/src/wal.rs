//! The write-ahead log file, written ahead with zeros.
//!
//! A commit that appends to a file makes the filesystem allocate blocks and grow the
//! inode, and its fsync has to make that metadata durable too: on ext4 here, an fsync'd
//! 16 KiB append costs 300–700 µs and ~90 µs of CPU, the same write over existing blocks
//! ~100 µs and ~40 µs. SQLite appends to its WAL until a checkpoint lets it start over
//! (about 1,000 pages), so a fresh store pays the append price on every commit. As
//! PostgreSQL does with its WAL segments, the file is filled with zeros once, up front,
//! and kept when the store closes (SQLite's persistent-WAL mode), so commits overwrite.
//!
//! Zeros are never mistaken for log content: SQLite reads a WAL from its header and stops
//! at the first frame whose salt or checksum does not match, and an all-zero header means
//! an empty log.

use crate::{Result, StoreError};
use rusqlite::Connection;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes the log is grown to: what SQLite writes between automatic checkpoints (1,000
/// pages of 4 KiB plus frame headers), with room to spare.
pub const PREALLOCATED: u64 = 5 << 20;

/// Keeps the WAL file when the last connection closes, instead of deleting it.
pub fn keep_when_closed(conn: &Connection) -> Result<()> {
    let mut on: std::os::raw::c_int = 1;
    // SAFETY: the handle is valid for the connection's life; the file-control op reads
    // and writes one int through the pointer, which outlives the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::os::raw::c_int).cast(),
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(StoreError::Db(format!(
            "cannot keep the write-ahead log (code {rc})"
        )))
    }
}

pub fn path_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Grows the WAL of `db` with zeros to [`PREALLOCATED`] bytes if it is shorter, with
/// the write lock held so no writer appends meanwhile (readers only read frames the
/// log's index lists, never past them). Only an optimisation: skipped when the disk has
/// less than [`MIN_FREE`] left (it must not be what fills a disk), and a failure only
/// leaves the log as long as it got.
pub fn preallocate(conn: &Connection, db: &Path) {
    let wal = path_of(db);
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() >= PREALLOCATED)
        || free_bytes(db).is_none_or(|free| free < MIN_FREE)
    {
        return;
    }
    if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
        return;
    }
    if let Err(e) = grow(&wal) {
        tracing::warn!(wal = %wal.display(), error = %e, "could not write the log ahead; commits will append to it");
    }
    if let Err(e) = conn.execute_batch("ROLLBACK") {
        tracing::warn!(error = %e, "ending the log's write-ahead transaction failed");
    }
}

/// Free space under which the log is not written ahead.
pub const MIN_FREE: u64 = 20 * PREALLOCATED;

/// Bytes available to this user on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct it is given and reads the C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0)
        .then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

fn grow(wal: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(wal)?;
    let len = file.seek(SeekFrom::End(0))?;
    if len >= PREALLOCATED {
        return Ok(());
    }
    let zeros = vec![0u8; 256 * 1024];
    let mut left = PREALLOCATED - len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RunStore, SqliteOptions, SqliteStore};

    #[tokio::test]
    async fn the_log_is_written_ahead_kept_on_close_and_survives_a_crash_image() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plexus.db");
        let store = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
        let wal = path_of(&db);
        if free_bytes(&db).is_some_and(|f| f >= MIN_FREE) {
            assert!(std::fs::metadata(&wal).unwrap().len() >= PREALLOCATED);
        }
        crate::conformance::check_all(&store).await;
        let runs = store.list_runs(Default::default()).await.unwrap();
        assert!(!runs.is_empty());

        // What a kill -9 leaves: the files as they are, the log's index not trusted.
        let image = tempfile::tempdir().unwrap();
        let copy = image.path().join("plexus.db");
        std::fs::copy(&db, &copy).unwrap();
        std::fs::copy(&wal, path_of(&copy)).unwrap();
        let recovered = SqliteStore::open(&copy, SqliteOptions::default()).unwrap();
        assert_eq!(
            recovered.list_runs(Default::default()).await.unwrap(),
            runs,
            "every committed run is read back past the zeros"
        );

        drop(store);
        assert!(wal.exists(), "the log is kept when the store closes");
        let reopened = SqliteStore::open(&db, SqliteOptions::default()).unwrap();
        assert_eq!(reopened.list_runs(Default::default()).await.unwrap(), runs);
    }

    #[test]
    fn growing_keeps_what_is_there_and_stops_at_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("x-wal");
        std::fs::write(&wal, b"frames").unwrap();
        grow(&wal).unwrap();
        let bytes = std::fs::read(&wal).unwrap();
        assert_eq!(bytes.len() as u64, PREALLOCATED);
        assert_eq!(&bytes[..6], b"frames");
        assert!(bytes[6..].iter().all(|b| *b == 0));
        grow(&wal).unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), PREALLOCATED);
    }
}
