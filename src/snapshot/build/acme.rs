//! A TLS listener's `acme`: its settings checked, and the names it issues for (the
//! exact virtual hosts of the gateways the listener carries).

use std::net::IpAddr;
use std::sync::Arc;

use super::Builder;
use crate::acme::{Challenge, Settings};
use crate::config::{AcmeChallenge, AcmeConfig, GatewayConfig};
use crate::snapshot::{Gateway, Listener};

impl Builder<'_> {
    /// The settings of `tls.acme`, without names yet ([`Builder::acme_names`]).
    pub(super) fn acme_settings(
        &mut self,
        scope: &str,
        a: &AcmeConfig,
        ocsp_stapling: bool,
    ) -> Option<Settings> {
        let scope = format!("{scope}: tls.acme");
        let mut ok = true;
        if !(a.directory.starts_with("https://") || a.directory.starts_with("http://")) {
            self.main_error(
                &scope,
                format!("directory {:?} must be an http(s):// URL", a.directory),
            );
            ok = false;
        }
        if a.renew_before.0.is_zero() {
            self.main_error(&scope, "renew_before must be more than 0");
            ok = false;
        }
        if let Some(email) = &a.email {
            if !email.contains('@') || email.chars().any(|c| c.is_whitespace() || c == ',') {
                self.main_error(&scope, format!("email {email:?} is not an address"));
                ok = false;
            }
        }
        let ca_file = a.ca_file.as_ref().map(|f| self.loaded.resolve(f));
        if let Some(path) = &ca_file {
            let pem_certs = self
                .blob(path)
                .and_then(|pem| crate::pem::certificates(path, &pem).map(|_| ()));
            if let Err(e) = pem_certs {
                self.main_error(&scope, format!("ca_file {e}"));
                ok = false;
            }
        }
        ok.then(|| Settings {
            directory: a.directory.clone(),
            email: a.email.clone(),
            challenge: match a.challenge {
                AcmeChallenge::Http01 => Challenge::Http01,
                AcmeChallenge::TlsAlpn01 => Challenge::TlsAlpn01,
            },
            ca_file,
            renew_before: a.renew_before.0,
            state_dir: self.loaded.resolve(&a.state_dir),
            names: Vec::new(),
            ocsp_stapling,
        })
    }

    /// Gives each ACME listener the exact names of the gateways it carries. A wildcard
    /// needs DNS-01, which weir does not do: it must be covered by a configured
    /// certificate. IP addresses are refused too.
    pub(super) fn acme_names(
        &mut self,
        listeners: &mut [Listener],
        configs: &[Arc<GatewayConfig>],
        gateways: &[Gateway],
    ) {
        for (i, l) in listeners.iter_mut().enumerate() {
            let Some(tls) = &mut l.tls else {
                continue;
            };
            let Some(acme) = &mut tls.acme else {
                continue;
            };
            let scope = format!("listener {:?}: tls.acme", l.name);
            let mut names = Vec::new();
            for (gw, g) in configs.iter().zip(gateways) {
                if i >= 64 || g.listener_mask & (1 << i) == 0 || g.tcp {
                    continue;
                }
                for host in &gw.virtual_hosts {
                    let name = host.trim_end_matches('.').to_ascii_lowercase();
                    if name.starts_with("*.") {
                        if !tls.certs.iter().any(|c| c.names.contains(&name)) {
                            self.errors.push(
                                crate::diag::Diagnostic::new(
                                    self.main,
                                    format!(
                                        "gateway {:?}: wildcard {host:?} cannot be issued by ACME here (it needs DNS-01): give the listener a certificate for it",
                                        gw.name
                                    ),
                                )
                                .scoped(&scope),
                            );
                        }
                        continue;
                    }
                    if name.parse::<IpAddr>().is_ok() {
                        self.main_error(
                            &scope,
                            format!("gateway {:?}: {host:?} is an IP address: ACME here issues for DNS names", gw.name),
                        );
                        continue;
                    }
                    names.push(name);
                }
            }
            names.sort();
            names.dedup();
            acme.names = names;
        }
    }
}
