//! Starting an isolated step process without copying the engine.
//!
//! `Command::pre_exec` makes the standard library `fork` the whole engine to run the
//! setup, and copying a process costs in proportion to its memory: 1 ms for a small
//! engine, 20 ms for one of 300 MB, per step. This spawns the way `posix_spawn` does
//! instead — `clone(CLONE_VM | CLONE_VFORK)`: the child borrows the engine's memory (the
//! engine's thread waits meanwhile), runs the isolation setup and `execve`s — so the cost
//! does not grow with the engine. The child makes system calls only, on memory prepared
//! before the clone.

use super::isolation::Setup;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

/// What to start: an absolute program, its arguments, its whole environment, its
/// directory, its stdin (`None`: `/dev/null`).
pub struct Request<'a> {
    pub program: &'a Path,
    pub args: &'a [&'a OsStr],
    pub env: &'a [(OsString, OsString)],
    pub cwd: &'a Path,
    pub stdin: Option<OwnedFd>,
}

/// The child's view of what the parent prepared. `error` is shared memory: the child
/// writes the `errno` of the step that failed before it exits.
#[repr(C)]
struct ChildArgs<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    fds: [RawFd; 3],
    mask: libc::sigset_t,
    setup: &'a Setup,
    error: AtomicI32,
}

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent keeps alive until this child has
    // exec'd or exited (CLONE_VFORK); everything below is a system call.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let fail = |a: &ChildArgs| -> ! {
            a.error.store(*libc::__errno_location(), Ordering::Relaxed);
            libc::_exit(127)
        };
        // The engine's signal handlers are not the program's.
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if libc::setpgid(0, 0) != 0 {
            fail(a);
        }
        for (target, &fd) in a.fds.iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                fail(a);
            }
        }
        if a.setup.run().is_err() {
            fail(a);
        }
        if libc::chdir(a.cwd) != 0 {
            fail(a);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &a.mask, std::ptr::null_mut());
        libc::execve(a.path, a.argv, a.envp);
        fail(a)
    }
}

fn c(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the program isolated by `setup`; its stdout and stderr are pipes.
pub fn spawn(req: Request, setup: &Setup) -> io::Result<IsolatedChild> {
    let path = c(req.program.as_os_str())?;
    let mut argv_c = vec![path.clone()];
    for a in req.args {
        argv_c.push(c(a)?);
    }
    let env_c: Vec<CString> = req
        .env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.clone();
            kv.push("=");
            kv.push(v);
            c(&kv)
        })
        .collect::<io::Result<_>>()?;
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv, envp) = (ptrs(&argv_c), ptrs(&env_c));
    let cwd = c(req.cwd.as_os_str())?;
    let stdin = match req.stdin {
        Some(fd) => fd,
        None => std::fs::File::open("/dev/null")?.into(),
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut stack = vec![0u8; 256 * 1024];
    // SAFETY: zeroed sigsets are valid; sigfillset/pthread_sigmask fill them.
    let mut args = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut old: libc::sigset_t = std::mem::zeroed();
        // No signal handler of the engine may run on the child's borrowed memory.
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        ChildArgs {
            path: path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: cwd.as_ptr(),
            fds: [stdin.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            mask: old,
            setup,
            error: AtomicI32::new(0),
        }
    };
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !15;
    // SAFETY: the child runs `child_main` on `stack`, which outlives it (CLONE_VFORK
    // suspends this thread until the child exec'd or exited), and reads only `args`.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&mut args as *mut ChildArgs).cast(),
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &args.mask, std::ptr::null_mut()) };
    drop((stdin, out_w, err_w));
    if pid < 0 {
        return Err(clone_error);
    }
    let failed = args.error.load(Ordering::Relaxed);
    if failed != 0 {
        let mut status = 0;
        // SAFETY: reaping the child that just exited.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(failed));
    }
    drop(stack);
    IsolatedChild::new(pid, out_r, err_r)
}

/// Finds `program` in the `PATH` of `env` (or as given, if it has a `/`).
pub fn resolve(program: &OsStr, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
    let p = Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return Ok(p.to_path_buf());
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(p))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not in PATH", p.display()),
            )
        })
}

/// A process started by [`spawn`]: its pid, its output pipes, its end.
pub struct IsolatedChild {
    pid: i32,
    pidfd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    pub stdout: Option<tokio::net::unix::pipe::Receiver>,
    pub stderr: Option<tokio::net::unix::pipe::Receiver>,
    status: Option<ExitStatus>,
}

impl IsolatedChild {
    fn new(pid: i32, out: OwnedFd, err: OwnedFd) -> io::Result<IsolatedChild> {
        // SAFETY: pidfd_open returns a new descriptor for our own child.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
        let pidfd = if fd >= 0 {
            // SAFETY: the descriptor was just made, is ours, and the AsyncFd owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: `owned` stays open, the same descriptor, for the AsyncFd's life.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    owned,
                    tokio::io::Interest::READABLE,
                )
            };
            Some(registered.map_err(|e| io::Error::other(e.to_string()))?)
        } else {
            None
        };
        Ok(IsolatedChild {
            pid,
            pidfd,
            stdout: Some(tokio::net::unix::pipe::Receiver::from_owned_fd(out)?),
            stderr: Some(tokio::net::unix::pipe::Receiver::from_owned_fd(err)?),
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    fn reap(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, flags) };
        match r {
            0 => Ok(None),
            r if r < 0 => Err(io::Error::last_os_error()),
            _ => {
                let s = ExitStatus::from_raw(status);
                self.status = Some(s);
                Ok(Some(s))
            }
        }
    }

    /// Whether it ended (reaping it if so), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    /// Waits for the process to end, blocking the thread (the probe at start).
    pub fn wait_blocking(&mut self) -> io::Result<ExitStatus> {
        match self.reap(0)? {
            Some(s) => Ok(s),
            None => Err(io::Error::other("the process did not end")),
        }
    }

    /// Waits for the process to end (woken by its pidfd) and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.reap(libc::WNOHANG)? {
                return Ok(s);
            }
            match &self.pidfd {
                Some(fd) => {
                    let mut ready = fd.readable().await?;
                    ready.clear_ready();
                }
                // Kernels before 5.3: poll.
                None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    }
}

impl Drop for IsolatedChild {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // As `kill_on_drop`: a process the engine lets go of is killed, then reaped off
        // the caller's path so it does not stay a zombie.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let pid = self.pid;
        let reap = move || {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(reap);
            }
            Err(_) => reap(),
        }
    }
}
