//! weir's own HTTP/1 path (src/h1) through the real binary, against a scripted upstream
//! on loopback: connection reuse, pipelining, each response framing, the forwarded
//! request (compared with Pingora's path, `WEIR_H1_DIRECT=0`), a stale pooled
//! connection, and each upstream failure with its bound.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;

/// An upstream that answers by path, counting connections and keeping request heads.
struct Scripted {
    port: u16,
    conns: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (c, h) = (conns.clone(), heads.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                thread::spawn(move || serve(conn, &h));
            }
        });
        Scripted { port, conns, heads }
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }
}

fn serve(conn: TcpStream, heads: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        heads.lock().unwrap().push(head.clone());
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        if head.starts_with("HEAD ") {
            let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
            continue;
        }
        let answer: Vec<u8> = match path.as_str() {
            "/echo" => {
                let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                a.extend_from_slice(&body);
                a
            }
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(),
            "/close" => {
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nX-Up: 1\r\n\r\nuntil the end");
                return;
            }
            "/oneshot" => {
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none");
                return;
            }
            "/reset" => return,
            "/slow" => {
                thread::sleep(Duration::from_secs(3));
                return;
            }
            "/big-head" => format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(70 << 10)).into_bytes(),
            "/many" => {
                let mut a = String::from("HTTP/1.1 200 OK\r\n");
                for i in 0..200 {
                    a.push_str(&format!("X-{i}: v\r\n"));
                }
                a.push_str("Content-Length: 0\r\n\r\n");
                a.into_bytes()
            }
            "/broken" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX".to_vec(),
            "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello".to_vec(),
        };
        if writer.write_all(&answer).is_err() {
            return;
        }
    }
}

fn start(up: &Scripted, env: &[(&str, &str)]) -> (Weir, u16) {
    let port = free_port();
    let yaml = format!(
        "listeners:
  http: {{ bind: \"127.0.0.1:{port}\" }}
defaults: {{ timeouts: {{ upstream_read: 1s }}, retries: 0 }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"127.0.0.1:{}\"] }} }}
",
        up.port
    );
    let dir = config_dir(&[("weir.yaml", &yaml)]);
    let config = dir.path().join("weir.yaml");
    (Weir::spawn(dir, config, env, &[port]), port)
}

#[test]
fn kept_alive_requests_share_one_upstream_connection() {
    let up = Scripted::start();
    let (_weir, port) = start(&up, &[]);
    let mut c = Client::connect(port);
    for _ in 0..20 {
        let r = c.get("g.test", "/", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "hello"));
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert!(r.header("date").is_some());
        assert_eq!(
            r.header("keep-alive"),
            None,
            "the instance's own Keep-Alive stays upstream"
        );
    }
    assert_eq!(up.conns(), 1, "one upstream connection for 20 requests");
    // A second client connection finds the idle one.
    assert_eq!(get(port, "g.test", "/").status, 200);
    assert_eq!(up.conns(), 1);
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let up = Scripted::start();
    let (_weir, port) = start(&up, &[]);
    let mut c = Client::connect(port);
    c.send_raw(
        b"GET / HTTP/1.1\r\nHost: g.test\r\n\r\nPOST /echo HTTP/1.1\r\nHost: g.test\r\nContent-Length: 4\r\n\r\nabcd\
          GET /chunked HTTP/1.1\r\nHost: g.test\r\n\r\n",
    );
    assert_eq!(c.read_response(false).body, "hello");
    assert_eq!(c.read_response(false).body, "abcd");
    assert_eq!(c.read_response(false).body, "hello world");
}

#[test]
fn bodies_are_relayed_as_the_instance_framed_them() {
    let up = Scripted::start();
    let (_weir, port) = start(&up, &[]);
    let mut c = Client::connect(port);
    let r = c.get("g.test", "/chunked", &[]);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, "hello world");
    let r = c.request("HEAD", "g.test", "/", &[]);
    assert_eq!((r.status, r.header("content-length")), (200, Some("5")));
    let r = c.get("g.test", "/early", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok"),
        "interim 103 dropped"
    );
    // A large body both ways, over the same connection.
    let big: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: g.test\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    c.send_raw(req.as_bytes());
    let r = c.read_response(false);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big);
    // No length: relayed until the instance closes, then the client connection closes.
    let r = c.get("g.test", "/close", &[]);
    assert_eq!(
        (r.body.as_str(), r.header("connection")),
        ("until the end", Some("close"))
    );
}

