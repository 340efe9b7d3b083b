//! TLS certificates: loading and checking certificate/key pairs,
//! and the SNI certificate resolver that Pingora's rustls listener asks on each
//! handshake.
//!
//! A TLS listener's certificates are compiled into a [`CertStore`] with each snapshot
//! (names from the SANs, or the CN when there are none); the listener's [`SniResolver`]
//! holds the current store in an `ArcSwap`, so a reload swaps certificates for new
//! handshakes without touching open connections. Exact names beat `*.` wildcards (one
//! label, as browsers match them); with no match, the `default_certificate`, or no
//! certificate at all (the handshake fails with `unrecognized_name`). When a name has
//! both an ECDSA and an RSA certificate, clients that offer ECDSA get it.
//!
//! Each TLS listener bound at start has one [`TlsEndpoint`]: its resolver, its session
//! ticketer and cache (kept for the life of the process, so reloads do not break
//! resumption) and the rustls `ServerConfig` built from its [`TlsPolicy`], rebuilt
//! when a reload changes the policy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use pingora::listeners::tls::Acceptor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureAlgorithm, SignatureScheme};

use crate::client_cert::{ClientAuth, ClientCert};

/// One loaded certificate chain with its key.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Names it serves, lower-cased (`*.example.org` for wildcards).
    pub names: Vec<String>,
    /// Unix time after which it is expired.
    pub not_after: i64,
    /// Unix time from which it is valid.
    pub not_before: i64,
    pub ecdsa: bool,
    /// `rsa`, `ecdsa` or `ed25519` (for metrics).
    pub key_type: &'static str,
    /// Its OCSP staple, on a listener with `ocsp_stapling` (set when applied).
    pub staple: crate::ocsp::Slot,
}

impl Loaded {
    /// The key a handshake gets: with the OCSP answer when one is stapled.
    pub fn certified(&self) -> Arc<CertifiedKey> {
        self.staple
            .get()
            .and_then(|s| s.certified())
            .unwrap_or_else(|| self.key.clone())
    }
}

