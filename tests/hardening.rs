//! Edge hardening through the real binary, against a raw-socket upstream that records
//! every byte reaching it: strict HTTP/1 framing, head and body limits, the whole-head
//! deadline, connection semantics, upstream misbehaviour, connection limits.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const OK_REQUEST: &[u8] = b"GET /fine HTTP/1.1\r\nHost: g.test\r\n\r\n";

fn start_with(
    leg: Leg,
    defaults: &str,
    gateway_extra: &str,
    answer: Answer,
) -> (Weir, RawUpstream, u16, u16) {
    let port = free_port();
    let admin = free_port();
    let up = RawUpstream::start(answer);
    let yaml = format!(
        "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults:
{defaults}
gateways:
  - name: g
    virtual_hosts: [g.test]
{gateway_extra}    routes: {{ r: {{ instances: [\"{}\"] }} }}
",
        http_listener(port),
        up.addr()
    );
    (Weir::start_on(leg, &yaml, &[port, admin]), up, port, admin)
}

fn start(leg: Leg) -> (Weir, RawUpstream, u16, u16) {
    start_with(leg, "  retries: 0", "", Answer::Ok)
}

/// Sends `parts` (pausing between them), then reads until the connection closes or
/// 10 s pass; returns what came back and whether the connection was closed.
fn exchange(port: u16, parts: &[&[u8]]) -> (String, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            thread::sleep(Duration::from_millis(100));
        }
        if s.write_all(p).is_err() {
            break;
        }
    }
    read_to_close(&mut s)
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// One request on its own connection: its status, and that weir closed after it.
fn refused_with(port: u16, request: &[u8]) -> u16 {
    let (resp, closed) = exchange(port, &[request]);
    assert!(closed, "connection left open after {resp:?}");
    status_of(&resp)
}

fn still_serves(port: u16) {
    let (resp, _) = exchange(
        port,
        &[b"GET /fine HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n"],
    );
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[test]
fn oversized_heads_get_431_or_414_before_anything_goes_upstream() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (_weir, up, port, admin) = start(leg);
        let big = format!(
            "GET /big HTTP/1.1\r\nHost: g.test\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100_000)
        );
        assert_eq!(refused_with(port, big.as_bytes()), 431);
        let line = format!(
            "GET /line HTTP/1.1\r\nHost: g.test\r\nX-Line: {}\r\n\r\n",
            "b".repeat(64 << 10)
        );
        assert_eq!(refused_with(port, line.as_bytes()), 431);
        let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
        let many = format!("GET /many HTTP/1.1\r\nHost: g.test\r\n{many}\r\n");
        assert_eq!(refused_with(port, many.as_bytes()), 431);
        let uri = format!("GET /{} HTTP/1.1\r\nHost: g.test\r\n\r\n", "u".repeat(9000));
        assert_eq!(refused_with(port, uri.as_bytes()), 414);
        still_serves(port);
        let got = up.received();
        assert!(
            !got.contains("/big") && !got.contains("/line") && !got.contains("/many"),
            "{got}"
        );
        assert!(
            !got.contains("uuuu"),
            "a refused target reached the upstream"
        );
        let m = scrape(admin);
        assert_eq!(
            m.get("weir_requests_refused_total{code=\"431\",listener=\"http\"}"),
            Some(&3.0),
            "{m:?}"
        );
        assert_eq!(
            m.get("weir_requests_refused_total{code=\"414\",listener=\"http\"}"),
            Some(&1.0)
        );
    }
}

#[test]
fn a_listener_can_set_its_own_limits() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let port = free_port();
        let up = RawUpstream::start(Answer::Ok);
        let yaml = format!(
            "listeners:
  http: {{ bind: \"127.0.0.1:{port}\", limits: {{ max_headers: 3, max_uri_bytes: 64 }} }}
defaults:
  limits: {{ max_request_header_bytes: 16KiB }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"{}\"] }} }}
",
            up.addr()
        );
        let _weir = Weir::start_on(leg, &yaml, &[port]);
        let four = b"GET / HTTP/1.1\r\nHost: g.test\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(refused_with(port, four), 431);
        let long = format!("GET /{} HTTP/1.1\r\nHost: g.test\r\n\r\n", "x".repeat(64));
        assert_eq!(refused_with(port, long.as_bytes()), 414);
        let head = format!(
            "GET / HTTP/1.1\r\nHost: g.test\r\nX: {}\r\n\r\n",
            "y".repeat(17 << 10)
        );
        assert_eq!(refused_with(port, head.as_bytes()), 431);
        still_serves(port);
    }
}

#[test]
fn request_targets_must_be_one_clean_token() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (_weir, up, port, admin) = start(leg);
        for bad in [
            &b"GET /a b HTTP/1.1\r\nHost: g.test\r\n\r\n"[..],
            b"GET  /x HTTP/1.1\r\nHost: g.test\r\n\r\n",
            b"GET /t\tab HTTP/1.1\r\nHost: g.test\r\n\r\n",
            b"GET /ctl\x01 HTTP/1.1\r\nHost: g.test\r\n\r\n",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: g.test\r\n\r\n",
            b"GET /del\x7f HTTP/1.1\r\nHost: g.test\r\n\r\n",
        ] {
            assert_eq!(
                refused_with(port, bad),
                400,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        still_serves(port);
        let got = up.received();
        assert_eq!(
            got.matches("GET ").count(),
            1,
            "only the good request went upstream: {got}"
        );
        assert_eq!(
            scrape(admin).get("weir_requests_refused_total{code=\"400\",listener=\"http\"}"),
            Some(&6.0)
        );
        // weir is no forward proxy.
        let connect: &[u8] = b"CONNECT g.test:443 HTTP/1.1\r\nHost: g.test:443\r\n\r\n";
        let (resp, _) = exchange(port, &[connect]);
        assert_eq!(status_of(&resp), 405, "{resp}");
        assert!(!resp.to_ascii_lowercase().contains("server:"), "{resp}");
        assert!(!up.received().contains("CONNECT"));
    }
}

#[test]
fn a_bare_lf_in_a_chunk_line_is_refused_and_hides_no_request() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (_weir, up, port, _) = start(leg);
        let head: &[u8] =
            b"POST /upload HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\n\r\n";
        // The tail in a second read: a parser that ends the extension at the LF would
        // see a second request, /smuggled.
        let first = [head, b"5;a=b\nhello\r\n0\r\n\r\n"].concat();
        let tail: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: g.test\r\n\r\n";
        let (resp, closed) = exchange(port, &[&first, tail]);
        assert!(closed);
        assert_eq!(status_of(&resp), 400, "{resp}");
        assert_eq!(
            resp.matches("HTTP/1.1").count(),
            1,
            "one answer only: {resp}"
        );
        // A CR inside the size line, and a size line split over two reads.
        assert_eq!(
            refused_with(port, &[head, b"5\r5\r\nhello\r\n0\r\n\r\n"].concat()),
            400
        );
        // The bad byte in a later read than the head: the head has gone upstream (this
        // one answers at once), the connection is cut at the bad byte.
        let (resp, closed) = exchange(
            port,
            &[&[head, b"5;a=b"].concat(), b"\nhello\r\n0\r\n\r\n", tail],
        );
        assert!(closed);
        assert!(resp.matches("HTTP/1.1").count() <= 1, "{resp}");
        // A well-formed chunked body goes through whole.
        let good = [head, b"5;a=b\r\nhello\r\n0\r\n\r\n"].concat();
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(&good).unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
        let got = up.received();
        assert!(!got.contains("smuggled"), "{got}");
        // The split case's head and the good request; the others never left weir.
        assert_eq!(got.matches("POST /upload").count(), 2, "{got}");
        // The upstream answered on seeing the head; the body follows.
        assert!(within(Duration::from_secs(5), || up
            .received()
            .contains("hello")));
    }
}

#[test]
fn framing_that_cannot_be_trusted_closes_the_connection() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (_weir, up, port, _) = start(leg);
        // Transfer-Encoding and Content-Length together: answered, then closed.
        let both = b"POST /both HTTP/1.1\r\nHost: g.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (resp, closed) = exchange(port, &[both]);
        assert_eq!(status_of(&resp), 200, "{resp}");
        assert!(closed, "kept open after TE + CL: {resp}");
        // HTTP/1.0 without keep-alive: no keep-alive promised, and closed.
        let (resp, closed) = exchange(port, &[b"GET /ten HTTP/1.0\r\nHost: g.test\r\n\r\n"]);
        assert_eq!(status_of(&resp), 200);
        assert!(closed, "HTTP/1.0 kept open: {resp}");
        assert!(!resp.to_ascii_lowercase().contains("keep-alive"), "{resp}");
        // Identical Content-Length lines go upstream as one; differing ones are refused.
        let twice = b"POST /twice HTTP/1.1\r\nHost: g.test\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
        let (resp, _) = exchange(port, &[twice]);
        assert_eq!(status_of(&resp), 200, "{resp}");
        let differ = b"POST /differ HTTP/1.1\r\nHost: g.test\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi!";
        assert_eq!(refused_with(port, differ), 400);
        let got = up.received().to_ascii_lowercase();
        let twice_req = &got[got.find("post /twice").expect("forwarded")..];
        let twice_head = &twice_req[..twice_req.find("\r\n\r\n").unwrap()];
        assert_eq!(
            twice_head.matches("content-length").count(),
            1,
            "{twice_head}"
        );
        assert!(!got.contains("/differ"));
    }
}

