//! `weir run --master`: a small supervising process that owns the listening sockets and
//! runs the serving process (a worker, `weir run -u`) beside it, as HAProxy's
//! master–worker mode does. Its PID is the one systemd (or a container engine) watches,
//! and it never changes:
//!
//! - an upgrade (`weir upgrade`, or SIGUSR2) first runs `NEW_BINARY check` on the config,
//!   then re-executes the master from the binary on disk, keeping its PID, its sockets
//!   and its workers; the new master starts a new worker on the same sockets and, once
//!   that worker is ready, retires the old one (SIGWINCH: stop accepting, finish what is
//!   in flight). A new worker that fails leaves the old one serving.
//! - SIGTERM / SIGINT / SIGHUP / SIGUSR1 go to the workers (stop with drain, stop now,
//!   reload, reopen the access log).
//! - Workers hand their readiness (`READY=1`, `RELOADING=1`) to the master, which tells
//!   systemd; a worker that dies is replaced (unless it dies at once: then the master
//!   stops, for systemd to restart it).
//!
//! Sockets reach a worker through Pingora's own hand-over (`-u`): the master sends them
//! over a unix socket in the run directory.
//!
//! The master is single-threaded on purpose: it forks and re-executes itself, and each
//! worker asks the kernel (PR_SET_PDEATHSIG) to stop it should the master die.

mod os;
mod upgrade;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sdnotify::{notify, WORKER_ENV};
use os::{
    bind_control, bind_notify, describe_exit, exited, kill, listen, took, wanted_addresses, Signals,
};

/// Carries the master's state across its own re-execution.
const HANDOVER_ENV: &str = "WEIR_MASTER_HANDOVER";
/// The main loop's tick.
const TICK: Duration = Duration::from_millis(20);
/// Longest wait for a new worker to be ready.
const START_LIMIT: Duration = Duration::from_secs(60);
/// A worker that dies sooner than this after it became ready is not restarted.
const CRASH_LOOP: Duration = Duration::from_secs(10);

/// Where the master's sockets live.
#[derive(Debug, Clone)]
pub struct Places {
    /// `weir upgrade` and `weir status` talk to the master here.
    pub control: PathBuf,
}

impl Places {
    fn dir(&self) -> PathBuf {
        self.control
            .parent()
            .map_or_else(std::env::temp_dir, Path::to_path_buf)
    }
}

