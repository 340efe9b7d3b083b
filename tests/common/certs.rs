//! A private test CA and leaf certificates, made with the openssl command; TLS sessions
//! saved and offered with `openssl s_client`.

use std::path::Path;
use std::process::{Command, Stdio};

pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private test CA: `ca.pem`, `ca.key` in `dir`.
pub fn ca(dir: &Path) {
    self_signed(dir, "ca", "weir test CA");
}

/// A self-signed RSA certificate `/CN=cn`: `file.pem`, `file.key` in `dir`.
pub fn self_signed(dir: &Path, file: &str, cn: &str) {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d(&format!("{file}.key")),
        "-out",
        &d(&format!("{file}.pem")),
        "-days",
        "30",
        "-subj",
        &format!("/CN={cn}"),
    ]);
}

/// A leaf certificate signed by the test CA: `name.pem`, `name.key`.
pub fn leaf(dir: &Path, file: &str, cn: &str, sans: &[&str], ec: bool) {
    let san: Vec<String> = sans.iter().map(|s| format!("DNS:{s}")).collect();
    let ext = format!("subjectAltName={}\n", san.join(","));
    signed(dir, "ca", file, cn, &ext, fastrand_serial(), ec);
}

/// A certificate `/CN=cn` signed by the CA `ca.pem`/`ca.key` in `dir`, with the
/// extension lines `ext` (subjectAltName, authorityInfoAccess, ...) and `serial`:
/// `file.pem`, `file.key`.
pub fn signed(dir: &Path, ca: &str, file: &str, cn: &str, ext: &str, serial: u64, ec: bool) {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let newkey: &[&str] = if ec {
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    } else {
        &["-newkey", "rsa:2048"]
    };
    let mut req = vec!["req"];
    req.extend_from_slice(newkey);
    let (key, csr) = (d(&format!("{file}.key")), d(&format!("{file}.csr")));
    let subj = format!("/CN={cn}");
    req.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(&req);
    let ext_file = d(&format!("{file}.ext"));
    std::fs::write(&ext_file, ext).unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &d(&format!("{ca}.pem")),
        "-CAkey",
        &d(&format!("{ca}.key")),
        "-set_serial",
        &serial.to_string(),
        "-out",
        &d(&format!("{file}.pem")),
        "-days",
        "30",
        "-extfile",
        &ext_file,
    ]);
}

fn fastrand_serial() -> u64 {
    use std::time::SystemTime;
    let n = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (n % 1_000_000_000) + 1000
}

/// One `openssl s_client` connection that sends a request and reads the answer (so
/// TLS 1.3 session tickets, sent after the handshake, arrive), saving or offering a
/// session; returns its output.
pub fn session(port: u16, file: &Path, save: bool, extra: &[&str]) -> String {
    let mut child = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "a.test", "-ign_eof"])
        .arg(if save { "-sess_out" } else { "-sess_in" })
        .arg(file)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `New, TLSv1.x, ...` or `Reused, TLSv1.x, ...` line.
pub fn session_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("New,") || l.starts_with("Reused,"))
        .unwrap_or("")
}
