//! End-to-end routing through the real `weir` binary: vhosts, dedicated ports, weights,
//! instance weights, respond routes, external targets, chaining, retries.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn vhosts_exact_wildcard_and_404() {
    let port = free_port();
    let yaml = format!(
        "{}gateways:
  - name: a
    virtual_hosts: [a.test]
    routes: {{ r: {{ respond: {{ status: 200, body: A }} }} }}
  - name: wild
    virtual_hosts: [\"*.example.org\"]
    routes: {{ r: {{ respond: {{ status: 200, body: W }} }} }}
  - name: api
    virtual_hosts: [api.example.org]
    routes: {{ r: {{ respond: {{ status: 200, body: API }} }} }}
",
        http_listener(port)
    );
    let _weir = Weir::start(&yaml, &[port]);
    assert_eq!(get(port, "a.test", "/").body, "A");
    assert_eq!(
        get(port, "A.TEST:8080", "/").body,
        "A",
        "case and port ignored"
    );
    assert_eq!(get(port, "www.example.org", "/").body, "W");
    assert_eq!(
        get(port, "x.y.example.org", "/").body,
        "W",
        "wildcard spans labels"
    );
    assert_eq!(
        get(port, "api.example.org", "/").body,
        "API",
        "exact beats wildcard"
    );
    let r = get(port, "nobody.test", "/");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no gateway"), "{r:?}");
    assert_eq!(get(port, "example.org", "/").status, 404);
}

