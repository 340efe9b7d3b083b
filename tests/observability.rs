//! Metrics, access log and the admin API through the real binary.

mod common;

use std::time::Duration;

use common::*;

fn config(port: u16, admin: u16, up: &Upstream, extra_route: &str, extra_top: &str) -> String {
    format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
admin: {{ bind: \"127.0.0.1:{admin}\" }}
{extra_top}include: [gateways.d/*.yaml]
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      a:
        weight: 100%
        instances: [\"{}\"]
        rewrites: [ {{ path: \"%[path,regsub(^/v1,/api)] if path_beg /v1\" }} ]
{extra_route}",
        up.addr()
    )
}

#[test]
fn metrics_count_what_was_served_and_forget_removed_routes() {
    let (port, admin) = (free_port(), free_port());
    let up = Upstream::start("up");
    let dead = dead_port();
    let extra = format!("      b: {{ weight: 0%, instances: [\"127.0.0.1:{dead}\"] }}\n");
    let dir = config_dir(&[
        ("weir.yaml", &config(port, admin, &up, &extra, "")),
        ("gateways.d/.keep", ""),
    ]);
    let cfg = dir.path().join("weir.yaml");
    let weir = Weir::start_in(dir, cfg, &[port, admin]);
    let mut c = Client::connect(port);
    for _ in 0..7 {
        assert_eq!(c.get("g.test", "/v1/x", &[]).status, 200);
    }
    assert_eq!(get(port, "nobody.test", "/").status, 404);
    // Requests are counted when they finish, just after the response went out.
    assert!(within(Duration::from_secs(3), || {
        let m = scrape(admin);
        m.get(r#"weir_requests_total{code="4xx",gateway="",route=""}"#) == Some(&1.0)
            && m.get(r#"weir_requests_total{code="2xx",gateway="g",route="a"}"#) == Some(&7.0)
    }));
    let m = scrape(admin);
    let v = |k: &str| m.get(k).copied().unwrap_or_else(|| panic!("no series {k}"));
    assert_eq!(
        v(r#"weir_requests_total{code="2xx",gateway="g",route="a"}"#),
        7.0
    );
    assert_eq!(
        v(r#"weir_requests_total{code="4xx",gateway="",route=""}"#),
        1.0
    );
    assert_eq!(
        v(r#"weir_request_duration_seconds_count{gateway="g",route="a"}"#),
        7.0
    );
    assert_eq!(
        v(r#"weir_bytes_sent_total{gateway="g",route="a"}"#),
        14.0,
        "7 bodies of 2 bytes"
    );
    assert_eq!(
        v(r#"weir_bytes_received_total{gateway="g",route="a"}"#),
        0.0
    );
    let inst = format!(
        r#"weir_instance_healthy{{gateway="g",route="a",upstream="{}"}}"#,
        up.addr()
    );
    assert_eq!(v(&inst), 1.0);
    assert!(
        !m.keys().any(|k| k.contains("instance=")),
        "`instance` is the scrape target's label in Prometheus"
    );
    let build = format!(
        r#"weir_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(v(&build), 1.0);
    assert!(v("process_resident_memory_bytes") > 1e6);
    assert!(v("process_open_fds") > 0.0);
    assert!(v("process_start_time_seconds") > 1.7e9);
    assert_eq!(v(r#"weir_route_weight_ratio{gateway="g",route="a"}"#), 1.0);
    assert_eq!(v(r#"weir_route_weight_ratio{gateway="g",route="b"}"#), 0.0);
    // The kept-alive client (the 404's connection closes on its own time).
    assert!(within(Duration::from_secs(3), || {
        scrape(admin)[r#"weir_connections_active{listener="http"}"#] == 1.0
    }));
    assert_eq!(
        v(r#"weir_tls_handshake_errors_total{listener="http"}"#),
        0.0
    );
    assert_eq!(v(r#"weir_config_reloads_total{result="ok"}"#), 0.0);
    assert!(v("weir_config_last_reload_timestamp_seconds") > 1.7e9);
    c.close();
    assert!(within(Duration::from_secs(3), || {
        scrape(admin)[r#"weir_connections_active{listener="http"}"#] == 0.0
    }));

    // An upstream error on route b's dead instance, then b removed by a reload.
    let b_only = config(port, admin, &up, &extra.replace("0%", "100%"), "").replace(
        "weight: 100%\n        instances",
        "weight: 0%\n        instances",
    );
    assert!(b_only.contains("b: { weight: 100%"), "{b_only}");
    std::fs::write(&weir.config, b_only).unwrap();
    assert!(within(
        Duration::from_secs(3),
        || scrape(admin)[r#"weir_config_reloads_total{result="ok"}"#] == 1.0
    ));
    // The only weighted route's instance refuses: 502 or, once it is marked down, 503.
    let failed = get(port, "g.test", "/");
    assert!([502, 503].contains(&failed.status));
    // weir's own answers carry no `Server: Pingora` (nor any Server header).
    assert_eq!(failed.header("server"), None);
    assert_eq!(get(port, "nobody.test", "/").header("server"), None);
    let m = scrape(admin);
    let err = format!(
        r#"weir_upstream_errors_total{{gateway="g",kind="connect",route="b",upstream="127.0.0.1:{dead}"}}"#
    );
    assert!(m.get(&err).is_some_and(|v| *v >= 1.0), "{m:?}");
    std::fs::write(&weir.config, config(port, admin, &up, "", "")).unwrap();
    assert!(within(
        Duration::from_secs(3),
        || scrape(admin)[r#"weir_config_reloads_total{result="ok"}"#] == 2.0
    ));
    // The series of removed routes are deleted just after the swap.
    assert!(
        within(Duration::from_secs(3), || scrape(admin)
            .keys()
            .all(|k| !k.contains(r#"route="b""#))),
        "route b's series remain"
    );
    let m = scrape(admin);
    assert!(m.contains_key(r#"weir_requests_total{code="2xx",gateway="g",route="a"}"#));
    // A rejected reload is counted.
    std::fs::write(&weir.config, "listeners: [").unwrap();
    assert!(within(Duration::from_secs(3), || scrape(admin)
        .get(r#"weir_config_reloads_total{result="error"}"#)
        == Some(&1.0)));
}

#[test]
fn access_log_lines_are_json_with_every_field() {
    let (port, admin) = (free_port(), free_port());
    let up = Upstream::start("up");
    let dir = config_dir(&[("gateways.d/.keep", "")]);
    let log = dir.path().join("access.log");
    let yaml = config(
        port,
        admin,
        &up,
        "",
        &format!("access_log: {}\n", log.display()),
    );
    std::fs::write(dir.path().join("weir.yaml"), yaml).unwrap();
    let cfg = dir.path().join("weir.yaml");
    let _weir = Weir::start_in(dir, cfg, &[port, admin]);
    let r = Client::connect(port).get("g.test", "/v1/users?id=7", &[("X-Request-Id", "rid-1")]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().target, "/api/users?id=7", "rewritten upstream");
    assert_eq!(get(port, "nobody.test", "/x").status, 404);
    let mut lines = Vec::new();
    assert!(within(Duration::from_secs(3), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= 2
    }));
    // Lines are written as requests finish, not necessarily in the order they came.
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let first = parsed
        .iter()
        .find(|v| v["status"] == 200)
        .expect("the 200 line")
        .clone();
    for field in [
        "ts",
        "client",
        "method",
        "host",
        "path",
        "status",
        "bytes_sent",
        "duration_ms",
        "gateway",
        "route",
        "instance",
        "upstream_status",
        "request_id",
        "tls_version",
        "sni",
    ] {
        assert!(first.get(field).is_some(), "no {field} in {first}");
    }
    assert_eq!(first["path"], "/v1/users?id=7", "the original path");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream_status"], 200);
    assert_eq!(first["gateway"], "g");
    assert_eq!(first["route"], "a");
    assert_eq!(first["instance"], up.addr());
    assert_eq!(first["request_id"], "rid-1");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["bytes_sent"], 2);
    let second = parsed
        .iter()
        .find(|v| v["status"] == 404)
        .expect("the 404 line")
        .clone();
    assert_eq!(second["status"], 404);
    assert_eq!(second["gateway"], serde_json::Value::Null);
}

#[test]
fn admin_api_reads_gateways() {
    let (port, admin) = (free_port(), free_port());
    let up = Upstream::start("up");
    let dir = config_dir(&[
        ("weir.yaml", &config(port, admin, &up, "", "")),
        ("gateways.d/.keep", ""),
    ]);
    let cfg = dir.path().join("weir.yaml");
    let _weir = Weir::start_in(dir, cfg, &[port, admin]);
    let r = get(admin, "localhost", "/api/v1/gateways");
    assert_eq!(r.status, 200);
    let all: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(all[0]["name"], "g");
    assert_eq!(all[0]["config"]["virtual_hosts"][0], "g.test");
    assert_eq!(all[0]["config"]["routes"]["a"]["weight"], "100%");
    assert_eq!(all[0]["routes"][0]["route"], "a");
    assert_eq!(all[0]["routes"][0]["effective_weight"], 1.0);
    assert_eq!(all[0]["routes"][0]["instances"][0]["instance"], up.addr());
    assert_eq!(all[0]["routes"][0]["instances"][0]["health"], "unknown");
    assert_eq!(all[0]["routes"][0]["instances"][0]["in_flight"], 0);
    let one = Client::connect(admin).get(
        "localhost",
        "/api/v1/gateways/g",
        &[("Accept", "application/x-yaml")],
    );
    assert_eq!(one.header("content-type"), Some("application/x-yaml"));
    assert!(one.body.contains("name: g"), "{}", one.body);
    assert_eq!(get(admin, "localhost", "/api/v1/gateways/nope").status, 404);
}

#[test]
fn admin_api_writes() {
    let (port, admin) = (free_port(), free_port());
    let up = Upstream::start("new");
    let dir = config_dir(&[("gateways.d/.keep", ""), ("token", "s3cret\n")]);
    let token_file = dir.path().join("token");
    let root = dir.path().to_path_buf();
    let base = config(port, admin, &up, "", "");
    let with_token = base.replace(
        &format!("admin: {{ bind: \"127.0.0.1:{admin}\" }}"),
        &format!(
            "admin: {{ bind: \"127.0.0.1:{admin}\", token_file: {} }}",
            token_file.display()
        ),
    );
    std::fs::write(root.join("weir.yaml"), &base).unwrap();
    // `dir` (the config) outlives each weir process; their logs go elsewhere.
    let weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        root.join("weir.yaml"),
        &[],
        &[port, admin],
    );
    let body = format!(
        "{{\"name\": \"api\", \"virtual_hosts\": [\"api.test\"], \"routes\": {{\"v1\": {{\"instances\": [\"{}\"]}}}}}}",
        up.addr()
    );
    // No token configured: writes are refused.
    assert_eq!(
        api(admin, "POST", "/api/v1/gateways", Some("s3cret"), &body).status,
        403
    );
    std::fs::write(&weir.config, &with_token).unwrap();
    assert!(within(Duration::from_secs(3), || api(
        admin,
        "POST",
        "/api/v1/gateways",
        None,
        &body
    )
    .status
        == 401));
    assert_eq!(
        api(admin, "POST", "/api/v1/gateways", Some("wrong"), &body).status,
        401
    );
    // A bad body: 400 with a message.
    let bad = api(
        admin,
        "POST",
        "/api/v1/gateways",
        Some("s3cret"),
        "{\"name\": \"x\", \"routes\": {\"r\": {\"weight\": \"150%\"}}}",
    );
    assert_eq!(bad.status, 400);
    let msg: serde_json::Value = serde_json::from_str(&bad.body).unwrap();
    assert!(
        msg["message"].as_str().unwrap().contains("over 100%"),
        "{}",
        bad.body
    );
    let bad = api(
        admin,
        "POST",
        "/api/v1/gateways",
        Some("s3cret"),
        "{\"name\": \"x\", \"routes\": {\"r\": {}}}",
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("no instances"), "{}", bad.body);
    // PUT does not create: a name that is not a gateway is 404.
    assert_eq!(
        api(
            admin,
            "PUT",
            "/api/v1/gateways/other",
            Some("s3cret"),
            &body
        )
        .status,
        404
    );
    // A good body: 202, live, persisted.
    let ok = api(admin, "POST", "/api/v1/gateways", Some("s3cret"), &body);
    assert_eq!(ok.status, 202, "{}", ok.body);
    assert!(within(Duration::from_secs(2), || get(
        port, "api.test", "/"
    )
    .body
        == "new"));
    let file = root.join("gateways.d/api.yaml");
    assert!(std::fs::read_to_string(&file).unwrap().contains("api.test"));
    assert_eq!(
        api(admin, "POST", "/api/v1/gateways", Some("s3cret"), &body).status,
        409,
        "exists"
    );
    // The name in the path must match the body's.
    assert_eq!(
        api(
            admin,
            "PUT",
            "/api/v1/gateways/api",
            Some("s3cret"),
            &body.replace("\"api\"", "\"other\"")
        )
        .status,
        400
    );
    // PUT changes it.
    let moved = body.replace("api.test", "api2.test");
    assert_eq!(
        api(admin, "PUT", "/api/v1/gateways/api", Some("s3cret"), &moved).status,
        202
    );
    assert_eq!(get(port, "api2.test", "/").body, "new");
    assert_eq!(get(port, "api.test", "/").status, 404);
    // Survives a restart.
    drop(weir);
    let dir2 = tempfile::tempdir().unwrap();
    let weir = Weir::spawn(dir2, root.join("weir.yaml"), &[], &[port, admin]);
    assert_eq!(get(port, "api2.test", "/").body, "new");
    // DELETE removes it; the gateway from the main file cannot be deleted this way.
    assert_eq!(
        api(admin, "DELETE", "/api/v1/gateways/g", Some("s3cret"), "").status,
        409
    );
    assert_eq!(
        api(admin, "DELETE", "/api/v1/gateways/api", Some("s3cret"), "").status,
        202
    );
    assert!(!file.exists());
    assert_eq!(get(port, "api2.test", "/").status, 404);
    assert_eq!(
        api(admin, "DELETE", "/api/v1/gateways/api", Some("s3cret"), "").status,
        404
    );
    drop(weir);
    drop(dir);
}