/// What matters of a request as the instance saw it: lines less the request id's value.
fn shape(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = head
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((n, _)) if n.eq_ignore_ascii_case("x-request-id") => "x-request-id".into(),
            Some((n, v)) => format!("{}:{}", n.to_ascii_lowercase(), v.trim()),
            None => l.to_string(),
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn forwards_what_pingoras_path_forwards() {
    let up = Scripted::start();
    let (_direct, direct) = start(&up, &[]);
    let (_pingora, pingora) = start(&up, &[("WEIR_H1_DIRECT", "0")]);
    let headers = [
        ("Connection", "keep-alive"),
        ("Keep-Alive", "300"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic x"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Client-Cert-Subject", "CN=forged"),
        ("Cookie", "a=b"),
        ("X-Custom", "v"),
    ];
    let mut seen = Vec::new();
    for port in [direct, pingora] {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = String::from("GET /p?q=1 HTTP/1.1\r\nHost: g.test:81\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        c.write_all(format!("{req}\r\n").as_bytes()).unwrap();
        let (mut raw, mut buf) = (String::new(), [0u8; 4096]);
        while !raw.ends_with("hello") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "{raw}");
            raw.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(
            raw.starts_with("HTTP/1.1 200") && raw.ends_with("hello"),
            "{raw}"
        );
        // Neither path passes the instance's Keep-Alive on; Pingora's writes `Date`,
        // weir's own `date`: the two requests did take the two paths.
        assert!(!raw.to_ascii_lowercase().contains("keep-alive: "), "{raw}");
        assert_eq!(raw.contains("\r\nDate: "), port == pingora, "{raw}");
        seen.push(shape(&up.last_head().replace(&port.to_string(), "PORT")));
    }
    assert_eq!(
        seen[0], seen[1],
        "the same request reaches the instance either way"
    );
    assert!(seen[0].contains(&"x-forwarded-for:127.0.0.1".to_string()));
    assert!(!seen[0]
        .iter()
        .any(|l| l.contains("forged") || l.starts_with("te:")));
}

#[test]
fn a_stale_pooled_connection_is_replaced() {
    let up = Scripted::start();
    let (_weir, port) = start(&up, &[]);
    let mut c = Client::connect(port);
    // The instance closes the connection after this response (without saying so).
    assert_eq!(c.get("g.test", "/oneshot", &[]).body, "one");
    thread::sleep(Duration::from_millis(100));
    let r = c.get("g.test", "/", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "hello"));
    assert_eq!(up.conns(), 2);
}

#[test]
fn upstream_failures_answer_502_or_504_and_weir_serves_on() {
    let up = Scripted::start();
    let (weir, port) = start(&up, &[]);
    for (path, status) in [
        ("/reset", 502),
        ("/slow", 504),
        ("/big-head", 502),
        ("/many", 502),
    ] {
        let mut c = Client::connect(port);
        let r = c.get("g.test", path, &[]);
        assert_eq!(r.status, status, "{path}");
        assert_eq!(r.header("connection"), Some("close"), "{path}");
    }
    // A body whose chunked framing breaks before anything went to the client: 502, and
    // none of it relayed (tests/hostile_upstream.rs has every such shape).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /broken HTTP/1.1\r\nHost: g.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 502") && !got.contains("hello"),
        "{got}"
    );
    assert_eq!(get(port, "g.test", "/").body, "hello");
    drop(weir);
}

fn start_tls(up: &Scripted, env: &[(&str, &str)]) -> (Weir, u16) {
    let port = free_port();
    let yaml = format!(
        "listeners:
  https: {{ bind: \"127.0.0.1:{port}\", tls: {{ self_signed: [g.test], default_certificate: 0 }} }}
defaults: {{ timeouts: {{ upstream_read: 1s }}, retries: 0 }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    hsts: {{ max_age: 60 }}
    routes: {{ r: {{ instances: [\"127.0.0.1:{}\"] }} }}
",
        up.port
    );
    let dir = config_dir(&[("weir.yaml", &yaml)]);
    let config = dir.path().join("weir.yaml");
    (Weir::spawn(dir, config, env, &[port]), port)
}

/// One HTTP/2 request with curl: (status line and headers, body).
fn h2(port: u16, path: &str, headers: &[&str]) -> (String, String) {
    let url = format!("https://g.test:{port}{path}");
    let resolve = format!("g.test:{port}:127.0.0.1");
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sk",
        "--http2",
        "-i",
        "--max-time",
        "10",
        "--resolve",
        &resolve,
        &url,
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn http2_streams_reach_plain_instances_the_same_way() {
    let up = Scripted::start();
    let (_direct, direct) = start_tls(&up, &[]);
    let (_pingora, pingora) = start_tls(&up, &[("WEIR_H1_DIRECT", "0")]);
    let headers = [
        "X-Forwarded-For: 203.0.113.9",
        "TE: trailers",
        "X-Custom: v",
    ];
    let mut seen = Vec::new();
    for port in [direct, pingora] {
        let (head, body) = h2(port, "/p?q=1", &headers);
        assert!(head.starts_with("http/2 200"), "{head}");
        assert!(
            head.contains("strict-transport-security: max-age=60"),
            "{head}"
        );
        assert_eq!(body, "hello");
        seen.push(shape(&up.last_head().replace(&port.to_string(), "PORT")));
    }
    assert_eq!(
        seen[0], seen[1],
        "the same request reaches the instance either way"
    );
    let before = up.conns();
    // Chunked framing comes off (HTTP/2 has its own); no length: until the instance closes.
    for _ in 0..5 {
        let (head, body) = h2(direct, "/chunked", &[]);
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert_eq!(body, "hello world");
    }
    assert_eq!(
        up.conns(),
        before,
        "kept-alive instance connections are reused"
    );
    assert_eq!(h2(direct, "/close", &[]).1, "until the end");
    assert!(h2(direct, "/reset", &[]).0.starts_with("http/2 502"));
    assert!(h2(direct, "/slow", &[]).0.starts_with("http/2 504"));
    assert!(h2(direct, "/many", &[]).0.starts_with("http/2 502"));
    // A chunked body broken in the read that brought its head: 502 on the stream, none
    // of it relayed.
    let (head, body) = h2(direct, "/broken", &[]);
    assert!(head.starts_with("http/2 502"), "{head}");
    assert!(!body.contains("hello"), "{body}");
    assert_eq!(h2(direct, "/", &[]).1, "hello");
}
