//! An instance's `tls:`: the peer dials TLS, sends and verifies a name, trusts the given
//! CA (or the system's roots), and may present a client certificate. Files are read
//! with the config and checked here, so that nothing Pingora would panic on reaches it.

use std::sync::Arc;

use pingora::upstreams::peer::{HttpPeer, Scheme};
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use super::Builder;
use crate::config::units::UpstreamTls;
use crate::config::GatewayConfig;

impl Builder<'_> {
    /// Sets up `peer` for TLS to `host`; errors name the file and what is wrong.
    pub(super) fn upstream_tls(
        &mut self,
        gw: &GatewayConfig,
        scope: &str,
        host: &str,
        tls: &UpstreamTls,
        peer: &mut HttpPeer,
    ) {
        peer.scheme = Scheme::HTTPS;
        // Pingora skips verification when no name is sent: always send one.
        peer.sni = tls.sni.clone().unwrap_or_else(|| host.to_string());
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
        if let Some(ca) = &tls.ca {
            match self.pem_certs(ca) {
                Ok(certs) => {
                    let wrapped: Vec<WrappedX509> = certs
                        .into_iter()
                        .map(|der| WrappedX509::new(der, parse_x509))
                        .collect();
                    peer.options.ca = Some(Arc::from(wrapped.into_boxed_slice()));
                }
                Err(e) => self.error(gw, scope, format!("tls.ca: {e}")),
            }
        }
        if let Some(c) = &tls.client_cert {
            let pair = self
                .pem_certs(&c.cert)
                .and_then(|certs| Ok((certs, self.pem_key(&c.key)?)));
            match pair {
                Ok((certs, key)) => peer.client_cert_key = Some(Arc::new(CertKey::new(certs, key))),
                Err(e) => self.error(gw, scope, format!("tls.client_cert: {e}")),
            }
        }
    }

    /// The certificates of a PEM file, each checked to parse as X.509.
    fn pem_certs(&self, file: &str) -> Result<Vec<Vec<u8>>, String> {
        let pem = self.blob(&self.loaded.resolve(file))?;
        let mut out = Vec::new();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let der = cert.map_err(|e| format!("{file}: {e}"))?;
            x509_parser::parse_x509_certificate(&der)
                .map_err(|e| format!("{file}: not an X.509 certificate: {e}"))?;
            out.push(der.to_vec());
        }
        if out.is_empty() {
            return Err(format!("{file}: no certificate in it"));
        }
        Ok(out)
    }

    /// The private key of a PEM file, in a DER form rustls recognises.
    fn pem_key(&self, file: &str) -> Result<Vec<u8>, String> {
        let pem = self.blob(&self.loaded.resolve(file))?;
        let key = rustls_pemfile::private_key(&mut &pem[..])
            .map_err(|e| format!("{file}: {e}"))?
            .ok_or_else(|| format!("{file}: no private key in it"))?;
        let der = key.secret_der().to_vec();
        rustls::pki_types::PrivateKeyDer::try_from(der.clone())
            .map_err(|e| format!("{file}: {e}"))?;
        Ok(der)
    }
}
