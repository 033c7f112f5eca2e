//! The template sandbox: templates that could build huge values (see
//! `plexus_core::template::bounded`) are rendered by a worker process whose data segment
//! the kernel caps (`RLIMIT_DATA`) and which gets a deadline. A template that exhausts
//! either kills only the worker; the step fails with a clear error, the engine's memory
//! never grows and its loop waits at most the deadline. The worker is started on first
//! use, kept for the next job, and started again after it was killed.
//!
//! Frames on the worker's stdin and stdout: a 4-byte big-endian length, then JSON (a
//! [`Job`] in, an [`Answer`] out).

use plexus_core::template::sandbox::{Job, Sandbox, run_here};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The worker's data segment: what a template's values may occupy (the worker itself
/// needs a few MiB).
pub const MEMORY_LIMIT: u64 = 128 << 20;

/// How long one rendering may take before the worker is killed: ten times what a
/// template that uses all its fuel needs (6 ms; 60 ms in a debug build, hence the
/// longer deadline there), and short enough that no run waits noticeably behind it.
/// Growing a string by doubling hits it long before the memory limit.
pub const DEADLINE: Duration = Duration::from_millis(if cfg!(debug_assertions) { 500 } else { 50 });

/// How long a new worker may take to start (loading the binary on a busy machine).
const STARTUP: Duration = Duration::from_secs(10);

/// Extra time per MiB of request, for copying a large context to the worker.
const PER_MIB: Duration = Duration::from_millis(20);

/// The largest answer accepted from the worker.
const MAX_ANSWER: usize = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Ok(Json),
    Err(String),
}

/// A [`Sandbox`] that runs jobs in a worker process: `program args...`, which must call
/// [`serve_worker`].
pub struct WorkerSandbox {
    program: PathBuf,
    args: Vec<OsString>,
    worker: Mutex<Option<Worker>>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

enum Failure {
    /// The worker did not answer in time.
    Deadline,
    /// The worker's pipes failed (it exited or was killed).
    Gone(String),
}

impl WorkerSandbox {
    pub fn new(program: PathBuf, args: Vec<OsString>) -> Self {
        WorkerSandbox {
            program,
            args,
            worker: Mutex::new(None),
        }
    }

    fn spawn(&self) -> Result<Worker, String> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the template sandbox: {e}"))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err("cannot start the template sandbox: no pipes".into());
        };
        for fd in [stdin.as_raw_fd(), stdout.as_raw_fd()] {
            set_nonblocking(fd).map_err(|e| format!("cannot start the template sandbox: {e}"))?;
        }
        let mut worker = Worker {
            child,
            stdin,
            stdout,
        };
        // The worker announces itself with an empty frame once it is ready, so its
        // start-up never counts against a job's deadline.
        let mut ready = [0u8; 4];
        let fd = worker.stdout.as_raw_fd();
        if read_exact(&mut worker.stdout, fd, &mut ready, Instant::now() + STARTUP).is_err() {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
            return Err("the template sandbox did not start".into());
        }
        tracing::debug!(pid = worker.child.id(), "template sandbox started");
        Ok(worker)
    }
}

impl Sandbox for WorkerSandbox {
    fn run(&self, job: &Job) -> Result<Json, String> {
        let request = serde_json::to_vec(job).map_err(|e| e.to_string())?;
        let mut slot = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        // A worker that died while idle (its parent thread ended, someone killed it) is
        // replaced before it can fail a job it never saw.
        if let Some(worker) = slot.as_mut()
            && !matches!(worker.child.try_wait(), Ok(None))
        {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(self.spawn()?);
        }
        let Some(worker) = slot.as_mut() else {
            return Err("the template sandbox is not running".into());
        };
        let allowance = PER_MIB * u32::try_from(request.len() >> 20).unwrap_or(u32::MAX);
        let budget = DEADLINE + allowance;
        let answer = worker.exchange(&request, Instant::now() + budget);
        let failure = match answer {
            Ok(bytes) => {
                return match serde_json::from_slice::<Answer>(&bytes) {
                    Ok(Answer::Ok(value)) => Ok(value),
                    Ok(Answer::Err(message)) => Err(message),
                    Err(e) => Err(format!("the template sandbox answered nonsense: {e}")),
                };
            }
            Err(failure) => failure,
        };
        // Whatever happened, this worker is done: kill it and learn why it ended.
        let Some(mut worker) = slot.take() else {
            return Err("the template sandbox is not running".into());
        };
        let _ = worker.child.kill();
        let status = worker.child.wait().ok();
        metrics::counter!("plexus_template_sandbox_kills_total").increment(1);
        Err(match failure {
            Failure::Deadline => format!(
                "the template ran longer than {} ms; do heavy work in a step, not in a template",
                budget.as_millis()
            ),
            Failure::Gone(why) => {
                use std::os::unix::process::ExitStatusExt;
                match status.and_then(|s| s.signal()) {
                    Some(libc::SIGABRT) | Some(libc::SIGSEGV) | Some(libc::SIGKILL) => format!(
                        "the template needed more than {} MiB of memory; do heavy work in a step, not in a template",
                        MEMORY_LIMIT >> 20
                    ),
                    _ => format!("the template sandbox failed: {why}"),
                }
            }
        })
    }
}

