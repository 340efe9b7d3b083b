//! Vamp's routing semantics through the real binary:
//! conditions and their strength, sticky sessions, balance algorithms, rewrites.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
const CHROME: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36";

/// Bodies of `n` requests with `headers`, on one connection.
fn bodies(port: u16, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    let mut c = Client::connect(port);
    (0..n)
        .map(|_| {
            let r = c.get("g.test", "/", headers);
            assert_eq!(r.status, 200, "{r:?}");
            r.body
        })
        .collect()
}

fn count(v: &[String], body: &str) -> usize {
    v.iter().filter(|b| *b == body).count()
}

fn respond(body: &str) -> String {
    format!("respond: {{ status: 200, body: {body} }}")
}

#[test]
fn firefox_at_full_and_half_strength() {
    let port = free_port();
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      a: {{ weight: 100%, {} }}
      ff: {{ weight: 0%, condition: \"User-Agent == Firefox\", {} }}
  - name: half
    virtual_hosts: [half.test]
    routes:
      a: {{ weight: 100%, {} }}
      ff: {{ weight: 0%, condition: \"user-agent is firefox\", condition_strength: 50%, {} }}
",
        http_listener(port),
        respond("A"),
        respond("FF"),
        respond("A"),
        respond("FF")
    );
    let _weir = Weir::start(&yaml, &[port]);
    let ff = bodies(port, 20, &[("User-Agent", FIREFOX)]);
    assert_eq!(count(&ff, "FF"), 20);
    let chrome = bodies(port, 20, &[("User-Agent", CHROME)]);
    assert_eq!(count(&chrome, "A"), 20);
    // 50%: deterministic, every other matching request.
    let mut c = Client::connect(port);
    let half: Vec<String> = (0..20)
        .map(|_| c.get("half.test", "/", &[("User-Agent", FIREFOX)]).body)
        .collect();
    assert_eq!(count(&half, "FF"), 10);
    assert!(
        half.windows(2).all(|w| w[0] != w[1]),
        "not alternating: {half:?}"
    );
}

#[test]
fn vamp_example_80_20_with_firefox_at_half_strength() {
    let port = free_port();
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      a: {{ weight: 80%, {} }}
      b: {{ weight: 20%, condition: \"user-agent == Firefox\", condition_strength: 50%, {} }}
",
        http_listener(port),
        respond("A"),
        respond("B")
    );
    let _weir = Weir::start(&yaml, &[port]);
    let chrome = bodies(port, 1000, &[("User-Agent", CHROME)]);
    let b = count(&chrome, "B") as f64 / 10.0;
    assert!((b - 20.0).abs() <= 1.0, "non-Firefox B share {b}%");
    let ff = bodies(port, 1000, &[("User-Agent", FIREFOX)]);
    let b = count(&ff, "B") as f64 / 10.0;
    assert!(
        (b - 60.0).abs() <= 1.0,
        "Firefox B share {b}%, want 60 (50 + 20% of 50)"
    );
}

fn sticky_config(port: u16, a: &Upstream, b: &Upstream, wa: u32, mode: &str) -> String {
    format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    sticky: {mode}
    routes:
      a: {{ weight: {wa}%, instances: [\"{}\"] }}
      b: {{ weight: {}%, instances: [\"{}\"] }}
",
        http_listener(port),
        a.addr(),
        100 - wa,
        b.addr()
    )
}

fn cookie_of(r: &Response) -> String {
    let c = r.header("set-cookie").expect("a sticky cookie is set");
    assert!(c.contains("; Path=/; HttpOnly; SameSite=Lax"), "{c}");
    assert!(!c.contains("Secure"), "no Secure over plain HTTP: {c}");
    c.split(';').next().unwrap().to_string()
}

#[test]
fn sticky_route_holds_and_is_replaced_when_the_route_goes() {
    let port = free_port();
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let weir = Weir::start(&sticky_config(port, &a, &b, 50, "route"), &[port]);
    let mut c = Client::connect(port);
    let first = c.get("g.test", "/", &[]);
    let cookie = cookie_of(&first);
    assert!(cookie.starts_with("weir_g="), "{cookie}");
    for _ in 0..50 {
        let r = c.get("g.test", "/", &[("Cookie", &cookie)]);
        assert_eq!(r.body, first.body, "sticky route broken");
        assert!(
            r.header("set-cookie").is_none(),
            "a valid cookie is not rewritten"
        );
    }
    // The same config gives the same cookie value (opaque, deterministic).
    let other = Client::connect(port).get("g.test", "/", &[]);
    if other.body == first.body {
        assert_eq!(cookie_of(&other), cookie);
    }
    // Without the cookie's route, the cookie is ignored and replaced.
    let (keep, keep_up) = if first.body == "a" {
        ("b", &b)
    } else {
        ("a", &a)
    };
    std::fs::write(
        &weir.config,
        format!(
            "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    sticky: route
    routes:
      {keep}: {{ weight: 100%, instances: [\"{}\"] }}
",
            http_listener(port),
            keep_up.addr()
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = Client::connect(port).get("g.test", "/", &[("Cookie", &cookie)]);
        if r.body == keep {
            assert_ne!(cookie_of(&r), cookie, "cookie replaced");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload not applied: {}",
            weir.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn zero_weight_route_keeps_its_stuck_clients() {
    let port = free_port();
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let weir = Weir::start(&sticky_config(port, &a, &b, 0, "route"), &[port]);
    let r = get(port, "g.test", "/");
    assert_eq!(r.body, "b");
    let cookie = cookie_of(&r);
    std::fs::write(&weir.config, sticky_config(port, &a, &b, 100, "route")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while get(port, "g.test", "/").body != "a" {
        assert!(Instant::now() < deadline, "reload not applied");
        thread::sleep(Duration::from_millis(50));
    }
    // Route b is at 0% now: new clients go to a, b's stuck client stays (drain).
    let mut c = Client::connect(port);
    for _ in 0..20 {
        assert_eq!(c.get("g.test", "/", &[("Cookie", &cookie)]).body, "b");
    }
}

#[test]
fn sticky_instance_and_dead_instance_rebalanced() {
    let port = free_port();
    let ups: Vec<Upstream> = (0..3).map(|i| Upstream::start(&format!("i{i}"))).collect();
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr())).collect();
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    sticky: instance
    routes:
      r: {{ instances: [{}] }}
",
        http_listener(port),
        list.join(", ")
    );
    let _weir = Weir::start(&yaml, &[port]);
    let first = get(port, "g.test", "/");
    let cookie = cookie_of(&first);
    let mut c = Client::connect(port);
    for _ in 0..50 {
        assert_eq!(
            c.get("g.test", "/", &[("Cookie", &cookie)]).body,
            first.body
        );
    }
    // The cookie's instance dies: the client is re-balanced and given a new cookie.
    let mut ups = ups;
    let idx = ups.iter().position(|u| u.name == first.body).unwrap();
    ups.remove(idx).kill();
    let r = Client::connect(port).get("g.test", "/", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200);
    assert_ne!(r.body, first.body);
    assert_ne!(cookie_of(&r), cookie);
}

#[test]
fn least_conn_avoids_the_slow_instance() {
    let port = free_port();
    let slow = Upstream::start_slow("slow", Duration::from_millis(300));
    let fast = Upstream::start("fast");
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    balance: least_conn
    routes:
      r: {{ instances: [\"{}\", \"{}\"] }}
",
        http_listener(port),
        slow.addr(),
        fast.addr()
    );
    let _weir = Weir::start(&yaml, &[port]);
    let clients: Vec<_> = (0..6)
        .map(|_| thread::spawn(move || bodies(port, 15, &[])))
        .collect();
    let all: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(all.len(), 90);
    // Round-robin would send 45 to the slow instance.
    assert!(
        count(&all, "slow") <= 15,
        "slow got {} of 90",
        count(&all, "slow")
    );
}

#[test]
fn source_ip_affinity() {
    let port = free_port();
    let ups: Vec<Upstream> = (0..3).map(|i| Upstream::start(&format!("i{i}"))).collect();
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr())).collect();
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r: {{ balance: source_ip, instances: [{}] }}
",
        http_listener(port),
        list.join(", ")
    );
    let _weir = Weir::start(&yaml, &[port]);
    let mut used = std::collections::HashSet::new();
    for last in 2..=13 {
        let source = format!("127.0.0.{last}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10 {
            // A new connection each time: affinity is by address, not by connection.
            let r = Client::connect_from(&source, port).get("g.test", "/", &[]);
            seen.insert(r.body);
        }
        assert_eq!(seen.len(), 1, "{source} spread over {seen:?}");
        used.extend(seen);
    }
    assert!(used.len() >= 2, "every source on one instance: {used:?}");
}

fn hash_config(port: u16, ups: &[Upstream]) -> String {
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr())).collect();
    format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    balance: hash(header X-User)
    routes:
      r: {{ instances: [{}] }}
",
        http_listener(port),
        list.join(", ")
    )
}

fn placement(port: u16, users: usize) -> HashMap<usize, String> {
    let mut c = Client::connect(port);
    (0..users)
        .map(|u| {
            (
                u,
                c.get("g.test", "/", &[("X-User", &format!("user-{u}"))])
                    .body,
            )
        })
        .collect()
}

#[test]
fn consistent_hash_moves_only_keys_to_a_new_instance() {
    let port = free_port();
    let mut ups: Vec<Upstream> = (0..3).map(|i| Upstream::start(&format!("i{i}"))).collect();
    let weir = Weir::start(&hash_config(port, &ups), &[port]);
    let before = placement(port, 200);
    assert_eq!(before, placement(port, 200), "same key, same instance");
    ups.push(Upstream::start("i3"));
    std::fs::write(&weir.config, hash_config(port, &ups)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let after = loop {
        let p = placement(port, 200);
        if p.values().any(|b| b == "i3") {
            break p;
        }
        assert!(Instant::now() < deadline, "new instance never used");
        thread::sleep(Duration::from_millis(50));
    };
    let moved: Vec<_> = (0..200).filter(|u| before[u] != after[u]).collect();
    assert!(
        moved.iter().all(|u| after[u] == "i3"),
        "keys moved between old instances"
    );
    assert!(moved.len() < 100, "{} of 200 keys moved", moved.len());
    // No key: round-robin over all four.
    let spread = bodies(port, 40, &[]);
    assert!(
        (0..4).all(|i| count(&spread, &format!("i{i}")) == 10),
        "{spread:?}"
    );
}

#[test]
fn random_balance_honours_weights() {
    let port = free_port();
    let (light, heavy) = (Upstream::start("light"), Upstream::start("heavy"));
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r:
        balance: random
        instances: [{{ host: 127.0.0.1, port: {}, weight: 1 }}, {{ host: 127.0.0.1, port: {}, weight: 3 }}]
",
        http_listener(port),
        light.port,
        heavy.port
    );
    let _weir = Weir::start(&yaml, &[port]);
    let all = bodies(port, 800, &[]);
    let share = count(&all, "heavy") as f64 / 800.0;
    assert!((0.65..0.85).contains(&share), "heavy got {share}");
}

#[test]
fn rewrites_with_and_without_query_strings() {
    let port = free_port();
    let up = Upstream::start("up");
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r:
        instances: [\"{}\"]
        rewrites:
          - {{ path: \"%[path,regsub(^/v1,/api)] if path_beg /v1\" }}
          - {{ path: \"/fixed?from=%[path] if {{ path_beg /f }}\" }}
          - {{ path: \"/t/%[hdr(X-Tenant)]%[path] if has header X-Tenant and path prefix /x\" }}
",
        http_listener(port),
        up.addr()
    );
    let _weir = Weir::start(&yaml, &[port]);
    let mut c = Client::connect(port);
    for (path, headers, want) in [
        ("/v1/users", vec![], "/api/users"),
        ("/v1/users?page=2&x=y", vec![], "/api/users?page=2&x=y"),
        ("/v2/users?page=2", vec![], "/v2/users?page=2"),
        ("/f/a?q=1", vec![], "/fixed?from=/f/a"),
        ("/x/1?k=v", vec![("X-Tenant", "acme")], "/t/acme/x/1?k=v"),
        ("/x/1", vec![], "/x/1"),
    ] {
        let r = c.get("g.test", path, &headers);
        assert_eq!(r.status, 200);
        assert_eq!(up.last().target, want, "for {path}");
    }
}
