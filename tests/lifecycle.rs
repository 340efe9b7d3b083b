//! Running weir as a service, through the real binary: a stop drains and then finishes
//! what is in flight; `weir reload` and `weir healthcheck` report the running weir's
//! answer; `weir run --master` upgrades its worker under load (plain and TLS, kept-alive
//! and new connections) with no failed request, and keeps the old worker when the new
//! one cannot start.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A datagram socket standing in for systemd's notify socket.
fn notify_socket(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (socket, path_str(&path).to_string())
}

/// The next notify message's first line.
fn next_state(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notify message within 20 s");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

fn weir_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(WEIR);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run weir")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_stop_drains_then_finishes_what_is_in_flight() {
    let slow = Upstream::start_slow("slow", Duration::from_secs(6));
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let (notify, notify_path) = notify_socket(dir.path());
    let config = dir.path().join("weir.yaml");
    std::fs::write(
        &config,
        format!(
            "admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults:
  shutdown: {{ drain: 2s, grace: 20s }}
listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: slow
    virtual_hosts: [slow.test]
    routes: {{ r: {{ instances: [\"{}\"] }} }}
  - name: fast
    virtual_hosts: [fast.test]
    routes: {{ r: {{ respond: {{ status: 200, body: fast }} }} }}
",
            slow.addr()
        ),
    )
    .unwrap();
    let cfg = path_str(&config).to_string();
    let mut weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        config.clone(),
        &[("NOTIFY_SOCKET", &notify_path)],
        &[port, admin],
    );
    assert_eq!(next_state(&notify), "READY=1");
    assert!(weir_with(&["healthcheck", "-c", &cfg], &[])
        .status
        .success());

    let in_flight = thread::spawn(move || get(port, "slow.test", "/"));
    assert!(within(Duration::from_secs(10), || slow.count() == 1));
    let mut kept = Client::connect(port);
    let first = kept.get("fast.test", "/", &[]);
    assert_eq!(first.status, 200);
    assert_ne!(
        first.header("connection"),
        Some("close"),
        "kept alive before the stop"
    );

    signal(weir.pid(), "TERM");
    assert_eq!(next_state(&notify), "STOPPING=1");
    // Draining: not ready, still accepting; responses close their connections.
    let health = weir_with(&["healthcheck", "-c", &cfg], &[]);
    assert!(!health.status.success(), "{}", text(&health));
    assert!(text(&health).contains("stopping"), "{}", text(&health));
    let second = kept.get("fast.test", "/", &[]);
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    assert_eq!(get(port, "fast.test", "/").body, "fast");

    // Then accepting stops, and the 6 s request still completes.
    assert!(
        within(Duration::from_secs(15), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "listeners closed after the drain"
    );
    let slow_answer = in_flight.join().unwrap();
    assert_eq!(slow_answer.status, 200);
    assert_eq!(slow_answer.body, "slow");
    assert!(
        weir.wait_exit(Duration::from_secs(20)),
        "exits once nothing is in flight"
    );
    let log = weir.log();
    assert!(log.contains("stopped: no connection left"), "{log}");
}

#[test]
fn reload_command_waits_for_the_outcome_and_tells_systemd() {
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let (notify, notify_path) = notify_socket(dir.path());
    let config = dir.path().join("weir.yaml");
    let yaml = |body: &str| {
        format!(
            "admin: {{ bind: \"127.0.0.1:{admin}\" }}
listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: {body} }} }} }}
"
        )
    };
    std::fs::write(&config, yaml("one")).unwrap();
    let cfg = path_str(&config).to_string();
    let weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        config.clone(),
        &[("NOTIFY_SOCKET", &notify_path), ("WEIR_LOG_FORMAT", "json")],
        &[port, admin],
    );
    assert_eq!(next_state(&notify), "READY=1");

    // A file the running weir refuses: exit 1 with file and line, and it keeps serving.
    let broken = format!(
        "admin: {{ bind: \"127.0.0.1:{admin}\" }}\ngateways:\n  - name: g\n    routes: [\n"
    );
    std::fs::write(&config, broken).unwrap();
    let out = weir_with(&["reload", "-c", &cfg], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("weir.yaml:"), "{}", text(&out));
    assert_eq!(get(port, "g.test", "/").body, "one");

    std::fs::write(&config, yaml("two")).unwrap();
    // Drop what the file watcher may have said; then one explicit reload.
    thread::sleep(Duration::from_millis(500));
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    while notify.recv(&mut buf).is_ok() {}
    notify.set_nonblocking(false).unwrap();
    let out = weir_with(&["reload", "-c", &cfg], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("reloaded"), "{}", text(&out));
    assert_eq!(next_state(&notify), "RELOADING=1");
    assert_eq!(next_state(&notify), "READY=1");
    assert_eq!(get(port, "g.test", "/").body, "two");

    // Process logs as JSON lines, the refused reload among them.
    let log = weir.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["ts"].is_string() && l["level"].is_string()));
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["msg"]
                .as_str()
                .is_some_and(|m| m.contains("running config kept"))),
        "{log}"
    );

    // No admin listener there: a clear error.
    let out = weir_with(
        &["reload", "--admin", &format!("127.0.0.1:{}", dead_port())],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("cannot reach"), "{}", text(&out));
}

