//! Request smuggling through the binary, table-driven, on both legs: each shape a
//! front proxy and the server behind it could read differently, sent in one write,
//! with a request for `/smuggled` hidden after it. What the client gets is checked,
//! and what the instance received: never `/smuggled`, and nothing at all of a
//! request weir refuses before it is forwarded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: g.test\r\n\r\n";

/// What the client must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refused with this status before anything reached the instance, then closed.
    Refused(u16),
    /// Answered with this status (the request reached the instance), then closed.
    AnsweredThenClosed(u16),
    /// Answered with these statuses in order (e.g. a pipelined request served, the next
    /// one refused), nothing more.
    Statuses(&'static [u16]),
}

struct Case {
    name: &'static str,
    bytes: String,
    expect: Expect,
}

fn case(name: &'static str, head: &str, expect: Expect) -> Case {
    Case {
        name,
        bytes: format!("{head}{HIDDEN}"),
        expect,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let post = "POST /up HTTP/1.1\r\nHost: g.test\r\n";
    vec![
        case("obs-fold", "GET /a HTTP/1.1\r\nHost: g.test\r\nX-A: 1\r\n folded\r\n\r\n", Refused(400)),
        case("a tab-folded line", "GET /a HTTP/1.1\r\nHost: g.test\r\nX-A: 1\r\n\tfolded\r\n\r\n", Refused(400)),
        case("NUL in a value", "GET /a HTTP/1.1\r\nHost: g.test\r\nX-A: a\0b\r\n\r\n", Refused(400)),
        case("a bare CR in a value", "GET /a HTTP/1.1\r\nHost: g.test\r\nX-A: a\rb\r\n\r\n", Refused(400)),
        case("a space in a header name", "GET /a HTTP/1.1\r\nHost: g.test\r\nX A: 1\r\n\r\n", Refused(400)),
        case("a space before the colon", "GET /a HTTP/1.1\r\nHost: g.test\r\nTransfer-Encoding : chunked\r\n\r\n", Refused(400)),
        case("an empty header name", "GET /a HTTP/1.1\r\nHost: g.test\r\n: v\r\n\r\n", Refused(400)),
        case("a control byte in a name", "GET /a HTTP/1.1\r\nHost: g.test\r\nX\x01A: 1\r\n\r\n", Refused(400)),
        case("two Host headers", "GET /a HTTP/1.1\r\nHost: g.test\r\nHost: evil.test\r\n\r\n", Refused(400)),
        case("no Host in HTTP/1.1", "GET /a HTTP/1.1\r\nX-A: 1\r\n\r\n", Refused(400)),
        case(
            "an absolute-form target naming another host",
            "GET http://evil.test/a HTTP/1.1\r\nHost: g.test\r\n\r\n",
            Refused(400),
        ),
        // A body that breaks in the read that brought its head: the head is held
        // back with it, so nothing reaches the instance.
        case(
            "chunk-size overflow",
            &format!("{post}Transfer-Encoding: chunked\r\n\r\n1{}\r\nx\r\n0\r\n\r\n", "0".repeat(16)),
            Refused(400),
        ),
        case(
            "a chunk size with a sign",
            &format!("{post}Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "Content-Length and Transfer-Encoding",
            &format!("{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            AnsweredThenClosed(200),
        ),
        case(
            "differing Content-Length lines",
            &format!("{post}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            Refused(400),
        ),
        case("a Content-Length list that disagrees", &format!("{post}Content-Length: 5, 6\r\n\r\nhello!"), Refused(400)),
        case("Content-Length: +5", &format!("{post}Content-Length: +5\r\n\r\nhello"), Refused(400)),
        case("Content-Length: -1", &format!("{post}Content-Length: -1\r\n\r\n"), Refused(400)),
        case("Content-Length: 0x5", &format!("{post}Content-Length: 0x5\r\n\r\nhello"), Refused(400)),
        case(
            "Transfer-Encoding: chunked, identity",
            &format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "Transfer-Encoding: xchunked",
            &format!("{post}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
            Refused(400),
        ),
        case(
            "Transfer-Encoding in HTTP/1.0",
            "POST /up HTTP/1.0\r\nHost: g.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Refused(400),
        ),
        case("HTTP/1.0 without keep-alive", "GET /a HTTP/1.0\r\nHost: g.test\r\n\r\n", AnsweredThenClosed(200)),
        case("an unknown version", "GET /a HTTP/1.2\r\nHost: g.test\r\n\r\n", Refused(400)),
        case(
            "pipelining behind a refused request",
            "GET /first HTTP/1.1\r\nHost: g.test\r\n\r\nGET /bad\x01 HTTP/1.1\r\nHost: g.test\r\n\r\n",
            Statuses(&[200, 400]),
        ),
    ]
}

/// Every final status in `text` (interim ones left out), in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..].get(..3)?.parse().ok())
        .filter(|s| !(100..200).contains(s))
        .collect()
}

/// Sends `bytes` in one write and reads until weir closes (or 5 s of quiet).
fn exchange(port: u16, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    read_to_close(&mut s)
}

#[test]
fn no_request_is_smuggled_past_weir_on_either_leg() {
    let mut failures = Vec::new();
    for leg in Leg::BOTH {
        for c in cases() {
            // An instance per case: what it received is this case's alone.
            let up = RawUpstream::start(Answer::Ok);
            let port = free_port();
            let yaml = format!(
                "{}defaults: {{ retries: 0 }}\ngateways:\n  - name: g\n    virtual_hosts: [g.test]\n    routes: {{ r: {{ instances: [\"{}\"] }} }}\n  - name: evil\n    virtual_hosts: [evil.test]\n    routes: {{ r: {{ respond: {{ status: 200, body: evil }} }} }}\n",
                http_listener(port),
                up.addr()
            );
            let weir = Weir::start_on(leg, &yaml, &[port]);
            let (got, closed) = exchange(port, c.bytes.as_bytes());
            let seen = statuses(&got);
            let mut fail = |what: String| failures.push(format!("{leg:?}, {}: {what}", c.name));
            match c.expect {
                Expect::Refused(status) => {
                    if seen != [status] || !closed {
                        fail(format!("got {seen:?} (closed {closed}): {got:?}"));
                    }
                    if !up.received().is_empty() {
                        fail(format!("reached the instance: {:?}", up.received()));
                    }
                }
                Expect::AnsweredThenClosed(status) => {
                    if seen.first() != Some(&status) || seen.len() != 1 || !closed {
                        fail(format!("got {seen:?} (closed {closed}): {got:?}"));
                    }
                }
                Expect::Statuses(list) => {
                    if seen != list {
                        fail(format!("got {seen:?}: {got:?}"));
                    }
                }
            }
            if up.received().contains("smuggled") || got.contains("evil") {
                fail(format!("smuggled: the instance got {:?}", up.received()));
            }
            drop(weir);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `Expect: 100-continue`: the body goes to the instance once, after the head, and the
/// client gets one final answer (interim ones aside), on both legs.
#[test]
fn expect_100_continue_sends_the_body_once() {
    for leg in Leg::BOTH {
        let up = Upstream::start("up");
        let port = free_port();
        let yaml = format!(
            "{}gateways:\n  - name: g\n    virtual_hosts: [g.test]\n    routes: {{ r: {{ instances: [\"{}\"] }} }}\n",
            http_listener(port),
            up.addr()
        );
        let _weir = Weir::start_on(leg, &yaml, &[port]);
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST /e HTTP/1.1\r\nHost: g.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
            .unwrap();
        // A client that does not wait for 100 Continue sends the body at once.
        s.write_all(b"hello").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(statuses(&text), [200], "{leg:?}: {text}");
        assert_eq!(up.count(), 1, "{leg:?}");
        assert_eq!(up.last().target, "/e", "{leg:?}");
    }
}
