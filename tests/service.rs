//! Running as a service: systemd readiness (`sd_notify`), access-log
//! rotation (`SIGUSR1`) and daemon mode (`-d`), through the real binary.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn respond_config(port: u16, extra: &str) -> String {
    format!(
        "{extra}listeners:
  http: {{ bind: \"127.0.0.1:{port}\" }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
"
    )
}

#[test]
fn tells_systemd_it_is_ready_once_listening() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = free_port();
    let config = dir.path().join("weir.yaml");
    std::fs::write(&config, respond_config(port, "")).unwrap();
    let _weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        config,
        &[("NOTIFY_SOCKET", path_str(&socket_path))],
        &[],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving.
    assert_eq!(get(port, "g.test", "/").body, "ok");
}

#[test]
fn sigusr1_reopens_the_access_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("access.log");
    let config = dir.path().join("weir.yaml");
    let access = format!("access_log: {}\n", log.display());
    std::fs::write(&config, respond_config(port, &access)).unwrap();
    let weir = Weir::spawn(tempfile::tempdir().unwrap(), config, &[], &[port]);
    let logged = |file: &std::path::Path, path: &str| {
        std::fs::read_to_string(file).is_ok_and(|t| t.contains(&format!("\"path\":\"{path}\"")))
    };
    get(port, "g.test", "/before");
    assert!(within(Duration::from_secs(3), || logged(&log, "/before")));
    // logrotate: rename, then signal.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(weir.pid(), "USR1");
    assert!(
        within(Duration::from_secs(5), || {
            get(port, "g.test", "/after");
            logged(&log, "/after")
        }),
        "a new access.log: {}",
        weir.log()
    );
    assert!(
        logged(&rotated, "/before"),
        "the rotated file keeps its lines"
    );
}

/// Stops the daemon even when the test fails.
struct Daemon(Option<u32>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn runs_as_a_daemon_with_a_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("weir.yaml");
    std::fs::write(&config, respond_config(port, "")).unwrap();
    let pid_file = dir.path().join("weir.pid");
    let status = Command::new(WEIR)
        .args(["run", "-d", "-c"])
        .arg(&config)
        .env("WEIR_PID_FILE", &pid_file)
        .env("WEIR_UPGRADE_SOCK", dir.path().join("upgrade.sock"))
        .env("WEIR_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start weir -d");
    assert!(status.success(), "the foreground process exits: {status}");
    let mut daemon = Daemon(None);
    assert!(within(Duration::from_secs(20), || {
        daemon.0 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        daemon.0.is_some()
    }));
    assert!(within(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    assert_eq!(get(port, "g.test", "/").body, "ok");
    let pid = daemon.0.take().unwrap();
    signal(pid, "TERM");
    assert!(
        within(Duration::from_secs(20), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "the daemon stops on SIGTERM"
    );
}
