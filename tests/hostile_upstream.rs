//! A misbehaving or compromised instance through the real binary, on both of weir's
//! legs: whatever bytes it writes beyond a response's framing (in the same write, later,
//! after the connection went idle), bodies on responses that have none, framing that
//! cannot be trusted, floods of interim responses. The client that asked gets the
//! status a careful proxy gives (the response as framed, or 502 and never the bytes
//! relayed), and no other client, nor the next request on the same client connection,
//! ever gets the instance's extra bytes as its response.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// What every request but the first gets, on any connection.
const CLEAN: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean";
/// What a hostile instance slips in for somebody else.
const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";

/// One thing the instance does when answering the first request it sees.
#[derive(Clone)]
enum Step {
    Write(Vec<u8>),
    Pause(Duration),
}

fn write(bytes: &[u8]) -> Step {
    Step::Write(bytes.to_vec())
}

fn pause(ms: u64) -> Step {
    Step::Pause(Duration::from_millis(ms))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// An instance that answers the first request it is sent with `first` (all of it,
/// pauses included, before it reads anything more) and every later one with CLEAN.
struct Hostile {
    port: u16,
    /// Set once the first answer has been written to its end.
    done: Arc<AtomicUsize>,
}

impl Hostile {
    fn start(first: Vec<Step>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let done = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (d, r, first) = (d.clone(), requests.clone(), first.clone());
                thread::spawn(move || serve(conn, &first, &r, &d));
            }
        });
        Hostile { port, done }
    }

    fn wait_done(&self) {
        assert!(
            within(Duration::from_secs(10), || self.done.load(Ordering::SeqCst)
                > 0),
            "the instance never finished its first answer"
        );
    }
}

fn serve(mut conn: TcpStream, first: &[Step], requests: &AtomicUsize, done: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let (mut buf, mut seen, mut answered) = ([0u8; 8192], Vec::new(), 0);
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        seen.extend_from_slice(&buf[..n]);
        let heads = seen.windows(4).filter(|w| w == b"\r\n\r\n").count();
        while answered < heads {
            answered += 1;
            if requests.fetch_add(1, Ordering::SeqCst) > 0 {
                if conn.write_all(CLEAN).is_err() {
                    return;
                }
                continue;
            }
            for step in first {
                match step {
                    Step::Write(bytes) => {
                        if conn.write_all(bytes).is_err() {
                            break;
                        }
                    }
                    Step::Pause(d) => thread::sleep(*d),
                }
            }
            done.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// What the client that asked must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status and body, framed as it should be, on a connection that serves on.
    Served(u16, &'static str),
    /// 502, and none of the instance's bytes.
    Refused,
    /// A broken trailer section: refused as above; Pingora's leg, which never relays
    /// trailers, may instead serve the body whole without them.
    BadTrailer,
}

struct Case {
    name: &'static str,
    method: &'static str,
    first: Vec<Step>,
    expect: Expect,
}

fn case(name: &'static str, method: &'static str, first: Vec<Step>, expect: Expect) -> Case {
    Case {
        name,
        method,
        first,
        expect,
    }
}

fn cases() -> Vec<Case> {
    let hello = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let ok = Expect::Served(200, "hello");
    let poison_len = format!("Content-Length: {}\r\n\r\n", POISON.len());
    let interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n".repeat(20);
    vec![
        case("same write", "GET", vec![write(&cat(&[hello, POISON]))], ok),
        case("later write", "GET", vec![write(hello), write(POISON)], ok),
        case(
            "after 200 ms",
            "GET",
            vec![write(hello), pause(200), write(POISON)],
            ok,
        ),
        case(
            "after 1.5 s",
            "GET",
            vec![write(hello), pause(1500), write(POISON)],
            ok,
        ),
        case(
            "a body on HEAD",
            "HEAD",
            vec![
                write(format!("HTTP/1.1 200 OK\r\n{poison_len}").as_bytes()),
                pause(50),
                write(POISON),
            ],
            Expect::Served(200, ""),
        ),
        case(
            "a body on 204",
            "GET",
            vec![write(&cat(&[
                format!("HTTP/1.1 204 No Content\r\n{poison_len}").as_bytes(),
                POISON,
            ]))],
            Expect::Served(204, ""),
        ),
        case(
            "a body on 304",
            "GET",
            vec![
                write(format!("HTTP/1.1 304 Not Modified\r\n{poison_len}").as_bytes()),
                pause(50),
                write(POISON),
            ],
            Expect::Served(304, ""),
        ),
        case(
            "bytes after a chunked body",
            "GET",
            vec![write(&cat(&[chunked, b"5\r\nhello\r\n0\r\n\r\n", POISON]))],
            ok,
        ),
        case(
            "Content-Length: +5",
            "GET",
            vec![write(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello")],
            Expect::Refused,
        ),
        case(
            "two differing Content-Lengths",
            "GET",
            vec![write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            )],
            Expect::Refused,
        ),
        case(
            "a bare LF in a chunk line",
            "GET",
            vec![write(&cat(&[chunked, b"5\nhello\r\n0\r\n\r\n", POISON]))],
            Expect::Refused,
        ),
        case(
            "garbage in a chunk line",
            "GET",
            vec![write(&cat(&[
                chunked,
                b"5garbage\r\nhello\r\n0\r\n\r\n",
                POISON,
            ]))],
            Expect::Refused,
        ),
        case(
            "garbage in a trailer",
            "GET",
            vec![write(&cat(&[
                chunked,
                b"5\r\nhello\r\n0\r\nno colon\r\n\r\n",
                POISON,
            ]))],
            Expect::BadTrailer,
        ),
        case(
            "a bare LF in a trailer",
            "GET",
            vec![write(&cat(&[
                chunked,
                b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n",
                POISON,
            ]))],
            Expect::BadTrailer,
        ),
        case(
            "more interim responses than the bound",
            "GET",
            vec![write(&cat(&[&interim, hello]))],
            Expect::Refused,
        ),
    ]
}

/// One response as it came: status, body, the raw bytes, whether its body came whole
/// as framed, and whether the connection stays usable.
struct Got {
    status: u16,
    body: Vec<u8>,
    raw: Vec<u8>,
    whole: bool,
    kept: bool,
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}, whole {}, kept {}, raw {:?}",
            self.status,
            self.whole,
            self.kept,
            String::from_utf8_lossy(&self.raw)
        )
    }
}

