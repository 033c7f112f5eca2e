//! Held shells: a shell step's `sh` is started before its attempt's start is durable and
//! holds until then, so loading the shell (about a millisecond on a small VM, as long as
//! the whole commit) overlaps the commit instead of following it.
//!
//! A held shell is `sh -s`: it reads its script from its stdin, a pipe the engine writes
//! only once the start is durable ([`Gate::open`]). Until then it has nothing to run; if
//! the engine gives the attempt up or goes away (even `kill -9`), the pipe closes and the
//! shell exits at end-of-file having run nothing. Since a held shell does not know its
//! step when it starts, a few are kept started ahead of any attempt ([`WarmShells`]):
//! a step that follows another then waits only for its commit, not for `sh` to load.
//!
//! The script sets up what `sh -c` would have had from its exec: an empty stdin, the
//! step's variables (exported, so its commands see exactly what an ungated attempt's
//! do), its working directory; then the step's command, on the same line so that the
//! line numbers in the shell's messages stay those of the command.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// A shell started and waiting for its script.
pub struct HeldShell {
    pub child: super::process::StepChild,
    pub stdin: std::io::PipeWriter,
    pub pgid: i32,
    /// Start time of the process (see [`super::leftovers::start_ticks`]), if it could
    /// be read.
    pub start_ticks: Option<u64>,
}

/// Starts `sh -s` as any attempt's process is started ([`super::process::clean_command`]),
/// reading its script from a pipe.
pub fn start() -> io::Result<HeldShell> {
    let (reader, writer) = io::pipe()?;
    let mut cmd = super::process::clean_command("/bin/sh");
    // The script changes to the step's directory; until then the shell keeps none busy.
    cmd.arg("-s").current_dir("/").stdin(reader);
    let child = super::process::StepChild::Plain(cmd.spawn()?);
    held(child, writer)
}

/// A held shell started isolated by `setup` (for one attempt: see [`super::isolation`]).
pub(crate) fn start_isolated(setup: &super::isolation::Setup) -> io::Result<HeldShell> {
    let (reader, writer) = io::pipe()?;
    let env = super::process::clean_env([]);
    let request = super::spawn::Request {
        program: Path::new("/bin/sh"),
        args: &[OsStr::new("-s")],
        env: &env,
        cwd: Path::new("/"),
        stdin: Some(reader.into()),
    };
    let child = super::spawn::spawn(request, setup)?;
    held(super::process::StepChild::Isolated(child), writer)
}

fn held(child: super::process::StepChild, writer: io::PipeWriter) -> io::Result<HeldShell> {
    let pgid = child.id().map_or(0, |p| p as i32);
    let start_ticks = super::leftovers::start_ticks(pgid);
    Ok(HeldShell {
        child,
        stdin: writer,
        pgid,
        start_ticks,
    })
}

/// Shells started ahead of the attempts that will use them, at most `cap` idle at once.
/// Each attempt that takes one starts its replacement while its own start is being made
/// durable, so the pool keeps the size that the engine's shell steps need at once.
pub struct WarmShells {
    idle: Mutex<Vec<HeldShell>>,
    cap: usize,
}

impl std::fmt::Debug for WarmShells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map_or(0, |v| v.len());
        write!(f, "WarmShells {{ idle: {idle}, cap: {} }}", self.cap)
    }
}

impl WarmShells {
    pub fn new(cap: usize) -> WarmShells {
        WarmShells {
            idle: Mutex::new(Vec::new()),
            cap,
        }
    }