impl Worker {
    fn exchange(&mut self, request: &[u8], deadline: Instant) -> Result<Vec<u8>, Failure> {
        let len = u32::try_from(request.len())
            .map_err(|_| Failure::Gone("the template's context is too large".into()))?;
        let fd = self.stdin.as_raw_fd();
        write_all(&mut self.stdin, fd, &len.to_be_bytes(), deadline)?;
        write_all(&mut self.stdin, fd, request, deadline)?;
        let fd = self.stdout.as_raw_fd();
        let mut header = [0u8; 4];
        read_exact(&mut self.stdout, fd, &mut header, deadline)?;
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_ANSWER {
            return Err(Failure::Gone(format!("an answer of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        read_exact(&mut self.stdout, fd, &mut body, deadline)?;
        Ok(body)
    }
}

fn set_nonblocking(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is ready for `events` or the deadline passes.
fn wait_for(fd: i32, events: i16, deadline: Instant) -> Result<(), Failure> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Deadline);
        }
        let mut pollfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let millis = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pollfd, 1, millis) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Failure::Gone(e.to_string()));
            }
        }
    }
}

fn write_all(
    pipe: &mut ChildStdin,
    fd: i32,
    mut buf: &[u8],
    deadline: Instant,
) -> Result<(), Failure> {
    while !buf.is_empty() {
        match pipe.write(buf) {
            Ok(0) => return Err(Failure::Gone("the worker closed its input".into())),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_for(fd, libc::POLLOUT, deadline)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::Gone(e.to_string())),
        }
    }
    Ok(())
}

fn read_exact(
    pipe: &mut ChildStdout,
    fd: i32,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), Failure> {
    let mut filled = 0;
    while filled < buf.len() {
        match pipe.read(&mut buf[filled..]) {
            Ok(0) => return Err(Failure::Gone("the worker exited".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait_for(fd, libc::POLLIN, deadline)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::Gone(e.to_string())),
        }
    }
    Ok(())
}

/// The worker's side: caps its own data segment, then renders each job it reads until
/// its input closes (the engine exited or dropped it). Returns the exit code.
pub fn serve_worker() -> i32 {
    let limit = libc::rlimit {
        rlim_cur: MEMORY_LIMIT,
        rlim_max: MEMORY_LIMIT,
    };
    // SAFETY: setrlimit with a valid struct; only this process is affected.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } != 0 {
        return 2;
    }
    // Die with the engine even in the middle of a long rendering (after one, a closed
    // input ends the loop anyway). The signal comes when the thread that started the
    // worker ends, too; the engine then starts another.
    // SAFETY: prctl with integer arguments; affects only this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    if output.write_all(&[0; 4]).is_err() || output.flush().is_err() {
        return 0;
    }
    loop {
        let mut header = [0u8; 4];
        if input.read_exact(&mut header).is_err() {
            return 0;
        }
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        if input.read_exact(&mut body).is_err() {
            return 0;
        }
        let answer = match serde_json::from_slice::<Job>(&body) {
            Ok(job) => match run_here(&job) {
                Ok(value) => Answer::Ok(value),
                Err(message) => Answer::Err(message),
            },
            Err(e) => Answer::Err(format!("the template sandbox got a malformed job: {e}")),
        };
        drop(body);
        let Ok(bytes) = serde_json::to_vec(&answer) else {
            return 1;
        };
        let Ok(len) = u32::try_from(bytes.len()) else {
            return 1;
        };
        if output.write_all(&len.to_be_bytes()).is_err()
            || output.write_all(&bytes).is_err()
            || output.flush().is_err()
        {
            return 0;
        }
    }
}
