//! The TLS edge through the real binary: SNI certificate choice, protocol policy, ALPN,
//! hot certificate reload, redirect to HTTPS and HSTS. Certificates come from a private
//! CA made by the test with the `openssl` command; clients are `openssl s_client` and
//! `curl`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// What `openssl s_client` saw: (subject CN, serial, protocol), or None if the handshake failed.
fn handshake(port: u16, sni: Option<&str>, extra: &[&str]) -> Option<(String, String, String)> {
    let mut args = vec![
        "s_client".to_string(),
        "-connect".into(),
        format!("127.0.0.1:{port}"),
    ];
    match sni {
        Some(n) => args.extend(["-servername".to_string(), n.to_string()]),
        None => args.push("-noservername".into()),
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let cert_start = text.find("-----BEGIN CERTIFICATE-----")?;
    let cert_end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let pem = &text[cert_start..cert_end];
    let mut x509 = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-serial",
            "-nameopt",
            "multiline",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let info = String::from_utf8_lossy(&x509.wait_with_output().unwrap().stdout).into_owned();
    let cn = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("commonName"))
        .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())?;
    let serial = info
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap_or("")
        .to_string();
    let proto = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Protocol  :")
                .or_else(|| l.trim().strip_prefix("Protocol :"))
        })
        .unwrap_or("")
        .trim()
        .to_string();
    let proto = if proto.is_empty() {
        text.lines()
            .find(|l| l.contains("New, TLSv"))
            .and_then(|l| l.split(", ").nth(1))
            .unwrap_or("")
            .split(',')
            .next()
            .unwrap_or("")
            .to_string()
    } else {
        proto
    };
    Some((cn, serial, proto))
}