fn key_type(a: SignatureAlgorithm) -> &'static str {
    match a {
        SignatureAlgorithm::ECDSA => "ecdsa",
        SignatureAlgorithm::ED25519 => "ed25519",
        SignatureAlgorithm::ED448 => "ed448",
        _ => "rsa",
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Parses a PEM certificate chain and its key (the paths name them in errors); checks
/// that the key matches and that the certificate is not expired.
pub fn parse_pair(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<Loaded, String> {
    let chain =
        crate::pem::certificates(cert_path, cert_pem).map_err(|e| format!("certificate {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("key {}: not PEM: {e}", key_path.display()))?
        .ok_or_else(|| format!("key {}: no PEM private key in it", key_path.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("key {}: unsupported key: {e}", key_path.display()))?;
    let ecdsa = matches!(signing.algorithm(), SignatureAlgorithm::ECDSA);
    let key_type = key_type(signing.algorithm());
    let certified = CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().map_err(|e| {
        format!(
            "key {} does not match certificate {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    let (names, not_before, not_after) = names_and_validity(&chain[0])
        .map_err(|e| format!("certificate {}: {e}", cert_path.display()))?;
    if not_after < now_unix() {
        return Err(format!("certificate {}: expired", cert_path.display()));
    }
    Ok(Loaded {
        key: Arc::new(certified),
        names,
        not_after,
        not_before,
        ecdsa,
        key_type,
        staple: Default::default(),
    })
}

/// The DNS names a certificate serves (SANs, else the CN) and when it is valid.
fn names_and_validity(der: &CertificateDer) -> Result<(Vec<String>, i64, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| format!("not X.509: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let validity = cert.validity();
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// Makes a self-signed certificate for `names` (a fresh key each call: callers keep it
/// so that reloads do not change it).
pub fn self_signed(names: &[String]) -> Result<Arc<Loaded>, String> {
    let fail = |e: rcgen::Error| format!("tls.self_signed {names:?}: {e}");
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(fail)?;
    // Valid for a year from yesterday (rcgen's default runs to the year 4096).
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let key_pair = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key_pair).map_err(fail)?;
    let generated = rcgen::CertifiedKey { cert, key_pair };
    let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.self_signed: {e}"))?;
    let der = generated.cert.der().clone();
    let (cert_names, not_before, not_after) = names_and_validity(&der)?;
    let loaded = Arc::new(Loaded {
        ecdsa: matches!(signing.algorithm(), SignatureAlgorithm::ECDSA),
        key_type: key_type(signing.algorithm()),
        key: Arc::new(CertifiedKey::new(vec![der], signing)),
        names: cert_names,
        not_after,
        not_before,
        staple: Default::default(),
    });
    Ok(loaded)
}

/// Days until a certificate expires (for `weir check`).
pub fn days_left(l: &Loaded) -> i64 {
    (l.not_after - now_unix()) / 86_400
}

/// The certificates of one TLS listener, by name.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Vec<Arc<Loaded>>>,
    /// Keyed by the suffix after `*.`.
    wildcard: HashMap<String, Vec<Arc<Loaded>>>,
    default: Option<Arc<Loaded>>,
}

impl CertStore {
    pub fn new(certs: &[Arc<Loaded>], default: Option<usize>) -> CertStore {
        let mut store = CertStore {
            default: default.and_then(|i| certs.get(i).cloned()),
            ..CertStore::default()
        };
        for c in certs {
            for name in &c.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut store.wildcard, suffix.to_string()),
                    None => (&mut store.exact, name.clone()),
                };
                map.entry(key).or_default().push(c.clone());
            }
        }
        store
    }

    /// The certificate for an SNI name (or none given), preferring ECDSA when offered:
    /// a configured certificate for the exact name, else one ACME `issued` for it, else
    /// a configured wildcard, else the default.
    pub fn pick<'a>(
        &'a self,
        sni: Option<&str>,
        ecdsa_ok: bool,
        issued: &'a HashMap<String, Arc<Loaded>>,
    ) -> Option<&'a Arc<Loaded>> {
        fn choose(list: &[Arc<Loaded>], ecdsa_ok: bool) -> Option<&Arc<Loaded>> {
            list.iter()
                .find(|c| c.ecdsa && ecdsa_ok)
                .or_else(|| list.iter().find(|c| !c.ecdsa))
                .or_else(|| list.first())
        }
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name).and_then(|l| choose(l, ecdsa_ok)) {
                return Some(c);
            }
            if let Some(c) = issued.get(&name) {
                return Some(c);
            }
            // A wildcard covers exactly one label.
            if let Some((_, suffix)) = name.split_once('.') {
                if let Some(c) = self.wildcard.get(suffix).and_then(|l| choose(l, ecdsa_ok)) {
                    return Some(c);
                }
            }
        }
        self.default.as_ref()
    }
}

/// What a TLS connection's handshake said of the client, kept with its TLS digest:
/// the SNI name it sent, and its verified client certificate.
#[derive(Debug)]
pub struct Peer {
    pub sni: Option<String>,
    pub client_cert: Option<ClientCert>,
}

/// Records each connection's [`Peer`] after the handshake.
pub struct RecordPeer;

#[async_trait::async_trait]
impl pingora::listeners::TlsAccept for RecordPeer {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        // The listener's verifier has checked any certificate a client sent.
        let client_cert = tls.peer_certificate_der().and_then(ClientCert::describe);
        let sni = tls.server_name().map(str::to_string);
        if sni.is_none() && client_cert.is_none() {
            return None;
        }
        Some(Arc::new(Peer { sni, client_cert }))
    }
}

/// The certificates ACME issued for one listener, by name (lower case); `acme`
/// publishes them, the listener's resolver reads them.
pub type Issued = ArcSwap<HashMap<String, Arc<Loaded>>>;

