//! End-to-end traffic policy through the real `weir` binary (SPEC "Traffic policy"):
//! header rules, basic auth, per-route timeouts and retries, outlier ejection,
//! compression, mirroring.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;

#[test]
fn header_rules_set_add_and_remove_on_requests_and_responses() {
    let (port, admin) = (free_port(), free_port());
    let up = Upstream::start("up");
    up.reply
        .set_headers(&[("server", "upstream/1.0"), ("x-internal", "secret")]);
    let yaml = |env: &str| {
        format!(
            "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways:
  - name: g
    virtual_hosts: [h.test]
    request_headers: {{ set: {{ x-env: {env} }}, remove: [x-debug] }}
    response_headers: {{ set: {{ cache-control: no-store }}, remove: [server] }}
    routes:
      api:
        condition: path_beg /api
        instances: [\"{}\"]
        request_headers:
          set: {{ x-who: '%[hdr(x-user)]@%[src]', x-where: '%[path]?%[query]', x-id: 'id=%[request_id]' }}
          add: {{ x-tag: two }}
        response_headers: {{ remove: [x-internal], set: {{ x-served-by: 'weir for %[hdr(x-user)]' }} }}
      static:
        weight: 100%
        respond: {{ status: 200, body: ok }}
",
            http_listener(port),
            up.addr()
        )
    };
    let weir = Weir::start(&yaml("prod"), &[port, admin]);
    let mut c = Client::connect(port);
    let r = c.get(
        "h.test",
        "/api/x?a=1",
        &[("x-user", "alice"), ("x-debug", "1"), ("x-tag", "one")],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-env"), Some("prod"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-who"), Some("alice@127.0.0.1"));
    assert_eq!(seen.header("x-where"), Some("/api/x?a=1"));
    let id = seen.header("x-request-id").expect("a request id");
    assert_eq!(seen.header("x-id"), Some(format!("id={id}").as_str()));
    let tags: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "x-tag")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tags, ["one", "two"]);
    // Forwarding headers are weir's, after the rules.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-internal"), None);
    assert_eq!(r.header("x-served-by"), Some("weir for alice"));

    // A respond route gets the gateway's response rules too.
    let r = c.get("h.test", "/", &[]);
    assert_eq!(r.body, "ok");
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // Rules change live; a rule on a framing header is refused and the old rules stay.
    std::fs::write(&weir.config, yaml("staging")).unwrap();
    assert!(within(Duration::from_secs(10), || {
        get(port, "h.test", "/api/y");
        up.last().header("x-env") == Some("staging")
    }));
    let bad = yaml("staging").replace("x-env: staging", "content-length: '3'");
    let refused = refused_reloads(admin);
    std::fs::write(&weir.config, &bad).unwrap();
    let out = weir_cmd(&["check", "-c", path_str(&weir.config)]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("gateway \"g\"")
            && text.contains("request_headers.set: \"content-length\" cannot be set or removed"),
        "{text}"
    );
    wait_refused_reload(admin, refused);
    get(port, "h.test", "/api/z");
    assert_eq!(up.last().header("x-env"), Some("staging"));
    assert_eq!(up.last().header("content-length"), None);
}

/// A gateway `g` on vhost `h.test` with one route `r` over `instances`, and `extra`
/// lines of the route (indented for it).
fn one_route(port: u16, admin: u16, instances: &[String], extra: &str) -> String {
    let list: Vec<String> = instances.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways:
  - name: g
    virtual_hosts: [h.test]
    routes:
      r:
        instances: [{}]
{extra}",
        http_listener(port),
        list.join(", ")
    )
}

fn request(port: u16, method: &str) -> Response {
    Client::connect(port).request(method, "h.test", "/", &[])
}

/// Route `r` over two instances, `bad` answering `status`, `good` 200.
struct BadAndGood {
    port: u16,
    admin: u16,
    bad: Upstream,
    good: Upstream,
    _weir: Weir,
}

