//! Test support: the real `weir` binary on loopback ports, real upstream HTTP servers,
//! and a small real HTTP/1.1 client. Everything binds 127.0.0.1 only.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A port that was free a moment ago. Taken below Linux's ephemeral range (32768+),
/// so that no client socket of a concurrent test can be sitting on it, and handed out
/// once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() * 7919 % 12_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (base + n) % 12_000) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

/// A `listeners:` block with one plain listener, `http`, on 127.0.0.1:port.
pub fn http_listener(port: u16) -> String {
    format!("listeners:\n  http: {{ bind: \"127.0.0.1:{port}\" }}\n")
}

/// A port with nothing listening on it (connections are refused).
pub fn dead_port() -> u16 {
    free_port()
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 upstream on 127.0.0.1 that answers `200` with its name as the body
/// and records every request. Keep-alive, one thread per connection.
pub struct Upstream {
    pub name: String,
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        Upstream::start_on(name, 0)
    }

    /// An upstream that waits `delay` before each response.
    pub fn start_slow(name: &str, delay: Duration) -> Upstream {
        Upstream::start_with(name, 0, delay)
    }

    /// Starts an upstream on a given port (0: any free port).
    pub fn start_on(name: &str, port: u16) -> Upstream {
        Upstream::start_with(name, port, Duration::ZERO)
    }

    fn start_with(name: &str, port: u16, delay: Duration) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (s, st, n, c) = (seen.clone(), stop.clone(), name.to_string(), conns.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(clone) = conn.try_clone() {
                    c.lock().unwrap().push(clone);
                }
                let (s, n) = (s.clone(), n.clone());
                thread::spawn(move || serve_upstream(conn, &n, &s, delay));
            }
        });
        Upstream {
            name: name.to_string(),
            port,
            seen,
            stop,
            conns,
        }
    }

    /// Stops listening and cuts every open connection, as a crashed server would.
    pub fn kill(self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees `stop` and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn serve_upstream(conn: TcpStream, name: &str, seen: &Mutex<Vec<Seen>>, delay: Duration) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.lock().unwrap().push(Seen {
            method,
            target,
            headers,
        });
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-upstream: {name}\r\n\r\n{name}",
            name.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

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

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|s| s.as_str())
    }
}

/// A TCP connection to 127.0.0.1:port from a given loopback source address.
pub fn tcp_from(source: &str, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&src.into()).expect("bind source address");
    let dst: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&dst.into()).expect("connect to weir");
    socket.into()
}

/// A keep-alive HTTP/1.1 client connection to 127.0.0.1:port.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to weir");
        Client::from_stream(stream)
    }

    /// Connects from a given loopback source address (e.g. 127.0.0.7).
    pub fn connect_from(source: &str, port: u16) -> Client {
        Client::from_stream(tcp_from(source, port))
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// Sends a GET and reads the response.
    pub fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.request("GET", host, path, headers)
    }

    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.send_raw(req.as_bytes());
        self.read_response(method == "HEAD")
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send request");
    }

    pub fn read_response(&mut self, head: bool) -> Response {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).expect("read header");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header line");
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let mut body = Vec::new();
        if !head {
            if let Some(len) = headers.get("content-length") {
                body.resize(len.parse().unwrap(), 0);
                self.reader.read_exact(&mut body).expect("read body");
            } else if headers
                .get("transfer-encoding")
                .is_some_and(|v| v.contains("chunked"))
            {
                body = self.read_chunked();
            } else {
                self.reader
                    .read_to_end(&mut body)
                    .expect("read body to close");
            }
        }
        Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.reader.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).unwrap();
            if size == 0 {
                return body;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }

    pub fn into_reader(self) -> BufReader<TcpStream> {
        self.reader
    }

    pub fn close(self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

/// One GET on a fresh connection.
pub fn get(port: u16, host: &str, path: &str) -> Response {
    Client::connect(port).get(host, path, &[])
}

/// Counts response bodies over `n` GETs on one keep-alive connection.
pub fn tally(port: u16, host: &str, n: usize) -> HashMap<String, usize> {
    let mut client = Client::connect(port);
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = client.get(host, "/", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        *counts.entry(r.body).or_insert(0) += 1;
    }
    counts
}

// ---- certificates, made with the `openssl` command ---------------------------

pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private test CA: `ca.pem`, `ca.key` in `dir`.
pub fn ca(dir: &Path) {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d("ca.key"),
        "-out",
        &d("ca.pem"),
        "-days",
        "30",
        "-subj",
        "/CN=weir test CA",
    ]);
}

/// A leaf certificate signed by the test CA: `name.pem`, `name.key`.
pub fn leaf(dir: &Path, file: &str, cn: &str, sans: &[&str], ec: bool) {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let newkey: &[&str] = if ec {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    } else {
        &["-newkey", "rsa:2048"]
    };
    let mut req = vec!["req"];
    req.extend_from_slice(newkey);
    let (key, csr) = (d(&format!("{file}.key")), d(&format!("{file}.csr")));
    let subj = format!("/CN={cn}");
    req.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(&req);
    let ext = d(&format!("{file}.ext"));
    let san: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
    std::fs::write(&ext, format!("subjectAltName={}\n", san.join(","))).unwrap();
    let serial = format!("{}", fastrand_serial());
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-set_serial",
        &serial,
        "-out",
        &d(&format!("{file}.pem")),
        "-days",
        "30",
        "-extfile",
        &ext,
    ]);
}

fn fastrand_serial() -> u64 {
    use std::time::SystemTime;
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (n % 1_000_000_000) + 1000
}

/// Prometheus text → (series with labels → value). Checks every line parses.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_string(), value);
    }
    out
}

pub fn scrape(admin: u16) -> HashMap<String, f64> {
    let r = get(admin, "localhost", "/metrics");
    assert_eq!(r.status, 200);
    parse_metrics(&r.body)
}

/// One admin API request, with an optional bearer token.
pub fn api(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> Response {
    let mut c = Client::connect(port);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.send_raw(req.as_bytes());
    c.read_response(method == "HEAD")
}
