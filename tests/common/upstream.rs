//! A real HTTP/1.1 upstream server that records what it saw.

use std::io::BufReader;
use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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

/// What an upstream answers; changeable while it runs. By default `200`, its name as
/// the body, and `x-upstream: NAME`.
#[derive(Debug, Default)]
pub struct Reply {
    status: std::sync::atomic::AtomicU16,
    /// Extra header lines, each ending in CRLF.
    headers: Mutex<String>,
    body: Mutex<Option<Vec<u8>>>,
}

impl Reply {
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
    pub fn set_headers(&self, lines: &[(&str, &str)]) {
        *self.headers.lock().unwrap() =
            lines.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    }
    pub fn set_body(&self, body: &[u8]) {
        *self.body.lock().unwrap() = Some(body.to_vec());
    }
}

/// A real HTTP/1.1 upstream on 127.0.0.1 that answers as its [`Reply`] says and records
/// every request. Keep-alive, one thread per connection.
pub struct Upstream {
    pub name: String,
    pub port: u16,
    pub reply: Arc<Reply>,
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
        let reply = Arc::new(Reply::default());
        reply.set_status(200);
        let r = reply.clone();
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
                let (s, n, r) = (s.clone(), n.clone(), r.clone());
                thread::spawn(move || serve_upstream(conn, &n, &s, delay, &r));
            }
        });
        Upstream {
            name: name.to_string(),
            port,
            reply,
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

fn serve_upstream(
    conn: TcpStream,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    delay: Duration,
    reply: &Reply,
) {
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
        let head = method == "HEAD";
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
        let body = reply
            .body
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| name.as_bytes().to_vec());
        let mut response = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\nx-upstream: {name}\r\n{}\r\n",
            reply.status.load(Ordering::Relaxed),
            body.len(),
            reply.headers.lock().unwrap()
        )
        .into_bytes();
        if !head {
            response.extend_from_slice(&body);
        }
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}
