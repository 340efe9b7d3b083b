//! The master's system calls: listening sockets, its unix sockets, descriptors kept
//! across exec, signals, children.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Pingora's listen backlog.
const BACKLOG: i32 = 65535;

pub(super) struct Signals {
    pub term: Arc<AtomicBool>,
    pub int: Arc<AtomicBool>,
    pub hup: Arc<AtomicBool>,
    pub usr1: Arc<AtomicBool>,
    pub usr2: Arc<AtomicBool>,
}

impl Signals {
    pub fn register() -> Result<Signals, String> {
        use signal_hook::consts::*;
        let flag = |signal: i32| -> Result<Arc<AtomicBool>, String> {
            let f = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal, f.clone())
                .map_err(|e| format!("master: cannot handle signal {signal}: {e}"))?;
            Ok(f)
        };
        let term = flag(SIGTERM)?;
        signal_hook::flag::register(SIGQUIT, term.clone()).map_err(|e| e.to_string())?;
        Ok(Signals {
            term,
            int: flag(SIGINT)?,
            hup: flag(SIGHUP)?,
            usr1: flag(SIGUSR1)?,
            usr2: flag(SIGUSR2)?,
        })
    }
}

pub(super) fn took(flag: &AtomicBool) -> bool {
    flag.swap(false, Ordering::Relaxed)
}

/// The addresses to listen on, from the config (listeners, gateway ports, admin).
pub(super) fn wanted_addresses(config: &Path) -> Result<Vec<SocketAddr>, String> {
    let (_, snapshot) = crate::reload::load_once(config).map_err(|d| d.to_string())?;
    let startup = &snapshot.startup;
    let mut addrs: Vec<SocketAddr> = startup.binds.iter().map(|b| b.addr).collect();
    addrs.extend(startup.admin);
    Ok(addrs)
}

/// A listening TCP socket, with Pingora's backlog.
pub(super) fn listen(addr: SocketAddr) -> Result<OwnedFd, String> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
    // Tokio takes the socket as it is: it must not block.
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{addr}: {e}"))?;
    let fd = OwnedFd::from(listener);
    // SAFETY: a plain call on a socket this function owns.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        return Err(format!(
            "listen on {addr}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

pub(super) fn bind_notify(dir: &Path) -> Result<(UnixDatagram, PathBuf), String> {
    let path = dir.join(format!("weir-master-{}.notify", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    socket.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok((socket, path))
}

pub(super) fn bind_control(path: &Path) -> Result<UnixListener, String> {
    // A socket left by a master that is gone; one that answers belongs to a live master.
    if UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{}: another weir master is running",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

pub(super) fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a descriptor this process holds; failure leaves it as it was.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let flags = if on {
                flags | libc::FD_CLOEXEC
            } else {
                flags & !libc::FD_CLOEXEC
            };
            libc::fcntl(fd, libc::F_SETFD, flags);
        }
    }
}

pub(super) fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes no pointers.
    unsafe { libc::kill(pid, signal) };
}

/// Whether `pid` (a child) has exited, without reaping it.
pub(super) fn exited(pid: i32) -> bool {
    // SAFETY: waitid with a zeroed siginfo the kernel fills in.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() != 0
    }
}

pub(super) fn describe_exit(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended ({status})")
    }
}