#[test]
fn gateway_not_on_this_listener_is_421() {
    let (p1, p2) = (free_port(), free_port());
    let yaml = format!(
        "listeners:
  one: {{ bind: \"127.0.0.1:{p1}\" }}
  two: {{ bind: \"127.0.0.1:{p2}\" }}
gateways:
  - name: only-two
    virtual_hosts: [two.test]
    listeners: [two]
    routes: {{ r: {{ respond: {{ status: 200, body: two }} }} }}
"
    );
    let _weir = Weir::start(&yaml, &[p1, p2]);
    assert_eq!(get(p2, "two.test", "/").body, "two");
    assert_eq!(get(p1, "two.test", "/").status, 421);
}

#[test]
fn dedicated_port_takes_any_host() {
    let (shared, dedicated) = (free_port(), free_port());
    let up = Upstream::start("svc");
    let yaml = format!(
        "{}gateways:
  - name: svc
    port: {dedicated}/http
    routes: {{ v1: {{ instances: [\"{}\"] }} }}
",
        http_listener(shared),
        up.addr()
    );
    let _weir = Weir::start(&yaml, &[shared, dedicated]);
    let r = get(dedicated, "whatever.test", "/hello?x=1");
    assert_eq!((r.status, r.body.as_str()), (200, "svc"));
    assert_eq!(up.last().target, "/hello?x=1");
    assert_eq!(get(shared, "whatever.test", "/").status, 404);
}

#[test]
fn weights_90_10_within_one_point() {
    let port = free_port();
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let yaml = format!(
        "{}gateways:
  - name: canary
    virtual_hosts: [c.test]
    routes:
      stable: {{ weight: 90%, instances: [\"{}\"] }}
      next: {{ weight: 10%, instances: [\"{}\"] }}
",
        http_listener(port),
        a.addr(),
        b.addr()
    );
    let _weir = Weir::start(&yaml, &[port]);
    let counts = tally(port, "c.test", 2000);
    let share_b = b.count() as f64 / 2000.0 * 100.0;
    assert_eq!(a.count() + b.count(), 2000, "{counts:?}");
    assert!((share_b - 10.0).abs() <= 1.0, "route b got {share_b}%");
    assert_eq!(counts["b"], b.count(), "client and upstream agree");
}

#[test]
fn route_split_ignores_instance_counts() {
    let port = free_port();
    let one = Upstream::start("one");
    let four: Vec<Upstream> = (0..4)
        .map(|i| Upstream::start(&format!("four-{i}")))
        .collect();
    let four_list: Vec<String> = four.iter().map(|u| format!("\"{}\"", u.addr())).collect();
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      small: {{ weight: 50%, instances: [\"{}\"] }}
      big: {{ weight: 50%, instances: [{}] }}
",
        http_listener(port),
        one.addr(),
        four_list.join(", ")
    );
    let _weir = Weir::start(&yaml, &[port]);
    tally(port, "g.test", 2000);
    let share = one.count() as f64 / 2000.0 * 100.0;
    assert!(
        (share - 50.0).abs() <= 1.0,
        "single-instance route got {share}%"
    );
    for u in &four {
        // Round-robin inside the big route: each of its 4 instances gets a quarter.
        assert!(
            (240..=260).contains(&u.count()),
            "{} got {}",
            u.name,
            u.count()
        );
    }
}

#[test]
fn instance_weights_honoured() {
    let port = free_port();
    let (light, heavy) = (Upstream::start("light"), Upstream::start("heavy"));
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r:
        instances:
          - {{ name: light, host: 127.0.0.1, port: {}, weight: 1 }}
          - {{ name: heavy, host: 127.0.0.1, port: {}, weight: 3 }}
",
        http_listener(port),
        light.port,
        heavy.port
    );
    let _weir = Weir::start(&yaml, &[port]);
    tally(port, "g.test", 400);
    assert_eq!((light.count(), heavy.count()), (100, 300));
}

#[test]
fn respond_routes_answer_without_upstream() {
    let port = free_port();
    let yaml = format!(
        "{}gateways:
  - name: m
    virtual_hosts: [m.test]
    routes:
      maintenance:
        respond: {{ status: 503, body: \"back soon\", headers: {{ retry-after: \"60\" }} }}
",
        http_listener(port)
    );
    let _weir = Weir::start(&yaml, &[port]);
    let mut c = Client::connect(port);
    let r = c.get("m.test", "/any", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "back soon");
    assert_eq!(r.header("retry-after"), Some("60"));
    let r = c.request("HEAD", "m.test", "/", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-length"), Some("9"));
    // The connection stays usable after a HEAD.
    assert_eq!(c.get("m.test", "/", &[]).body, "back soon");
}

#[test]
fn external_targets_by_ip_and_by_name() {
    let port = free_port();
    let (ip, named) = (Upstream::start("by-ip"), Upstream::start("by-name"));
    let yaml = format!(
        "{}gateways:
  - name: ext-ip
    virtual_hosts: [ip.test]
    routes: {{ \"[127.0.0.1:{}]\": {{ weight: 100% }} }}
  - name: ext-name
    virtual_hosts: [name.test]
    routes: {{ \"[localhost:{}]\": {{}} }}
",
        http_listener(port),
        ip.port,
        named.port
    );
    let _weir = Weir::start(&yaml, &[port]);
    assert_eq!(get(port, "ip.test", "/").body, "by-ip");
    // localhost may resolve to ::1 first, where nothing listens: the retry finds 127.0.0.1.
    assert_eq!(get(port, "name.test", "/").body, "by-name");
}

#[test]
fn chaining_is_in_process() {
    let port = free_port();
    let (front_up, back_up) = (Upstream::start("front"), Upstream::start("back"));
    let yaml = format!(
        "{}gateways:
  - name: edge
    virtual_hosts: [edge.test]
    routes:
      own: {{ weight: 50%, instances: [\"{}\"] }}
      backend: {{ weight: 50% }}
  - name: backend
    routes:
      v1: {{ instances: [\"{}\"] }}
",
        http_listener(port),
        front_up.addr(),
        back_up.addr()
    );
    let _weir = Weir::start(&yaml, &[port]);
    let counts = tally(port, "edge.test", 100);
    assert_eq!(counts.get("front"), Some(&50), "{counts:?}");
    assert_eq!(counts.get("back"), Some(&50), "{counts:?}");
    // One hop: the chained request reaches the upstream with the client's own address.
    assert_eq!(back_up.last().header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn connect_failure_retries_other_instance() {
    for leg in Leg::BOTH {
        let port = free_port();
        let live = Upstream::start("live");
        let yaml = format!(
            "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r: {{ instances: [\"127.0.0.1:{}\", \"{}\"] }}
",
            http_listener(port),
            dead_port(),
            live.addr()
        );
        let _weir = Weir::start_on(leg, &yaml, &[port]);
        let counts = tally(port, "g.test", 20);
        assert_eq!(counts.get("live"), Some(&20), "{leg:?}: {counts:?}");
    }
}

#[test]
fn no_retry_budget_gives_502() {
    for leg in Leg::BOTH {
        let port = free_port();
        let live = Upstream::start("live");
        let yaml = format!(
            "{}defaults: {{ retries: 0 }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r: {{ instances: [\"127.0.0.1:{}\", \"{}\"] }}
",
            http_listener(port),
            dead_port(),
            live.addr()
        );
        let _weir = Weir::start_on(leg, &yaml, &[port]);
        // The first request meets the dead instance and, without a retry, fails; the
        // failed connect marks the instance down, so the rest go to the live one.
        let statuses: Vec<u16> = (0..4).map(|_| get(port, "g.test", "/").status).collect();
        assert_eq!(statuses, vec![502, 200, 200, 200], "{leg:?}");
        assert_eq!(live.count(), 3, "{leg:?}");
    }
}

#[test]
fn zero_weights_give_503() {
    let port = free_port();
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      a: {{ weight: 0%, respond: {{ status: 200 }} }}
",
        http_listener(port)
    );
    let _weir = Weir::start(&yaml, &[port]);
    assert_eq!(get(port, "g.test", "/").status, 503);
}

#[test]
fn malformed_requests_get_4xx_and_weir_keeps_serving() {
    let port = free_port();
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
",
        http_listener(port)
    );
    let mut weir = Weir::start(&yaml, &[port]);
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: g.test\r\nContent-Length: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: g.test\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: g.test\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut c = Client::connect(port);
        c.send_raw(garbage);
        let mut raw = String::new();
        let _ = std::io::Read::read_to_string(&mut c.into_reader(), &mut raw);
        let code: u16 = raw
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!((400..500).contains(&code), "{garbage:?} got {raw:?}");
        assert!(weir.is_running());
    }
    assert_eq!(get(port, "g.test", "/").body, "ok");
}

/// A client gets `request_header` to send its first request (Pingora alone would wait
/// 60 s); later requests on the connection wait for `idle`.
#[test]
fn first_request_must_come_within_request_header() {
    let port = free_port();
    let yaml = format!(
        "{}defaults: {{ timeouts: {{ request_header: 1s, idle: 30s }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
",
        http_listener(port)
    );
    let _weir = Weir::start(&yaml, &[port]);
    // Silent: closed after about a second, well before the client's 15 s read timeout.
    let mut reader = Client::connect(port).into_reader();
    let started = Instant::now();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).expect("closed, not timed out");
    assert!(rest.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));
    // A kept-alive connection may be quiet longer than that between requests.
    let mut c = Client::connect(port);
    assert_eq!(c.get("g.test", "/", &[]).body, "ok");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(c.get("g.test", "/", &[]).body, "ok");
}

/// A WebSocket-like upstream: answers the upgrade with 101, then echoes bytes.
fn websocket_echo() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: websocket") {
                    let _ =
                        conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                );
                let mut buf = [0u8; 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

#[test]
fn websocket_upgrade_passes_through() {
    use std::io::{BufRead, Read, Write};
    let port = free_port();
    let ws = websocket_echo();
    let yaml = format!(
        "{}gateways:
  - name: ws
    virtual_hosts: [ws.test]
    routes: {{ r: {{ instances: [\"127.0.0.1:{ws}\"] }} }}
",
        http_listener(port)
    );
    let _weir = Weir::start(&yaml, &[port]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    for msg in [&b"\x81\x05hello"[..], b"\x81\x05again"] {
        stream.write_all(msg).unwrap();
        let mut echo = vec![0u8; msg.len()];
        reader.read_exact(&mut echo).unwrap();
        assert_eq!(echo, msg, "bytes after the upgrade flow both ways");
    }
}

#[test]
fn allow_and_deny_lists_admit_clients_by_address_and_reload_live() {
    let (port, admin) = (free_port(), free_port());
    let yaml = |allow: &str| {
        format!(
            "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways:
  - name: inner
    virtual_hosts: [inner.test]
    allow: [{allow}]
    routes: {{ r: {{ respond: {{ status: 200, body: inner }} }} }}
  - name: open
    virtual_hosts: [open.test]
    deny: [127.0.0.3, 127.0.4.0/24]
    routes: {{ r: {{ respond: {{ status: 200, body: open }} }} }}
",
            http_listener(port)
        )
    };
    let weir = Weir::start(&yaml("127.0.0.2/32"), &[port, admin]);
    let from = |source: &str, host: &str| Client::connect_from(source, port).get(host, "/", &[]);
    assert_eq!(from("127.0.0.2", "inner.test").body, "inner");
    let refused = from("127.0.0.1", "inner.test");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("server"), None);
    assert_eq!(from("127.0.0.1", "open.test").body, "open");
    assert_eq!(from("127.0.0.3", "open.test").status, 403);
    assert_eq!(from("127.0.4.9", "open.test").status, 403);
    assert_eq!(from("127.0.5.9", "open.test").status, 200);

    // A new allow list applies on reload; a bad one is refused and the old one stays.
    std::fs::write(&weir.config, yaml("127.0.0.0/8")).unwrap();
    assert!(within(Duration::from_secs(10), || from(
        "127.0.0.1",
        "inner.test"
    )
    .status
        == 200));
    let refused = refused_reloads(admin);
    std::fs::write(&weir.config, yaml("127.0.0.300")).unwrap();
    let out = weir_cmd(&["check", "-c", path_str(&weir.config)]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("allow: invalid CIDR \"127.0.0.300\""),
        "{text}"
    );
    wait_refused_reload(admin, refused);
    assert_eq!(from("127.0.0.1", "inner.test").status, 200);
}