    /// An idle shell that is still alive, or a new one.
    pub fn take(&self) -> io::Result<HeldShell> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(mut shell) = idle else { break };
            // One that ended while it waited (killed from outside) is not handed out.
            if let super::process::StepChild::Plain(c) = &mut shell.child
                && matches!(c.try_wait(), Ok(None))
            {
                return Ok(shell);
            }
        }
        start()
    }

    /// Starts one shell for a later attempt, unless `cap` are already waiting.
    pub fn refill(&self) {
        let room = self.idle.lock().is_ok_and(|v| v.len() < self.cap);
        if !room {
            return;
        }
        match start() {
            Ok(shell) => {
                if let Ok(mut idle) = self.idle.lock()
                    && idle.len() < self.cap
                {
                    idle.push(shell);
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot start a shell ahead of its step"),
        }
    }
}

/// Isolated shells started ahead of their attempts. An isolated shell's namespace holds
/// one scratch directory and (when it must be mounted back) one working directory, so
/// each waits with a scratch directory of its own, for a step in the same working
/// directory — the next step of the same run, usually. At most `cap` wait; the oldest
/// goes when another is made.
pub struct WarmIsolated {
    idle: Mutex<Vec<(std::path::PathBuf, super::scratch::Scratch, HeldShell)>>,
    cap: usize,
}

impl std::fmt::Debug for WarmIsolated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().map_or(0, |v| v.len());
        write!(f, "WarmIsolated {{ idle: {idle}, cap: {} }}", self.cap)
    }
}

impl WarmIsolated {
    pub fn new(cap: usize) -> WarmIsolated {
        WarmIsolated {
            idle: Mutex::new(Vec::new()),
            cap,
        }
    }

    /// A live shell made for `cwd`, with its scratch directory.
    pub fn take(&self, cwd: &Path) -> Option<(super::scratch::Scratch, HeldShell)> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.iter().position(|(dir, _, _)| dir == cwd) {
            let (_, scratch, mut shell) = idle.remove(i);
            let alive = match &mut shell.child {
                super::process::StepChild::Isolated(c) => matches!(c.try_wait(), Ok(None)),
                super::process::StepChild::Plain(c) => matches!(c.try_wait(), Ok(None)),
            };
            if alive {
                return Some((scratch, shell));
            }
        }
        None
    }

    /// Starts one isolated shell for a later step in `cwd`.
    pub fn refill(
        &self,
        cwd: &Path,
        pool: &super::scratch::ScratchPool,
        isolation: &super::isolation::Isolation,
    ) {
        if self.cap == 0 {
            return;
        }
        let Ok(scratch) = pool.take() else { return };
        let made = isolation
            .setup_for(&scratch.dir, cwd)
            .and_then(|setup| setup.ok_or_else(|| io::Error::other("isolation is off")))
            .and_then(|setup| start_isolated(&setup));
        let shell = match made {
            Ok(shell) => shell,
            Err(e) => {
                tracing::debug!(error = %e, "cannot start an isolated shell ahead of its step");
                pool.give_back(scratch);
                return;
            }
        };
        let evicted = match self.idle.lock() {
            Ok(mut idle) => {
                idle.push((cwd.to_path_buf(), scratch, shell));
                (idle.len() > self.cap).then(|| idle.remove(0))
            }
            Err(_) => None,
        };
        if let Some((_, scratch, shell)) = evicted {
            drop(shell); // killed: it never got a script
            pool.give_back(scratch);
        }
    }
}

#[derive(Default)]
struct Slot {
    /// The held shell's stdin and its script, once the attempt has them.
    fed: Option<(std::io::PipeWriter, Vec<u8>)>,
    opened: bool,
    dropped: bool,
}

/// The engine's end of a held attempt: opened once the attempt's start is durable, which
/// writes the script into the shell. The attempt's task is not woken for it (it only
/// learns, once the process ended, whether the gate opened). Dropped unopened, the shell
/// reads end-of-file and exits without running anything.
pub struct Gate {
    slot: Arc<Mutex<Slot>>,
    opened: Option<oneshot::Sender<()>>,
}

/// The attempt's end of its [`Gate`]: it hands over the shell and script when it has them.
pub struct HeldGate {
    slot: Arc<Mutex<Slot>>,
    pub(crate) opened: oneshot::Receiver<()>,
}

/// A new gate for a held shell step.
pub fn gate() -> (Gate, HeldGate) {
    let slot = Arc::new(Mutex::new(Slot::default()));
    let (opened_tx, opened) = oneshot::channel();
    (
        Gate {
            slot: Arc::clone(&slot),
            opened: Some(opened_tx),
        },
        HeldGate { slot, opened },
    )
}

