//! Client certificates at the edge (mutual TLS): the verifier a TLS listener's
//! `client_auth` compiles to, what a verified certificate says (subject, SANs,
//! fingerprint), and the `X-Client-Cert-*` headers that carry it upstream.
//!
//! Verification is rustls's (webpki): the chain must reach the listener's CA, be within
//! its validity, and, with a CRL, the client's own certificate must not be revoked (a
//! CRL that does not cover the issuer refuses the certificate, as HAProxy does). A
//! certificate that fails is refused in the handshake in both modes; `optional` only
//! lets a client send none. So a certificate that reaches a request is a verified one,
//! described once per connection, right after the handshake.

use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;
use pingora::http::RequestHeader;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The headers weir sets from a verified client certificate; copies sent by clients
/// are always removed.
pub const SUBJECT: &str = "x-client-cert-subject";
pub const SAN: &str = "x-client-cert-san";
pub const FINGERPRINT: &str = "x-client-cert-fingerprint";

/// A TLS listener's `client_auth`, compiled.
#[derive(Clone)]
pub struct ClientAuth {
    pub verifier: Arc<dyn ClientCertVerifier>,
    pub required: bool,
    /// The CA and CRL files' bytes: a reload that changes neither keeps the listener's
    /// TLS settings as they are.
    identity: Arc<[u8]>,
}

impl PartialEq for ClientAuth {
    fn eq(&self, other: &ClientAuth) -> bool {
        self.required == other.required && self.identity == other.identity
    }
}

