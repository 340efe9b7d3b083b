//! ACME through the real binary against a real ACME server: Pebble (with
//! pebble-challtestsrv as its DNS, answering 127.0.0.1 for every name), both on
//! loopback ports, validating weir's HTTP-01 and TLS-ALPN-01 answers. Clients are
//! `openssl s_client`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Pebble and its DNS, killed on drop.
struct Pebble {
    pebble: Child,
    dns: Child,
    /// Its management port (its CA's certificates and keys).
    admin: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [&mut self.pebble, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pebble's own HTTPS certificate (for 127.0.0.1) and its CA: `pebble-ca.pem`.
fn pebble_certificate(dir: &Path) {
    self_signed(dir, "pebble-ca", "pebble test CA");
    let ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    signed(dir, "pebble-ca", "pebble", "127.0.0.1", ext, 5, false);
}

/// Starts Pebble on `port`, validating HTTP-01 on `http` and TLS-ALPN-01 on `tls`.
fn pebble(dir: &Path, port: u16, http: u16, tls: u16) -> Pebble {
    pebble_with_ocsp(dir, port, http, tls, "")
}

/// The same, naming `ocsp` as the OCSP responder in the certificates it issues.
fn pebble_with_ocsp(dir: &Path, port: u16, http: u16, tls: u16, ocsp: &str) -> Pebble {
    let (dns_port, dns_admin, admin) = (free_port(), free_port(), free_port());
    let dns = Command::new("pebble-challtestsrv")
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &format!("127.0.0.1:{dns_admin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run pebble-challtestsrv (Debian package pebble)");
    let config = dir.join(format!("pebble-{port}.json"));
    let json = format!(
        r#"{{"pebble": {{"listenAddress": "127.0.0.1:{port}", "managementListenAddress": "127.0.0.1:{admin}",
  "certificate": "{}", "privateKey": "{}", "httpPort": {http}, "tlsPort": {tls},
  "ocspResponderURL": "{ocsp}", "externalAccountBindingRequired": false}}}}"#,
        dir.join("pebble.pem").display(),
        dir.join("pebble.key").display()
    );
    std::fs::write(&config, json).unwrap();
    let log = std::fs::File::create(dir.join(format!("pebble-{port}.log"))).unwrap();
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(&config)
        .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("run pebble (Debian package pebble)");
    let up = within(Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "pebble listens");
    Pebble { pebble, dns, admin }
}

/// The issuer CN and serial of the certificate served for `name`, or None when the
/// handshake failed.
fn served(port: u16, name: &str) -> Option<(String, String)> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-issuer", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    x509.stdin
        .take()?
        .write_all(&text.as_bytes()[start..end])
        .ok()?;
    let info = String::from_utf8_lossy(&x509.wait_with_output().ok()?.stdout).into_owned();
    let issuer = info.lines().find_map(|l| l.strip_prefix("issuer="))?;
    let serial = info.lines().find_map(|l| l.strip_prefix("serial="))?;
    Some((issuer.trim().to_string(), serial.trim().to_string()))
}

fn from_pebble(port: u16, name: &str) -> Option<String> {
    served(port, name)
        .filter(|(issuer, _)| issuer.contains("Pebble"))
        .map(|(_, serial)| serial)
}

struct Ports {
    http: u16,
    https: u16,
    admin: u16,
    acme: u16,
}

fn ports() -> Ports {
    Ports {
        http: free_port(),
        https: free_port(),
        admin: free_port(),
        acme: free_port(),
    }
}

/// weir with an ACME listener for a.test and b.test (a self-signed default until then).
fn weir(dir: &Path, p: &Ports, challenge: &str) -> Weir {
    weir_with(dir, p, challenge, "")
}

