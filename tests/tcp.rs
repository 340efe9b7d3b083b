//! TCP gateways (`port: N/tcp`) through the real binary: weighted routes,
//! least_conn by default, source_ip affinity, failover past a dead instance, half-close,
//! the idle timeout and per-connection metrics. Upstreams are echo servers that first
//! say their name.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use common::*;

/// An echo server on 127.0.0.1 that greets each connection with `name\n`.
fn echo(name: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = name.to_string();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let name = name.clone();
            thread::spawn(move || {
                let _ = conn.write_all(format!("{name}\n").as_bytes());
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                // The client closed its side: close ours.
            });
        }
    });
    port
}

/// A connection through weir and the name of the instance it reached.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    instance: String,
}

fn open(port: u16) -> Conn {
    open_from("127.0.0.1", port)
}

fn open_from(source: &str, port: u16) -> Conn {
    let stream = tcp_from(source, port);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut instance = String::new();
    reader.read_line(&mut instance).expect("greeting");
    Conn {
        reader,
        writer: stream,
        instance: instance.trim().to_string(),
    }
}

#[test]
fn weighted_routes_echo_and_half_close() {
    let (port, admin) = (free_port(), free_port());
    let (a, b) = (echo("a"), echo("b"));
    let yaml = format!(
        "admin: {{ bind: \"127.0.0.1:{admin}\" }}
access_log: access.log
gateways:
  - name: t
    port: {port}/tcp
    routes:
      a: {{ weight: 80%, instances: [\"127.0.0.1:{a}\"] }}
      b: {{ weight: 20%, instances: [\"127.0.0.1:{b}\"] }}
"
    );
    let weir = Weir::start(&yaml, &[port, admin]);
    let mut tally = std::collections::HashMap::new();
    for _ in 0..50 {
        *tally.entry(open(port).instance).or_insert(0) += 1;
    }
    // 80/20 exactly over any 50 consecutive connections; the readiness checks' own
    // connections (weir's probe, the harness's wait) may still take one slot among them.
    assert_eq!(tally["a"] + tally["b"], 50);
    assert!((39..=41).contains(&tally["a"]), "{tally:?}");

    // Bytes go both ways; a half-close reaches the upstream, whose close comes back.
    let mut c = open(port);
    c.writer.write_all(b"ping\n").unwrap();
    let mut line = String::new();
    c.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    c.writer.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.reader
        .read_to_end(&mut rest)
        .expect("closed, not timed out");
    assert!(rest.is_empty());

    let metrics = || scrape(admin);
    assert!(within(Duration::from_secs(3), || metrics()
        .get("weir_requests_total{code=\"2xx\",gateway=\"t\",route=\"a\"}")
        .is_some_and(|n| *n >= 40.0)));
    let m = metrics();
    let received = m["weir_bytes_received_total{gateway=\"t\",route=\"a\"}"]
        + m["weir_bytes_received_total{gateway=\"t\",route=\"b\"}"];
    assert_eq!(received, 5.0, "the client's ping");
    // One access-log line a connection: the 51 here, the test's readiness probe, and
    // weir's own (a config of TCP gateways alone is probed on their ports).
    let log = weir.dir.path().join("access.log");
    assert!(within(Duration::from_secs(3), || std::fs::read_to_string(
        &log
    )
    .is_ok_and(|t| t.lines().count() == 53)));
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    for field in [
        "\"method\":\"TCP\"",
        "\"gateway\":\"t\"",
        "\"status\":200",
        "\"client\":\"127.0.0.1\"",
        &format!(
            "\"instance\":\"127.0.0.1:{}\"",
            if last.contains("\"route\":\"a\"") {
                a
            } else {
                b
            }
        ),
    ] {
        assert!(last.contains(field), "{field} in {last}");
    }
}

#[test]
fn least_conn_by_default_and_failover_past_dead_instances() {
    let port = free_port();
    let (a, b, dead) = (echo("a"), echo("b"), dead_port());
    let yaml = format!(
        "gateways:
  - name: t
    port: {port}/tcp
    routes:
      r: {{ instances: [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\", \"127.0.0.1:{dead}\"] }}
"
    );
    let weir = Weir::start(&yaml, &[port]);
    // Every connection reaches a live instance, whichever the dead one is tried.
    for _ in 0..6 {
        assert!(["a", "b"].contains(&open(port).instance.as_str()));
    }
    assert!(weir
        .log()
        .contains(&format!("instance 127.0.0.1:{dead} is down")));
    // Each connection goes to the instance holding the fewest: while `first` stays
    // open, the other instance takes every new one (round-robin would alternate).
    thread::sleep(Duration::from_millis(300));
    let first = open(port);
    let second = open(port);
    assert_ne!(first.instance, second.instance);
    let other = second.instance.clone();
    drop(second);
    thread::sleep(Duration::from_millis(300));
    let third = open(port);
    assert_eq!(
        third.instance, other,
        "{} holds a connection",
        first.instance
    );
    drop((first, third));
}

#[test]
fn source_ip_affinity() {
    let port = free_port();
    let instances: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| format!("\"127.0.0.1:{}\"", echo(n)))
        .collect();
    let yaml = format!(
        "gateways:
  - name: t
    port: {port}/tcp
    balance: source_ip
    routes:
      r: {{ instances: [{}] }}
",
        instances.join(", ")
    );
    let _weir = Weir::start(&yaml, &[port]);
    let mut reached = std::collections::HashSet::new();
    for source in 1..=8 {
        let source = format!("127.0.0.{}", 10 + source);
        let first = open_from(&source, port).instance;
        for _ in 0..3 {
            assert_eq!(open_from(&source, port).instance, first, "from {source}");
        }
        reached.insert(first);
    }
    assert!(
        reached.len() > 1,
        "8 sources all on one instance: {reached:?}"
    );
}

#[test]
fn idle_connections_are_closed() {
    let port = free_port();
    let a = echo("a");
    let yaml = format!(
        "defaults: {{ timeouts: {{ idle: 1s }} }}
gateways:
  - name: t
    port: {port}/tcp
    routes: {{ r: {{ instances: [\"127.0.0.1:{a}\"] }} }}
"
    );
    let _weir = Weir::start(&yaml, &[port]);
    let mut c = open(port);
    // Traffic keeps it open past the timeout...
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(500));
        c.writer.write_all(b"x\n").unwrap();
        let mut line = String::new();
        c.reader.read_line(&mut line).unwrap();
        assert_eq!(line, "x\n");
    }
    // ...silence closes it.
    let mut rest = Vec::new();
    c.reader
        .read_to_end(&mut rest)
        .expect("closed, not timed out");
    assert!(rest.is_empty());
}

#[test]
fn http_features_on_tcp_gateways_are_refused() {
    let dir = config_dir(&[(
        "weir.yaml",
        "gateways:
  - name: t
    port: 9999/tcp
    virtual_hosts: [t.test]
    sticky: route
    routes:
      r:
        condition: \"has cookie x\"
        rewrites: [ { path: \"/y\" } ]
        instances: [ { host: 127.0.0.1, port: 1, h2: true } ]
        health_check: { protocol: http, path: / }
      s: { respond: { status: 200 } }
",
    )]);
    let out = weir_cmd(&["check", "-c", path_str(&dir.path().join("weir.yaml"))]);
    assert_eq!(out.status.code(), Some(1));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for want in [
        "cannot have virtual_hosts",
        "cannot have sticky",
        "route \"r\": a TCP gateway (port N/tcp) cannot have conditions",
        "cannot have rewrites",
        "cannot have h2 instances",
        "cannot have HTTP health checks",
        "route \"s\": a TCP gateway (port N/tcp) cannot have respond routes",
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
}

#[test]
fn weights_reload_live() {
    let port = free_port();
    let (a, b) = (echo("a"), echo("b"));
    let config = |wa: u32| {
        format!(
            "gateways:
  - name: t
    port: {port}/tcp
    routes:
      a: {{ weight: {wa}%, instances: [\"127.0.0.1:{a}\"] }}
      b: {{ weight: {}%, instances: [\"127.0.0.1:{b}\"] }}
",
            100 - wa
        )
    };
    let weir = Weir::start(&config(100), &[port]);
    assert_eq!(open(port).instance, "a");
    // An open connection stays where it is; new ones follow the new weights.
    let held = open(port);
    std::fs::write(&weir.config, config(0)).unwrap();
    assert!(
        within(Duration::from_secs(5), || open(port).instance == "b"),
        "{}",
        weir.log()
    );
    for _ in 0..5 {
        assert_eq!(open(port).instance, "b");
    }
    let mut held = held;
    held.writer.write_all(b"still\n").unwrap();
    let mut line = String::new();
    held.reader.read_line(&mut line).unwrap();
    assert_eq!((held.instance.as_str(), line.as_str()), ("a", "still\n"));
}
