//! Reading PEM certificate lists, for every file weir takes certificates from (served
//! chains, client-certificate CAs, an ACME server's CA): one reading and its two errors.

use std::path::Path;

use rustls::pki_types::CertificateDer;

/// The certificates of `pem`, read from `path`: at least one, all well-formed PEM.
/// Errors name the path; callers put the config key before it.
pub fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let p = Path::new("/etc/weir/x.pem");
        assert_eq!(
            certificates(p, b"junk").unwrap_err(),
            "/etc/weir/x.pem: no PEM certificate in it"
        );
        let bad = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(certificates(p, bad).unwrap_err().contains("not PEM"));
    }
}
