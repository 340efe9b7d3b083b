//! Health through the real binary: active checks, passive marking,
//! route failover, 503 with nothing left, recovery, and health kept across reloads.

mod common;

use std::time::Duration;

use common::*;

/// Statuses of `n` GETs, each on a new connection.
fn statuses(port: u16, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(port, "g.test", "/").status).collect()
}

fn errors(s: &[u16]) -> usize {
    s.iter().filter(|c| **c != 200).count()
}

#[test]
fn active_check_takes_a_killed_instance_out() {
    let (port, admin) = (free_port(), free_port());
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    // No retries: only the active check can keep clients away from the dead instance.
    let yaml = format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults: {{ retries: 0 }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r:
        instances: [\"{}\", \"{}\"]
        health_check: {{ protocol: http, path: /health, interval: 200ms, timeout: 100ms, failures: 2, successes: 1 }}
",
        a.addr(),
        b.addr()
    );
    let _weir = Weir::start(&yaml, &[port, admin]);
    assert_eq!(errors(&statuses(port, 20)), 0);
    let probed = || {
        a.seen()
            .iter()
            .any(|s| s.target == "/health" && s.header("user-agent") == Some("weir-health-check"))
    };
    assert!(
        within(Duration::from_secs(2), probed),
        "active probes reach the instance"
    );
    let a_addr = a.addr();
    let a_port = a.kill();
    // Taken out once its checks fail: wait for weir to say so, not for a guess of when.
    let healthy =
        format!("weir_instance_healthy{{gateway=\"g\",route=\"r\",upstream=\"{a_addr}\"}}");
    assert!(
        within(Duration::from_secs(10), || scrape(admin).get(&healthy)
            == Some(&0.0)),
        "{:?}",
        scrape(admin)
    );
    let after = statuses(port, 200);
    assert_eq!(errors(&after), 0, "{after:?}");
    assert!(b.seen().iter().filter(|s| s.target == "/").count() >= 200);

    // Recovery: the instance comes back on the same port and gets traffic again.
    let a = Upstream::start_on("a", a_port);
    assert!(within(Duration::from_secs(3), || {
        statuses(port, 4);
        a.seen().iter().any(|s| s.target == "/")
    }));
}

#[test]
fn passive_refusal_means_no_client_error_at_all() {
    let port = free_port();
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let yaml = format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r: {{ instances: [\"{}\", \"{}\"] }}
",
        a.addr(),
        b.addr()
    );
    let weir = Weir::start(&yaml, &[port]);
    assert_eq!(errors(&statuses(port, 10)), 0);
    a.kill();
    let after = statuses(port, 200);
    assert_eq!(errors(&after), 0, "{after:?}");
    assert!(weir.log().contains("is down"), "{}", weir.log());
}

#[test]
fn dead_route_share_goes_to_the_others_then_503_then_recovery() {
    let port = free_port();
    let a = Upstream::start("a");
    let (b1, b2) = (dead_port(), dead_port());
    let yaml = format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      a:
        weight: 50%
        instances: [\"{}\"]
        health_check: {{ protocol: tcp, interval: 200ms, timeout: 100ms, failures: 1, successes: 1 }}
      b: {{ weight: 50%, instances: [\"127.0.0.1:{b1}\", \"127.0.0.1:{b2}\"] }}
",
        a.addr()
    );
    let _weir = Weir::start(&yaml, &[port]);
    // Route B is dead from the start: every request lands on A, none fails.
    let s = statuses(port, 200);
    assert_eq!(errors(&s), 0, "{s:?}");
    assert_eq!(a.count(), 200);

    // Everything dead: 503 with a short body.
    let a_port = a.kill();
    assert!(within(Duration::from_secs(3), || get(port, "g.test", "/")
        .status
        == 503));
    let r = get(port, "g.test", "/");
    assert_eq!((r.status, r.body.as_str()), (503, "no route available\n"));

    // Recovery of A brings traffic back.
    let a = Upstream::start_on("a", a_port);
    assert!(within(Duration::from_secs(3), || get(port, "g.test", "/")
        .status
        == 200));
    assert_eq!(errors(&statuses(port, 20)), 0);
    assert!(a.count() >= 20);
}

#[test]
fn health_of_unchanged_instance_survives_a_weight_reload() {
    let port = free_port();
    let live = Upstream::start("live");
    let dead = dead_port();
    let yaml = |w: u32| {
        format!(
            "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
defaults: {{ retries: 0 }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r:
        weight: {w}%
        instances: [\"127.0.0.1:{dead}\", \"{}\"]
        health_check: {{ protocol: tcp, interval: 60s, timeout: 200ms }}
      other: {{ weight: {}%, respond: {{ status: 200, body: other }} }}
",
            live.addr(),
            100 - w
        )
    };
    let weir = Weir::start(&yaml(100), &[port]);
    // The first probe runs at once and finds the dead instance; the next is 60 s away.
    assert!(within(Duration::from_secs(3), || weir
        .log()
        .contains(&format!("127.0.0.1:{dead} is down"))));
    assert_eq!(errors(&statuses(port, 20)), 0);
    std::fs::write(&weir.config, yaml(90)).unwrap();
    assert!(within(Duration::from_secs(3), || weir
        .log()
        .contains("config reloaded")));
    // Were the dead instance reset to unknown, half of these would meet it and fail.
    let s = statuses(port, 40);
    assert_eq!(errors(&s), 0, "{s:?}");
}