fn bad_and_good(status: u16, route_lines: &str) -> BadAndGood {
    let (port, admin) = (free_port(), free_port());
    let (bad, good) = (Upstream::start("bad"), Upstream::start("good"));
    bad.reply.set_status(status);
    let yaml = one_route(port, admin, &[bad.addr(), good.addr()], route_lines);
    BadAndGood {
        port,
        admin,
        bad,
        good,
        _weir: Weir::start(&yaml, &[port, admin]),
    }
}

#[test]
fn retries_on_status_go_to_another_instance_for_idempotent_methods_only() {
    let t = bad_and_good(
        503,
        "        retries: { attempts: 1, on: [502, 503], methods: idempotent, budget: 100% }\n",
    );
    let (port, admin, bad, good) = (t.port, t.admin, &t.bad, &t.good);
    for _ in 0..20 {
        let r = request(port, "GET");
        assert_eq!((r.status, r.body.as_str()), (200, "good"));
    }
    assert!(
        bad.count() >= 5,
        "round robin sent some to bad: {}",
        bad.count()
    );
    assert_eq!(good.count(), 20);
    // POST is not idempotent: a 503 goes to the client as it came.
    let statuses: Vec<u16> = (0..6).map(|_| request(port, "POST").status).collect();
    assert!(statuses.contains(&503), "{statuses:?}");
    let m = scrape(admin);
    let retried = m["weir_retries_total{gateway=\"g\",reason=\"status\",route=\"r\"}"];
    assert_eq!(
        retried as usize,
        bad.count() - statuses.iter().filter(|s| **s == 503).count()
    );
}

#[test]
fn the_retry_budget_bounds_retries_when_every_instance_fails() {
    let (port, admin) = (free_port(), free_port());
    let (a, b, c) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    );
    for u in [&a, &b, &c] {
        u.reply.set_status(502);
    }
    let yaml = one_route(
        port,
        admin,
        &[a.addr(), b.addr(), c.addr()],
        "        retries: { attempts: 2, on: [5xx], budget: 20% }\n",
    );
    let _weir = Weir::start(&yaml, &[port, admin]);
    let n = 200;
    for _ in 0..n {
        assert_eq!(request(port, "GET").status, 502);
    }
    let tries = a.count() + b.count() + c.count();
    // Without a budget: 3 tries each (600). With it: 20% of requests, plus the ten a
    // full budget starts with.
    assert!(tries > n + 10, "retries happened: {tries}");
    assert!(tries <= n + n / 5 + 10, "within the budget: {tries}");
    let m = scrape(admin);
    assert!(m["weir_retries_over_budget_total{gateway=\"g\",route=\"r\"}"] > 100.0);
}