impl Gate {
    /// Lets the held command run: its script is written now, or as soon as the attempt
    /// hands it over.
    pub fn open(mut self) {
        if let Ok(mut slot) = self.slot.lock() {
            slot.opened = true;
            if let Some((stdin, script)) = slot.fed.take() {
                feed(stdin, script);
            }
        }
        if let Some(opened) = self.opened.take() {
            let _ = opened.send(());
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if self.opened.is_some()
            && let Ok(mut slot) = self.slot.lock()
        {
            slot.dropped = true;
            slot.fed = None; // closes the shell's stdin: it exits having run nothing
        }
    }
}

impl HeldGate {
    /// Hands over the shell's stdin and its script; written at once if the gate is open.
    pub fn provide(&self, stdin: std::io::PipeWriter, script: Vec<u8>) {
        let Ok(mut slot) = self.slot.lock() else {
            return;
        };
        if slot.opened {
            drop(slot);
            feed(stdin, script);
        } else if !slot.dropped {
            slot.fed = Some((stdin, script));
        }
    }
}

/// Writes the script and closes the pipe. A script fits the pipe's buffer (64 KiB, at
/// least 4 KiB when the system is short of pipe memory) and is written at once without
/// blocking; the rest of a longer one is written by a thread of its own as the shell
/// reads. If the shell is gone the write fails, and its attempt reports how it ended.
fn feed(stdin: std::io::PipeWriter, script: Vec<u8>) {
    let fd = stdin.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; only the status flags change.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let written = match (&stdin).write(&script) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return,
    };
    if written < script.len() {
        // Without a thread the shell reads a cut script and fails with a syntax error.
        let _ = std::thread::Builder::new()
            .name("plexus-script".into())
            .spawn(move || {
                // SAFETY: as above.
                unsafe {
                    let flags = libc::fcntl(fd, libc::F_GETFL);
                    libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
                }
                let _ = (&stdin).write_all(&script[written..]);
            });
    }
}

/// Whether a step's variables can be set by its held shell's script: names the shell can
/// export, values on one line (so the command's line numbers are unchanged).
pub fn can_hold<'a>(vars: impl IntoIterator<Item = (&'a str, &'a OsStr)>) -> bool {
    vars.into_iter().all(|(name, value)| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !value.as_bytes().iter().any(|b| matches!(b, b'\n' | 0))
    })
}

/// Appends a shell word that stands for `s` exactly (any bytes but NUL, as in a path).
fn quote(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(br"'\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// The script a held shell runs: stdin emptied, variables exported, the working
/// directory entered (physically, as `sh -c` started there would see it), the command.
/// The whole script is one `{ ... }` group, parsed before anything in it runs, so the
/// shell reads it all from the pipe before `exec 0</dev/null` takes the pipe away.
pub fn script<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a OsStr)>,
    workdir: &Path,
    command: &str,
) -> Vec<u8> {
    let mut s = Vec::with_capacity(command.len() + 512);
    s.extend_from_slice(b"{ exec 0</dev/null; cd -P -- ");
    quote(&mut s, workdir.as_os_str().as_bytes());
    s.extend_from_slice(b" || exit 126; unset OLDPWD; ");
    for (name, value) in vars {
        s.extend_from_slice(b"export ");
        s.extend_from_slice(name.as_bytes());
        s.push(b'=');
        quote(&mut s, value.as_bytes());
        s.extend_from_slice(b"; ");
    }
    s.extend_from_slice(command.as_bytes());
    // The blank line ends a trailing backslash or comment before the group closes.
    s.extend_from_slice(b"\n\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_every_byte() {
        let quoted = |s: &[u8]| {
            let mut out = Vec::new();
            quote(&mut out, s);
            out
        };
        assert_eq!(quoted(b"it's"), br"'it'\''s'");
        assert_eq!(quoted(b""), b"''");
        assert_eq!(quoted(b"\xff$x"), b"'\xff$x'");
    }

    #[test]
    fn only_exportable_variables_can_be_held() {
        let os = OsStr::new;
        assert!(can_hold([("A_1", os("x y 'z'")), ("_b", os(""))]));
        assert!(!can_hold([("1A", os("x"))]));
        assert!(!can_hold([("A-B", os("x"))]));
        assert!(!can_hold([("", os("x"))]));
        assert!(!can_hold([("A", os("two\nlines"))]));
    }
}
