//! Scratch space of subprocess attempts: a directory of its own per attempt holding
//! `artifacts/` (`$PLEXUS_ARTIFACTS`), `output.json` (`$PLEXUS_OUTPUT`) and a python
//! step's script — one directory, so an isolated step can be given exactly it (see
//! [`super::isolation`]).
//!
//! Directories are reused from one attempt to the next: creating and removing a
//! directory costs about 100 µs of kernel time on ext4, as much as the rest of what the
//! engine does for an attempt. A directory goes back to the pool only when the attempt
//! left it exactly as it got it (empty, a real directory, still ours to write, no output
//! file beside it) and is checked empty when it is handed out again; anything else is
//! removed and a fresh directory takes its place.
//!
//! Each engine has its own pool, `work/pool-<id>/` in the data directory, and holds an
//! exclusive `flock` on `work/pool-<id>.lock` for as long as it lives. The pool is removed
//! when the engine goes away; a pool whose lock nobody holds belongs to an engine that
//! died (`kill -9`) and is removed by the next engine that starts on the same data
//! directory. A lock, unlike a process id, means the same thing to engines in different
//! PID namespaces (containers sharing a volume).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct ScratchPool {
    root: PathBuf,
    free: Mutex<Vec<u64>>,
    next: AtomicU64,
    /// The pool's lock file, held for its life. If it cannot be made, the pool is named
    /// so that no sweep removes it while it has anything in it.
    lock: Option<(std::fs::File, PathBuf)>,
}

/// One attempt's scratch space, on loan from its pool.
#[derive(Debug)]
pub struct Scratch {
    id: u64,
    /// Holds the three below and nothing else.
    pub dir: PathBuf,
    pub artifacts: PathBuf,
    pub output: PathBuf,
    pub script: PathBuf,
}

impl ScratchPool {
    /// A pool under `work_root` (its directory is made when an attempt first needs it).
    /// Pools left by engines that are gone are removed first.
    pub fn new(work_root: &Path) -> ScratchPool {
        let pool = ScratchPool::locked(work_root);
        // Usually a handful of entries: done before the engine starts, not left to race
        // a short-lived process's exit.
        remove_dead_pools(work_root);
        pool
    }

    /// A pool with its lock taken, without sweeping.
    fn locked(work_root: &Path) -> ScratchPool {
        let name = format!("pool-{}", uuid::Uuid::now_v7().simple());
        let lock_path = work_root.join(format!("{name}.lock"));
        let lock = std::fs::create_dir_all(work_root)
            .and_then(|()| std::fs::File::create(&lock_path))
            .ok()
            .filter(try_lock)
            .map(|file| (file, lock_path));
        let root = match lock {
            Some(_) => work_root.join(name),
            None => work_root.join(format!("unlocked-{name}")),
        };
        ScratchPool {
            root,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
            lock,
        }
    }

    fn paths(&self, id: u64) -> Scratch {
        let dir = self.root.join(id.to_string());
        Scratch {
            id,
            artifacts: dir.join("artifacts"),
            output: dir.join("output.json"),
            script: dir.join("script.py"),
            dir,
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
        match std::fs::create_dir(&s.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.root)?;
                std::fs::create_dir(&s.dir)?;
            }
            Err(e) => return Err(e),
        }
        std::fs::create_dir(&s.artifacts)?;
        Ok(s)
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
        if let Some((_, path)) = &self.lock {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Takes the exclusive lock on `file` if nobody holds it; never waits.
fn try_lock(file: &std::fs::File) -> bool {
    // SAFETY: flock only acts on the open descriptor it is given.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
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
    // Nothing else was left in the attempt's directory either.
    let only_artifacts = std::fs::read_dir(&s.dir).is_ok_and(|d| d.count() == 1);
    dir_ok && absent(&s.output) && absent(&s.script) && only_artifacts
}

/// Removes a scratch space that cannot be reused, off the caller's path.
fn discard(s: Scratch) {
    let remove = move || {
        // remove_dir_all removes a symlink itself, never what it points to.
        let _ = std::fs::remove_dir_all(&s.dir);
    };
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn_blocking(remove);
    } else {
        remove();
    }
}

/// Removes the pools of engines that are no longer running (nobody holds their lock),
/// and empty directories left by earlier versions (one per run, never removed).
fn remove_dead_pools(work_root: &Path) {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if let Some(pool) = name
            .strip_suffix(".lock")
            .filter(|p| p.starts_with("pool-"))
        {
            // Held while removing (until `lock` drops), so no other sweep races this one.
            let lock = std::fs::File::open(&path).ok().filter(try_lock);
            if lock.is_some() {
                let _ = std::fs::remove_dir_all(work_root.join(pool));
                let _ = std::fs::remove_file(&path);
            }
        } else if name.starts_with("pool-") {
            // A pool's lock is made before its directory and removed after it: a pool
            // without one is what a removal left half done.
            if !work_root.join(format!("{name}.lock")).exists() {
                let _ = std::fs::remove_dir_all(&path);
            }
        } else {
            // Only ever an empty directory: remove_dir refuses anything else.
            let _ = std::fs::remove_dir(&path);
        }
    }
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

    #[tokio::test]
    async fn pools_of_dead_engines_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let live = ScratchPool::locked(&work);
        let live_dir = live.take().unwrap().artifacts;
        // A dead engine's pool: its lock file is there, nobody holds it.
        let dead = work.join("pool-dead");
        std::fs::create_dir_all(dead.join("0")).unwrap();
        std::fs::write(work.join("pool-dead.lock"), "").unwrap();
        let half_removed = work.join("pool-half");
        std::fs::create_dir_all(half_removed.join("3")).unwrap();
        let other = work.join("not-a-pool");
        std::fs::create_dir_all(other.join("0")).unwrap();
        let old_run_dir = work.join("01a2021b-ba17-75e7-a0cf-a26c4e3a8644");
        std::fs::create_dir(&old_run_dir).unwrap();

        remove_dead_pools(&work);
        assert!(live_dir.exists(), "a live engine's pool is kept");
        assert!(!dead.exists() && !work.join("pool-dead.lock").exists());
        assert!(!half_removed.exists());
        assert!(
            other.exists(),
            "what is not empty and not a pool is left alone"
        );
        assert!(
            !old_run_dir.exists(),
            "an empty directory of an older version is removed"
        );
        drop(live);
        assert!(!live_dir.exists());
    }

    #[test]
    fn a_pool_is_removed_with_its_engine() {
        let dir = tempfile::tempdir().unwrap();
        let pool = ScratchPool::new(&dir.path().join("work"));
        let s = pool.take().unwrap();
        let root = s.dir.parent().unwrap().to_path_buf();
        assert!(root.is_dir());
        drop(pool);
        assert!(!root.exists());
    }
}