#[test]
fn timeouts_per_route_retry_slow_instances_and_bound_the_whole_request() {
    let (port, admin) = (free_port(), free_port());
    let slow = Upstream::start_slow("slow", Duration::from_secs(3));
    let fast = Upstream::start("fast");
    let yaml = format!(
        "{}      only_slow:
        weight: 0%
        condition: path_beg /slow
        instances: [\"{}\"]
        timeouts: {{ upstream_read: 10s, request: 500ms }}
",
        one_route(
            port,
            admin,
            &[slow.addr(), fast.addr()],
            "        timeouts: { connect: 1s, upstream_read: 300ms }\n        retries: { attempts: 1, on: [timeout] }\n",
        ),
        slow.addr()
    );
    let _weir = Weir::start(&yaml, &[port, admin]);
    for _ in 0..4 {
        let r = request(port, "GET");
        assert_eq!((r.status, r.body.as_str()), (200, "fast"));
    }
    assert!(slow.count() >= 1);
    // The total deadline ends a request whose upstream is slower, whatever upstream_read.
    let r = Client::connect(port).get("h.test", "/slow", &[]);
    assert_eq!(r.status, 504);
    let m = scrape(admin);
    assert!(m["weir_retries_total{gateway=\"g\",reason=\"timeout\",route=\"r\"}"] >= 1.0);
}

#[test]
fn an_idempotent_request_reset_before_any_response_byte_is_retried_by_default() {
    for leg in Leg::BOTH {
        let (port, admin) = (free_port(), free_port());
        let reset = RawUpstream::start(Answer::Reset);
        let good = Upstream::start("good");
        let yaml = one_route(port, admin, &[reset.addr(), good.addr()], "");
        let _weir = Weir::start_on(leg, &yaml, &[port, admin]);
        for _ in 0..10 {
            let r = request(port, "GET");
            assert_eq!((r.status, r.body.as_str()), (200, "good"), "{leg:?}");
        }
        assert!(reset.received().matches("GET / ").count() >= 3, "{leg:?}");
        // A POST may have had effects: it is not sent again.
        let statuses: Vec<u16> = (0..6).map(|_| request(port, "POST").status).collect();
        assert!(statuses.contains(&502), "{leg:?}: {statuses:?}");
    }
}

fn instance_health(admin: u16) -> Vec<String> {
    let r = get(admin, "localhost", "/api/v1/gateways/g");
    let g: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    g["routes"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["health"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn outlier_detection_ejects_a_failing_instance_and_brings_it_back() {
    let t = bad_and_good(
        500,
        "        outlier: { consecutive_5xx: 3, base_ejection: 1s, max_ejected: 50% }\n",
    );
    let (port, admin, bad) = (t.port, t.admin, &t.bad);
    let statuses: Vec<u16> = (0..20).map(|_| request(port, "GET").status).collect();
    // Three 500s in a row from `bad` (round robin alternates), then only `good`.
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(bad.count(), 3);
    assert_eq!(instance_health(admin), ["ejected", "unknown"]);
    let m = scrape(admin);
    let key = format!(
        "weir_outlier_ejections_total{{gateway=\"g\",route=\"r\",upstream=\"{}\"}}",
        bad.addr()
    );
    assert_eq!(m[&key], 1.0);
    assert_eq!(
        m[&format!(
            "weir_instance_healthy{{gateway=\"g\",route=\"r\",upstream=\"{}\"}}",
            bad.addr()
        )],
        0.0
    );
    // Mended, it returns after the ejection and takes traffic again.
    bad.reply.set_status(200);
    assert!(within(Duration::from_secs(10), || {
        request(port, "GET");
        bad.count() > 3
    }));
    assert_ne!(instance_health(admin)[0], "ejected");
}

#[test]
fn outlier_detection_never_ejects_more_than_max_ejected() {
    let (port, admin) = (free_port(), free_port());
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    a.reply.set_status(503);
    b.reply.set_status(503);
    let yaml = one_route(
        port,
        admin,
        &[a.addr(), b.addr()],
        "        outlier: { consecutive_5xx: 2, base_ejection: 30s, max_ejected: 50% }\n",
    );
    let _weir = Weir::start(&yaml, &[port, admin]);
    for _ in 0..12 {
        assert_eq!(request(port, "GET").status, 503);
    }
    let mut health = instance_health(admin);
    health.sort();
    assert_eq!(health, ["ejected", "unknown"]);
}

fn basic(user_pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

#[test]
fn basic_auth_challenges_checks_bcrypt_users_and_reloads_the_file() {
    let (port, admin) = (free_port(), free_port());
    let up = Upstream::start("up");
    let line = |user: &str, pass: &str| format!("{user}:{}\n", bcrypt::hash(pass, 4).unwrap());
    let yaml = format!(
        "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways:
  - name: g
    virtual_hosts: [h.test]
    basic_auth: {{ users_file: users.htpasswd }}
    routes:
      staff:
        weight: 0%
        condition: path_beg /staff
        basic_auth: {{ users_file: staff.htpasswd, realm: Staff only }}
        respond: {{ status: 200, body: staff }}
      app:
        weight: 100%
        instances: [\"{}\"]
",
        http_listener(port),
        up.addr()
    );
    let dir = config_dir(&[
        ("weir.yaml", &yaml),
        (
            "users.htpasswd",
            &format!("# users\n{}", line("alice", "wonder")),
        ),
        ("staff.htpasswd", &line("bob", "builder")),
    ]);
    let users = dir.path().join("users.htpasswd");
    let cfg = dir.path().join("weir.yaml");
    let weir = Weir::start_in(dir, cfg, &[port, admin]);
    let ask = |path: &str, auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        Client::connect(port).get("h.test", path, &headers)
    };
    let r = ask("/", None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"g\", charset=\"UTF-8\"")
    );
    assert_eq!(ask("/", Some(&basic("alice:nope"))).status, 401);
    assert_eq!(ask("/", Some(&basic("mallory:wonder"))).status, 401);
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let ok = ask("/", Some(&basic("alice:wonder")));
    assert_eq!((ok.status, ok.body.as_str()), (200, "up"));
    // Remembered, and again.
    assert_eq!(ask("/", Some(&basic("alice:wonder"))).status, 200);
    // The route's own file and realm replace the gateway's.
    let staff = ask("/staff", Some(&basic("alice:wonder")));
    assert_eq!(staff.status, 401);
    assert_eq!(
        staff.header("www-authenticate"),
        Some("Basic realm=\"Staff only\", charset=\"UTF-8\"")
    );
    assert_eq!(ask("/staff", Some(&basic("bob:builder"))).body, "staff");

    // The file hot-reloads: a new user, then a file weir cannot take (the old stays).
    std::fs::write(&users, line("carol", "singer")).unwrap();
    assert!(within(Duration::from_secs(10), || ask(
        "/",
        Some(&basic("carol:singer"))
    )
    .status
        == 200));
    assert_eq!(ask("/", Some(&basic("alice:wonder"))).status, 401);
    let refused = refused_reloads(admin);
    std::fs::write(&users, "carol:$apr1$x$y\n").unwrap();
    let out = weir_cmd(&["check", "-c", path_str(&weir.config)]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("users.htpasswd: line 1: user \"carol\": only bcrypt hashes"),
        "{text}"
    );
    wait_refused_reload(admin, refused);
    assert_eq!(ask("/", Some(&basic("carol:singer"))).status, 200);
}

#[test]
fn compression_honours_accept_encoding_types_sizes_and_no_transform() {
    use std::io::Read as _;
    let port = free_port();
    let up = Upstream::start("up");
    let text = "weir compresses text. ".repeat(200);
    up.reply.set_body(text.as_bytes());
    up.reply.set_headers(&[
        ("content-type", "text/plain; charset=utf-8"),
        ("etag", "\"v1\""),
    ]);
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [h.test]
    compression: {{ algorithms: [zstd, br, gzip], min_bytes: 1KiB, types: [text/*] }}
    routes:
      r: {{ instances: [\"{}\"] }}
",
        http_listener(port),
        up.addr()
    );
    let _weir = Weir::start(&yaml, &[port]);
    let mut c = Client::connect(port);
    let mut fetch = |accept: &str| c.get("h.test", "/", &[("accept-encoding", accept)]);

    let r = fetch("gzip");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    assert!(
        r.bytes.len() < text.len() / 4,
        "compressed: {}",
        r.bytes.len()
    );
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&r.bytes[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, text);

    let r = fetch("gzip, br");
    assert_eq!(r.header("content-encoding"), Some("br"));
    let mut plain = String::new();
    brotli::Decompressor::new(&r.bytes[..], 4096)
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, text);

    // On the same kept-alive connection, one more: zstd is the operator's first choice.
    let r = fetch("br;q=0.9, zstd, gzip");
    assert_eq!(r.header("content-encoding"), Some("zstd"));
    assert_eq!(zstd::decode_all(&r.bytes[..]).unwrap(), text.as_bytes());

    // Not asked for: as it came.
    let r = fetch("identity");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, text);

    // The upstream forbids transformation, or the type is not listed, or too short.
    up.reply.set_headers(&[
        ("content-type", "text/plain"),
        ("cache-control", "no-transform"),
    ]);
    assert_eq!(fetch("gzip").header("content-encoding"), None);
    up.reply.set_headers(&[("content-type", "image/png")]);
    assert_eq!(fetch("gzip").header("content-encoding"), None);
    up.reply.set_headers(&[("content-type", "text/plain")]);
    up.reply.set_body(b"short");
    let r = fetch("gzip");
    assert_eq!(
        (r.header("content-encoding"), r.body.as_str()),
        (None, "short")
    );
}

#[test]
fn mirroring_copies_a_share_and_never_holds_up_the_client() {
    let (port, admin) = (free_port(), free_port());
    let (main, shadow) = (Upstream::start("main"), Upstream::start("shadow"));
    let silent = RawUpstream::start(Answer::Silent);
    let dead = dead_port();
    let yaml = |percent: &str| {
        format!(
            "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
gateways:
  - name: g
    virtual_hosts: [h.test]
    routes:
      main:
        weight: 100%
        instances: [\"{}\"]
        mirror: {{ route: shadow, percent: {percent}, max_body_bytes: 16 }}
      shadow:
        weight: 0%
        instances: [\"{}\"]
  - name: s
    virtual_hosts: [s.test]
    routes:
      r:
        instances: [\"{}\"]
        mirror: {{ route: \"[{}]\" }}
  - name: d
    virtual_hosts: [d.test]
    routes:
      r:
        instances: [\"{}\"]
        mirror: {{ route: \"[127.0.0.1:{dead}]\" }}
",
            http_listener(port),
            main.addr(),
            shadow.addr(),
            main.addr(),
            silent.addr(),
            main.addr(),
        )
    };
    let weir = Weir::start(&yaml("100%"), &[port, admin]);
    let mut c = Client::connect(port);
    for i in 0..10 {
        let r = c.get("h.test", &format!("/m{i}"), &[("x-probe", "yes")]);
        assert_eq!(r.body, "main");
    }
    // A body within max_body_bytes is copied with it; a longer one is not copied.
    c.send_raw(b"POST /post HTTP/1.1\r\nHost: h.test\r\ncontent-length: 5\r\n\r\nhello");
    assert_eq!(c.read_response(false).status, 200);
    let long = "x".repeat(40);
    c.send_raw(
        format!("POST /long HTTP/1.1\r\nHost: h.test\r\ncontent-length: 40\r\n\r\n{long}")
            .as_bytes(),
    );
    assert_eq!(c.read_response(false).status, 200);
    assert!(within(Duration::from_secs(10), || shadow.count() == 11));
    let seen = shadow.seen();
    let first = seen.iter().find(|s| s.target == "/m0").expect("/m0 copied");
    assert_eq!(first.header("x-probe"), Some("yes"));
    assert_eq!(first.header("host"), Some("h.test"));
    assert_eq!(first.header("x-weir-mirror"), Some("1"));
    let post = seen
        .iter()
        .find(|s| s.target == "/post")
        .expect("the POST copied");
    assert_eq!(post.header("content-length"), Some("5"));
    assert!(seen.iter().all(|s| s.target != "/long"));
    assert_eq!(
        main.count(),
        12,
        "the client's requests went to main once each"
    );

    // A mirror that never answers, or refuses connections: the clients see nothing of it.
    for _ in 0..5 {
        assert_eq!(Client::connect(port).get("s.test", "/", &[]).body, "main");
        assert_eq!(Client::connect(port).get("d.test", "/", &[]).body, "main");
    }
    assert!(within(Duration::from_secs(10), || silent
        .received()
        .matches("GET / ")
        .count()
        == 5));
    let m = scrape(admin);
    let count = |g: &str, r: &str, result: &str| {
        m.get(&format!(
            "weir_mirror_requests_total{{gateway=\"{g}\",result=\"{result}\",route=\"{r}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(count("g", "main", "sent"), 11.0);
    assert_eq!(count("g", "main", "skipped"), 1.0);
    assert!(within(Duration::from_secs(10), || {
        let m = scrape(admin);
        m.get("weir_mirror_requests_total{gateway=\"d\",result=\"failed\",route=\"r\"}")
            == Some(&5.0)
    }));

    // An exact share, changed live.
    // SPEC writes the share as a plain number: 10 is 10%.
    std::fs::write(&weir.config, yaml("10")).unwrap();
    assert!(within(Duration::from_secs(10), || {
        scrape(admin).get("weir_config_reloads_total{result=\"ok\"}") == Some(&1.0)
    }));
    let before = shadow.count();
    for _ in 0..50 {
        get(port, "h.test", "/share");
    }
    assert!(within(Duration::from_secs(10), || shadow.count() == before + 5));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(shadow.count(), before + 5);
}

/// A small OTLP/HTTP receiver: keeps the body of every POST to /v1/traces.
fn otlp_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let g = g.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let h = h.trim_end().to_ascii_lowercase();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    if line.starts_with("POST /v1/traces") {
                        g.lock().unwrap().push(body);
                    }
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (port, got)
}

/// One exported span: trace id, span id, parent span id (hex), name, attributes.
type Exported = (String, String, String, String, Vec<(String, String)>);

/// Every span received.
fn spans(got: &std::sync::Mutex<Vec<Vec<u8>>>) -> Vec<Exported> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut out = Vec::new();
    for body in got.lock().unwrap().iter() {
        let req = ExportTraceServiceRequest::decode(&body[..]).expect("OTLP protobuf");
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), format!("{:?}", kv.value)))
                        .collect();
                    out.push((
                        hex(&s.trace_id),
                        hex(&s.span_id),
                        hex(&s.parent_span_id),
                        s.name,
                        attrs,
                    ));
                }
            }
        }
    }
    out
}

/// weir with `tracing: { SETTINGS }` and one gateway `g` on `h.test` over one upstream.
fn traced(settings: &str) -> (u16, Upstream, Weir) {
    let port = free_port();
    let up = Upstream::start("up");
    let yaml = format!(
        "{}tracing: {{ {settings} }}
gateways:
  - name: g
    virtual_hosts: [h.test]
    routes:
      r: {{ instances: [\"{}\"] }}
",
        http_listener(port),
        up.addr()
    );
    let weir = Weir::start(&yaml, &[port]);
    (port, up, weir)
}

#[test]
fn tracing_continues_or_starts_traces_and_exports_spans_over_otlp() {
    let (collector, got) = otlp_receiver();
    let (port, up, _weir) = traced(&format!(
        "otlp_endpoint: \"http://127.0.0.1:{collector}\", sample: 100%, service_name: edge"
    ));
    // A client's trace is continued: same trace id, weir's span between.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{client_trace}-00f067aa0ba902b7-01");
    let r = Client::connect(port).get(
        "h.test",
        "/a",
        &[("traceparent", &parent), ("tracestate", "k=v")],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    let sent = seen
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", client_trace, "01"),
        "{sent}"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "weir's own span is the parent upstream"
    );
    assert_eq!(seen.header("tracestate"), Some("k=v"));
    // Without one, a new trace starts.
    Client::connect(port).get("h.test", "/b", &[]);
    let fresh = up
        .last()
        .header("traceparent")
        .expect("traceparent")
        .to_string();
    assert!(!fresh.contains(client_trace));

    assert!(within(Duration::from_secs(15), || spans(&got).len() >= 2));
    let all = spans(&got);
    let continued = all
        .iter()
        .find(|s| s.0 == client_trace)
        .expect("the continued span");
    assert_eq!(
        continued.1, parts[2],
        "the exported span is the one named upstream"
    );
    assert_eq!(
        continued.2, "00f067aa0ba902b7",
        "child of the client's span"
    );
    let attr = |s: &Exported, k: &str| {
        s.4.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(attr(continued, "weir.gateway").contains("\"g\""));
    assert!(attr(continued, "weir.route").contains("\"r\""));
    assert!(attr(continued, "weir.upstream").contains(&up.addr()));
    assert!(attr(continued, "http.response.status_code").contains("200"));
    let fresh_trace = fresh.split('-').nth(1).unwrap();
    assert!(
        all.iter().any(|s| s.0 == fresh_trace && s.2.is_empty()),
        "a root span"
    );
}

#[test]
fn a_dead_collector_costs_requests_nothing() {
    let silent = RawUpstream::start(Answer::Silent);
    let (port, up, _weir) = traced(&format!(
        "otlp_endpoint: \"http://{}\", sample: 100%",
        silent.addr()
    ));
    let mut c = Client::connect(port);
    // Many more spans than one export batch, to a collector that never answers.
    for _ in 0..2_000 {
        assert_eq!(c.get("h.test", "/", &[]).status, 200);
    }
    assert!(up.last().header("traceparent").is_some());
}

/// One GET on a kept-alive connection (opened when there is none): its status, or why
/// none came. The connection is dropped after an error or a `connection: close`.
fn keepalive_get(
    conn: &mut Option<std::io::BufReader<std::net::TcpStream>>,
    port: u16,
) -> Result<u16, String> {
    use std::io::{BufRead, Read, Write};
    if conn.is_none() {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        *conn = Some(std::io::BufReader::new(s));
    }
    let r = conn.as_mut().unwrap();
    let result = (|| {
        r.get_mut()
            .write_all(b"GET /soak HTTP/1.1\r\nHost: h.test\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(format!("status line {line:?}"))?;
        let (mut len, mut close) = (0usize, false);
        loop {
            let mut h = String::new();
            r.read_line(&mut h).map_err(|e| e.to_string())?;
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| "bad length")?;
            }
            close |= h == "connection: close";
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ));
        }
        Ok((status, close))
    })();
    match result {
        Ok((status, close)) => {
            if close {
                *conn = None;
            }
            Ok(status)
        }
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

#[test]
fn instances_killed_under_keepalive_load_with_reloads_fail_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let port = free_port();
    let mut ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let addrs: Vec<String> = ups.iter().map(|u| u.addr()).collect();
    let yaml = |n: usize| {
        format!(
            "{}gateways:
  - name: g
    virtual_hosts: [h.test]
    routes:
      r: {{ instances: [{}] }}
# reload {n}
",
            http_listener(port),
            addrs
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let weir = Weir::start(&yaml(0), &[port]);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut conn = None;
                // Bounded in count as well as by the stop flag.
                for _ in 0..200_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match keepalive_get(&mut conn, port) {
                        Ok(200) => {}
                        Ok(s) => failed.lock().unwrap().push(format!("status {s}")),
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // One kill at a time: a killed instance stays out for its passive back-off (1 s).
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(1200));
        // Kill one instance (its open connections cut), reload, bring it back.
        let i = round % ups.len();
        let name = ups[i].name.clone();
        let port_i = std::mem::replace(&mut ups[i], Upstream::start("spare")).kill();
        std::fs::write(&weir.config, yaml(round + 1)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        ups[i] = Upstream::start_on(&name, port_i);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    let served = done.load(Ordering::Relaxed);
    assert!(served > 500, "load ran: {served}");
    assert!(
        failed.is_empty(),
        "{} of {served} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}
