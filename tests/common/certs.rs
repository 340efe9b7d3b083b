//! A private test CA and leaf certificates, made with the openssl command.

use std::path::Path;
use std::process::Command;

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
