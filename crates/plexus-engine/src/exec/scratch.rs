//! Scratch space of subprocess attempts: a directory that is `$PLEXUS_ARTIFACTS`, with
//! `$PLEXUS_OUTPUT` (and a python step's script) beside it.
//!
//! Directories are reused from one attempt to the next: creating and removing a
//! directory costs about 100 µs of kernel time on ext4, as much as the rest of what the
//! engine does for an attempt. A directory goes back to the pool only when the attempt
//! left it exactly as it got it (empty, a real directory, still ours to write, no output
//! file beside it) and is checked empty when it is handed out again; anything else is
//! removed and a fresh directory takes its place.
//!
//! Each engine has its own pool, `work/<pid>.<start ticks>.<n>/` in the data directory,
//! removed when the engine goes away; pools of engines that died (`kill -9`) are removed
//! by the next engine that starts on the same data directory.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Engines started in this process, so two engines in one process have two pools.
static ENGINES: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub struct ScratchPool {
    root: PathBuf,
    free: Mutex<Vec<u64>>,
    next: AtomicU64,
}

/// One attempt's scratch space, on loan from its pool.
#[derive(Debug)]
pub struct Scratch {
    id: u64,
    pub artifacts: PathBuf,
    pub output: PathBuf,
    pub script: PathBuf,
}

