//! A route's traffic policy: header rules, timeouts (as the route's own peer template)
//! and its total deadline, and what is retried.

use std::sync::Arc;
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use super::{Builder, MAX_TIMEOUT};
use crate::auth::BasicAuth;
use crate::compress::Compression;
use crate::config::{BasicAuthConfig, GatewayConfig, HeaderRulesConfig, RouteConfig};
use crate::headers::Rules;
use crate::outlier::Outlier;
use crate::retry::RetryPolicy;

pub(super) struct RoutePolicy {
    /// The peer the route's instances start from: the defaults' timeouts, or the route's.
    pub peer: HttpPeer,
    pub request_headers: Option<Box<Rules>>,
    pub response_headers: Option<Box<Rules>>,
    pub retry: RetryPolicy,
    pub deadline: Option<Duration>,
    pub outlier: Option<Outlier>,
    pub auth: Option<Arc<BasicAuth>>,
    pub compression: Option<Box<Compression>>,
}

impl Builder<'_> {
    pub(super) fn route_policy(
        &mut self,
        gw: &GatewayConfig,
        route: &RouteConfig,
        scope: &str,
        template: &HttpPeer,
    ) -> RoutePolicy {
        let mut peer = template.clone();
        let mut deadline = None;
        if let Some(t) = &route.timeouts {
            for (key, value) in [
                ("connect", t.connect),
                ("upstream_read", t.upstream_read),
                ("request", t.request),
            ] {
                match value {
                    Some(d) if d.0.is_zero() || d.0 > MAX_TIMEOUT => self.error(
                        gw,
                        scope,
                        format!("timeouts.{key}: a timeout must be more than 0 and at most 24h"),
                    ),
                    _ => {}
                }
            }
            if let Some(c) = t.connect {
                peer.options.connection_timeout = Some(c.0);
            }
            if let Some(r) = t.upstream_read {
                peer.options.read_timeout = Some(r.0);
                peer.options.write_timeout = Some(r.0);
            }
            deadline = t.request.map(|d| d.0);
        }
        let retry = match &route.retries {
            None => RetryPolicy::default_for(self.loaded.config.defaults.retries),
            Some(c) => RetryPolicy::compile(c).unwrap_or_else(|e| {
                self.error(gw, scope, e);
                RetryPolicy::default_for(0)
            }),
        };
        if route.outlier.is_some() && route.instances.is_empty() {
            self.error(gw, scope, "outlier needs instances to eject");
        }
        let outlier = route
            .outlier
            .as_ref()
            .and_then(|c| match Outlier::compile(c) {
                Ok(o) => Some(o),
                Err(e) => {
                    self.error(gw, scope, e);
                    None
                }
            });
        let auth = route
            .basic_auth
            .as_ref()
            .or(gw.basic_auth.as_ref())
            .and_then(|c| self.basic_auth(gw, scope, c));
        let compression = route
            .compression
            .as_ref()
            .or(gw.compression.as_ref())
            .and_then(|c| match Compression::compile(c) {
                Ok(c) => Some(Box::new(c)),
                Err(e) => {
                    self.error(gw, scope, e);
                    None
                }
            });
        RoutePolicy {
            compression,
            auth,
            outlier,
            peer,
            request_headers: self.header_rules(
                gw,
                scope,
                "request_headers",
                [gw.request_headers.as_ref(), route.request_headers.as_ref()],
            ),
            response_headers: self.header_rules(
                gw,
                scope,
                "response_headers",
                [
                    gw.response_headers.as_ref(),
                    route.response_headers.as_ref(),
                ],
            ),
            retry,
            deadline,
        }
    }

    /// A `basic_auth:` compiled from its htpasswd file (read with the config).
    fn basic_auth(
        &mut self,
        gw: &GatewayConfig,
        scope: &str,
        c: &BasicAuthConfig,
    ) -> Option<Arc<BasicAuth>> {
        let path = self.loaded.resolve(&c.users_file);
        let realm = c.realm.clone().unwrap_or_else(|| gw.name.clone());
        let key = (path, realm);
        if let Some(done) = self.auths.get(&key) {
            return done.clone();
        }
        let parsed = match self.loaded.blobs.get(&key.0) {
            Some(Ok(text)) => BasicAuth::parse(text, &key.1),
            Some(Err(e)) => Err(e.clone()),
            None => Err("was not read".into()),
        };
        let auth = match parsed {
            Ok(a) => Some(Arc::new(a)),
            Err(e) => {
                self.error(
                    gw,
                    scope,
                    format!("basic_auth.users_file {}: {e}", key.0.display()),
                );
                None
            }
        };
        self.auths.insert(key, auth.clone());
        auth
    }

    /// A route's header rules in one direction, its gateway's first; errors name it.
    fn header_rules(
        &mut self,
        gw: &GatewayConfig,
        scope: &str,
        which: &str,
        blocks: [Option<&HeaderRulesConfig>; 2],
    ) -> Option<Box<Rules>> {
        let mut errors = Vec::new();
        let rules = Rules::compile(which, &blocks, &mut errors);
        for e in errors {
            self.error(gw, scope, e);
        }
        rules
    }
}
