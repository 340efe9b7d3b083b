//! The answers to ACME challenges in progress (orders are `acme`'s), for the proxy (HTTP-01: a token's key
//! authorization under `/.well-known/acme-challenge/`) and the SNI resolver
//! (TLS-ALPN-01: a certificate carrying the key authorization's digest, for handshakes
//! that offer only `acme-tls/1`). Process-wide: challenges are few and short-lived,
//! and both readers reach them only for requests that look like a challenge.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;

/// The path prefix of HTTP-01 challenges.
pub const HTTP_PREFIX: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Default)]
pub struct Challenges {
    /// Token → key authorization.
    http: Mutex<HashMap<String, String>>,
    /// Name → its challenge certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Challenges open: when none, readers skip the locks.
    open: AtomicUsize,
}

/// The process's challenges.
pub fn challenges() -> &'static Challenges {
    static CHALLENGES: OnceLock<Challenges> = OnceLock::new();
    CHALLENGES.get_or_init(Challenges::default)
}

impl Challenges {
    /// The key authorization for an HTTP-01 request path, if it is an open challenge.
    pub fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP_PREFIX)?;
        if self.open.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        http.get(token).cloned()
    }

    /// The TLS-ALPN-01 certificate for `name`, if it has an open challenge.
    pub fn alpn_key(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if self.open.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let alpn = self.alpn.lock().unwrap_or_else(|e| e.into_inner());
        alpn.get(&name.to_ascii_lowercase()).cloned()
    }

    pub fn open_http(&self, token: &str, key_authorization: &str) {
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        if http
            .insert(token.to_string(), key_authorization.to_string())
            .is_none()
        {
            self.open.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn close_http(&self, token: &str) {
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        if http.remove(token).is_some() {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Opens a TLS-ALPN-01 challenge: a self-signed certificate for `name` with the
    /// critical acmeIdentifier extension holding `digest` (SHA-256 of the key
    /// authorization).
    pub fn open_alpn(&self, name: &str, digest: &[u8]) -> Result<(), String> {
        let fail = |e: rcgen::Error| format!("challenge certificate for {name}: {e}");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(fail)?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let cert = params.self_signed(&key).map_err(fail)?;
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| format!("challenge key for {name}: {e}"))?;
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        let mut alpn = self.alpn.lock().unwrap_or_else(|e| e.into_inner());
        if alpn.insert(name.to_ascii_lowercase(), certified).is_none() {
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn close_alpn(&self, name: &str) {
        let mut alpn = self.alpn.lock().unwrap_or_else(|e| e.into_inner());
        if alpn.remove(&name.to_ascii_lowercase()).is_some() {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_open_challenges() {
        let c = Challenges::default();
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t1"), None);
        c.open_http("t1", "t1.thumb");
        assert_eq!(
            c.http_answer("/.well-known/acme-challenge/t1").as_deref(),
            Some("t1.thumb")
        );
        assert_eq!(c.http_answer("/.well-known/acme-challenge/t2"), None);
        assert_eq!(c.http_answer("/t1"), None);
        c.open_alpn("A.test", &[7; 32]).unwrap();
        assert!(c.alpn_key("a.TEST").is_some());
        c.close_http("t1");
        c.close_alpn("a.test");
        assert_eq!(c.open.load(Ordering::Relaxed), 0);
        assert!(c.alpn_key("a.test").is_none());
    }
}
