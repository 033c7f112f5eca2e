//! Steps cannot reach the engine's own state. Each step process starts in a mount
//! namespace of its own, set up in the child between `fork` and `exec`:
//!
//! - `/tmp` is an empty tmpfs of its own (private: it sees no other process's files,
//!   and nobody sees its own);
//! - the data directory (the store, the keys, every other attempt's scratch space) is
//!   covered by an empty tmpfs;
//! - the attempt's own scratch directory and the step's working directory are mounted
//!   back where they were, writable;
//! - everything else (the rest of the file system, the network) is as it was.
//!
//! A process running as root gets a mount namespace alone; any other user gets a user
//! namespace too, mapping only itself (so it is no more privileged than before). Where
//! neither is allowed (a container without the capability, a kernel with unprivileged
//! user namespaces turned off) the engine says so at start and in `/healthz`, and runs
//! steps as before unless isolation is required.
//!
//! Everything the child does is a system call on memory prepared by the parent: nothing
//! allocates after `fork`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Whether steps run isolated, and how, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    On { mechanism: &'static str },
    Off { reason: String },
}

#[derive(Debug)]
pub struct Isolation {
    availability: Availability,
    data_dir: PathBuf,
    /// Our ids, mapped to themselves in a user namespace (`None`: root, none needed).
    ids: Option<(u32, u32)>,
}

impl Isolation {
    /// Isolation switched off by configuration (benchmarks measure without it).
    pub fn disabled(reason: &str) -> Isolation {
        Isolation {
            availability: Availability::Off {
                reason: reason.to_owned(),
            },
            data_dir: PathBuf::new(),
            ids: None,
        }
    }

    /// Tries the whole setup once on `/bin/true` and keeps what it found.
    pub fn probe(data_dir: &Path) -> Isolation {
        let data_dir = std::fs::create_dir_all(data_dir)
            .and_then(|()| data_dir.canonicalize())
            .unwrap_or_else(|_| data_dir.to_path_buf());
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let ids = (uid != 0).then_some((uid, gid));
        let mechanism = if ids.is_some() {
            "user and mount namespaces"
        } else {
            "mount namespace"
        };
        let mut iso = Isolation {
            availability: Availability::On { mechanism },
            data_dir,
            ids,
        };
        let probe_dir = iso.data_dir.join("work");
        let _ = std::fs::create_dir_all(&probe_dir);
        let result = iso.setup(&probe_dir, Path::new("/")).and_then(|setup| {
            let request = super::spawn::Request {
                program: Path::new("/bin/true"),
                args: &[],
                env: &[],
                cwd: Path::new("/"),
                stdin: None,
            };
            let mut child = super::spawn::spawn(request, &setup)?;
            child.wait_blocking()
        });
        match result {
            Ok(status) if status.success() => {}
            Ok(status) => {
                iso.availability = Availability::Off {
                    reason: format!("a test process could not be isolated ({status})"),
                }
            }
            Err(e) => {
                iso.availability = Availability::Off {
                    reason: format!("{mechanism} not available here: {e}"),
                }
            }
        }
        iso
    }

    pub fn availability(&self) -> &Availability {
        &self.availability
    }

    pub fn is_on(&self) -> bool {
        matches!(self.availability, Availability::On { .. })
    }

    /// The setup that starts a step with `scratch` (the attempt's directory) and
    /// `workdir` reachable and writable; `None` when isolation is off. The process is
    /// started with [`super::spawn::spawn`].
    pub(crate) fn setup_for(&self, scratch: &Path, workdir: &Path) -> io::Result<Option<Setup>> {
        if !self.is_on() {
            return Ok(None);
        }
        self.setup(scratch, workdir).map(Some)
    }

    /// The steps the child takes, prepared in the parent.
    fn setup(&self, scratch: &Path, workdir: &Path) -> io::Result<Setup> {
        let tmp = Path::new("/tmp");
        let data = self.data_dir.as_path();
        let mut ops = Vec::new();
        match self.ids {
            Some((uid, gid)) => {
                ops.push(Op::Unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS));
                ops.push(Op::Write(c("/proc/self/setgroups")?, b"deny".to_vec()));
                ops.push(Op::Write(
                    c("/proc/self/uid_map")?,
                    format!("{uid} {uid} 1").into_bytes(),
                ));
                ops.push(Op::Write(
                    c("/proc/self/gid_map")?,
                    format!("{gid} {gid} 1").into_bytes(),
                ));
            }
            None => ops.push(Op::Unshare(libc::CLONE_NEWNS)),
        }
        // Nothing mounted here reaches the rest of the system.
        ops.push(Op::Mount {
            source: None,
            target: c("/")?,
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
        });
        // What must stay reachable, opened before anything covers it.
        let workdir = workdir
            .canonicalize()
            .unwrap_or_else(|_| workdir.to_path_buf());
        let scratch = scratch
            .canonicalize()
            .unwrap_or_else(|_| scratch.to_path_buf());
        let under = |p: &Path, root: &Path| p.starts_with(root) && p != root;
        let keep_workdir = under(&workdir, tmp) || workdir.starts_with(data);
        let mut keeps: Vec<(usize, &Path)> = Vec::new();
        if keep_workdir {
            keeps.push((0, &workdir));
        }
        keeps.push((1, &scratch));
        for (slot, path) in &keeps {
            ops.push(Op::Open(*slot, c(path)?));
        }
        ops.push(tmpfs("/tmp", "mode=1777")?);
        // The working directory, if it was under /tmp (and not inside the data directory).
        if keep_workdir && !workdir.starts_with(data) {
            bind_back(&mut ops, 0, &workdir)?;
        }
        // The data directory is covered wherever it is still to be seen: outside /tmp,
        // or inside a working directory brought back.
        let data_seen = !data.starts_with(tmp)
            || (keep_workdir && !workdir.starts_with(data) && data.starts_with(&workdir));
        if data_seen {
            ops.push(tmpfs_at(data, "mode=0755,size=64k")?);
        }
        if keep_workdir && workdir.starts_with(data) {
            // A working directory inside the data directory (a server started there) is
            // brought back, and what holds the engine's state in it covered again.
            bind_back(&mut ops, 0, &workdir)?;
            for name in STATE_DIRS {
                let path = data.join(name);
                if path.starts_with(&workdir) && path.is_dir() {
                    ops.push(tmpfs_at(&path, "mode=0755,size=64k")?);
                }
            }
            for name in STATE_FILES {
                let path = data.join(name);
                if path.starts_with(&workdir) && path.is_file() {
                    ops.push(Op::Mount {
                        source: Some(c("/dev/null")?),
                        target: c(&path)?,
                        fstype: None,
                        flags: libc::MS_BIND,
                        data: None,
                    });
                }
            }
        }
        bind_back(&mut ops, 1, &scratch)?;
        ops.push(Op::Close(0));
        ops.push(Op::Close(1));
        Ok(Setup { ops })
    }
}

