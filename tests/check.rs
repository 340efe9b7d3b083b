//! `weir check`, `weir run` on bad configs, and `weir --version`, through the real binary.

mod common;

use common::*;

fn check(files: &[(&str, &str)]) -> (i32, String, String) {
    let dir = config_dir(files);
    let main = dir.path().join("weir.yaml");
    let out = weir_cmd(&["check", "-c", path_str(&main)]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_err(files: &[(&str, &str)]) -> String {
    let (code, stdout, stderr) = check(files);
    assert_eq!(code, 1, "stdout: {stdout} stderr: {stderr}");
    assert!(!stdout.contains("ok"), "{stdout}");
    stderr
}

const HEAD: &str = "listeners: { http: { bind: \"127.0.0.1:18080\" } }\n";

#[test]
fn shipped_config_is_ok() {
    let out = weir_cmd(&[
        "check",
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf/weir.yaml"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok\n"), "{stdout}");
    assert!(stdout.contains("1 gateway(s)"), "{stdout}");
}

#[test]
fn ok_with_summary_and_includes() {
    let (code, stdout, _) = check(&[
        ("weir.yaml", &format!("{HEAD}include: [gateways.d/*.yaml]\n")),
        ("gateways.d/a.yaml", "name: a\nvirtual_hosts: [a.test]\nroutes: { r: { respond: { status: 200 } } }\n"),
        ("gateways.d/b.yaml", "- name: b\n  routes: { r: { respond: { status: 200 } } }\n---\nname: c\nroutes: { r: { respond: { status: 200 } } }\n"),
    ]);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().next(), Some("ok"));
    assert!(
        stdout.contains("3 file(s), 1 listener(s), 3 gateway(s)"),
        "{stdout}"
    );
}

#[test]
fn syntax_error_has_file_line_column() {
    let err = check_err(&[(
        "weir.yaml",
        &format!("{HEAD}gateways:\n  - name: a\n    routes: {{ r: [ }}\n"),
    )]);
    let first = err.lines().next().unwrap();
    assert!(first.contains("weir.yaml:4:"), "{err}");
}

#[test]
fn unknown_key_and_type_errors_have_positions() {
    let err = check_err(&[(
        "weir.yaml",
        &format!("{HEAD}gateways:\n  - name: a\n    weigth: 10%\n"),
    )]);
    assert!(
        err.contains("weir.yaml:4:5: gateways[0]: unknown field `weigth`"),
        "{err}"
    );
    let err = check_err(&[(
        "weir.yaml",
        &format!("{HEAD}gateways:\n  - name: a\n    routes:\n      r: {{ weight: 150% }}\n"),
    )]);
    assert!(
        err.contains("weir.yaml:5:") && err.contains("over 100%"),
        "{err}"
    );
    let err = check_err(&[(
        "weir.yaml",
        &format!("{HEAD}defaults: {{ timeouts: {{ connect: 5 }} }}\n"),
    )]);
    assert!(
        err.contains("weir.yaml:2:") && err.contains("duration"),
        "{err}"
    );
}

#[test]
fn errors_in_included_files_name_them() {
    let err = check_err(&[
        ("weir.yaml", &format!("{HEAD}include: [gw/*.yaml]\n")),
        ("gw/bad.yaml", "name: a\nroutes:\n  r: { instances: [\"nohost\"] }\n"),
        ("gw/worse.yaml", "name: b\nroutes:\n  x: { weight: 60%, respond: { status: 200 } }\n  y: { weight: 60%, respond: { status: 200 } }\n"),
    ]);
    assert!(err.contains("gw/bad.yaml:3:"), "{err}");
    // Both files are reported, not just the first.
    let err2 = check_err(&[
        ("weir.yaml", &format!("{HEAD}include: [gw/*.yaml]\n")),
        ("gw/worse.yaml", "name: b\nroutes:\n  x: { weight: 60%, respond: { status: 200 } }\n  y: { weight: 60%, respond: { status: 200 } }\n"),
    ]);
    assert!(
        err2.contains(
            "gw/worse.yaml:1:1: gateway \"b\": route weights must sum to 100% (or 0%), found 120%"
        ),
        "{err2}"
    );
}

#[test]
fn every_semantic_error_reported_at_once() {
    let err = check_err(&[(
        "weir.yaml",
        &format!(
            "{HEAD}gateways:
  - name: a
    virtual_hosts: [dup.test]
    routes:
      nowhere: {{}}
  - name: a
    virtual_hosts: [DUP.test]
    routes:
      x: {{ weight: 90%, respond: {{ status: 200 }} }}
      y: {{ weight: 20%, respond: {{ status: 200 }} }}
  - name: loop1
    routes: {{ loop2: {{}} }}
  - name: loop2
    routes: {{ loop1: {{}} }}
"
        ),
    )]);
    for want in [
        "gateway \"a\", route \"nowhere\": route has no instances, no respond, and no gateway is named \"nowhere\"",
        "duplicate gateway name",
        "virtual host \"DUP.test\" is already used by gateway \"a\"",
        "found 110%",
        "gateway chain loop: loop1 -> loop2 -> loop1",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(err.lines().count() >= 5, "{err}");
}

#[test]
fn tcp_gateways_and_proxy_protocol_check_ok() {
    let (code, stdout, stderr) = check(&[(
        "weir.yaml",
        "listeners: { lb: { bind: \"127.0.0.1:18080\", proxy_protocol: true } }
gateways:
  - name: b
    port: 9999/tcp
    balance: source_ip
    routes:
      r: { instances: [\"127.0.0.1:1\"], health_check: { protocol: tcp } }
",
    )]);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.starts_with("ok\n"), "{stdout}");
}

#[test]
fn condition_and_rewrite_errors_point_at_the_column() {
    let err = check_err(&[(
        "weir.yaml",
        &format!(
            "{HEAD}gateways:
  - name: a
    routes:
      r:
        condition: \"has cookie beta and (user-agent == Firefox\"
        rewrites: [ {{ path: \"%[path,regsub(^/v1,/api)] if path_beg\" }} ]
        condition_strength: 50%
        respond: {{ status: 200 }}
      s:
        condition_strength: 10%
        respond: {{ status: 200 }}
"
        ),
    )]);
    assert!(
        err.contains("gateway \"a\", route \"r\": invalid condition \"has cookie beta and (user-agent == Firefox\" at column 43: expected ')'"),
        "{err}"
    );
    assert!(
        err.contains("condition \"path_beg\": column 9: expected a value to match"),
        "{err}"
    );
    assert!(
        err.contains("route \"s\": condition_strength needs a condition"),
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_and_says_why() {
    let dir = config_dir(&[(
        "weir.yaml",
        &format!("{HEAD}gateways:\n  - name: a\n    routes: {{ r: {{}} }}\n"),
    )]);
    let main = dir.path().join("weir.yaml");
    let out = weir_cmd(&["run", "-c", path_str(&main)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("route \"r\": route has no instances"));
}

#[test]
fn run_reports_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = config_dir(&[(
        "weir.yaml",
        &format!("listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}\ngateways: [ {{ name: a, routes: {{ r: {{ respond: {{ status: 200 }} }} }} }} ]\n"),
    )]);
    let out = weir_cmd(&["-c", path_str(&dir.path().join("weir.yaml"))]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listener \"http\": cannot bind"),
        "{stderr}"
    );
}

#[test]
fn missing_file_and_env_var() {
    let out = weir_cmd(&["check", "-c", "/nonexistent/weir.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/weir.yaml: cannot read config file"));
    let out = std::process::Command::new(WEIR)
        .arg("check")
        .env("WEIR_CONFIG", "/nonexistent/env.yaml")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/env.yaml"));
}

#[test]
fn version() {
    let out = weir_cmd(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn semantic_errors_point_at_the_gateway_or_route_and_keys_get_suggestions() {
    let port = free_port();
    let err = check_err(&[
        (
            "weir.yaml",
            &format!(
                "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
include: [gw/*.yaml]
"
            ),
        ),
        (
            "gw/shop.yaml",
            "name: shop
virtual_hosts: [shop.test]
routes:
  stable: { weight: 90%, respond: { status: 200 } }
  canary: { weight: 20%, respond: { status: 200 } }
  broken: { weight: 0%, condition: \"user-agent ==\", respond: { status: 200 } }
",
        ),
    ]);
    assert!(
        err.contains("gw/shop.yaml:1:1: gateway \"shop\": route weights must sum to 100% (or 0%), found 110%"),
        "{err}"
    );
    assert!(
        err.contains("gw/shop.yaml:6:3: gateway \"shop\", route \"broken\": invalid condition"),
        "{err}"
    );
    let err = check_err(&[(
        "weir.yaml",
        &format!(
            "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: g
    virtual_host: [g.test]
    routes: {{ r: {{ respond: {{ status: 200 }} }} }}
"
        ),
    )]);
    assert!(err.contains("weir.yaml:4:5:"), "{err}");
    assert!(err.contains("did you mean `virtual_hosts`?"), "{err}");
}

#[test]
fn a_condition_that_looks_misspelt_warns_and_fails_strict() {
    let port = free_port();
    let yaml = format!(
        "listeners: {{ http: {{ bind: \"127.0.0.1:{port}\" }} }}
gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      api: {{ weight: 0%, condition: \"path prefx /api\", respond: {{ status: 200 }} }}
      web: {{ weight: 100%, respond: {{ status: 200 }} }}
"
    );
    let dir = config_dir(&[("weir.yaml", &yaml)]);
    let cfg = dir.path().join("weir.yaml");
    let out = weir_cmd(&["check", "-c", path_str(&cfg)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains("weir.yaml:6:7: gateway \"g\", route \"api\"")
            && stderr.contains("did you mean `path prefix /api`?"),
        "{stderr}"
    );
    let out = weir_cmd(&["check", "--strict", "-c", path_str(&cfg)]);
    assert_eq!(out.status.code(), Some(1));
}