/// One client's tally.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 5 {
            e.push(why);
        }
    }
}

trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Reads one response; Ok(keep) when it is 200 and whole.
fn response(reader: &mut BufReader<Box<dyn Conn>>) -> Result<bool, String> {
    let mut status = String::new();
    reader
        .read_line(&mut status)
        .map_err(|e| format!("status line: {e}"))?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {status:?}"));
    }
    let (mut length, mut keep) = (0usize, true);
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("header: {e}"))?;
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().map_err(|_| "content-length")?;
        }
        if line == "connection: close" {
            keep = false;
        }
    }
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    Ok(keep)
}

/// GETs in a loop until `stop`: on one kept-alive connection (a new one whenever the
/// server closes it after a response), or on a new connection each time.
fn load(
    connect: Arc<dyn Fn() -> std::io::Result<Box<dyn Conn>> + Send + Sync>,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut conn: Option<BufReader<Box<dyn Conn>>> = None;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut reader = match conn.take() {
                Some(c) => c,
                None => match connect() {
                    Ok(c) => BufReader::new(c),
                    Err(e) => {
                        tally.fail(format!("connect: {e}"));
                        continue;
                    }
                },
            };
            let close = if keep_alive {
                ""
            } else {
                "connection: close\r\n"
            };
            let request = format!("GET / HTTP/1.1\r\nhost: g.test\r\n{close}\r\n");
            let sent = reader.get_mut().write_all(request.as_bytes());
            match sent
                .map_err(|e| format!("send: {e}"))
                .and_then(|_| response(&mut reader))
            {
                Ok(keep) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    if keep && keep_alive {
                        conn = Some(reader);
                    }
                }
                Err(e) => tally.fail(e),
            }
        }
    })
}

fn plain(port: u16) -> Arc<dyn Fn() -> std::io::Result<Box<dyn Conn>> + Send + Sync> {
    Arc::new(move || {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Box::new(s) as Box<dyn Conn>)
    })
}

fn tls(port: u16, ca: &Path) -> Arc<dyn Fn() -> std::io::Result<Box<dyn Conn>> + Send + Sync> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    Arc::new(move || {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = rustls::pki_types::ServerName::try_from("g.test").unwrap();
        let conn =
            rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, s)) as Box<dyn Conn>)
    })
}

/// An edge on a plain and a TLS listener under `weir run --master`.
struct Edge {
    weir: Weir,
    http: u16,
    https: u16,
    control: String,
    dir: tempfile::TempDir,
}

fn master_edge() -> Edge {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    leaf(dir.path(), "g", "g.test", &["g.test"], true);
    let (http, https, admin) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("weir.yaml"),
        format!(
            "admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults:
  shutdown: {{ drain: 0s, grace: 10s }}
listeners:
  http: {{ bind: \"127.0.0.1:{http}\" }}
  https:
    bind: \"127.0.0.1:{https}\"
    tls: {{ certificates: [ {{ cert: g.pem, key: g.key }} ] }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
"
        ),
    )
    .unwrap();
    let control = path_str(&dir.path().join("control.sock")).to_string();
    let weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        dir.path().join("weir.yaml"),
        &[("--master", ""), ("WEIR_CONTROL_SOCKET", &control)],
        &[http, https, admin],
    );
    let edge = Edge {
        weir,
        http,
        https,
        control,
        dir,
    };
    // The sockets are the master's from the start; the worker serves a moment later.
    assert!(
        within(Duration::from_secs(20), || text(&ask(&edge, "status"))
            .contains("Serving")),
        "{}",
        edge.weir.log()
    );
    edge
}

fn ask(edge: &Edge, command: &str) -> Output {
    weir_with(&[command], &[("WEIR_CONTROL_SOCKET", &edge.control)])
}

#[test]
fn master_upgrades_three_times_under_load_without_a_failed_request() {
    let edge = master_edge();
    let master = edge.weir.pid();
    let ca = edge.dir.path().join("ca.pem");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = [
        ("plain kept-alive", plain(edge.http), true),
        ("plain new connections", plain(edge.http), false),
        ("TLS kept-alive", tls(edge.https, &ca), true),
        ("TLS new connections", tls(edge.https, &ca), false),
    ];
    let mut running = Vec::new();
    for (name, connect, keep) in clients {
        let tally = Arc::new(Tally::default());
        running.push((
            name,
            tally.clone(),
            load(connect, keep, stop.clone(), tally),
        ));
    }
    let mut workers = Vec::new();
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(700));
        let out = ask(&edge, "upgrade");
        assert!(out.status.success(), "upgrade: {}", text(&out));
        let said = text(&out);
        assert!(said.contains("serves (worker"), "{said}");
        workers.push(said);
    }
    thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let mut report = Vec::new();
    for (name, tally, handle) in running {
        handle.join().unwrap();
        let (ok, failed) = (
            tally.ok.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
        );
        report.push(format!(
            "{name}: {ok} ok, {failed} failed {:?}",
            tally.errors.lock().unwrap()
        ));
        assert!(ok > 20, "{name} made too few requests to mean anything");
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        report.iter().all(|r| r.contains(" 0 failed")),
        "{}\n{}",
        report.join("\n"),
        edge.weir.log()
    );
    // Three different workers served; the master kept its PID.
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), 3);
    let status = text(&ask(&edge, "status"));
    assert!(status.contains(&format!("master {master} ")), "{status}");
    assert_eq!(status.matches("Serving").count(), 1, "{status}");
}