/// Pingora's rustls listener asks this for a certificate on each handshake.
#[derive(Debug, Default)]
pub struct SniResolver {
    pub store: ArcSwap<CertStore>,
    /// Certificates ACME issued for this listener (live state, not the snapshot's).
    pub issued: Arc<Issued>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello) -> Option<Arc<CertifiedKey>> {
        let ecdsa_ok = hello.signature_schemes().iter().any(|s| {
            matches!(
                s,
                SignatureScheme::ECDSA_NISTP256_SHA256
                    | SignatureScheme::ECDSA_NISTP384_SHA384
                    | SignatureScheme::ECDSA_NISTP521_SHA512
            )
        });
        let acme_tls = crate::challenge::ACME_TLS_ALPN;
        if let Some(mut alpn) = hello.alpn() {
            // TLS-ALPN-01 validation (RFC 8737): only `acme-tls/1` is offered.
            if alpn.any(|p| p == acme_tls) {
                let name = hello.server_name()?;
                return crate::challenge::challenges().alpn_key(name);
            }
        }
        let store = self.store.load();
        let issued = self.issued.load();
        store
            .pick(hello.server_name(), ecdsa_ok, &issued)
            .map(|c| c.certified())
    }
}

/// The protocol side of a TLS listener: versions, ALPN, client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// `min_version: "1.3"`: TLS 1.2 is refused too.
    pub tls13_only: bool,
    /// ALPN protocol ids in the server's order of preference.
    pub alpn: Vec<Vec<u8>>,
    /// `client_auth`: clients are asked for a certificate.
    pub client_auth: Option<ClientAuth>,
}

impl Default for TlsPolicy {
    fn default() -> TlsPolicy {
        TlsPolicy {
            tls13_only: false,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            client_auth: None,
        }
    }
}

/// Sessions remembered per listener for clients that resume by session id (TLS 1.2
/// without tickets); about 1-2 MB when full.
const SESSION_CACHE_ENTRIES: usize = 8192;

/// The handshake side of one TLS listener, for the life of the process.
pub struct TlsEndpoint {
    pub name: Arc<str>,
    resolver: Arc<SniResolver>,
    /// Session tickets under keys that rotate every 6 hours (the previous key still
    /// decrypts), so a stolen key opens a bounded window of sessions.
    ticketer: Arc<crate::tickets::Ticketer>,
    sessions: Arc<dyn StoresServerSessions>,
    policy: std::sync::Mutex<TlsPolicy>,
    acceptor: ArcSwap<Acceptor>,
    errors: prometheus::IntCounter,
}

impl std::fmt::Debug for TlsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsEndpoint")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsEndpoint {
    pub fn new(
        name: Arc<str>,
        store: Arc<CertStore>,
        policy: &TlsPolicy,
    ) -> Result<TlsEndpoint, String> {
        let resolver = Arc::new(SniResolver::default());
        resolver.store.store(store);
        let own = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("listener {name:?}: session tickets: {e}"))?;
        let ticketer = Arc::new(crate::tickets::Ticketer::new(own));
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        let config = server_config(policy, resolver.clone(), &ticketer, &sessions)
            .map_err(|e| format!("listener {name:?}: TLS settings: {e}"))?;
        let errors = crate::metrics::metrics()
            .tls_handshake_errors
            .with_label_values(&[&name]);
        Ok(TlsEndpoint {
            name,
            resolver,
            ticketer,
            sessions,
            policy: std::sync::Mutex::new(policy.clone()),
            acceptor: ArcSwap::from_pointee(Acceptor::from_server_config(config)),
            errors,
        })
    }

    /// Takes a reload's certificates, and its policy when that changed. New
    /// handshakes see them; open connections keep what they negotiated.
    pub fn apply(&self, store: Arc<CertStore>, policy: &TlsPolicy) -> Result<(), String> {
        self.resolver.store.store(store);
        let mut current = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        if *current != *policy {
            let config = server_config(
                policy,
                self.resolver.clone(),
                &self.ticketer,
                &self.sessions,
            )
            .map_err(|e| format!("listener {:?}: TLS settings: {e}", self.name))?;
            self.acceptor
                .store(Arc::new(Acceptor::from_server_config(config)));
            *current = policy.clone();
        }
        Ok(())
    }

    /// Seals new session tickets under `keys` (the fleet's), or under weir's own.
    pub fn set_ticket_keys(&self, keys: Option<Arc<crate::tickets::TicketKeys>>) {
        self.ticketer.set(keys);
    }

    /// Where ACME publishes the certificates it issues for this listener.
    pub fn issued(&self) -> Arc<Issued> {
        self.resolver.issued.clone()
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> Arc<Acceptor> {
        self.acceptor.load_full()
    }

    /// Counts a failed handshake in `weir_tls_handshake_errors_total`.
    pub fn failed(&self) {
        self.errors.inc();
    }
}

