//! Client certificates at the edge (mutual TLS) through the real binary: a listener
//! that requires them and one where they are optional, certificates from a test CA
//! (valid, from an unknown CA, expired, revoked by CRL, none), the `X-Client-Cert-*`
//! headers upstream, routing on the subject, and a CRL changed on a live edge.
//! The client is `curl`; certificates are made with rcgen, the CRL too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SanType, SerialNumber,
};
use time::OffsetDateTime;

/// A CA that signs client certificates and CRLs.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A client certificate `CN=cn,O=Example` with serial `serial`, valid from
    /// `from` to `to` days from now; written as `file.pem` and `file.key`.
    fn client(&self, dir: &Path, file: &str, cn: &str, serial: u64, days: (i64, i64)) {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Example");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.subject_alt_names = vec![
            SanType::DnsName(format!("{cn}.clients.test").try_into().unwrap()),
            SanType::Rfc822Name(format!("{cn}@example.test").try_into().unwrap()),
        ];
        p.serial_number = Some(SerialNumber::from(serial));
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(days.0);
        p.not_after = now + time::Duration::days(days.1);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    /// A CRL revoking `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
    }
}

struct Edge {
    weir: Weir,
    dir: tempfile::TempDir,
    required: u16,
    optional: u16,
    admin: u16,
    users: Upstream,
    admins: Upstream,
    open: Upstream,
    clients: Ca,
}

const ALICE: u64 = 1001;
const MALLORY: u64 = 1002;