#[test]
fn master_keeps_the_old_worker_when_the_upgrade_cannot_check_the_config() {
    let mut edge = master_edge();
    let config = edge.dir.path().join("weir.yaml");
    let good = std::fs::read_to_string(&config).unwrap();
    let before = text(&ask(&edge, "status"));
    std::fs::write(&config, good.replace("routes:", "rutes:")).unwrap();
    let out = ask(&edge, "upgrade");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("weir check"), "{}", text(&out));
    assert_eq!(text(&ask(&edge, "status")), before);
    assert_eq!(get(edge.http, "g.test", "/").body, "ok");

    // SIGTERM on the master stops its worker, then the master, cleanly.
    std::fs::write(&config, good).unwrap();
    signal(edge.weir.pid(), "TERM");
    assert!(edge.weir.wait_exit(Duration::from_secs(20)));
    assert!(TcpStream::connect(("127.0.0.1", edge.http)).is_err());
    assert!(!Path::new(&edge.control).exists());
}

/// The PID of the master's serving worker, from `weir status`.
fn serving_worker(edge: &Edge) -> Option<u32> {
    let status = text(&ask(edge, "status"));
    let (before, _) = status.split_once(" (Serving")?;
    before.rsplit([' ', ',']).next()?.parse().ok()
}

#[test]
fn master_replaces_a_worker_that_dies() {
    let edge = master_edge();
    let first = serving_worker(&edge).expect("a serving worker");
    // A worker that dies within 10 s of starting stops the master instead (a crash loop).
    thread::sleep(Duration::from_millis(10_500));
    signal(first, "KILL");
    assert!(
        within(Duration::from_secs(20), || serving_worker(&edge)
            .is_some_and(|w| w != first)),
        "{}",
        edge.weir.log()
    );
    assert_eq!(get(edge.http, "g.test", "/").body, "ok");
    let log = edge.weir.log();
    assert!(
        log.contains(&format!("worker {first} was killed by signal 9")),
        "{log}"
    );
}

/// `upgrade` and `status` find the master's control socket from the config, as `reload`
/// finds the admin listener: `-c FILE` (or FILE) and its `control_socket:`.
#[test]
fn upgrade_and_status_find_the_control_socket_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = dir.path().join("weir.yaml");
    std::fs::write(
        &config,
        format!(
            "control_socket: run/ctl.sock
defaults: {{ shutdown: {{ drain: 0s, grace: 5s }} }}
listeners: {{ http: {{ bind: \"127.0.0.1:{http}\" }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let cfg = path_str(&config).to_string();
    let weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        config.clone(),
        &[("--master", "")],
        &[http],
    );
    let status = || text(&weir_with(&["status", "-c", &cfg], &[]));
    assert!(
        within(Duration::from_secs(20), || status().contains("Serving")),
        "{}",
        weir.log()
    );
    assert!(dir.path().join("run/ctl.sock").exists());
    assert!(
        status().contains(&format!("master {} ", weir.pid())),
        "{}",
        status()
    );
    let out = weir_with(&["upgrade", "-c", &cfg], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("serves (worker"), "{}", text(&out));
    // The file as a bare argument, as `reload FILE` takes it.
    assert!(text(&weir_with(&["status", &cfg], &[])).contains("Serving"));
    assert_eq!(get(http, "g.test", "/").body, "ok");
    // Without the config, the default socket is asked: this master is not there.
    let elsewhere = weir_with(&["status", "-c", "/nonexistent/weir.yaml"], &[]);
    assert!(!text(&elsewhere).contains(&format!("master {} ", weir.pid())));
}
