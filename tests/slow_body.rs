//! Slow request bodies (SPEC §8): a body must keep coming within `timeouts.client_body`
//! of its last bytes and, once older than that, at `limits.min_body_rate` on average.
//! A stalled body and a trickling one are each cut (408 over HTTP/1.1, the stream reset
//! over HTTP/2) on both legs, a body at a fair pace is served, and the process serves
//! others meanwhile.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn yaml(port: u16, tls: u16, admin: u16, up: &str) -> String {
    format!(
        "listeners:
  http: {{ bind: \"127.0.0.1:{port}\" }}
  https: {{ bind: \"127.0.0.1:{tls}\", tls: {{ self_signed: [g.test], default_certificate: 0 }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults:
  timeouts: {{ client_body: 1s, request_header: 5s }}
  limits: {{ min_body_rate: 1KiB/s }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"{up}\"] }} }}
"
    )
}

fn refused_408(admin: u16, listener: &str) -> f64 {
    let key = format!("weir_requests_refused_total{{code=\"408\",listener=\"{listener}\"}}");
    scrape(admin).get(&key).copied().unwrap_or(0.0)
}

/// Reads what comes back until the connection closes (or 10 s pass).
fn read_all(s: &mut TcpStream) -> (String, bool) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    read_to_close(s)
}

/// A POST whose body of `length` bytes is sent as `pieces` (pausing `gap` before each
/// after the first) until the connection fails; what came back, whether it closed.
fn post_paced(
    port: u16,
    path: &str,
    length: usize,
    pieces: &[&[u8]],
    gap: Duration,
) -> (String, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: g.test\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            thread::sleep(gap);
        }
        if s.write_all(piece).is_err() {
            break;
        }
    }
    read_all(&mut s)
}

fn still_serves(port: u16) {
    assert_eq!(get(port, "g.test", "/ok").status, 200);
}

#[test]
fn slow_http1_bodies_get_408_on_both_legs() {
    let up = Upstream::start("up");
    for leg in Leg::BOTH {
        let (port, tls, admin) = (free_port(), free_port(), free_port());
        let weir = Weir::start_on(
            leg,
            &yaml(port, tls, admin, &up.addr()),
            &[port, tls, admin],
        );
        let before = up.count();
        // A stall: 10 of 100 bytes, then nothing.
        let started = Instant::now();
        let (resp, closed) = post_paced(port, "/up", 100, &[b"0123456789"], Duration::ZERO);
        assert!(resp.starts_with("HTTP/1.1 408"), "{leg:?}: {resp}");
        assert!(closed, "{leg:?}: the connection closes after the 408");
        assert!(started.elapsed() < Duration::from_secs(9), "{leg:?}");
        still_serves(port);
        // A trickle: a byte every 300 ms is never quiet for 1 s, but far below 1 KiB/s.
        let drip: Vec<&[u8]> = vec![b"x"; 30];
        let (resp, closed) = post_paced(port, "/up", 30, &drip, Duration::from_millis(300));
        assert!(resp.starts_with("HTTP/1.1 408"), "{leg:?}: {resp}");
        assert!(closed, "{leg:?}");
        // A fair pace: 4 KiB in four pieces 250 ms apart (4 KiB/s), served whole.
        let piece = vec![b'k'; 1024];
        let pieces: Vec<&[u8]> = vec![&piece; 4];
        let (resp, _) = post_paced(port, "/fair", 4096, &pieces, Duration::from_millis(250));
        assert!(resp.starts_with("HTTP/1.1 200"), "{leg:?}: {resp}");
        assert_eq!(refused_408(admin, "http"), 2.0, "{leg:?}");
        // The instance got the fair body whole, and the refused ones never completed.
        let seen = up.seen();
        let fair = seen[before..]
            .iter()
            .filter(|s| s.target == "/fair")
            .count();
        assert_eq!(fair, 1, "{leg:?}");
        assert_eq!(up.count() - before, 2, "{leg:?}: /ok and /fair only");
        drop(weir);
    }
}

/// An HTTP/2 POST on stream 1 whose body is `pieces`, `gap` apart; the client.
fn h2_post(tls: u16, pieces: &[&[u8]], gap: Duration) -> H2Raw {
    let mut c = H2Raw::connect(tls, "g.test");
    c.send(&h2_frame(
        HEADERS,
        END_HEADERS,
        1,
        &hpack_request("POST", "g.test", &[]),
    ));
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            thread::sleep(gap);
        }
        if c.stream_ended(1) || !c.send(&h2_frame(DATA, 0, 1, piece)) {
            break;
        }
    }
    c
}

#[test]
fn slow_http2_bodies_are_cut_on_both_legs() {
    let up = Upstream::start("up");
    for leg in Leg::BOTH {
        let (port, tls, admin) = (free_port(), free_port(), free_port());
        let weir = Weir::start_on(
            leg,
            &yaml(port, tls, admin, &up.addr()),
            &[port, tls, admin],
        );
        // A stall: three bytes, then nothing; the stream ends within a bound.
        let stalled = h2_post(tls, &[b"abc"], Duration::ZERO);
        assert!(
            within(Duration::from_secs(8), || stalled.stream_ended(1)),
            "{leg:?}: a stalled HTTP/2 body is still open: {:?}",
            stalled.frames()
        );
        // A trickle: a byte every 300 ms.
        let drip: Vec<&[u8]> = vec![b"x"; 30];
        let trickled = h2_post(tls, &drip, Duration::from_millis(300));
        assert!(
            within(Duration::from_secs(8), || trickled.stream_ended(1)),
            "{leg:?}: a trickled HTTP/2 body is still open"
        );
        assert!(
            within(Duration::from_secs(5), || refused_408(admin, "https")
                == 2.0),
            "{leg:?}: {}",
            refused_408(admin, "https")
        );
        // Others are served meanwhile, over HTTP/2 too.
        let mut ok = H2Raw::connect(tls, "g.test");
        ok.send(&h2_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &hpack_request("GET", "g.test", &[]),
        ));
        assert!(
            within(Duration::from_secs(8), || ok.stream_ended(1)),
            "{leg:?}"
        );
        let status_200 = ok
            .frames()
            .iter()
            .any(|f| f.kind == HEADERS && f.payload.first() == Some(&0x88));
        assert!(status_200, "{leg:?}: {:?}", ok.frames());
        still_serves(port);
        drop(weir);
    }
}
