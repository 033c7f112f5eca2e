//! Attempts whose engine died (`kill -9`) may leave their process group running. Their
//! groups are recorded in the store; before a run is resumed, the groups still alive on
//! this host are killed, so a new attempt never races the old one.

use super::local::ProcessGroup;
use plexus_store::AttemptKey;

/// The start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_ticks(pid: i32) -> Option<u64> {
    // One read into a buffer large enough for the whole line: the kernel formats the
    // file anew for every read, and `read_to_string` would read it in growing pieces.
    let mut buf = [0u8; 2048];
    let file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = std::io::Read::read(&mut &file, &mut buf).ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: skip past it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Kills a recorded group if it is on this host and still the same process; returns
/// whether it did.
pub fn kill(key: &AttemptKey, group: &ProcessGroup, host: &str) -> bool {
    if group.host != host || group.pgid <= 0 || start_ticks(group.pgid) != Some(group.start_ticks) {
        return false;
    }
    // SAFETY: killpg only sends a signal; the start time check makes sure the group
    // leader is the process we started.
    unsafe {
        libc::killpg(group.pgid, libc::SIGKILL);
    }
    tracing::info!(run = %key.run_id, step = %key.step_id, attempt = key.attempt, pgid = group.pgid, "killed a process group left by a stopped engine");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_a_live_group_but_not_a_reused_pid() {
        let mut child = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::process_group(&mut child, 0);
        let mut child = child.arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let ticks = start_ticks(pid).expect("own child is visible");
        let key = AttemptKey {
            run_id: "r".into(),
            step_id: "s".into(),
            item: None,
            attempt: 1,
        };
        let group = |start_ticks| ProcessGroup {
            host: "here".into(),
            pgid: pid,
            start_ticks,
        };
        assert!(
            !kill(&key, &group(ticks + 1), "here"),
            "a different start time is another process"
        );
        assert!(
            !kill(&key, &group(ticks), "elsewhere"),
            "other hosts are not ours to kill"
        );
        assert!(kill(&key, &group(ticks), "here"));
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}