/// What in the data directory holds the engine's state (see `plexus-store`, the server's
/// keys, the scratch pools, artifacts).
const STATE_DIRS: &[&str] = &["keys", "work", "artifacts"];
const STATE_FILES: &[&str] = &[
    "plexus.db",
    "plexus.db-wal",
    "plexus.db-shm",
    "plexus.db-journal",
    "serve.lock",
];

fn c(path: impl AsRef<Path>) -> io::Result<CString> {
    CString::new(path.as_ref().as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

fn tmpfs(target: &str, options: &str) -> io::Result<Op> {
    tmpfs_at(Path::new(target), options)
}

fn tmpfs_at(target: &Path, options: &str) -> io::Result<Op> {
    Ok(Op::Mount {
        source: Some(c("tmpfs")?),
        target: c(target)?,
        fstype: Some(c("tmpfs")?),
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some(c(options)?),
    })
}

/// Makes every directory down to `path` (they may be on a fresh tmpfs) and mounts the
/// directory opened in `slot` there.
fn bind_back(ops: &mut Vec<Op>, slot: usize, path: &Path) -> io::Result<()> {
    let mut ancestors: Vec<&Path> = path.ancestors().filter(|a| a.parent().is_some()).collect();
    ancestors.reverse();
    for dir in ancestors {
        ops.push(Op::Mkdir(c(dir)?));
    }
    ops.push(Op::BindFd(slot, c(path)?));
    Ok(())
}

/// One system call of the child's setup.
#[derive(Debug)]
enum Op {
    Unshare(libc::c_int),
    Write(CString, Vec<u8>),
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// Opens a directory (`O_PATH`) into a slot, to mount it back after it is covered.
    Open(usize, CString),
    Mkdir(CString),
    BindFd(usize, CString),
    Close(usize),
}

#[derive(Debug)]
pub(crate) struct Setup {
    ops: Vec<Op>,
}

impl Setup {
    /// Runs in the child before `exec`: system calls only, no allocation.
    pub(crate) fn run(&self) -> io::Result<()> {
        let fail = || Err(io::Error::last_os_error());
        let opt = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // "/proc/self/fd/" and up to 10 digits, made on the stack.
        let mut fd_path = [0u8; 32];
        for op in &self.ops {
            // SAFETY: each call gets NUL-terminated strings and buffers that live as long
            // as `self`; none of them keeps a pointer.
            unsafe {
                match op {
                    Op::Unshare(flags) => {
                        if libc::unshare(*flags) != 0 {
                            return fail();
                        }
                    }
                    Op::Write(path, bytes) => {
                        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd < 0 {
                            return fail();
                        }
                        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                        libc::close(fd);
                        if n < 0 {
                            return fail();
                        }
                    }
                    Op::Mount {
                        source,
                        target,
                        fstype,
                        flags,
                        data,
                    } => {
                        let r = libc::mount(
                            opt(source),
                            target.as_ptr(),
                            opt(fstype),
                            *flags,
                            opt(data).cast(),
                        );
                        if r != 0 {
                            return fail();
                        }
                    }
                    Op::Open(slot, path) => {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                        );
                        if fd < 0 {
                            return fail();
                        }
                        fds[*slot] = fd;
                    }
                    Op::Mkdir(path) => {
                        if libc::mkdir(path.as_ptr(), 0o755) != 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return fail();
                        }
                    }
                    Op::BindFd(slot, target) => {
                        proc_fd_path(&mut fd_path, fds[*slot]);
                        let r = libc::mount(
                            fd_path.as_ptr().cast(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        );
                        if r != 0 {
                            return fail();
                        }
                    }
                    Op::Close(slot) => {
                        if fds[*slot] >= 0 {
                            libc::close(fds[*slot]);
                            fds[*slot] = -1;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes `/proc/self/fd/<fd>` and a NUL into `buf`; its length.
fn proc_fd_path(buf: &mut [u8; 32], fd: libc::c_int) -> usize {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = fd.max(0) as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = PREFIX.len();
    for i in (0..len).rev() {
        buf[at] = digits[i];
        at += 1;
    }
    buf[at] = 0;
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_paths_are_written_without_allocating() {
        let mut buf = [0u8; 32];
        let len = proc_fd_path(&mut buf, 1234);
        assert_eq!(&buf[..len], b"/proc/self/fd/1234");
        assert_eq!(buf[len], 0);
        let len = proc_fd_path(&mut buf, 0);
        assert_eq!(&buf[..len], b"/proc/self/fd/0");
    }
}