/// The control socket's default place: `/run/weir/control.sock` when `/run/weir`
/// exists (the unit and the image make it), else in the temp directory.
pub fn default_control() -> PathBuf {
    let run = Path::new("/run/weir");
    if run.is_dir() {
        run.join("control.sock")
    } else {
        std::env::temp_dir().join("weir-control.sock")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Started, not ready yet.
    Starting,
    Serving,
    /// Told to finish and exit.
    Retiring,
}

#[derive(Debug)]
struct Worker {
    pid: i32,
    generation: u64,
    phase: Phase,
    since: Instant,
}

struct Master {
    config: PathBuf,
    places: Places,
    exe: PathBuf,
    generation: u64,
    listeners: Vec<(String, OwnedFd)>,
    notify: UnixDatagram,
    notify_path: PathBuf,
    control: UnixListener,
    clients: Vec<UnixStream>,
    workers: Vec<Worker>,
    signals: Signals,
    /// Set once the master is stopping: no new worker, exit when none is left.
    stopping: bool,
}

/// Runs the master until it and its workers stop; returns the exit code.
pub fn run(config: &Path, places: Places) -> i32 {
    let master = match std::env::var(HANDOVER_ENV) {
        Ok(text) => {
            std::env::remove_var(HANDOVER_ENV);
            Master::adopt(config, places, &text)
        }
        Err(_) => Master::first(config, places),
    };
    match master {
        Ok((mut m, start)) => m.supervise(start),
        Err(e) => {
            log::error!("master: {e}");
            1
        }
    }
}

impl Master {
    /// The first start: bind everything.
    fn first(config: &Path, places: Places) -> Result<(Master, bool), String> {
        let config = crate::reload::absolute(config);
        let mut listeners = Vec::new();
        for addr in wanted_addresses(&config)? {
            listeners.push((addr.to_string(), listen(addr)?));
        }
        let (notify, notify_path) = bind_notify(&places.dir())?;
        let control = bind_control(&places.control)?;
        let exe = std::env::current_exe().map_err(|e| format!("own binary: {e}"))?;
        log::info!(
            "master {} started ({} socket(s); control socket {})",
            std::process::id(),
            listeners.len(),
            places.control.display()
        );
        let master = Master {
            config,
            places,
            exe,
            generation: 0,
            listeners,
            notify,
            notify_path,
            control,
            clients: Vec::new(),
            workers: Vec::new(),
            signals: Signals::register()?,
            stopping: false,
        };
        Ok((master, true))
    }

    fn supervise(&mut self, start: bool) -> i32 {
        if start {
            if let Err(e) = self.start_worker() {
                log::error!("master: {e}");
                if self.serving().is_none() {
                    return 1;
                }
                self.answer(&format!("error: {e}"));
            }
        }
        loop {
            if let Some(code) = self.tick() {
                let _ = std::fs::remove_file(&self.notify_path);
                let _ = std::fs::remove_file(&self.places.control);
                return code;
            }
            std::thread::sleep(TICK);
        }
    }

    /// The worker that serves now (the newest ready one).
    fn serving(&self) -> Option<&Worker> {
        self.workers
            .iter()
            .filter(|w| w.phase == Phase::Serving)
            .max_by_key(|w| w.generation)
    }

    fn tick(&mut self) -> Option<i32> {
        self.handle_signals();
        self.read_notifications();
        self.accept_control();
        if let Some(code) = self.reap() {
            return Some(code);
        }
        self.check_start_limit();
        if self.stopping && self.workers.is_empty() {
            log::info!("master: every worker has stopped");
            return Some(0);
        }
        None
    }

    fn signal_workers(&self, signal: i32) {
        for w in &self.workers {
            kill(w.pid, signal);
        }
    }

    fn handle_signals(&mut self) {
        if took(&self.signals.int) {
            log::info!("master: SIGINT, stopping the workers now");
            self.begin_stop();
            self.signal_workers(libc::SIGINT);
        }
        if took(&self.signals.term) {
            log::info!("master: stopping the workers (drain, then grace)");
            self.begin_stop();
            self.signal_workers(libc::SIGTERM);
        }
        if self.stopping {
            return;
        }
        if took(&self.signals.hup) {
            if let Some(w) = self.serving() {
                kill(w.pid, libc::SIGHUP);
            }
        }
        if took(&self.signals.usr1) {
            self.signal_workers(libc::SIGUSR1);
        }
        if took(&self.signals.usr2) {
            self.upgrade();
        }
    }

    fn begin_stop(&mut self) {
        if !self.stopping {
            notify("STOPPING=1");
        }
        self.stopping = true;
        self.answer("error: weir is stopping");
    }

    /// Takes the workers' `sd_notify` messages.
    fn read_notifications(&mut self) {
        let mut buf = [0u8; 512];
        while let Ok(n) = self.notify.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let pid = text
                .lines()
                .find_map(|l| l.strip_prefix("WEIR_WORKER="))
                .and_then(|p| p.parse::<i32>().ok());
            let Some(pid) = pid else { continue };
            for state in text.lines() {
                self.on_state(pid, state);
            }
        }
    }

    fn on_state(&mut self, pid: i32, state: &str) {
        let newest = self.serving().map(|w| w.pid);
        let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        match (state, worker.phase) {
            ("READY=1", Phase::Starting) => {
                worker.phase = Phase::Serving;
                worker.since = Instant::now();
                let generation = worker.generation;
                self.promoted(pid, generation);
            }
            ("READY=1", Phase::Serving) | ("RELOADING=1", Phase::Serving)
                if newest == Some(pid) =>
            {
                notify(state);
            }
            _ => {}
        }
    }

    /// A new worker is ready: the others retire.
    fn promoted(&mut self, pid: i32, generation: u64) {
        for w in self.workers.iter_mut().filter(|w| w.pid != pid) {
            if w.phase != Phase::Retiring {
                log::info!("master: worker {} retires", w.pid);
                kill(w.pid, libc::SIGWINCH);
                w.phase = Phase::Retiring;
            }
        }
        log::info!("master: worker {pid} (generation {generation}) serves");
        notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        self.answer(&format!(
            "ok: weir {} serves (worker {pid}, generation {generation})",
            env!("CARGO_PKG_VERSION")
        ));
    }

    /// Replies to every waiting `weir upgrade`.
    fn answer(&mut self, line: &str) {
        for mut c in self.clients.drain(..) {
            let _ = writeln!(c, "{line}");
        }
    }

    fn accept_control(&mut self) {
        while let Ok((stream, _)) = self.control.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            let _ = reader.read_line(&mut line);
            match line.trim() {
                "upgrade" if self.stopping => {
                    let _ = writeln!(&stream, "error: weir is stopping");
                }
                "upgrade" => {
                    self.clients.push(stream);
                    self.upgrade();
                }
                "status" => {
                    let _ = writeln!(&stream, "{}", self.status());
                }
                other => {
                    let _ = writeln!(&stream, "error: unknown command {other:?}");
                }
            }
        }
    }

    fn status(&self) -> String {
        let workers: Vec<String> = self
            .workers
            .iter()
            .map(|w| format!("{} ({:?}, generation {})", w.pid, w.phase, w.generation))
            .collect();
        format!(
            "ok: master {} runs weir {}; workers: {}",
            std::process::id(),
            env!("CARGO_PKG_VERSION"),
            workers.join(", ")
        )
    }

    /// Collects exited workers. Some(code): the master should exit.
    fn reap(&mut self) -> Option<i32> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid pointer to a local.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return None;
            }
            let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let worker = self.workers.remove(i);
            let how = describe_exit(status);
            match worker.phase {
                Phase::Retiring => log::info!("master: worker {pid} finished ({how})"),
                _ if self.stopping => log::info!("master: worker {pid} stopped ({how})"),
                Phase::Starting => {
                    log::error!("master: new worker {pid} {how} before it was ready");
                    self.answer(&format!(
                        "error: the new worker {how} before it was ready; the old one still serves (see the log)"
                    ));
                    if self.workers.is_empty() {
                        return Some(1);
                    }
                }
                Phase::Serving => {
                    log::error!("master: worker {pid} {how}");
                    if self.serving().is_some() || self.starting() {
                        continue;
                    }
                    if worker.since.elapsed() < CRASH_LOOP {
                        log::error!("master: the worker died soon after it started; stopping");
                        return Some(1);
                    }
                    if let Err(e) = self.start_worker() {
                        log::error!("master: cannot replace the worker: {e}");
                        return Some(1);
                    }
                }
            }
        }
    }

    fn starting(&self) -> bool {
        self.workers.iter().any(|w| w.phase == Phase::Starting)
    }

    fn check_start_limit(&mut self) {
        let late: Vec<i32> = self
            .workers
            .iter()
            .filter(|w| w.phase == Phase::Starting && w.since.elapsed() > START_LIMIT)
            .map(|w| w.pid)
            .collect();
        for pid in late {
            log::error!("master: worker {pid} not ready after {START_LIMIT:?}; stopping it");
            kill(pid, libc::SIGKILL);
        }
    }

    /// Starts a worker and hands it the listening sockets.
    fn start_worker(&mut self) -> Result<(), String> {
        self.generation += 1;
        let sock = self.places.dir().join(format!(
            "weir-{}-{}.upgrade.sock",
            std::process::id(),
            self.generation
        ));
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(&self.exe);
        cmd.arg("run")
            .arg("-u")
            .arg("-c")
            .arg(&self.config)
            .env(WORKER_ENV, std::process::id().to_string())
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("WEIR_UPGRADE_SOCK", &sock);
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        let pid = child.id() as i32;
        // Reaped by waitpid in `reap`.
        drop(child);
        self.workers.push(Worker {
            pid,
            generation: self.generation,
            phase: Phase::Starting,
            since: Instant::now(),
        });
        log::info!(
            "master: started worker {pid} (generation {})",
            self.generation
        );
        self.hand_sockets(pid, &sock)
    }

    /// Sends the sockets once the worker listens for them (it loads its config first).
    fn hand_sockets(&self, pid: i32, sock: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        while !sock.exists() {
            // SAFETY: kill with signal 0 only checks that the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0 && !exited(pid);
            if !alive || Instant::now() > deadline {
                return Ok(()); // `reap` or the start limit reports it.
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut fds = pingora::server::Fds::new();
        for (addr, fd) in &self.listeners {
            fds.add(addr.clone(), fd.as_raw_fd());
        }
        let path = sock.to_string_lossy().into_owned();
        fds.send_to_sock(path.as_str())
            .map(|_| ())
            .map_err(|e| format!("handing sockets to worker {pid}: {e}"))
    }
}