impl ScratchPool {
    /// A pool under `work_root`; nothing is created until an attempt needs it. Pools left
    /// by engines that are gone are removed in the background.
    pub fn new(work_root: &Path) -> ScratchPool {
        let pid = std::process::id();
        let ticks = super::leftovers::start_ticks(pid as i32).unwrap_or(0);
        let n = ENGINES.fetch_add(1, Ordering::Relaxed);
        let root = work_root.join(format!("{pid}.{ticks}.{n}"));
        let work_root = work_root.to_path_buf();
        let _ = std::thread::Builder::new()
            .name("plexus-scratch-sweep".into())
            .spawn(move || remove_dead_pools(&work_root));
        ScratchPool {
            root,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    fn paths(&self, id: u64) -> Scratch {
        Scratch {
            id,
            artifacts: self.root.join(id.to_string()),
            output: self.root.join(format!("{id}.output.json")),
            script: self.root.join(format!("{id}.py")),
        }
    }

    /// An empty directory for an attempt, reused when one is free.
    pub fn take(&self) -> io::Result<Scratch> {
        loop {
            let reused = self.free.lock().ok().and_then(|mut f| f.pop());
            let Some(id) = reused else { break };
            let s = self.paths(id);
            // Something may have written there since (a process that left its group).
            match std::fs::read_dir(&s.artifacts).map(|mut d| d.next().is_none()) {
                Ok(true) => return Ok(s),
                _ => discard(s),
            }
        }
        let s = self.paths(self.next.fetch_add(1, Ordering::Relaxed));
        match std::fs::create_dir(&s.artifacts) {
            Ok(()) => Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.root)?;
                std::fs::create_dir(&s.artifacts)?;
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes a directory back after its attempt (whose artifacts and output were taken).
    pub fn give_back(&self, s: Scratch) {
        if reusable(&s)
            && let Ok(mut free) = self.free.lock()
        {
            free.push(s.id);
            return;
        }
        discard(s);
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The directory is still a directory we can write (a step may have replaced it with a
/// symlink or changed its mode) and nothing was left beside it.
fn reusable(s: &Scratch) -> bool {
    let dir_ok = std::fs::symlink_metadata(&s.artifacts).is_ok_and(|m| {
        m.is_dir()
            && m.permissions().mode() & 0o700 == 0o700
            // SAFETY: geteuid has no preconditions and cannot fail.
            && m.uid() == unsafe { libc::geteuid() }
    });
    let absent = |p: &Path| matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound);
    dir_ok && absent(&s.output) && absent(&s.script)
}

/// Removes a scratch space that cannot be reused, off the caller's path.
fn discard(s: Scratch) {
    let remove = move || {
        // remove_dir_all removes a symlink itself, never what it points to.
        let _ = std::fs::remove_dir_all(&s.artifacts);
        let _ = std::fs::remove_file(&s.output);
        let _ = std::fs::remove_file(&s.script);
    };
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn_blocking(remove);
    } else {
        remove();
    }
}

/// Removes the pools of engines that are no longer running, and empty directories left
/// by earlier versions (which made one per run and never removed it).
fn remove_dead_pools(work_root: &Path) {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, ticks)) = name.to_str().and_then(pool_owner) else {
            // Only ever an empty directory: remove_dir refuses anything else.
            let _ = std::fs::remove_dir(entry.path());
            continue;
        };
        if super::leftovers::start_ticks(pid) != Some(ticks) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `<pid>.<start ticks>.<n>` → (pid, start ticks).
fn pool_owner(name: &str) -> Option<(i32, u64)> {
    let mut parts = name.split('.');
    let pid = parts.next()?.parse().ok()?;
    let ticks = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next().is_none().then_some((pid, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_untouched_directory_is_reused_and_a_used_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(&dir.path().join("work"));
        let first = pool.take().unwrap();
        let first_path = first.artifacts.clone();
        assert!(first_path.is_dir());
        pool.give_back(first);
        let again = pool.take().unwrap();
        assert_eq!(again.artifacts, first_path, "a clean directory is reused");

        // Output written beside it: not reused, and the file does not reach the next one.
        std::fs::write(&again.output, "{}").unwrap();
        pool.give_back(again);
        let next = pool.take().unwrap();
        assert_ne!(next.artifacts, first_path);
        assert!(!next.output.exists());

        // Something left inside (a subdirectory the collector did not empty).
        std::fs::create_dir(next.artifacts.join("sub")).unwrap();
        let next_path = next.artifacts.clone();
        pool.give_back(next);
        assert_ne!(pool.take().unwrap().artifacts, next_path);
    }

    #[tokio::test]
    async fn a_directory_replaced_by_a_symlink_or_filled_later_is_not_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let pool = ScratchPool::new(&dir.path().join("work"));

        let s = pool.take().unwrap();
        let path = s.artifacts.clone();
        std::fs::remove_dir(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        pool.give_back(s);
        let t = pool.take().unwrap();
        assert_ne!(t.artifacts, path);
        assert!(elsewhere.is_dir(), "the symlink's target is left alone");

        // Clean when given back, written to afterwards (a process that left its group).
        let late = t.artifacts.clone();
        pool.give_back(t);
        std::fs::write(late.join("late.txt"), "x").unwrap();
        let u = pool.take().unwrap();
        assert_ne!(u.artifacts, late);
        assert_eq!(std::fs::read_dir(&u.artifacts).unwrap().count(), 0);
    }

    #[test]
    fn pools_of_dead_engines_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let me = std::process::id();
        let ticks = super::super::leftovers::start_ticks(me as i32).unwrap();
        let live = work.join(format!("{me}.{ticks}.7"));
        let dead = work.join(format!("{me}.{}.7", ticks + 1));
        let other = work.join("not-a-pool");
        for d in [&live, &dead, &other] {
            std::fs::create_dir_all(d.join("0")).unwrap();
        }
        let old_run_dir = work.join("01a2021b-ba17-75e7-a0cf-a26c4e3a8644");
        std::fs::create_dir(&old_run_dir).unwrap();
        remove_dead_pools(&work);
        assert!(live.exists() && other.exists());
        assert!(!dead.exists());
        assert!(
            !old_run_dir.exists(),
            "an empty directory of an older version is removed"
        );
    }

    #[test]
    fn a_pool_is_removed_with_its_engine() {
        let dir = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(&dir.path().join("work"));
        let s = pool.take().unwrap();
        let root = s.artifacts.parent().unwrap().to_path_buf();
        assert!(root.is_dir());
        drop(pool);
        assert!(!root.exists());
    }
}
