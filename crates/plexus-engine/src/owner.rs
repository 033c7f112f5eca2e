//! Owner ids name the process that drives a run: `plexus/<host>/<pid>/<random>`. On the
//! same host a dead owner is detected at once (no need to wait for its lease).

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

pub fn new_owner_id() -> String {
    format!(
        "plexus/{}/{}/{}",
        hostname(),
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    )
}

/// Whether the owning process is alive; `None` when that cannot be told from here
/// (another host), in which case the lease decides.
pub fn owner_alive(owner: &str) -> Option<bool> {
    let mut parts = owner.split('/');
    if parts.next() != Some("plexus") {
        return None;
    }
    let host = parts.next()?;
    let pid: i32 = parts.next()?.parse().ok()?;
    if host != hostname() {
        return None;
    }
    if pid as u32 == std::process::id() {
        return Some(true);
    }
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    Some(r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}