fn edge() -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The server's own certificate, from the openssl-made test CA.
    ca(d);
    leaf(d, "srv", "a.test", &["a.test", "b.test"], false);
    let clients = Ca::new("weir test clients CA");
    std::fs::write(d.join("clients-ca.pem"), clients.cert.pem()).unwrap();
    clients.client(d, "alice", "alice", ALICE, (-1, 30));
    clients.client(d, "bob", "bob", 1003, (-1, 30));
    clients.client(d, "mallory", "mallory", MALLORY, (-1, 30));
    clients.client(d, "expired", "old", 1004, (-30, -1));
    Ca::new("someone else's CA").client(d, "stranger", "stranger", 1005, (-1, 30));
    std::fs::write(d.join("clients.crl"), clients.crl(&[MALLORY])).unwrap();
    let (required, optional, admin) = (free_port(), free_port(), free_port());
    let (users, admins, open) = (
        Upstream::start("users"),
        Upstream::start("admins"),
        Upstream::start("open"),
    );
    let yaml = format!(
        "admin: {{ bind: \"127.0.0.1:{admin}\" }}
listeners:
  strict:
    bind: \"127.0.0.1:{required}\"
    tls:
      certificates: [ {{ cert: srv.pem, key: srv.key }} ]
      client_auth: {{ ca: clients-ca.pem, crl: clients.crl }}
  relaxed:
    bind: \"127.0.0.1:{optional}\"
    tls:
      certificates: [ {{ cert: srv.pem, key: srv.key }} ]
      client_auth: {{ ca: clients-ca.pem, mode: optional, crl: clients.crl }}
gateways:
  - name: private
    virtual_hosts: [a.test]
    client_auth: required
    routes:
      admins: {{ weight: 0%, condition: \"ccs contains 'CN=alice'\", instances: [\"{}\"] }}
      users: {{ weight: 100%, instances: [\"{}\"] }}
  - name: public
    virtual_hosts: [b.test]
    listeners: [relaxed]
    routes:
      r: {{ instances: [\"{}\"] }}
",
        admins.addr(),
        users.addr(),
        open.addr()
    );
    std::fs::write(d.join("weir.yaml"), yaml).unwrap();
    let weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        d.join("weir.yaml"),
        &[],
        &[required, optional, admin],
    );
    Edge {
        weir,
        dir,
        required,
        optional,
        admin,
        users,
        admins,
        open,
        clients,
    }
}

impl Edge {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// `curl` to `host` on `port` with client certificate `cert` (a file stem):
    /// the HTTP status, or "000" when the handshake failed.
    fn get(&self, port: u16, host: &str, cert: Option<&str>, extra: &[&str]) -> String {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(self.path("ca.pem"))
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra);
        if let Some(c) = cert {
            cmd.arg("--cert")
                .arg(self.path(&format!("{c}.pem")))
                .arg("--key")
                .arg(self.path(&format!("{c}.key")));
        }
        let out = cmd
            .arg(format!("https://{host}:{port}/x"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The SHA-256 fingerprint of a PEM certificate, lower-case hex without colons.
fn fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .expect("run openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, hex) = text.trim().split_once('=').expect("a fingerprint");
    hex.replace(':', "").to_ascii_lowercase()
}

#[test]
fn required_mode_refuses_every_certificate_but_a_valid_one() {
    let e = edge();
    let handshake_errors = || {
        scrape(e.admin)
            .get("weir_tls_handshake_errors_total{listener=\"strict\"}")
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(e.get(e.required, "a.test", Some("bob"), &[]), "200");
    assert_eq!(e.users.count(), 1);
    let before = handshake_errors();
    for (cert, what) in [
        (None, "no certificate"),
        (Some("stranger"), "unknown CA"),
        (Some("expired"), "expired"),
        (Some("mallory"), "revoked by the CRL"),
    ] {
        assert_eq!(
            e.get(e.required, "a.test", cert, &[]),
            "000",
            "{what}: the handshake must fail"
        );
    }
    assert_eq!(
        e.users.count() + e.admins.count(),
        1,
        "nothing refused reached upstream"
    );
    assert!(
        within(Duration::from_secs(5), || handshake_errors()
            >= before + 4.0),
        "each refusal counted as a failed handshake"
    );
    // TLS 1.2 as well as 1.3.
    assert_eq!(
        e.get(e.required, "a.test", Some("bob"), &["--tls-max", "1.2"]),
        "200"
    );
    assert_eq!(
        e.get(e.required, "a.test", Some("mallory"), &["--tls-max", "1.2"]),
        "000"
    );
    assert!(e.weir.log().find("panicked").is_none());
}

#[test]
fn verified_certificate_goes_upstream_in_headers_and_routes() {
    let e = edge();
    let forged = [
        "-H",
        "X-Client-Cert-Subject: CN=root",
        "-H",
        "X-Client-Cert-Fingerprint: 00",
        "-H",
        "X-Client-Cert-SAN: DNS:evil",
    ];
    assert_eq!(e.get(e.required, "a.test", Some("bob"), &forged), "200");
    let seen = e.users.last();
    assert_eq!(
        seen.header("x-client-cert-subject"),
        Some("CN=bob,O=Example")
    );
    assert_eq!(
        seen.header("x-client-cert-san"),
        Some("DNS:bob.clients.test, email:bob@example.test")
    );
    assert_eq!(
        seen.header("x-client-cert-fingerprint"),
        Some(fingerprint(&e.path("bob.pem")).as_str())
    );
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-client-cert-"))
            .count(),
        3,
        "client copies removed, not added to"
    );
    // `ccs contains 'CN=alice'` takes alice to the admins route.
    assert_eq!(e.get(e.required, "a.test", Some("alice"), &[]), "200");
    assert_eq!(e.admins.count(), 1);
    assert_eq!(
        e.admins.last().header("x-client-cert-subject"),
        Some("CN=alice,O=Example")
    );
    // Without a certificate (optional listener), forged headers are removed too.
    assert_eq!(e.get(e.optional, "b.test", None, &forged), "200");
    let open = e.open.last();
    assert!(
        open.headers
            .iter()
            .all(|(k, _)| !k.starts_with("x-client-cert-")),
        "{open:?}"
    );
}

#[test]
fn optional_mode_admits_clients_without_one_where_gateways_allow() {
    let e = edge();
    // No certificate: the public gateway serves, the private one answers 403.
    assert_eq!(e.get(e.optional, "b.test", None, &[]), "200");
    assert_eq!(e.get(e.optional, "a.test", None, &[]), "403");
    assert_eq!(e.users.count() + e.admins.count(), 0);
    // A valid certificate opens both.
    assert_eq!(e.get(e.optional, "a.test", Some("bob"), &[]), "200");
    assert_eq!(e.get(e.optional, "b.test", Some("bob"), &[]), "200");
    assert_eq!(
        e.open.last().header("x-client-cert-subject"),
        Some("CN=bob,O=Example")
    );
    // A certificate that is sent must be valid, even where none is needed.
    for bad in ["stranger", "expired", "mallory"] {
        assert_eq!(e.get(e.optional, "b.test", Some(bad), &[]), "000", "{bad}");
    }
}

#[test]
fn a_new_crl_applies_to_new_handshakes_without_a_restart() {
    let e = edge();
    assert_eq!(e.get(e.required, "a.test", Some("alice"), &[]), "200");
    let reloads = || {
        scrape(e.admin)
            .get("weir_config_reloads_total{result=\"ok\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let before = reloads();
    std::fs::write(e.path("clients.crl"), e.clients.crl(&[MALLORY, ALICE])).unwrap();
    assert!(
        within(Duration::from_secs(10), || reloads() > before),
        "the CRL change reloads: {}",
        e.weir.log()
    );
    assert_eq!(e.get(e.required, "a.test", Some("alice"), &[]), "000");
    assert_eq!(e.get(e.required, "a.test", Some("bob"), &[]), "200");
    // A broken CRL is refused and the last good one stays in force.
    std::fs::write(e.path("clients.crl"), "not a CRL").unwrap();
    assert!(within(Duration::from_secs(10), || {
        scrape(e.admin)
            .get("weir_config_reloads_total{result=\"error\"}")
            .is_some_and(|v| *v >= 1.0)
    }));
    assert_eq!(e.get(e.required, "a.test", Some("alice"), &[]), "000");
    assert_eq!(e.get(e.required, "a.test", Some("bob"), &[]), "200");
}

#[test]
fn misconfigured_client_auth_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    leaf(dir.path(), "srv", "a.test", &["a.test"], false);
    let check = |yaml: &str| {
        std::fs::write(dir.path().join("weir.yaml"), yaml).unwrap();
        let out = weir_cmd(&["check", path_str(&dir.path().join("weir.yaml"))]);
        assert!(!out.status.success(), "{yaml}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let tls = "tls: { certificates: [ { cert: srv.pem, key: srv.key } ]";
    let err = check(&format!(
        "listeners: {{ s: {{ bind: \"127.0.0.1:1\", {tls}, client_auth: {{ ca: missing.pem }} }} }} }}\ngateways: [ {{ name: g, virtual_hosts: [a.test], routes: {{ r: {{ respond: {{ status: 200 }} }} }} }} ]\n"
    ));
    assert!(err.contains("missing.pem"), "{err}");
    let err = check(&format!(
        "listeners: {{ s: {{ bind: \"127.0.0.1:1\", {tls} }} }} }}\ngateways: [ {{ name: g, virtual_hosts: [a.test], client_auth: required, routes: {{ r: {{ respond: {{ status: 200 }} }} }} }} ]\n"
    ));
    assert!(
        err.contains("no listener carrying this gateway asks for client certificates"),
        "{err}"
    );
    let err = check(&format!(
        "listeners: {{ s: {{ bind: \"127.0.0.1:1\", {tls}, client_auth: {{ ca: ca.pem, mode: sometimes }} }} }} }}\ngateways: []\n"
    ));
    assert!(err.contains("mode") && err.contains("weir.yaml:"), "{err}");
}