impl Eq for ClientAuth {}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    /// Compiles the CA certificates (PEM) and an optional CRL (PEM); the paths name
    /// the files in errors.
    pub fn new(
        ca: (&Path, &[u8]),
        crl: Option<(&Path, &[u8])>,
        required: bool,
    ) -> Result<ClientAuth, String> {
        let (ca_path, ca_pem) = ca;
        let mut roots = RootCertStore::empty();
        let certs =
            crate::pem::certificates(ca_path, ca_pem).map_err(|e| format!("client_auth.ca {e}"))?;
        for c in certs {
            roots.add(c).map_err(|e| {
                format!(
                    "client_auth.ca {}: not a usable CA certificate: {e}",
                    ca_path.display()
                )
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let mut identity = ca_pem.to_vec();
        if let Some((crl_path, crl_pem)) = crl {
            let crls: Vec<CertificateRevocationListDer<'static>> =
                rustls_pemfile::crls(&mut &crl_pem[..])
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("client_auth.crl {}: not PEM: {e}", crl_path.display()))?;
            if crls.is_empty() {
                return Err(format!(
                    "client_auth.crl {}: no PEM X509 CRL in it",
                    crl_path.display()
                ));
            }
            builder = builder.with_crls(crls).only_check_end_entity_revocation();
            identity.push(0);
            identity.extend_from_slice(crl_pem);
        }
        if !required {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder.build().map_err(|e| {
            format!(
                "client_auth {}: the CA or CRL cannot be used: {e}",
                ca_path.display()
            )
        })?;
        Ok(ClientAuth {
            verifier,
            required,
            identity: identity.into(),
        })
    }
}

/// What a verified client certificate says, made once per connection.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The subject as an RFC 4514 string (`CN=alice,O=Example`); conditions read it.
    pub subject: Box<str>,
    subject_value: HeaderValue,
    san: HeaderValue,
    fingerprint: HeaderValue,
}

impl ClientCert {
    /// Describes a certificate (DER); `None` if it is not X.509, which a verified
    /// certificate always is.
    pub fn describe(der: &[u8]) -> Option<ClientCert> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = rfc4514(cert.subject());
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::RFC822Name(e) => sans.push(format!("email:{e}")),
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    GeneralName::IPAddress(ip) => {
                        if let Some(ip) = ip_text(ip) {
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let fingerprint: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Some(ClientCert {
            subject_value: header_value(&subject),
            subject: subject.into(),
            san: header_value(&sans.join(", ")),
            fingerprint: header_value(&fingerprint),
        })
    }
}

fn ip_text(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// A name as RFC 4514 writes it: the last RDN first, `,` between RDNs, `+` within
/// one, special characters escaped. Attribute types by their short name, else dotted.
fn rfc4514(name: &x509_parser::x509::X509Name) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(value) => escape_value(value, &mut out),
                Err(_) => {
                    // Not a string type: `#` and the value's DER in hex (RFC 4514 §2.4).
                    out.push('#');
                    for b in attr.attr_value().as_bytes() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

fn escape_value(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_control() || !c.is_ascii() {
            // Header values carry ASCII: other bytes as `\XX` (RFC 4514 §2.4).
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

/// A header value from text that is printable ASCII by construction.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Removes client-sent `X-Client-Cert-*` headers and sets weir's own from the
/// connection's verified certificate, if it has one.
pub fn forward(req: &mut RequestHeader, cert: Option<&ClientCert>) -> pingora::Result<()> {
    for name in [SUBJECT, SAN, FINGERPRINT] {
        req.remove_header(name);
    }
    if let Some(c) = cert {
        req.insert_header(SUBJECT, c.subject_value.clone())?;
        if !c.san.is_empty() {
            req.insert_header(SAN, c.san.clone())?;
        }
        req.insert_header(FINGERPRINT, c.fingerprint.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(subject: &[(rcgen::DnType, &str)], sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for (t, v) in subject {
            dn.push(t.clone(), *v);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_is_rfc4514_and_sans_are_listed() {
        let der = cert_with(
            &[
                (rcgen::DnType::OrganizationName, "Example, Inc"),
                (rcgen::DnType::CommonName, "alice"),
            ],
            vec![
                rcgen::SanType::DnsName("a.test".try_into().unwrap()),
                rcgen::SanType::Rfc822Name("a@b.test".try_into().unwrap()),
                rcgen::SanType::IpAddress("10.0.0.1".parse().unwrap()),
            ],
        );
        let c = ClientCert::describe(&der).unwrap();
        assert_eq!(&*c.subject, "CN=alice,O=Example\\, Inc");
        assert_eq!(c.san, "DNS:a.test, email:a@b.test, IP:10.0.0.1");
        assert_eq!(c.fingerprint.len(), 64);
        let again = ClientCert::describe(&der).unwrap();
        assert_eq!(c.fingerprint, again.fingerprint);
    }

    #[test]
    fn non_ascii_and_edges_are_escaped() {
        let mut out = String::new();
        escape_value(" é#\n ", &mut out);
        assert_eq!(out, "\\ \\C3\\A9#\\0A\\ ");
        assert!(HeaderValue::from_str(&out).is_ok());
    }

    #[test]
    fn client_copies_are_replaced() {
        let der = cert_with(&[(rcgen::DnType::CommonName, "bob")], vec![]);
        let c = ClientCert::describe(&der).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(SUBJECT, "CN=admin").unwrap();
        req.insert_header(SAN, "DNS:evil").unwrap();
        forward(&mut req, Some(&c)).unwrap();
        assert_eq!(req.headers.get(SUBJECT).unwrap(), "CN=bob");
        assert!(req.headers.get(SAN).is_none());
        assert_eq!(req.headers.get(FINGERPRINT).unwrap(), &c.fingerprint);
        forward(&mut req, None).unwrap();
        assert!(req.headers.get(SUBJECT).is_none() && req.headers.get(FINGERPRINT).is_none());
    }

    #[test]
    fn bad_ca_files_are_named() {
        let p = Path::new("ca.pem");
        let e = ClientAuth::new((p, b"nothing"), None, true).unwrap_err();
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let der = cert_with(&[(rcgen::DnType::CommonName, "ca")], vec![]);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        let ok = ClientAuth::new((p, pem.as_bytes()), None, false).unwrap();
        assert!(!ok.required);
        let e = ClientAuth::new((p, pem.as_bytes()), Some((Path::new("x.crl"), b"no")), true)
            .unwrap_err();
        assert!(e.contains("x.crl"), "{e}");
    }
}
