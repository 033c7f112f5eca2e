//! One `plexus serve` per data directory: it holds an exclusive lock on
//! `<data dir>/serve.lock` for its whole life. A second server on the same directory
//! would drive the same runs from a second engine and strand the ones the first hands
//! back while draining; it refuses to start (naming the holder) or, with
//! `--wait-for-lock`, waits until the first has stopped. `plexus run` processes take no
//! such lock: several run side by side, each driving its own runs.

use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Held for as long as the server runs; the lock goes with the process (also on
/// `kill -9`: the kernel releases it).
pub struct ServeLock {
    _file: File,
}

impl ServeLock {
    pub async fn acquire(data_dir: &Path, wait: bool, listen: &str) -> Result<ServeLock> {
        let path = data_dir.join("serve.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = holder(&mut file);
                if !wait {
                    bail!(
                        "another `plexus serve` holds the data directory {} ({holder}); stop it first, or start this one with --wait-for-lock to take over when it stops",
                        data_dir.display()
                    );
                }
                eprintln!(
                    "plexus serve: waiting for the server holding {} to stop ({holder})",
                    data_dir.display()
                );
                file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                    .await?
                    .with_context(|| format!("waiting for the lock on {}", path.display()))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        // Who holds it, for the next one to name.
        file.set_len(0)?;
        file.rewind()?;
        writeln!(
            file,
            "pid {} on {}, listening on {listen}, since {}",
            std::process::id(),
            plexus_engine::hostname(),
            chrono::DateTime::from_timestamp_millis(plexus_engine::now_ms() as i64)
                .map_or_else(|| "now".to_owned(), |t| t.to_rfc3339())
        )?;
        file.sync_all()?;
        Ok(ServeLock { _file: file })
    }
}

fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    match text.trim() {
        "" => "holder unknown".to_owned(),
        t => t.to_owned(),
    }
}
