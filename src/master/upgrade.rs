//! An upgrade: the master re-executes itself from the binary on disk, keeping its PID,
//! its sockets and its workers (the `Handover`), after that binary has checked the
//! config; the new master adopts them.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::os::{listen, set_cloexec, wanted_addresses, Signals};
use super::{Master, Phase, Places, Worker, HANDOVER_ENV};

/// What survives the master's re-execution.
#[derive(Debug, Serialize, Deserialize)]
struct Handover {
    generation: u64,
    exe: PathBuf,
    listeners: Vec<(String, RawFd)>,
    notify: RawFd,
    control: RawFd,
    /// `weir upgrade` clients waiting for the outcome.
    clients: Vec<RawFd>,
    /// Workers running: (pid, generation).
    workers: Vec<(i32, u64)>,
}

impl Master {
    /// After an upgrade's re-execution: take over what the old master held.
    pub(super) fn adopt(
        config: &Path,
        places: Places,
        text: &str,
    ) -> Result<(Master, bool), String> {
        let h: Handover = serde_json::from_str(text).map_err(|e| format!("handover: {e}"))?;
        // SAFETY: the descriptors were the old master's and were kept across exec for us;
        // nothing else in this process owns them.
        let own = |fd: RawFd| {
            set_cloexec(fd, true);
            unsafe { OwnedFd::from_raw_fd(fd) }
        };
        let inherited: Vec<(String, OwnedFd)> = h
            .listeners
            .iter()
            .map(|(a, fd)| (a.clone(), own(*fd)))
            .collect();
        let notify = UnixDatagram::from(own(h.notify));
        let control = UnixListener::from(own(h.control));
        let clients = h
            .clients
            .iter()
            .map(|fd| UnixStream::from(own(*fd)))
            .collect();
        let notify_path = places
            .dir()
            .join(format!("weir-master-{}.notify", std::process::id()));
        let workers = h
            .workers
            .iter()
            .map(|&(pid, generation)| Worker {
                pid,
                generation,
                phase: Phase::Serving,
                since: Instant::now(),
            })
            .collect();
        let config = crate::reload::absolute(config);
        // The new binary's reading of the config decides what to listen on; sockets it
        // no longer wants are closed here (old workers keep theirs until they exit).
        let mut listeners = Vec::new();
        let mut unbindable = None;
        match wanted_addresses(&config) {
            Ok(addrs) => {
                let mut inherited = inherited;
                for addr in addrs {
                    let key = addr.to_string();
                    match inherited.iter().position(|(a, _)| *a == key) {
                        Some(i) => listeners.push(inherited.swap_remove(i)),
                        None => match listen(addr) {
                            Ok(fd) => listeners.push((key, fd)),
                            Err(e) => unbindable = Some(e),
                        },
                    }
                }
            }
            Err(e) => {
                unbindable = Some(e);
                listeners = inherited;
            }
        }
        let mut master = Master {
            config,
            places,
            exe: h.exe,
            generation: h.generation,
            listeners,
            notify,
            notify_path,
            control,
            clients,
            workers,
            signals: Signals::register()?,
            stopping: false,
        };
        log::info!(
            "master {} re-executed from {} ({})",
            std::process::id(),
            master.exe.display(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(e) = &unbindable {
            log::error!("master: upgrade: no new worker: {e}");
            master.answer(&format!("error: the new master cannot start a worker: {e}"));
        }
        Ok((master, unbindable.is_none()))
    }

    /// Re-executes the master from the binary on disk, after that binary has checked
    /// the config.
    pub(super) fn upgrade(&mut self) {
        if self.starting() {
            self.answer("error: a worker is starting already; try again when it serves");
            return;
        }
        log::info!("master: upgrade: checking {} first", self.exe.display());
        let check = Command::new(&self.exe)
            .arg("check")
            .arg("-c")
            .arg(&self.config)
            .output();
        match check {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                log::error!("master: upgrade refused: the new binary's check failed: {why}");
                self.answer(&format!(
                    "error: `weir check` with the new binary failed: {why}"
                ));
                return;
            }
            Err(e) => {
                log::error!(
                    "master: upgrade refused: cannot run {}: {e}",
                    self.exe.display()
                );
                self.answer(&format!("error: cannot run {}: {e}", self.exe.display()));
                return;
            }
        }
        let handover = self.handover();
        let Ok(text) = serde_json::to_string(&handover) else {
            return;
        };
        let inherited = self.inherited_fds();
        for fd in &inherited {
            set_cloexec(*fd, false);
        }
        let args: VecDeque<OsString> = std::env::args_os().skip(1).collect();
        let err = Command::new(&self.exe)
            .args(args)
            .env(HANDOVER_ENV, text)
            .exec();
        for fd in &inherited {
            set_cloexec(*fd, true);
        }
        log::error!("master: upgrade failed: exec {}: {err}", self.exe.display());
        self.answer(&format!("error: exec {}: {err}", self.exe.display()));
    }

    fn inherited_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.listeners.iter().map(|(_, f)| f.as_raw_fd()).collect();
        fds.push(self.notify.as_raw_fd());
        fds.push(self.control.as_raw_fd());
        fds.extend(self.clients.iter().map(|c| c.as_raw_fd()));
        fds
    }

    fn handover(&self) -> Handover {
        Handover {
            generation: self.generation,
            exe: self.exe.clone(),
            listeners: self
                .listeners
                .iter()
                .map(|(a, f)| (a.clone(), f.as_raw_fd()))
                .collect(),
            notify: self.notify.as_raw_fd(),
            control: self.control.as_raw_fd(),
            clients: self.clients.iter().map(|c| c.as_raw_fd()).collect(),
            workers: self.workers.iter().map(|w| (w.pid, w.generation)).collect(),
        }
    }
}