/// The same, with `tls_lines` added to the listener's `tls:`.
fn weir_with(dir: &Path, p: &Ports, challenge: &str, tls_lines: &str) -> Weir {
    let yaml = format!(
        "admin: {{ bind: \"127.0.0.1:{}\" }}
listeners:
  http: {{ bind: \"127.0.0.1:{}\" }}
  https:
    bind: \"127.0.0.1:{}\"
    tls:
      self_signed: [fallback.test]
      default_certificate: 0
{tls_lines}      acme:
        directory: \"https://127.0.0.1:{}/dir\"
        email: ops@example.test
        challenge: {challenge}
        ca_file: pebble-ca.pem
        state_dir: acme-state
gateways:
  - name: g
    virtual_hosts: [a.test, b.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
",
        p.admin, p.http, p.https, p.acme
    );
    std::fs::write(dir.join("weir.yaml"), yaml).unwrap();
    Weir::spawn(
        tempfile::tempdir().unwrap(),
        dir.join("weir.yaml"),
        &[],
        &[p.http, p.https, p.admin],
    )
}

fn orders(admin: u16, result: &str) -> f64 {
    scrape(admin)
        .get(&format!("weir_acme_orders_total{{result=\"{result}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

/// A certificate for `name` valid from 10 days ago until tomorrow, from a private CA:
/// stored as if ACME had issued it long ago.
fn plant_expiring(state: &Path, name: &str) {
    use rcgen::{CertificateParams, KeyPair};
    let now = time::OffsetDateTime::now_utc();
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    p.not_before = now - time::Duration::days(10);
    p.not_after = now + time::Duration::days(1);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    std::fs::create_dir_all(state).unwrap();
    std::fs::write(state.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(state.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

#[test]
fn http01_issues_renews_and_restart_reuses_the_stored_certificates() {
    let dir = tempfile::tempdir().unwrap();
    pebble_certificate(dir.path());
    let p = ports();
    let server = pebble(dir.path(), p.acme, p.http, p.https);
    // b.test has a stored certificate inside its renewal window: weir renews it.
    let state = dir.path().join("acme-state");
    plant_expiring(&state, "b.test");
    let w = weir(dir.path(), &p, "http-01");
    let (mut a, mut b) = (None, None);
    let issued = within(Duration::from_secs(60), || {
        a = from_pebble(p.https, "a.test");
        b = from_pebble(p.https, "b.test");
        a.is_some() && b.is_some()
    });
    assert!(issued, "both names issued by Pebble: {}", w.log());
    assert_eq!(orders(p.admin, "ok"), 2.0);
    // Names without a certificate of their own get the default.
    let other = served(p.https, "other.test").expect("default certificate");
    assert!(!other.0.contains("Pebble"));
    // Keys are private; the account is kept.
    use std::os::unix::fs::PermissionsExt;
    for f in ["a.test.key", "b.test.key", "account.json"] {
        let mode = std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // Restart with Pebble gone: the stored certificates serve, no order is made.
    drop(server);
    drop(w);
    let w = weir(dir.path(), &p, "http-01");
    assert_eq!(from_pebble(p.https, "a.test"), a, "{}", w.log());
    assert_eq!(from_pebble(p.https, "b.test"), b);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(orders(p.admin, "ok") + orders(p.admin, "error"), 0.0);
}

#[test]
fn acme_certificates_get_ocsp_staples() {
    let dir = tempfile::tempdir().unwrap();
    pebble_certificate(dir.path());
    let p = ports();
    // The responder signs for Pebble's intermediate CA with its own key.
    let responder = Responder::start(dir.path(), "pebble-int", "pebble-int", true);
    let url = format!("http://127.0.0.1:{}/", responder.port);
    let server = pebble_with_ocsp(dir.path(), p.acme, p.http, p.https, &url);
    for (path, file) in [
        ("intermediates/0", "pebble-int.pem"),
        ("intermediate-keys/0", "pebble-int.key"),
    ] {
        let out = Command::new("curl")
            .args(["-sfk", "-o"])
            .arg(dir.path().join(file))
            .arg(format!("https://127.0.0.1:{}/{path}", server.admin))
            .status()
            .unwrap();
        assert!(out.success(), "pebble's {path}");
    }
    let w = weir_with(dir.path(), &p, "http-01", "      ocsp_stapling: true\n");
    let stapled = within(Duration::from_secs(60), || {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", p.https)])
            .args(["-servername", "a.test", "-status"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("Pebble") && text.contains("Cert Status: good")
    });
    assert!(stapled, "the ACME certificate is stapled: {}", w.log());
    assert!(responder.asked.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn tls_alpn01_issues_on_the_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    pebble_certificate(dir.path());
    let p = ports();
    let _server = pebble(dir.path(), p.acme, p.http, p.https);
    let w = weir(dir.path(), &p, "tls-alpn-01");
    assert!(
        within(Duration::from_secs(60), || from_pebble(p.https, "a.test")
            .is_some()
            && from_pebble(p.https, "b.test").is_some()),
        "issued by TLS-ALPN-01: {}",
        w.log()
    );
    // Ordinary clients still get HTTP/2 and HTTP/1.1 by ALPN.
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--resolve", &format!("a.test:{}:127.0.0.1", p.https)])
        .arg(format!("https://a.test:{}/", p.https))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
}

#[test]
fn acme_server_down_keeps_serving_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    pebble_certificate(dir.path());
    let p = ports();
    let w = weir(dir.path(), &p, "http-01");
    assert!(
        within(Duration::from_secs(15), || orders(p.admin, "error") >= 1.0),
        "the failed order is counted: {}",
        w.log()
    );
    // Meanwhile the default certificate serves, and requests are answered.
    let (issuer, _) = served(p.https, "a.test").expect("a handshake");
    assert!(!issuer.contains("Pebble"));
    assert_eq!(get(p.http, "a.test", "/").status, 200);
    // The server comes up: a retry gets the certificates.
    let _server = pebble(dir.path(), p.acme, p.http, p.https);
    assert!(
        within(Duration::from_secs(60), || from_pebble(p.https, "a.test")
            .is_some()),
        "issued once Pebble is up: {}",
        w.log()
    );
}

#[test]
fn acme_settings_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let check = |acme: &str, hosts: &str| {
        let yaml = format!(
            "listeners:\n  s:\n    bind: \"127.0.0.1:1\"\n    tls: {{ acme: {acme} }}\ngateways: [ {{ name: g, virtual_hosts: {hosts}, routes: {{ r: {{ respond: {{ status: 200 }} }} }} }} ]\n"
        );
        std::fs::write(dir.path().join("weir.yaml"), yaml).unwrap();
        let out = weir_cmd(&["check", path_str(&dir.path().join("weir.yaml"))]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ok = "{ directory: \"https://acme.test/dir\", state_dir: st }";
    assert!(check(ok, "[a.test]").0, "{}", check(ok, "[a.test]").1);
    let (good, text) = check(ok, "[\"*.a.test\"]");
    assert!(!good && text.contains("DNS-01"), "{text}");
    let (good, text) = check(ok, "[10.0.0.1]");
    assert!(!good && text.contains("IP address"), "{text}");
    let (good, text) = check("{ directory: \"ftp://x\" }", "[a.test]");
    assert!(!good && text.contains("http(s)://"), "{text}");
    let (good, text) = check(
        "{ directory: \"https://x/dir\", challenge: dns-01 }",
        "[a.test]",
    );
    assert!(!good && text.contains("weir.yaml:"), "{text}");
    let (good, text) = check(
        "{ directory: \"https://x/dir\", ca_file: missing.pem }",
        "[a.test]",
    );
    assert!(!good && text.contains("missing.pem"), "{text}");
}
