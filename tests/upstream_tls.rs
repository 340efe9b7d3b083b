//! TLS to upstreams through the real `weir` binary: `openssl s_server` upstreams with
//! certificates from a test CA; verified names, a wrong name refused, mutual TLS.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// `openssl s_server -WWW` on a free port, serving `dir`; with `client_ca`, it asks
/// for (and requires) a client certificate.
struct SServer(Child, u16);

impl SServer {
    fn start(dir: &Path, cert: &str, client_ca: bool) -> SServer {
        let port = free_port();
        let mut cmd = Command::new("openssl");
        cmd.current_dir(dir)
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "-cert",
                &format!("{cert}.pem"),
                "-key",
                &format!("{cert}.key"),
            ]);
        if client_ca {
            cmd.args(["-Verify", "1", "-verify_return_error", "-CAfile", "ca.pem"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        assert!(
            within(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "s_server listens"
        );
        SServer(child, port)
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tls_upstreams_verify_names_and_present_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca(d);
    leaf(d, "up", "up.internal", &["up.internal"], false);
    leaf(d, "client", "weir-edge", &["weir-edge"], true);
    std::fs::write(d.join("hello.txt"), "hello over tls").unwrap();
    let plain = SServer::start(d, "up", false);
    // HTTP/2 over TLS (ALPN h2): nghttpd speaks nothing else.
    let h2_port = free_port();
    let mut nghttpd = Command::new("nghttpd")
        .args(["-a", "127.0.0.1", "-d"])
        .arg(d)
        .arg(h2_port.to_string())
        .arg(d.join("up.key"))
        .arg(d.join("up.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nghttpd (nghttp2-server)");
    assert!(within(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", h2_port)).is_ok()
    }));
    let mutual = SServer::start(d, "up", true);
    let (port, admin) = (free_port(), free_port());
    let gateway = |name: &str, server: u16, tls: &str| {
        // HTTP health checks go over the instance's TLS too.
        let h2 = name == "h2";
        let check = if name == "good" {
            ", health_check: { protocol: http, path: /hello.txt, interval: 200ms }"
        } else {
            ""
        };
        format!(
            "  - name: {name}
    virtual_hosts: [{name}.test]
    routes:
      r: {{ instances: [ {{ host: 127.0.0.1, port: {server}, h2: {h2}, tls: {tls} }} ]{check} }}
"
        )
    };
    let ca_pem = d.join("ca.pem");
    let ca_pem = ca_pem.display();
    let yaml = format!(
        "{}admin: {{ bind: \"127.0.0.1:{admin}\" }}
defaults: {{ retries: 0 }}
gateways:
{}{}{}{}",
        http_listener(port),
        gateway("good", plain.1, &format!("{{ sni: up.internal, ca: \"{ca_pem}\" }}")),
        gateway("wrong", plain.1, &format!("{{ sni: other.internal, ca: \"{ca_pem}\" }}")),
        gateway(
            "mutual",
            mutual.1,
            &format!("{{ sni: up.internal, ca: \"{ca_pem}\", client_cert: {{ cert: client.pem, key: client.key }} }}")
        ),
        gateway("anonymous", mutual.1, &format!("{{ sni: up.internal, ca: \"{ca_pem}\" }}")),
    ) + &gateway("h2", h2_port, &format!("{{ sni: up.internal, ca: \"{ca_pem}\" }}"));
    std::fs::write(d.join("weir.yaml"), &yaml).unwrap();
    let out = weir_cmd(&["check", "-c", path_str(&d.join("weir.yaml"))]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        d.join("weir.yaml"),
        &[],
        &[port, admin],
    );

    assert!(
        within(Duration::from_secs(10), || {
            let g = get(admin, "localhost", "/api/v1/gateways/good").body;
            g.contains("\"health\": \"up\"")
        }),
        "{}",
        get(admin, "localhost", "/api/v1/gateways/good").body
    );
    let r = get(port, "good.test", "/hello.txt");
    assert_eq!((r.status, r.body.as_str()), (200, "hello over tls"));
    let r = get(port, "mutual.test", "/hello.txt");
    assert_eq!((r.status, r.body.as_str()), (200, "hello over tls"));
    let r = get(port, "h2.test", "/hello.txt");
    assert_eq!((r.status, r.body.as_str()), (200, "hello over tls"));
    let _ = nghttpd.kill();
    let _ = nghttpd.wait();
    // A certificate for another name, or no client certificate where one is required.
    assert!(get(port, "wrong.test", "/hello.txt").status >= 502);
    assert!(get(port, "anonymous.test", "/hello.txt").status >= 502);
    let m = scrape(admin);
    let tls_errors = m.get(&format!(
        "weir_upstream_errors_total{{gateway=\"wrong\",kind=\"tls\",route=\"r\",upstream=\"127.0.0.1:{}\"}}",
        plain.1
    ));
    assert_eq!(tls_errors, Some(&1.0), "{m:?}");
}

#[test]
fn bad_upstream_tls_files_are_named_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
    let yaml = format!(
        "{}gateways:
  - name: g
    virtual_hosts: [g.test]
    routes:
      r: {{ instances: [ {{ host: 127.0.0.1, port: 9, tls: {{ ca: junk.pem, client_cert: {{ cert: missing.pem, key: missing.key }} }} }} ] }}
",
        http_listener(free_port())
    );
    std::fs::write(d.join("weir.yaml"), yaml).unwrap();
    let out = weir_cmd(&["check", "-c", path_str(&d.join("weir.yaml"))]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("tls.ca: junk.pem: no certificate in it"),
        "{text}"
    );
    assert!(
        text.contains("tls.client_cert:") && text.contains("missing.pem"),
        "{text}"
    );
}