/// Reads from `s` into `raw`; false once the connection closed or went quiet.
fn fill(s: &mut TcpStream, raw: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 8192];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            raw.extend_from_slice(&buf[..n]);
            true
        }
    }
}

/// Where a chunked body that starts at `at` ends, with its data; None while incomplete.
fn dechunk(raw: &[u8], mut at: usize) -> Option<(usize, Vec<u8>)> {
    let mut data = Vec::new();
    loop {
        let line_end = at + raw[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&raw[at..line_end]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            let end = at + raw[at..].windows(2).position(|w| w == b"\r\n")? + 2;
            return Some((end, data));
        }
        if raw.len() < at + size + 2 {
            return None;
        }
        data.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// Reads one final response on `s` (interim ones skipped), framed as a client would
/// frame it; bounded by the socket's read timeout.
fn read_response(s: &mut TcpStream, head_request: bool) -> Got {
    let (mut raw, mut closed, mut start) = (Vec::new(), false, 0);
    loop {
        let mut lines = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut lines);
        let n = match resp.parse(&raw[start..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if !closed => {
                closed = !fill(s, &mut raw);
                continue;
            }
            _ => {
                let (status, body, whole, kept) = (0, Vec::new(), false, false);
                return Got {
                    status,
                    body,
                    raw,
                    whole,
                    kept,
                };
            }
        };
        let status = resp.code.unwrap();
        if (100..200).contains(&status) {
            start += n;
            continue;
        }
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        let length = header("content-length").map(|v| v.parse::<usize>().unwrap());
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let close = header("connection").is_some_and(|v| v == "close");
        let no_body = head_request || status == 204 || status == 304;
        let at = start + n;
        let framed = |raw: &[u8]| -> Option<(usize, Vec<u8>)> {
            match (no_body, chunked, length) {
                (true, _, _) => Some((at, Vec::new())),
                (_, true, _) => dechunk(raw, at),
                (_, _, Some(l)) => {
                    (raw.len() >= at + l).then(|| (at + l, raw[at..at + l].to_vec()))
                }
                _ => None,
            }
        };
        loop {
            if let Some((_, body)) = framed(&raw) {
                return Got {
                    status,
                    body,
                    raw,
                    whole: true,
                    kept: !close,
                };
            }
            if closed {
                let body = raw[at..].to_vec();
                return Got {
                    status,
                    body,
                    raw,
                    whole: false,
                    kept: false,
                };
            }
            closed = !fill(s, &mut raw);
        }
    }
}

fn ask(s: &mut TcpStream, method: &str, host: &str, path: &str) -> Got {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    read_response(s, method == "HEAD")
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Nothing more arrives on `s` within a short wait (what was relayed was all of it).
fn nothing_more(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut more = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        more.extend_from_slice(&buf[..n]);
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    more
}

fn hostile_cases_on(leg: Leg) -> Vec<String> {
    let cases = cases();
    let instances: Vec<Hostile> = cases
        .iter()
        .map(|c| Hostile::start(c.first.clone()))
        .collect();
    let port = free_port();
    let mut yaml = format!(
        "{}defaults: {{ retries: 0 }}\ngateways:\n",
        http_listener(port)
    );
    for (i, h) in instances.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: c{i}\n    virtual_hosts: [c{i}.test]\n    routes: {{ r: {{ instances: [\"127.0.0.1:{}\"] }} }}\n",
            h.port
        ));
    }
    let weir = Weir::start_on(leg, &yaml, &[port]);
    let mut failures = Vec::new();
    for (i, (c, instance)) in cases.iter().zip(&instances).enumerate() {
        let host = format!("c{i}.test");
        let mut fail = |what: String| failures.push(format!("{leg:?}, {}: {what}", c.name));
        let mut a = connect(port);
        let got = ask(&mut a, c.method, &host, "/first");
        let leaked = String::from_utf8_lossy(&got.raw).contains("POISON");
        match c.expect {
            Expect::Served(status, body) => {
                if got.status != status || got.body != body.as_bytes() || !got.whole || leaked {
                    fail(format!("got {got:?}"));
                }
            }
            // 502, or (on a leg that sent the head before it read the body) a response
            // cut short: never a whole one, never the instance's bytes past the fault.
            Expect::Refused | Expect::BadTrailer => {
                let cut = got.status == 200 && !got.whole;
                let dropped = matches!(c.expect, Expect::BadTrailer)
                    && got.whole
                    && got.body == b"hello"
                    && !String::from_utf8_lossy(&got.raw).contains("X-T")
                    && !String::from_utf8_lossy(&got.raw).contains("no colon");
                let lenient = leg == Leg::Pingora && (cut || dropped);
                if !(got.status == 502 || lenient) || leaked {
                    fail(format!("not refused: {got:?}"));
                }
                if got.status == 502 && got.raw.windows(5).any(|w| w == b"hello") {
                    fail(format!("the instance's body relayed: {got:?}"));
                }
            }
        }
        instance.wait_done();
        // The client that asked: whatever came after its response is not a response.
        if got.kept {
            let extra = nothing_more(&mut a);
            if !extra.is_empty() {
                fail(format!(
                    "extra bytes after the response: {:?}",
                    String::from_utf8_lossy(&extra)
                ));
            }
            let again = ask(&mut a, "GET", &host, "/again");
            if (again.status, again.body.as_slice()) != (200, b"clean".as_slice()) {
                fail(format!("the same client's next request got {again:?}"));
            }
        }
        // Another client, and its next request: the clean answer, twice.
        let mut b = connect(port);
        for n in 0..2 {
            let other = ask(&mut b, "GET", &host, "/other");
            if (other.status, other.body.as_slice()) != (200, b"clean".as_slice()) {
                fail(format!("another client's request {n} got {other:?}"));
            }
        }
    }
    assert!(
        !weir.log().contains("panicked"),
        "weir panicked: {}",
        weir.log()
    );
    failures
}

#[test]
fn a_hostile_instance_never_answers_another_request_on_either_leg() {
    let started = Instant::now();
    let mut failures = Vec::new();
    for leg in Leg::BOTH {
        failures.extend(hostile_cases_on(leg));
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) in {:?}:\n{}",
        failures.len(),
        started.elapsed(),
        failures.join("\n")
    );
}
