//! HTTP/2 connections weir accepts itself (src/http2), through the real binary and
//! curl: streams weir serves in the connection's task and streams it hands to
//! Pingora's proxy, multiplexed on one connection; streams in flight when the process
//! stops; the budget of malformed streams a connection may open.

mod common;

use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

fn yaml(tls: u16, admin: u16, up: &str, extra: &str) -> String {
    format!(
        "listeners:
  https: {{ bind: \"127.0.0.1:{tls}\", tls: {{ self_signed: [g.test], default_certificate: 0 }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
{extra}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes: {{ r: {{ instances: [\"{up}\"] }} }}
"
    )
}

/// Runs curl with HTTP/2 against `g.test` on `port`; its stdout.
fn curl(port: u16, args: &[&str]) -> String {
    let resolve = format!("g.test:{port}:127.0.0.1");
    let out = Command::new("curl")
        .args(["-sSk", "--http2", "--max-time", "20", "--resolve", &resolve])
        .args(args)
        .output()
        .expect("run curl");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_connection_carries_weirs_streams_and_pingoras_together() {
    let up = Upstream::start("up");
    let (tls, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let extra = format!("access_log: {}\n", log_path.display());
    let _weir = Weir::start(&yaml(tls, admin, &up.addr(), &extra), &[tls, admin]);
    let url = |path: &str| format!("https://g.test:{tls}{path}");
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let each = "%{http_code} %{num_connects}\\n";
    // Bodiless GETs are weir's; a POST with a body goes to Pingora's proxy. All in
    // parallel, on one multiplexed connection.
    // Each transfer its own option set (`--next`); curl's own options repeated in each.
    let resolve = format!("g.test:{tls}:127.0.0.1");
    let mut args: Vec<String> = vec!["-Z".into()];
    let mut transfer = |path: String, data: Option<String>| {
        if args.len() > 1 {
            args.push("--next".into());
        }
        let common = ["-sk", "--http2", "--resolve", &resolve, "-w", each, "-o"];
        args.extend(common.iter().map(|a| a.to_string()));
        args.push(file(&path[1..]));
        if let Some(d) = data {
            args.extend(["-d".into(), d]);
        }
        args.push(url(&path));
    };
    for i in 0..6 {
        transfer(format!("/get{i}"), None);
    }
    for i in 0..3 {
        transfer(format!("/post{i}"), Some(format!("body{i}")));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(tls, &args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{out}");
    let connects: u32 = lines
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().parse::<u32>().unwrap())
        .sum();
    assert_eq!(connects, 1, "one connection for every stream: {out}");
    for name in ["get0", "get5", "post0", "post2"] {
        let body = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(body, "up", "{name}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 9);
    for i in 0..3 {
        let post = seen
            .iter()
            .find(|s| s.target == format!("/post{i}"))
            .expect("the POST reached the instance");
        assert_eq!(post.method, "POST");
        assert_eq!(post.header("content-length"), Some("5"));
    }
    let get = seen.iter().find(|s| s.target == "/get3").unwrap();
    assert_eq!(get.method, "GET");
    assert_eq!(get.header("x-forwarded-proto"), Some("https"));
    assert_eq!(get.header("host"), Some(&*format!("g.test:{tls}")));
    // Both kinds counted for the route.
    let m = scrape(admin);
    assert_eq!(
        m.get(r#"weir_requests_total{code="2xx",gateway="g",route="r"}"#),
        Some(&9.0),
        "{m:?}"
    );
    // And each has its access log line, with the request id the instance got.
    let lines = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        within(Duration::from_secs(5), || lines().lines().count() == 9),
        "{}",
        lines()
    );
    let log = lines();
    let get_line = log
        .lines()
        .find(|l| l.contains("\"path\":\"/get3\""))
        .unwrap();
    assert!(get_line.contains("\"method\":\"GET\""), "{get_line}");
    assert!(get_line.contains("\"route\":\"r\""), "{get_line}");
    assert!(get_line.contains("\"status\":200"), "{get_line}");
    let id = get.header("x-request-id").unwrap();
    assert!(
        get_line.contains(&format!("\"request_id\":\"{id}\"")),
        "{get_line}"
    );
    assert_eq!(log.matches("\"method\":\"POST\"").count(), 3, "{log}");
}

#[test]
fn a_stop_lets_http2_streams_in_flight_finish() {
    let slow = Upstream::start_slow("slow", Duration::from_secs(2));
    let (tls, admin) = (free_port(), free_port());
    let extra = "defaults: { shutdown: { drain: 1s, grace: 20s } }\n";
    let mut weir = Weir::start(&yaml(tls, admin, &slow.addr(), extra), &[tls, admin]);
    let url = format!("https://g.test:{tls}/slow");
    let in_flight = thread::spawn(move || curl(tls, &["-w", " %{http_code}", &url]));
    assert!(within(Duration::from_secs(10), || slow.count() == 1));
    signal(weir.pid(), "TERM");
    assert_eq!(in_flight.join().unwrap(), "slow 200");
    assert!(
        weir.wait_exit(Duration::from_secs(20)),
        "exits once the stream is done"
    );
}

/// One HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET for `/` with no `:authority` and no `Host`, in HPACK: `:method GET` and
/// `:scheme https` from the static table, `:path` a literal for its static name.
fn get_without_authority() -> Vec<u8> {
    vec![0x82, 0x87, 0x04, 1, b'/']
}

/// A client that keeps opening malformed streams (no authority: each answered 400)
/// is cut off after weir's budget of them, though it never goes idle.
#[test]
fn a_connection_of_malformed_streams_is_closed() {
    let up = Upstream::start("up");
    let (tls, admin) = (free_port(), free_port());
    let extra = "defaults: { timeouts: { idle: 60s } }\n";
    let _weir = Weir::start(&yaml(tls, admin, &up.addr(), extra), &[tls, admin]);
    let run = |streams: u32| {
        let mut client = Command::new("timeout")
            .args(["20", "openssl", "s_client", "-quiet", "-alpn", "h2"])
            .args(["-servername", "g.test", "-connect"])
            .arg(format!("127.0.0.1:{tls}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run openssl s_client");
        let mut stdin = client.stdin.take().unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(4, 0, 0, &[]));
        let bad = get_without_authority();
        for i in 0..streams {
            // HEADERS with END_STREAM and END_HEADERS.
            out.extend(frame(1, 0x5, 1 + 2 * i, &bad));
        }
        use std::io::Write;
        let _ = stdin.write_all(&out);
        let _ = stdin.flush();
        let started = std::time::Instant::now();
        let closed = within(Duration::from_secs(8), || {
            client.try_wait().ok().flatten().is_some()
        });
        let _ = client.kill();
        let _ = client.wait();
        drop(stdin);
        (closed, started.elapsed())
    };
    // Within the budget the connection stays open (the client holds it).
    let (closed, after) = run(8);
    assert!(!closed, "closed after {after:?} with 8 malformed streams");
    let (closed, after) = run(40);
    assert!(
        closed,
        "still open after {after:?} with 40 malformed streams"
    );
    assert_eq!(up.count(), 0, "no malformed request reached the instance");
}

#[test]
fn http2_heads_are_held_to_the_listeners_limits_on_both_legs() {
    let up = Upstream::start("up");
    for leg in Leg::BOTH {
        let (tls, admin) = (free_port(), free_port());
        let limits = "defaults:\n  limits: { max_request_header_bytes: 4KiB, max_headers: 20, max_uri_bytes: 1KiB }\n";
        let weir = Weir::start_on(leg, &yaml(tls, admin, &up.addr(), limits), &[tls, admin]);
        let url = |path: &str| format!("https://g.test:{tls}{path}");
        let status = |path: &str, headers: &[String]| {
            let mut args: Vec<String> = vec![
                "-o".into(),
                "/dev/null".into(),
                "-w".into(),
                "%{http_code}".into(),
            ];
            for h in headers {
                args.extend(["-H".to_string(), h.clone()]);
            }
            args.push(url(path));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(tls, &args)
        };
        let big = vec![format!("X-Big: {}", "a".repeat(32 << 10))];
        let just_under = vec![format!("X-Big: {}", "a".repeat(3 << 10))];
        let many: Vec<String> = (0..30).map(|i| format!("X-H{i}: v")).collect();
        let long_path = format!("/{}", "p".repeat(2 << 10));
        // (Over the limits, weir's own leg hands a stream to Pingora's, which refuses it.)
        assert_eq!(status("/", &just_under), "200", "{leg:?}");
        assert_eq!(
            status("/", &big),
            "431",
            "{leg:?}: a 32 KiB header over 4 KiB"
        );
        assert_eq!(status("/", &many), "431", "{leg:?}: 30 fields over 20");
        assert_eq!(
            status(&long_path, &[]),
            "414",
            "{leg:?}: a 2 KiB target over 1 KiB"
        );
        let m = scrape(admin);
        let refused = |code: &str| {
            m.get(&format!(
                "weir_requests_refused_total{{code=\"{code}\",listener=\"https\"}}"
            ))
            .copied()
        };
        assert_eq!(refused("431"), Some(2.0), "{leg:?}: {m:?}");
        assert_eq!(refused("414"), Some(1.0), "{leg:?}");
        drop(weir);
    }
    // Only the two requests within the limits reached the instance.
    assert_eq!(up.count(), 2);
}