#[test]
fn a_head_trickled_past_the_deadline_is_cut_while_others_are_served() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (weir, up, port, admin) =
            start_with(leg, "  timeouts: { request_header: 2s }", "", Answer::Ok);
        let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: g.test\r\n")
            .unwrap();
        // One header line a second: each read is well within any per-read timeout.
        let mut sent = 0;
        let mut cut = false;
        for i in 0..12 {
            thread::sleep(Duration::from_millis(500));
            if i % 2 == 0 {
                still_serves(port);
            }
            if slow
                .write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
                .is_err()
            {
                cut = true;
                break;
            }
            sent += 1;
        }
        let (resp, closed) = read_to_close(&mut slow);
        assert!(cut || closed, "still open after {sent} lines");
        assert!(resp.is_empty() || status_of(&resp) == 408, "{resp}");
        assert!(sent < 10, "the trickle went on for {sent} lines");
        assert!(!up.received().contains("/slow"));
        // The 408 may be lost to the client in the reset of a connection it still wrote
        // to; weir answered and counted it.
        assert_eq!(
            scrape(admin).get("weir_requests_refused_total{code=\"408\",listener=\"http\"}"),
            Some(&1.0)
        );
        // A client that connects and sends nothing is closed too.
        let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        let (_, closed) = read_to_close(&mut idle);
        assert!(closed && started.elapsed() < Duration::from_secs(9));
        drop(weir);
    }
}

