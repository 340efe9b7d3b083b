//! The real `weir` binary as a process: start, wait until listening, logs, signals;
//! polling helpers and temp config directories.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// A running `weir` process with its own temp config directory.
pub struct Weir {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    log: PathBuf,
}

impl Weir {
    /// Writes `yaml` as the main config, starts weir on it and waits until every port in
    /// `ports` accepts connections.
    pub fn start(yaml: &str, ports: &[u16]) -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("weir.yaml");
        std::fs::write(&config, yaml).unwrap();
        Weir::start_in(dir, config, ports)
    }

    pub fn start_in(dir: tempfile::TempDir, config: PathBuf, ports: &[u16]) -> Weir {
        Weir::spawn(dir, config, &[], ports)
    }

    /// Starts weir with extra arguments and environment (`("NAME", "value")`).
    pub fn spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        extra: &[(&str, &str)],
        ports: &[u16],
    ) -> Weir {
        let log = dir.path().join(format!("weir-{}.log", fastrand_suffix()));
        let mut cmd = Command::new(WEIR);
        cmd.arg("run").arg("-c").arg(&config);
        for (k, v) in extra {
            if k.starts_with('-') {
                cmd.arg(k);
            } else {
                cmd.env(k, v);
            }
        }
        let child = cmd
            .env("WEIR_THREADS", "2")
            .env("RUST_LOG", "warn,weir=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start weir");
        let mut weir = Weir {
            child,
            dir,
            config,
            log,
        };
        weir.wait_ready(ports);
        weir
    }

    fn wait_ready(&mut self, ports: &[u16]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in ports {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("weir exited ({status}): {}", self.log());
                }
                if TcpStream::connect(("127.0.0.1", *port)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "weir did not listen on {port}: {}",
                    self.log()
                );
                thread::sleep(Duration::from_millis(25));
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fastrand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Sends a signal (`"HUP"`, `"QUIT"`, `"TERM"`) to a process.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{name} {pid} failed");
}

/// Polls `f` until it holds, for up to `limit`; returns how long it took.
pub fn took_within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Whether `f` comes to hold within `limit`.
pub fn within(limit: Duration, f: impl FnMut() -> bool) -> bool {
    took_within(limit, f).is_some()
}

/// Runs `weir` with `args` to completion.
pub fn weir_cmd(args: &[&str]) -> Output {
    Command::new(WEIR).args(args).output().expect("run weir")
}

/// Writes files (relative path → content) into a new temp dir; returns it.
pub fn config_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Weir {
    /// `start`, on one of weir's two proxy legs.
    pub fn start_on(leg: Leg, yaml: &str, ports: &[u16]) -> Weir {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("weir.yaml");
        std::fs::write(&config, yaml).unwrap();
        Weir::spawn(dir, config, leg.env(), ports)
    }
}
