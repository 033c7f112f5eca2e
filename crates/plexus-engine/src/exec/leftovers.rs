//! Attempts whose engine died (`kill -9`) may leave their process group running. Their
//! groups are recorded in the store; before a run is resumed, the groups still alive on
//! this host are killed, so a new attempt never races the old one.

use plexus_store::ProcessRecord;

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

/// Kills the recorded groups that are still the same processes; returns how many.
pub fn kill(records: &[ProcessRecord], host: &str) -> usize {
    let mut killed = 0;
    for r in records.iter().filter(|r| r.host == host && r.pgid > 0) {
        if start_ticks(r.pgid) == Some(r.start_ticks) {
            // SAFETY: killpg only sends a signal; the start time check makes sure the
            // group leader is the process we started.
            unsafe {
                libc::killpg(r.pgid, libc::SIGKILL);
            }
            tracing::info!(run = %r.run_id, step = %r.step_id, attempt = r.attempt, pgid = r.pgid, "killed a process group left by a stopped engine");
            killed += 1;
        }
    }
    killed
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
        let record = |start_ticks| ProcessRecord {
            run_id: "r".into(),
            step_id: "s".into(),
            item: None,
            attempt: 1,
            host: "here".into(),
            pgid: pid,
            start_ticks,
        };
        assert_eq!(
            kill(&[record(ticks + 1)], "here"),
            0,
            "a different start time is another process"
        );
        assert_eq!(
            kill(&[record(ticks)], "elsewhere"),
            0,
            "other hosts are not ours to kill"
        );
        assert_eq!(kill(&[record(ticks)], "here"), 1);
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}