#[test]
fn upstream_silence_is_504_and_an_unasked_switch_is_502() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let (_weir, _up, port, _) = start_with(
            leg,
            "  retries: 0\n  timeouts: { upstream_read: 1s }",
            "",
            Answer::Silent,
        );
        let (resp, _) = exchange(
            port,
            &[b"GET /wait HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n"],
        );
        assert_eq!(status_of(&resp), 504, "{resp}");
        let (_w2, _up2, port2, _) = start_with(leg, "  retries: 0", "", Answer::SwitchProtocols);
        let (resp, _) = exchange(
            port2,
            &[b"GET /plain HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n"],
        );
        assert_eq!(status_of(&resp), 502, "{resp}");
    }
}

#[test]
fn bodies_over_max_body_bytes_get_413() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let port = free_port();
        let up = RawUpstream::start(Answer::Ok);
        let yaml = format!(
            "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    max_body_bytes: 10
    routes:
      small: {{ weight: 0%, condition: \"path prefix /small\", instances: [\"{up}\"] }}
      big: {{ weight: 100%, max_body_bytes: 1KiB, instances: [\"{up}\"] }}
",
            http_listener(port),
            up = up.addr()
        );
        let _weir = Weir::start_on(leg, &yaml, &[port]);
        let over = b"POST /small HTTP/1.1\r\nHost: g.test\r\nContent-Length: 11\r\n\r\nhello world";
        let (resp, _) = exchange(port, &[over]);
        assert_eq!(status_of(&resp), 413, "{resp}");
        // The same length said twice, as a list: still one length, still too long.
        let listed =
            b"POST /small HTTP/1.1\r\nHost: g.test\r\nContent-Length: 11, 11\r\n\r\nhello world";
        let (resp, _) = exchange(port, &[listed]);
        assert_eq!(status_of(&resp), 413, "{resp}");
        let fits = b"POST /big HTTP/1.1\r\nHost: g.test\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world";
        let (resp, _) = exchange(port, &[fits]);
        assert_eq!(status_of(&resp), 200, "{resp}");
        // Without a length, the body is cut off where it passes the limit.
        let chunked = b"POST /small HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n";
        let (resp, closed) = exchange(port, &[chunked]);
        assert!(closed);
        assert!(resp.is_empty() || status_of(&resp) == 413, "{resp}");
        let got = up.received();
        assert!(got.contains("POST /big"));
        assert!(
            !got.contains("12345678\r\n8\r\n12345678"),
            "the whole oversized body went upstream"
        );
        assert!(
            !got.contains("Content-Length: 11\r\n\r\nhello world")
                || got.matches("hello world").count() == 1
        );
    }
}

#[test]
fn connection_limits_per_client_and_per_listener() {
    let port = free_port();
    let admin = free_port();
    let up = RawUpstream::start(Answer::Ok);
    let yaml = format!(
        "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults:
  limits: {{ max_connections_per_client: 2 }}
  timeouts: {{ request_header: 3s }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"{}\"] }} }}
",
        http_listener(port),
        up.addr()
    );
    let _weir = Weir::start(&yaml, &[port, admin]);
    let mut first = Client::connect_from("127.0.0.5", port);
    let mut second = Client::connect_from("127.0.0.5", port);
    assert_eq!(first.get("g.test", "/", &[]).status, 200);
    assert_eq!(second.get("g.test", "/", &[]).status, 200);
    // A third from the same address is closed at once; another address is served.
    let mut third = tcp_from("127.0.0.5", port);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = third.write_all(OK_REQUEST);
    let (resp, closed) = read_to_close(&mut third);
    assert!(closed && resp.is_empty(), "{resp}");
    assert_eq!(
        Client::connect_from("127.0.0.6", port)
            .get("g.test", "/", &[])
            .status,
        200
    );
    // When one leaves, the address may connect again.
    first.close();
    assert!(within(Duration::from_secs(5), || {
        let mut c = Client::connect_from("127.0.0.5", port);
        c.send_raw(b"GET / HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n");
        let mut r = c.into_reader();
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s.starts_with("HTTP/1.1 200")
    }));
    let m = scrape(admin);
    assert!(
        m.get("weir_connections_refused_total{listener=\"http\",reason=\"per_client\"}")
            .is_some_and(|v| *v >= 1.0),
        "{m:?}"
    );
    drop(second);
}

/// weir on a listener with `max_connections: 1`, held by a kept-alive client, and a
/// second client that has sent `head` and waits for a place.
struct FullListener {
    _weir: Weir,
    up: RawUpstream,
    admin: u16,
    holder: Client,
    waiting: TcpStream,
}

fn full_listener(defaults: &str, head: &[u8]) -> FullListener {
    let (port, admin) = (free_port(), free_port());
    let up = RawUpstream::start(Answer::Ok);
    let yaml = format!(
        "admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults: {{ {defaults} }}
listeners:
  http: {{ bind: \"127.0.0.1:{port}\", limits: {{ max_connections: 1 }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"{}\"] }} }}
",
        up.addr()
    );
    let weir = Weir::start(&yaml, &[port, admin]);
    // Once ready, weir's own readiness probe has come and gone.
    let ready = || get(admin, "localhost", "/readyz").status == 200;
    assert!(within(Duration::from_secs(10), ready));
    let mut holder = Client::connect(port);
    assert_eq!(holder.get("g.test", "/", &[]).status, 200);
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    waiting.write_all(head).unwrap();
    FullListener {
        _weir: weir,
        up,
        admin,
        holder,
        waiting,
    }
}

#[test]
fn a_full_listener_holds_new_clients_until_a_place_frees() {
    let head = b"GET /queued HTTP/1.1\r\nHost: g.test\r\nConnection: close\r\n\r\n";
    let FullListener {
        up,
        holder,
        mut waiting,
        _weir: _running,
        ..
    } = full_listener("", head);
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        waiting.read(&mut buf).is_err(),
        "served while the listener was full"
    );
    assert!(!up.received().contains("/queued"));
    holder.close();
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (resp, _) = read_to_close(&mut waiting);
    assert_eq!(status_of(&resp), 200, "{resp}");
}

#[test]
fn a_client_waiting_on_a_full_listener_past_the_head_deadline_is_closed_and_counted() {
    let head = b"GET /late HTTP/1.1\r\nHost: g.test\r\n\r\n";
    let FullListener {
        up,
        admin,
        mut holder,
        mut waiting,
        _weir: _running,
        ..
    } = full_listener("timeouts: { request_header: 1s }", head);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (resp, closed) = read_to_close(&mut waiting);
    assert!(closed && resp.is_empty(), "{resp}");
    assert!(!up.received().contains("/late"));
    assert_eq!(
        scrape(admin).get("weir_connections_refused_total{listener=\"http\",reason=\"limit\"}"),
        Some(&1.0)
    );
    // The holder was never disturbed.
    assert_eq!(holder.get("g.test", "/", &[]).status, 200);
}

#[test]
fn clients_hanging_up_are_counted_not_logged_as_errors() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let port = free_port();
        let tls = free_port();
        let admin = free_port();
        let up = RawUpstream::start(Answer::Silent);
        let yaml = format!(
            "listeners:
  http: {{ bind: \"127.0.0.1:{port}\" }}
  https: {{ bind: \"127.0.0.1:{tls}\", tls: {{ self_signed: [g.test], default_certificate: 0 }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults: {{ retries: 0 }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"{}\"] }} }}
",
            up.addr()
        );
        let weir = Weir::start_on(leg, &yaml, &[port, tls, admin]);
        for _ in 0..20 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /gone HTTP/1.1\r\nHost: g.test\r\n\r\n")
                .unwrap();
            thread::sleep(Duration::from_millis(20));
            let _ = s.shutdown(Shutdown::Both);
        }
        for _ in 0..20 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = s.write_all(b"GET /half HTTP/1.1\r\nHost: g");
        }
        // HTTP/2 clients that give up on their streams (several streams a connection).
        for _ in 0..5 {
            let url = format!("https://g.test:{tls}/h2");
            let resolve = format!("g.test:{tls}:127.0.0.1");
            let out = std::process::Command::new("curl")
                .args(["-sk", "--http2", "--max-time", "0.5", "--resolve", &resolve])
                .args(["-Z", &url, &url, &url])
                .output()
                .expect("run curl");
            assert!(!out.status.success(), "the upstream never answers");
        }
        assert!(
            within(Duration::from_secs(10), || {
                scrape(admin)
                    .get("weir_client_aborts_total")
                    .is_some_and(|v| *v >= 30.0)
            }),
            "{:?}",
            scrape(admin)
        );
        let log = weir.log();
        assert!(!log.contains("ERROR"), "{log}");
        assert!(
            up.received().contains("GET /h2"),
            "the HTTP/2 requests reached the upstream"
        );
    }
}

fn rate_yaml(port: u16, admin: u16, up: &str, requests: u32, extra: &str) -> String {
    format!(
        "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r: {{ rate_limit: {{ requests: {requests}, per: 1m, burst: 1 }}, instances: [\"{up}\"] }}
  - name: h
    virtual_hosts: [h.test]
    rate_limit: {{ requests: 1, per: 1m, by: header(X-Key) }}
    routes: {{ r: {{ instances: [\"{up}\"] }} }}
{extra}",
        http_listener(port)
    )
}

#[test]
fn rate_limits_answer_429_and_keep_their_state_across_a_reload() {
    let port = free_port();
    let admin = free_port();
    let up = RawUpstream::start(Answer::Ok);
    let weir = Weir::start(&rate_yaml(port, admin, &up.addr(), 3, ""), &[port, admin]);
    let mut a = Client::connect_from("127.0.0.8", port);
    for _ in 0..4 {
        assert_eq!(
            a.get("g.test", "/", &[]).status,
            200,
            "requests + burst pass"
        );
    }
    let r = a.get("g.test", "/", &[]);
    assert_eq!(r.status, 429);
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        Client::connect_from("127.0.0.9", port)
            .get("g.test", "/", &[])
            .status,
        200
    );
    // By header: each value has its own bucket.
    let mut c = Client::connect(port);
    assert_eq!(c.get("h.test", "/", &[("X-Key", "one")]).status, 200);
    assert_eq!(c.get("h.test", "/", &[("X-Key", "one")]).status, 429);
    assert_eq!(c.get("h.test", "/", &[("X-Key", "two")]).status, 200);
    // An unrelated change keeps the buckets; a changed limit starts afresh.
    let reloads = |m: &std::collections::HashMap<String, f64>| {
        m.get("weir_config_reloads_total{result=\"ok\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let extra = "  - name: other\n    virtual_hosts: [o.test]\n    routes: { r: { respond: { status: 204 } } }\n";
    std::fs::write(&weir.config, rate_yaml(port, admin, &up.addr(), 3, extra)).unwrap();
    assert!(within(Duration::from_secs(10), || reloads(&scrape(admin)) >= 1.0));
    assert_eq!(
        a.get("g.test", "/", &[]).status,
        429,
        "state survived the reload"
    );
    std::fs::write(&weir.config, rate_yaml(port, admin, &up.addr(), 10, extra)).unwrap();
    assert!(within(Duration::from_secs(10), || reloads(&scrape(admin)) >= 2.0));
    assert_eq!(
        a.get("g.test", "/", &[]).status,
        200,
        "a new limit, new buckets"
    );
    let m = scrape(admin);
    assert_eq!(
        m.get("weir_rate_limited_total{gateway=\"g\",route=\"r\"}"),
        Some(&2.0),
        "{m:?}"
    );
    assert!(!up.received().is_empty());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn idle_connections_cost_little_and_their_memory_comes_back() {
    const N: u64 = 800;
    let (weir, _up, port, _) = start(Leg::Weir);
    still_serves(port);
    let base = rss_kib(weir.pid());
    let conns: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Every connection accepted and waiting for its first byte.
    thread::sleep(Duration::from_millis(1500));
    let held = rss_kib(weir.pid());
    let per_conn = (held.saturating_sub(base)) * 1024 / N;
    assert!(
        per_conn <= 16 * 1024,
        "{per_conn} bytes per idle connection (RSS {base} -> {held} KiB)"
    );
    drop(conns);
    let back = within(Duration::from_secs(15), || rss_kib(weir.pid()) <= 2 * base);
    assert!(
        back,
        "RSS {} KiB after close, baseline {base} KiB",
        rss_kib(weir.pid())
    );
    // Kept-alive connections idle after a request cost about as little.
    let before = rss_kib(weir.pid());
    let kept: Vec<Client> = (0..N)
        .map(|_| {
            let mut c = Client::connect(port);
            assert_eq!(c.get("g.test", "/", &[]).status, 200);
            c
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    let held = rss_kib(weir.pid());
    let per_conn = (held.saturating_sub(before)) * 1024 / N;
    eprintln!("idle after a request: {per_conn} bytes per connection");
    assert!(
        per_conn <= 24 * 1024,
        "{per_conn} bytes per kept-alive idle connection"
    );
    drop(kept);
}

#[test]
fn an_upgrade_request_answered_without_a_switch_keeps_its_connection_serving() {
    for leg in Leg::BOTH {
        eprintln!("leg: {leg:?}");
        let port = free_port();
        let yaml = format!(
            "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: hi }} }} }}
",
            http_listener(port)
        );
        let _weir = Weir::start_on(leg, &yaml, &[port]);
        let mut c = Client::connect(port);
        // The bytes after an upgrade request are read once its answer is known: here
        // a 200, so the connection stays HTTP/1.
        c.send_raw(
            b"GET /ws HTTP/1.1\r\nHost: g.test\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        );
        assert_eq!(c.read_response(false).status, 200);
        let started = Instant::now();
        assert_eq!(c.get("g.test", "/next", &[]).status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the next request waited"
        );
    }
}
