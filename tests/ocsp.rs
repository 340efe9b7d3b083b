//! OCSP stapling through the real binary: a test CA's certificate names a responder
//! on loopback; the responder is `openssl ocsp` (each request answered by it from the
//! CA's index file) behind a small HTTP server bound to 127.0.0.1; the client is
//! `openssl s_client -status`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

const SERIAL: u64 = 0x1A2B;

/// The server certificate `a.pem` (with the CA after it) naming the responder on
/// `port`, and an index saying it is valid (`V`) or revoked (`R`).
fn certificate(dir: &Path, responder: u16, status: char) {
    let ext = format!(
        "subjectAltName=DNS:a.test\nauthorityInfoAccess=OCSP;URI:http://127.0.0.1:{responder}/\n"
    );
    signed(dir, "ca", "a", "a.test", &ext, SERIAL, false);
    let chain = std::fs::read_to_string(dir.join("a.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    std::fs::write(dir.join("a.pem"), chain).unwrap();
    index(dir, status);
}

fn index(dir: &Path, status: char) {
    let revoked = if status == 'R' { "250101000000Z" } else { "" };
    std::fs::write(
        dir.join("index.txt"),
        format!("{status}\t351231000000Z\t{revoked}\t{SERIAL:04X}\tunknown\t/CN=a.test\n"),
    )
    .unwrap();
}

struct Edge {
    weir: Weir,
    dir: tempfile::TempDir,
    https: u16,
    admin: u16,
}

fn edge(dir: tempfile::TempDir) -> Edge {
    let (https, admin) = (free_port(), free_port());
    let yaml = format!(
        "admin: {{ bind: \"127.0.0.1:{admin}\" }}
listeners:
  https:
    bind: \"127.0.0.1:{https}\"
    tls:
      certificates: [ {{ cert: a.pem, key: a.key }} ]
      ocsp_stapling: true
gateways:
  - name: g
    virtual_hosts: [a.test]
    routes: {{ r: {{ respond: {{ status: 200, body: ok }} }} }}
"
    );
    std::fs::write(dir.path().join("weir.yaml"), yaml).unwrap();
    let weir = Weir::spawn(
        tempfile::tempdir().unwrap(),
        dir.path().join("weir.yaml"),
        &[],
        &[https, admin],
    );
    Edge {
        weir,
        dir,
        https,
        admin,
    }
}

impl Edge {
    /// What `openssl s_client -status` says of the staple: `Some(status)` when one
    /// was sent, `None` when not; panics if the handshake failed.
    fn staple(&self) -> Option<String> {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.https)])
            .args(["-servername", "a.test", "-status", "-CAfile"])
            .arg(self.path("ca.pem"))
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "the handshake must succeed, staple or not: {text}"
        );
        if text.contains("OCSP response: no response sent") {
            return None;
        }
        let status = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Cert Status:"))
            .map(|s| s.trim().to_string());
        assert!(status.is_some(), "{text}");
        status
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn refreshes(&self, result: &str) -> f64 {
        scrape(self.admin)
            .get(&format!("weir_ocsp_refreshes_total{{result=\"{result}\"}}"))
            .copied()
            .unwrap_or(0.0)
    }
}

#[test]
fn a_good_answer_is_stapled() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    let responder = Responder::start(dir.path(), "ca", "ca", false);
    certificate(dir.path(), responder.port, 'V');
    let e = edge(dir);
    assert!(
        within(Duration::from_secs(15), || e.staple().as_deref()
            == Some("good")),
        "a good staple: {}",
        e.weir.log()
    );
    assert!(e.refreshes("ok") >= 1.0);
    let asked = responder.asked.load(Ordering::Relaxed);
    // Handshakes are served from the cache: they never ask the responder.
    for _ in 0..3 {
        assert_eq!(e.staple().as_deref(), Some("good"));
    }
    assert_eq!(responder.asked.load(Ordering::Relaxed), asked);
}

#[test]
fn a_responder_the_issuer_delegated_to_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    // A responder certificate the CA signed for OCSP signing (sent with each answer).
    let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d("delegate.key"),
        "-out",
        &d("delegate.csr"),
        "-subj",
        "/CN=ocsp responder",
    ]);
    std::fs::write(
        dir.path().join("delegate.ext"),
        "extendedKeyUsage=OCSPSigning\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d("delegate.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-set_serial",
        "77",
        "-out",
        &d("delegate.pem"),
        "-days",
        "30",
        "-extfile",
        &d("delegate.ext"),
    ]);
    let responder = Responder::start(dir.path(), "ca", "delegate", false);
    certificate(dir.path(), responder.port, 'V');
    let e = edge(dir);
    assert!(
        within(Duration::from_secs(15), || e.staple().as_deref()
            == Some("good")),
        "a staple signed by the delegate: {}",
        e.weir.log()
    );
}

#[test]
fn a_responder_that_is_down_never_blocks_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    let responder = Responder::start(dir.path(), "ca", "ca", false);
    responder.up.store(false, Ordering::Relaxed);
    certificate(dir.path(), responder.port, 'V');
    let e = edge(dir);
    assert!(
        within(Duration::from_secs(10), || e.refreshes("error") >= 1.0),
        "the failed fetch is counted"
    );
    assert_eq!(e.staple(), None, "no staple, but the handshake succeeds");
    // Back up: the retry (back-off from 2 s) staples it.
    responder.up.store(true, Ordering::Relaxed);
    assert!(
        within(Duration::from_secs(20), || e.staple().as_deref()
            == Some("good")),
        "stapled once the responder is back: {}",
        e.weir.log()
    );
}

#[test]
fn revoked_or_badly_signed_answers_are_not_stapled() {
    for (status, signer) in [('R', "ca"), ('V', "impostor")] {
        let dir = tempfile::tempdir().unwrap();
        ca(dir.path());
        // A self-signed certificate the CA never authorised to answer for it.
        self_signed(dir.path(), "impostor", "impostor");
        let responder = Responder::start(dir.path(), "ca", signer, false);
        certificate(dir.path(), responder.port, status);
        let e = edge(dir);
        assert!(
            within(Duration::from_secs(10), || e.refreshes("error") >= 1.0),
            "{status} {signer}: refused and counted: {}",
            e.weir.log()
        );
        assert!(responder.asked.load(Ordering::Relaxed) >= 1);
        assert_eq!(e.staple(), None, "{status} {signer}");
        assert_eq!(e.refreshes("ok"), 0.0);
        let log = e.weir.log();
        let why = if status == 'R' {
            "revoked"
        } else {
            "not signed"
        };
        assert!(log.contains(why), "{log}");
    }
}

#[test]
fn certificates_that_cannot_be_stapled_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    ca(dir.path());
    leaf(dir.path(), "a", "a.test", &["a.test"], false);
    let yaml = "listeners:\n  s:\n    bind: \"127.0.0.1:1\"\n    tls: { certificates: [ { cert: a.pem, key: a.key } ], ocsp_stapling: true }\ngateways: [ { name: g, virtual_hosts: [a.test], routes: { r: { respond: { status: 200 } } } } ]\n";
    std::fs::write(dir.path().join("weir.yaml"), yaml).unwrap();
    let out = weir_cmd(&["check", path_str(&dir.path().join("weir.yaml"))]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {text}");
    assert!(
        text.contains("ocsp_stapling") && text.contains("no issuer certificate"),
        "{text}"
    );
}