fn curl(port: u16, host: &str, path: &str, ca: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra)
        .args(["-w", "\n%{http_code} %{http_version}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (body.to_string(), status.to_string())
}

struct Edge {
    weir: Weir,
    dir: tempfile::TempDir,
    http: u16,
    https: u16,
    up: Upstream,
}

fn edge(default: Option<usize>) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    leaf(dir.path(), "a", "a.test", &["a.test"], false);
    leaf(dir.path(), "wild", "wild", &["*.wild.test"], false);
    leaf(
        dir.path(),
        "fallback",
        "fallback.test",
        &["fallback.test"],
        false,
    );
    let (http, https) = (free_port(), free_port());
    let up = Upstream::start("up");
    let default_line = default.map_or(String::new(), |i| {
        format!("      default_certificate: {i}\n")
    });
    let access_log = dir.path().join("access.log");
    let yaml = format!(
        "access_log: {}
listeners:
  http: {{ bind: \"127.0.0.1:{http}\", redirect_https: https }}
  https:
    bind: \"127.0.0.1:{https}\"
    tls:
      certificates:
        - {{ cert: a.pem, key: a.key }}
        - {{ cert: wild.pem, key: wild.key }}
        - {{ cert: fallback.pem, key: fallback.key }}
{default_line}gateways:
  - name: g
    virtual_hosts: [a.test, \"*.wild.test\", fallback.test]
    hsts: {{ max_age: 600, include_subdomains: true }}
    sticky: route
    routes:
      r: {{ instances: [\"{}\"] }}
      hello: {{ weight: 0%, condition: \"path == /hello\", respond: {{ status: 200, body: hello }} }}
  - name: plain
    virtual_hosts: [plain.test]
    listeners: [http]
    routes: {{ r: {{ respond: {{ status: 200, body: plain }} }} }}
",
        access_log.display(),
        up.addr()
    );
    std::fs::write(dir.path().join("weir.yaml"), yaml).unwrap();
    let weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        dir.path().join("weir.yaml"),
        &[],
        &[http, https],
    );
    Edge {
        weir,
        dir,
        http,
        https,
        up,
    }
}

#[test]
fn sni_picks_exact_wildcard_and_default_certificates() {
    let e = edge(Some(2));
    let cn = |sni: Option<&str>| handshake(e.https, sni, &[]).map(|h| h.0);
    assert_eq!(cn(Some("a.test")).as_deref(), Some("a.test"));
    assert_eq!(
        cn(Some("A.TEST")).as_deref(),
        Some("a.test"),
        "SNI is case-insensitive"
    );
    assert_eq!(cn(Some("x.wild.test")).as_deref(), Some("wild"));
    assert_eq!(
        cn(Some("y.x.wild.test")).as_deref(),
        Some("fallback.test"),
        "a wildcard covers one label"
    );
    assert_eq!(cn(Some("other.test")).as_deref(), Some("fallback.test"));
    assert_eq!(cn(None).as_deref(), Some("fallback.test"));
    drop(e.weir);
}

#[test]
fn without_default_unknown_names_fail_the_handshake() {
    let e = edge(None);
    assert!(handshake(e.https, Some("a.test"), &[]).is_some());
    assert!(handshake(e.https, Some("other.test"), &[]).is_none());
    assert!(handshake(e.https, None, &[]).is_none());
}

#[test]
fn protocol_policy_alpn_and_forwarding() {
    let e = edge(Some(2));
    assert!(
        handshake(e.https, Some("a.test"), &["-tls1_1"]).is_none(),
        "TLS 1.1 refused"
    );
    let v13 = handshake(e.https, Some("a.test"), &["-tls1_3"]).expect("TLS 1.3");
    assert_eq!(v13.2, "TLSv1.3");
    let v12 = handshake(e.https, Some("a.test"), &["-tls1_2"]).expect("TLS 1.2");
    assert_eq!(v12.2, "TLSv1.2");
    let ca = e.dir.path().join("ca.pem");
    let (body, status) = curl(e.https, "a.test", "/x", &ca, &["--http2"]);
    assert_eq!(
        (body.as_str(), status.as_str()),
        ("up", "200 2"),
        "HTTP/2 over ALPN"
    );
    let (_, status) = curl(e.https, "a.test", "/x", &ca, &["--http1.1"]);
    assert_eq!(status, "200 1.1");
    let seen = e.up.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // The access log has the SNI and TLS version of each request.
    let log = e.dir.path().join("access.log");
    assert!(within(Duration::from_secs(3), || std::fs::read_to_string(
        &log
    )
    .is_ok_and(|t| t.contains("\"sni\":\"a.test\""))));
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("\"tls_version\":\"TLSv1_3\""));
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(e.https.to_string().as_str())
    );
}

#[test]
fn hot_certificate_reload_and_bad_replacement() {
    let e = edge(Some(2));
    let before = handshake(e.https, Some("a.test"), &[]).unwrap().1;
    // A new certificate for a.test, written over the old files.
    leaf(e.dir.path(), "a2", "a.test", &["a.test"], false);
    std::fs::copy(e.dir.path().join("a2.key"), e.dir.path().join("a.key")).unwrap();
    std::fs::copy(e.dir.path().join("a2.pem"), e.dir.path().join("a.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let after = loop {
        let s = handshake(e.https, Some("a.test"), &[]).unwrap().1;
        if s != before {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served: {}",
            e.weir.log()
        );
        thread::sleep(Duration::from_millis(100));
    };
    // A key that does not match: rejected, named, and the last good certificate stays.
    leaf(e.dir.path(), "other", "other", &["other.test"], false);
    std::fs::copy(e.dir.path().join("other.key"), e.dir.path().join("a.key")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !e.weir.log().contains("does not match certificate") {
        assert!(
            Instant::now() < deadline,
            "bad key not reported: {}",
            e.weir.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(handshake(e.https, Some("a.test"), &[]).unwrap().1, after);
}

/// A TLS 1.3-only listener serving HTTP/1.1 only, with a 1 s handshake deadline and
/// metrics: what it refuses is counted per listener; a reload relaxes the policy for
/// new handshakes.
#[test]
fn tls13_only_policy_counts_failed_handshakes_and_reloads_live() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    leaf(dir.path(), "a", "a.test", &["a.test"], false);
    let (https, admin) = (free_port(), free_port());
    let config = |tls: &str| {
        format!(
            "admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults: {{ timeouts: {{ request_header: 1s }} }}
listeners:
  https: {{ bind: \"127.0.0.1:{https}\", tls: {{ certificates: [ {{ cert: a.pem, key: a.key }} ]{tls} }} }}
gateways:
  - name: g
    virtual_hosts: [a.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
"
        )
    };
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config(", min_version: \"1.3\", alpn: [http/1.1]")).unwrap();
    let weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        path.clone(),
        &[],
        &[https, admin],
    );
    let errors = || scrape(admin)["weir_tls_handshake_errors_total{listener=\"https\"}"];
    assert_eq!(errors(), 0.0);
    // When the certificate expires (the test leaves are valid for 30 days).
    let expiry = scrape(admin)
        ["weir_tls_certificate_expiry_timestamp_seconds{key=\"rsa\",listener=\"https\",name=\"a.test\"}"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now + 86_400.0 && expiry < now + 5.0 * 365.0 * 86_400.0,
        "{expiry}"
    );

    assert!(
        handshake(https, Some("a.test"), &["-tls1_2"]).is_none(),
        "TLS 1.2 refused"
    );
    let v13 = handshake(https, Some("a.test"), &["-tls1_3"]).expect("TLS 1.3");
    assert_eq!(v13.2, "TLSv1.3");
    let ca = dir.path().join("ca.pem");
    assert_eq!(
        curl(https, "a.test", "/", &ca, &["--http2"]),
        ("ok".to_string(), "200 1.1".to_string()),
        "ALPN offers http/1.1 only"
    );
    // Plain HTTP on the TLS port gets an alert, not an answer.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", https)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    use std::io::{Read, Write};
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&0x15), "a TLS alert record: {reply:?}");
    // A client that never starts its handshake is closed after the deadline.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", https)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        silent.read(&mut [0u8; 16]).ok(),
        Some(0),
        "closed, not timed out"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        within(Duration::from_secs(3), || errors() == 3.0),
        "TLS 1.2, plain HTTP and the silent client counted: {}",
        errors()
    );
    // Still serving.
    assert_eq!(curl(https, "a.test", "/", &ca, &[]).1, "200 1.1");

    std::fs::write(&path, config("")).unwrap();
    assert!(
        within(Duration::from_secs(5), || handshake(
            https,
            Some("a.test"),
            &["-tls1_2"]
        )
        .is_some()),
        "TLS 1.2 accepted after the reload: {}",
        weir.log()
    );
    // Attempts before the reload took effect were counted; good handshakes are not.
    let counted = errors();
    assert_eq!(curl(https, "a.test", "/", &ca, &["--http2"]).1, "200 2");
    assert!(handshake(https, Some("a.test"), &["-tls1_2"]).is_some());
    assert_eq!(errors(), counted);
}

/// Sessions resume by ticket (TLS 1.3 and 1.2) and by session id (TLS 1.2 clients
/// without ticket support), across a config reload.
#[test]
fn sessions_resume_by_ticket_and_session_id_across_reloads() {
    let e = edge(Some(2));
    let cases: [(&str, &[&str]); 3] = [
        ("tls13", &["-tls1_3"]),
        ("tls12", &["-tls1_2"]),
        ("tls12-id", &["-tls1_2", "-no_ticket"]),
    ];
    for (name, extra) in cases {
        let first = session(e.https, &e.dir.path().join(name), true, extra);
        assert!(
            session_line(&first).starts_with("New, TLSv1."),
            "{name}: {first}"
        );
        assert!(first.contains("HTTP/1.1 200"), "{name}: {first}");
        let ticket = first.contains("TLS session ticket:");
        assert_eq!(ticket, name != "tls12-id", "{name}: ticket issued? {first}");
    }
    // A reload (here: a comment added) keeps the ticket keys and the session cache.
    let config = e.dir.path().join("weir.yaml");
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str("# reloaded\n");
    std::fs::write(&config, yaml).unwrap();
    assert!(within(Duration::from_secs(5), || e
        .weir
        .log()
        .contains("config reloaded")));
    for (name, extra) in cases {
        let again = session(e.https, &e.dir.path().join(name), false, extra);
        let version = if name == "tls13" {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        assert!(
            session_line(&again).starts_with(&format!("Reused, {version}")),
            "{name}: {again}"
        );
    }
}

#[test]
fn redirect_to_https_and_hsts() {
    let e = edge(Some(2));
    let r = get(e.http, "a.test", "/p?q=1");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.test:{}/p?q=1", e.https).as_str())
    );
    // ACME HTTP-01 challenges stay on plain HTTP; so do hosts the TLS listener lacks.
    let acme = get(e.http, "a.test", "/.well-known/acme-challenge/token");
    assert_eq!(acme.status, 200);
    assert_eq!(get(e.http, "plain.test", "/").body, "plain");
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(e.dir.path().join("ca.pem"))
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", e.https))
        .arg(format!("https://a.test:{}/", e.https))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        headers.contains("strict-transport-security: max-age=600; includesubdomains"),
        "{headers}"
    );
    // weir's own answers (respond routes) carry HSTS too.
    let (text, status) = curl(
        e.https,
        "a.test",
        "/hello",
        &e.dir.path().join("ca.pem"),
        &["-D", "-"],
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=600; includesubdomains")
            && text.ends_with("hello")
            && status.starts_with("200"),
        "{text} {status}"
    );
    assert!(
        acme.header("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );
}

#[test]
fn check_validates_certificates_and_reports_expiry() {
    let e = edge(Some(2));
    let cfg = e.dir.path().join("weir.yaml");
    let out = weir_cmd(&["check", path_str(&cfg)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("3 certificate(s), the first to expire in "),
        "{stdout}"
    );
    // A key that does not match its certificate is an error naming both files.
    std::fs::copy(e.dir.path().join("wild.key"), e.dir.path().join("a.key")).unwrap();
    let out = weir_cmd(&["check", path_str(&cfg)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("a.key does not match certificate") && stderr.contains("a.pem"),
        "{stderr}"
    );
    drop(e.weir);
}

#[test]
fn self_signed_certificate_made_at_start() {
    let https = free_port();
    let yaml = format!(
        "listeners:
  https: {{ bind: \"127.0.0.1:{https}\", tls: {{ self_signed: [demo.test], default_certificate: 0 }} }}
gateways:
  - name: g
    virtual_hosts: [demo.test]
    routes: {{ r: {{ respond: {{ status: 200, body: demo }} }} }}
"
    );
    let weir = Weir::start(&yaml, &[https]);
    let (cn, serial, _) = handshake(https, Some("demo.test"), &[]).expect("handshake");
    assert!(!cn.is_empty());
    let out = Command::new("curl")
        .args(["-s", "-k", "--resolve"])
        .arg(format!("demo.test:{https}:127.0.0.1"))
        .arg(format!("https://demo.test:{https}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "demo");
    // A reload keeps the same certificate. (Once ready, SIGHUP is handled.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while !weir.log().contains("ready:") {
        assert!(Instant::now() < deadline, "{}", weir.log());
        thread::sleep(Duration::from_millis(50));
    }
    signal(weir.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !weir.log().contains("config reloaded (SIGHUP)") {
        assert!(Instant::now() < deadline, "{}", weir.log());
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(handshake(https, Some("demo.test"), &[]).unwrap().1, serial);
}

/// An HTTP/2-only upstream (nghttpd, h2c): only reachable when weir speaks HTTP/2 to it.
/// Its responses end with gRPC-style trailers, which reach an HTTP/2 client.
#[test]
fn h2_instances_get_http2_upstream_and_trailers_pass_through() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("file"), "hello-h2").unwrap();
    let up = free_port();
    let mut nghttpd = Command::new("nghttpd")
        .args(["--trailer=grpc-status: 0", "--trailer=grpc-message: done"])
        .args(["--no-tls", "-a", "127.0.0.1", "-d"])
        .arg(site.path())
        .arg(up.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nghttpd must be installed (apt-get install nghttp2-server)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", up)).is_err() {
        assert!(Instant::now() < deadline, "nghttpd did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let (http, https) = (free_port(), free_port());
    let yaml = format!(
        "listeners:
  http: {{ bind: \"127.0.0.1:{http}\" }}
  https: {{ bind: \"127.0.0.1:{https}\", tls: {{ self_signed: [h2.test], default_certificate: 0 }} }}
gateways:
  - name: g
    virtual_hosts: [h2.test]
    routes:
      h2: {{ weight: 100%, instances: [ {{ host: 127.0.0.1, port: {up}, h2: true }} ] }}
      h1: {{ weight: 0%, instances: [ \"127.0.0.1:{up}\" ] }}
"
    );
    let _weir = Weir::start(&yaml, &[http, https]);
    // HTTP/1.1 client, HTTP/2 upstream.
    let r = get(http, "h2.test", "/file");
    assert_eq!((r.status, r.body.as_str()), (200, "hello-h2"));
    // HTTP/2 end to end.
    let out = Command::new("curl")
        .args(["-sk", "--http2", "-w", " %{http_version}", "--resolve"])
        .arg(format!("h2.test:{https}:127.0.0.1"))
        .arg(format!("https://h2.test:{https}/file"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello-h2 2");
    // Trailers: a HEADERS frame after the body, as gRPC ends every response.
    let out = Command::new("timeout")
        .args(["10", "nghttp", "-v", "-H", ":authority: h2.test"])
        .arg(format!("https://127.0.0.1:{https}/file"))
        .output()
        .expect("nghttp must be installed (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    let body = text.find("hello-h2").expect("body");
    let status = text.find("grpc-status: 0").expect("grpc-status trailer");
    assert!(body < status, "trailer after the body: {text}");
    assert!(text.contains("grpc-message: done"), "{text}");
    let _ = nghttpd.kill();
    let _ = nghttpd.wait();
}

/// The `Server public key is N bit` line of an `openssl s_client` handshake.
fn server_key_bits(port: u16, sni: &str, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Server public key is "))
        .unwrap_or("")
        .to_string()
}

#[test]
fn ecdsa_preferred_when_offered_rsa_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    leaf(dir.path(), "rsa", "dual.test", &["dual.test"], false);
    leaf(dir.path(), "ec", "dual.test", &["dual.test"], true);
    let https = free_port();
    let yaml = format!(
        "listeners:
  https: {{ bind: \"127.0.0.1:{https}\", tls: {{ certificates: [ {{ cert: rsa.pem, key: rsa.key }}, {{ cert: ec.pem, key: ec.key }} ] }} }}
gateways:
  - name: g
    virtual_hosts: [dual.test]
    routes: {{ r: {{ respond: {{ status: 200 }} }} }}
"
    );
    std::fs::write(dir.path().join("weir.yaml"), yaml).unwrap();
    let _weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        dir.path().join("weir.yaml"),
        &[],
        &[https],
    );
    assert_eq!(
        server_key_bits(https, "dual.test", &[]),
        "256 bit",
        "ECDSA for a client offering it"
    );
    let rsa_only = ["-sigalgs", "rsa_pss_rsae_sha256:rsa_pkcs1_sha256"];
    assert_eq!(
        server_key_bits(https, "dual.test", &rsa_only),
        "2048 bit",
        "RSA otherwise"
    );
}

/// Turning TLS off (or on) for a bound address needs a restart: the reload says so,
/// and the listener keeps terminating TLS until then, telling upstreams it is https.
#[test]
fn switching_a_bound_listener_between_tls_and_plain_needs_a_restart() {
    let (https, admin) = (free_port(), free_port());
    let up = Upstream::start("up");
    let config = |tls: &str| {
        format!(
            "admin: {{ bind: \"127.0.0.1:{admin}\" }}
listeners: {{ https: {{ bind: \"127.0.0.1:{https}\"{tls} }} }}
gateways: [ {{ name: g, virtual_hosts: [a.test], routes: {{ r: {{ instances: [\"{}\"] }} }} }} ]
",
            up.addr()
        )
    };
    let weir = Weir::start(
        &config(", tls: { self_signed: [a.test], default_certificate: 0 }"),
        &[https, admin],
    );
    std::fs::write(&weir.config, config("")).unwrap();
    let want = format!("listener \"https\" on 127.0.0.1:{https} turns plain");
    assert!(
        within(Duration::from_secs(15), || get(
            admin,
            "localhost",
            "/readyz"
        )
        .body
        .contains(&want)),
        "{}",
        weir.log()
    );
    let out = Command::new("curl")
        .args(["-sk", "--resolve"])
        .arg(format!("a.test:{https}:127.0.0.1"))
        .arg(format!("https://a.test:{https}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "up");
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
}

/// An HTTP/2 connection with nothing in flight is closed after `idle`.
#[test]
fn idle_http2_connections_are_closed() {
    let https = free_port();
    let yaml = format!(
        "defaults: {{ timeouts: {{ idle: 1s }} }}
listeners: {{ https: {{ bind: \"127.0.0.1:{https}\", tls: {{ self_signed: [a.test], default_certificate: 0 }} }} }}
gateways: [ {{ name: g, virtual_hosts: [a.test], routes: {{ r: {{ respond: {{ status: 200 }} }} }} }} ]
"
    );
    let _weir = Weir::start(&yaml, &[https]);
    let mut client = Command::new("timeout")
        .args([
            "15", "openssl", "s_client", "-quiet", "-alpn", "h2", "-connect",
        ])
        .arg(format!("127.0.0.1:{https}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    // The HTTP/2 preface and an empty SETTINGS frame; then silence, stdin kept open.
    let mut stdin = client.stdin.take().unwrap();
    use std::io::Write;
    stdin
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    stdin.flush().unwrap();
    let started = Instant::now();
    let status = client.wait().unwrap();
    drop(stdin);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "still open after {:?} ({status})",
        started.elapsed()
    );
}
