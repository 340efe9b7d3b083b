//! `tls:` on a listener as written: its certificates, ACME, client certificates and
//! protocol versions.

use serde::{Deserialize, Serialize};

use super::ConfigDuration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    #[serde(default)]
    pub default_certificate: Option<usize>,
    #[serde(default)]
    pub min_version: Option<TlsVersion>,
    #[serde(default)]
    pub alpn: Option<Vec<String>>,
    /// Names to serve with a self-signed certificate made at start (demos and tests;
    /// no private key on disk). An extension.
    #[serde(default)]
    pub self_signed: Vec<String>,
    /// Client certificates (mutual TLS): the CA they must chain to, whether one is
    /// required at the handshake, a CRL.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    /// Staple OCSP answers from each certificate's responder in handshakes.
    #[serde(default)]
    pub ocsp_stapling: bool,
    /// Certificates issued and renewed by weir from an ACME server.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// Session-ticket keys shared by a fleet (resumption on any edge).
    #[serde(default)]
    pub ticket_keys_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The ACME server's directory URL.
    pub directory: String,
    /// Contact address for the account.
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// The CA the ACME server's own certificate chains to (instead of the system's).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Renew this long before a certificate expires.
    #[serde(default = "default_renew_before")]
    pub renew_before: ConfigDuration,
    /// Account key and certificates (keys 0600).
    #[serde(default = "default_acme_state")]
    pub state_dir: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

fn default_renew_before() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(30 * 86_400))
}

fn default_acme_state() -> String {
    "/var/lib/weir/acme".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// CA certificates (PEM) a client certificate must chain to.
    pub ca: String,
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// Certificate revocation lists (PEM) from the CA.
    #[serde(default)]
    pub crl: Option<String>,
}

/// `required`: no handshake without a valid client certificate. `optional`: a client
/// may send none (gateways with `client_auth: required` then answer 403); one that is
/// sent must be valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}