/// A rustls server config: TLS 1.2 and 1.3 (or 1.3 only) with ring's default suites,
/// which are all forward-secret (ECDHE or TLS 1.3), and session resumption by ticket
/// or by cached session id.
fn server_config(
    policy: &TlsPolicy,
    resolver: Arc<SniResolver>,
    ticketer: &Arc<crate::tickets::Ticketer>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = if policy.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider).with_protocol_versions(versions)?;
    let builder = match &policy.client_auth {
        Some(auth) => builder.with_client_cert_verifier(auth.verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = policy.alpn.clone();
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], ecdsa: bool) -> Arc<Loaded> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = self_signed(&names).expect("rcgen makes a certificate");
        // The choice reads the flag; the key type does not matter to it.
        Arc::new(Loaded {
            ecdsa,
            ..(*made).clone()
        })
    }

    #[test]
    fn pick_exact_then_wildcard_then_default() {
        let exact = cert(&["a.example.org"], true);
        let wild = cert(&["*.example.org"], true);
        let other = cert(&["other.test"], true);
        let store = CertStore::new(&[exact.clone(), wild.clone(), other.clone()], Some(2));
        let none = HashMap::new();
        let pick = |sni: Option<&str>| store.pick(sni, true, &none).map(|c| c.names[0].clone());
        assert_eq!(
            pick(Some("A.Example.org")).as_deref(),
            Some("a.example.org")
        );
        assert_eq!(
            pick(Some("b.example.org")).as_deref(),
            Some("*.example.org")
        );
        // A wildcard covers one label only: deeper names fall to the default.
        assert_eq!(pick(Some("x.b.example.org")).as_deref(), Some("other.test"));
        assert_eq!(pick(Some("nobody.test")).as_deref(), Some("other.test"));
        assert_eq!(pick(None).as_deref(), Some("other.test"));
        let strict = CertStore::new(&[exact], None);
        assert!(strict.pick(Some("nobody.test"), true, &none).is_none());
        assert!(strict.pick(None, true, &none).is_none());
        // ACME's certificate for a name comes after a configured exact one, before
        // wildcards and the default.
        let acme = cert(&["b.example.org"], false);
        let issued = HashMap::from([("b.example.org".to_string(), acme)]);
        let named = |sni| {
            store
                .pick(Some(sni), true, &issued)
                .map(|c| c.names[0].clone())
        };
        assert_eq!(named("b.example.org").as_deref(), Some("b.example.org"));
        assert_eq!(named("a.example.org").as_deref(), Some("a.example.org"));
        assert_eq!(named("c.example.org").as_deref(), Some("*.example.org"));
    }

    #[test]
    fn ecdsa_for_clients_that_offer_it() {
        let rsa = cert(&["a.test"], false);
        let ec = cert(&["a.test"], true);
        let store = CertStore::new(&[rsa, ec], None);
        let none = HashMap::new();
        assert!(store.pick(Some("a.test"), true, &none).unwrap().ecdsa);
        assert!(!store.pick(Some("a.test"), false, &none).unwrap().ecdsa);
    }
}
