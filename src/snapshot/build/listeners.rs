//! Shared listeners and their TLS: binds, `redirect_https`, certificates (from the
//! files the loader read, and generated ones) compiled into SNI stores, TLS policy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::{valid_name, Builder, MAX_LISTENERS};
use crate::config::{Config, HttpLimits};
use crate::snapshot::{ClientLimits, Listener, TlsListener};

/// The largest request head Pingora's HTTP/1 parser reads.
const MAX_HEAD: u64 = 1_048_575;

impl Builder<'_> {
    /// `base` with the keys `given` sets, each checked against what weir can honour.
    pub(super) fn client_limits(
        &mut self,
        scope: &str,
        base: ClientLimits,
        given: &HttpLimits,
    ) -> ClientLimits {
        let mut out = base;
        if let Some(b) = given.max_request_header_bytes {
            // Pingora's own parser stops at 1 MiB.
            if !(1024..=MAX_HEAD).contains(&b.0) {
                self.main_error(
                    scope,
                    "max_request_header_bytes must be from 1KiB to 1MiB - 1",
                );
            }
            out.framing.header_bytes = b.0.min(MAX_HEAD) as usize;
        }
        if let Some(n) = given.max_headers {
            // Pingora's parser reads at most 256 header fields.
            if !(1..=256).contains(&n) {
                self.main_error(scope, "max_headers must be from 1 to 256");
            }
            out.framing.headers = n.clamp(1, 256) as usize;
        }
        if let Some(b) = given.max_uri_bytes {
            if !(16..=MAX_HEAD).contains(&b.0) {
                self.main_error(scope, "max_uri_bytes must be from 16 to 1MiB - 1");
            }
            out.framing.uri_bytes = b.0.min(MAX_HEAD) as usize;
        }
        if out.framing.uri_bytes >= out.framing.header_bytes {
            self.main_error(
                scope,
                "max_uri_bytes must be less than max_request_header_bytes (the target is part of the head)",
            );
        }
        if let Some(n) = given.max_connections {
            out.max_connections = n;
        }
        if let Some(n) = given.max_connections_per_client {
            out.per_client = n;
        }
        if let Some(rate) = given.min_body_rate {
            out.framing.body.min_rate = rate.0;
        }
        out
    }

    pub(super) fn listeners(&mut self, config: &Config, base: ClientLimits) -> Vec<Listener> {
        let mut out: Vec<Listener> = Vec::new();
        if config.listeners.len() > MAX_LISTENERS {
            self.main_error("listeners", format!("at most {MAX_LISTENERS} listeners"));
        }
        for (name, l) in &config.listeners {
            let scope = format!("listener {name:?}");
            if !valid_name(name) {
                self.main_error(&scope, "invalid listener name");
            }
            let bind = match l.bind.parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    self.main_error(
                        &scope,
                        format!(
                            "invalid bind {:?}: expected IP:PORT such as 0.0.0.0:8080",
                            l.bind
                        ),
                    );
                    continue;
                }
            };
            if let Some(other) = out.iter().find(|o| o.bind.port() == bind.port()) {
                self.main_error(
                    &scope,
                    format!(
                        "port {} is already used by listener {:?}",
                        bind.port(),
                        other.name
                    ),
                );
                continue;
            }
            let tls = l.tls.as_ref().and_then(|t| self.tls_listener(&scope, t));
            out.push(Listener {
                name: name.as_str().into(),
                bind,
                tls,
                redirect: None,
                proxy_protocol: l.proxy_protocol,
                limits: self.client_limits(&format!("{scope}.limits"), base, &l.limits),
            });
        }
        // redirect_https names a TLS listener; resolved once all listeners are known.
        for (name, l) in &config.listeners {
            let Some(target) = &l.redirect_https else {
                continue;
            };
            let scope = format!("listener {name:?}");
            let Some(from) = out.iter().position(|o| &*o.name == name) else {
                continue;
            };
            match out.iter().position(|o| &*o.name == target) {
                Some(to) if out[to].tls.is_some() && out[from].tls.is_none() => {
                    let port = out[to].bind.port();
                    out[from].redirect = Some((to, port));
                }
                Some(_) => self.main_error(
                    &scope,
                    format!(
                        "redirect_https: {target:?} must be a TLS listener, and this one plain"
                    ),
                ),
                None => self.main_error(&scope, format!("redirect_https: no listener {target:?}")),
            }
        }
        out
    }

    /// Loads and checks a TLS listener's certificates.
    pub(super) fn tls_listener(
        &mut self,
        scope: &str,
        t: &crate::config::TlsConfig,
    ) -> Option<TlsListener> {
        if t.certificates.is_empty() && t.self_signed.is_empty() && t.acme.is_none() {
            self.main_error(
                scope,
                "tls: no certificates (and no self_signed names or acme)",
            );
            return None;
        }
        let mut policy = crate::tls::TlsPolicy {
            tls13_only: t.min_version == Some(crate::config::TlsVersion::V1_3),
            ..Default::default()
        };
        if let Some(alpn) = &t.alpn {
            for p in alpn {
                if p != "h2" && p != "http/1.1" {
                    self.main_error(
                        scope,
                        format!("tls.alpn: unknown protocol {p:?}: expected h2 or http/1.1"),
                    );
                }
            }
            policy.alpn = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        }
        if let Some(auth) = &t.client_auth {
            match self.client_auth(auth) {
                Ok(compiled) => policy.client_auth = Some(compiled),
                Err(e) => self.main_error(scope, e),
            }
        }
        let mut certs = Vec::new();
        for c in &t.certificates {
            match self.certificate(&c.cert, &c.key) {
                Ok(loaded) => certs.push(Arc::new(loaded)),
                Err(e) => self.main_error(scope, e),
            }
        }
        if !t.self_signed.is_empty() {
            // After the configured certificates: their indexes stay as written.
            match self.inputs.self_signed.get(&t.self_signed) {
                Some(Ok(l)) => certs.push(l.clone()),
                Some(Err(e)) => self.main_error(scope, e.clone()),
                None => self.main_error(scope, "tls.self_signed: no certificate was made"),
            }
        }
        let total = t.certificates.len() + usize::from(!t.self_signed.is_empty());
        if let Some(i) = t.default_certificate {
            if i >= total {
                self.main_error(
                    scope,
                    format!("tls.default_certificate {i}: there are only {total} certificates"),
                );
            }
        }
        if certs.len() != total {
            return None;
        }
        let acme = t
            .acme
            .as_ref()
            .and_then(|a| self.acme_settings(scope, a, t.ocsp_stapling));
        if acme
            .as_ref()
            .is_some_and(|a| a.challenge == crate::acme::Challenge::TlsAlpn01)
        {
            policy.alpn.push(crate::challenge::ACME_TLS_ALPN.to_vec());
        }
        let ticket_keys = t.ticket_keys_file.as_ref().and_then(|f| {
            let path = self.loaded.resolve(f);
            let keys = self.blob(&path).and_then(|b| {
                crate::tickets::parse(&b).map_err(|e| format!("{}: {e}", path.display()))
            });
            match keys {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    self.main_error(scope, format!("tls.ticket_keys_file {e}"));
                    None
                }
            }
        });
        let stapled = if t.ocsp_stapling {
            self.ocsp_sources(scope, &certs)
        } else {
            Vec::new()
        };
        Some(TlsListener {
            store: Arc::new(crate::tls::CertStore::new(&certs, t.default_certificate)),
            certs,
            policy,
            stapled,
            acme,
            ticket_keys,
        })
    }

    /// Whether a gateway requires a verified client certificate (`client_auth:
    /// required`); one of the listeners that carry it must ask clients for one.
    pub(super) fn client_cert_required(
        &mut self,
        gw: &crate::config::GatewayConfig,
        listeners: &[Listener],
        mask: u64,
        scope: &str,
    ) -> bool {
        if gw.client_auth != Some(crate::config::ClientAuthMode::Required) {
            return false;
        }
        let asks = listeners.iter().enumerate().any(|(i, l)| {
            i < 64
                && mask & (1 << i) != 0
                && l.tls
                    .as_ref()
                    .is_some_and(|t| t.policy.client_auth.is_some())
        });
        if !asks {
            self.error(
                gw,
                scope,
                "client_auth: required, but no listener carrying this gateway asks for client certificates (set tls.client_auth on one)",
            );
        }
        true
    }

    /// Where each certificate's OCSP answers come from; a certificate without a
    /// responder or an issuer is served unstapled, with a warning.
    fn ocsp_sources(
        &mut self,
        scope: &str,
        certs: &[Arc<crate::tls::Loaded>],
    ) -> Vec<(Arc<crate::tls::Loaded>, Arc<crate::ocsp::Source>)> {
        let mut out = Vec::new();
        for c in certs {
            match crate::ocsp::Source::of(&c.key.cert) {
                Ok(source) => out.push((c.clone(), Arc::new(source))),
                Err(e) => self.warnings.push(
                    crate::diag::Diagnostic::new(
                        self.main,
                        format!(
                            "ocsp_stapling: certificate for {:?} is not stapled: {e}",
                            c.names.first().map_or("", String::as_str)
                        ),
                    )
                    .scoped(scope),
                ),
            }
        }
        out
    }

    /// A file the loader read, or what kept it from being read (naming the file).
    pub(super) fn blob(&self, path: &Path) -> Result<Arc<[u8]>, String> {
        match self.loaded.blobs.get(path) {
            Some(Ok(bytes)) => Ok(bytes.clone()),
            Some(Err(e)) => Err(format!("{}: {e}", path.display())),
            None => Err(format!("{}: not read", path.display())),
        }
    }

    /// A certificate and key from the files the loader read.
    pub(super) fn certificate(&self, cert: &str, key: &str) -> Result<crate::tls::Loaded, String> {
        let (cert_path, key_path) = (self.loaded.resolve(cert), self.loaded.resolve(key));
        let cert_pem = self
            .blob(&cert_path)
            .map_err(|e| format!("certificate {e}"))?;
        let key_pem = self.blob(&key_path).map_err(|e| format!("key {e}"))?;
        crate::tls::parse_pair(&cert_path, &cert_pem, &key_path, &key_pem)
    }

    /// A listener's `client_auth`: its CA (and CRL) compiled into a verifier.
    fn client_auth(
        &self,
        auth: &crate::config::ClientAuthConfig,
    ) -> Result<crate::client_cert::ClientAuth, String> {
        let ca_path = self.loaded.resolve(&auth.ca);
        let ca = self
            .blob(&ca_path)
            .map_err(|e| format!("client_auth.ca {e}"))?;
        let crl_path = auth.crl.as_ref().map(|c| self.loaded.resolve(c));
        let crl = match &crl_path {
            Some(p) => Some((
                p.as_path(),
                self.blob(p).map_err(|e| format!("client_auth.crl {e}"))?,
            )),
            None => None,
        };
        let required = auth.mode == crate::config::ClientAuthMode::Required;
        crate::client_cert::ClientAuth::new(
            (&ca_path, &ca),
            crl.as_ref().map(|(p, b)| (*p, &b[..])),
            required,
        )
    }
}
