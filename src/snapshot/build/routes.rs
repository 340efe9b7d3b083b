//! Routes: weights, conditions and strength, rewrites, and what each route key points
//! at: a pool of instances (with balancing, health checks and sticky identities), an
//! external target, a direct response, or another gateway.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::upstreams::peer::HttpPeer;
use rustc_hash::FxHashMap;

use super::{is_tcp, Builder, MAX_INSTANCE_WEIGHT};
use crate::balance::Picker;
use crate::condition::{self, Expr};
use crate::config::units::{split_host_port, InstanceSpec, FULL};
use crate::config::{Balance, GatewayConfig, RouteConfig, Sticky};
use crate::health::ActiveCheck;
use crate::metrics::RouteMetrics;
use crate::mirror::{Mirror, MirrorTarget};
use crate::rewrite::{self, Rewrite};
use crate::schedule::{effective_weights, Schedule};
use crate::snapshot::{External, Pool, Respond, Route, Target};
use crate::sticky::{self, SetCookie};
use crate::upstream::Upstream;

impl Builder<'_> {
    pub(super) fn routes(
        &mut self,
        gw: &GatewayConfig,
        scope: &str,
        names: &FxHashMap<&str, usize>,
        template: &HttpPeer,
        externals: &mut Vec<Arc<External>>,
    ) -> Vec<Route> {
        let given: Vec<Option<u32>> = gw
            .routes
            .values()
            .map(|r| r.weight.map(|w| w.basis_points()))
            .collect();
        let weights = match effective_weights(&given) {
            Ok(w) => w,
            Err(sum) => {
                self.error(
                    gw,
                    scope,
                    format!(
                        "route weights must sum to 100% (or 0%), found {}",
                        crate::config::Percent(sum)
                    ),
                );
                vec![0; given.len()]
            }
        };
        let mut routes = Vec::with_capacity(gw.routes.len());
        for ((key, route), weight) in gw.routes.iter().zip(weights) {
            let scope = format!("{scope}, route {key:?}");
            self.check_route_fields(gw, route, &scope);
            let (condition, strength, rewrites) = self.route_logic(gw, route, &scope);
            let policy = self.route_policy(gw, route, &scope, template);
            if let Some(target) = self.target(gw, key, route, &scope, names, &policy.peer) {
                if let Target::External(e) = &target {
                    externals.push(e.clone());
                }
                let sticky_id = sticky::id(&[&gw.name, key]);
                let cookie = sticky::cookie_name(&gw.name);
                let set_cookie = (gw.sticky == Sticky::Route)
                    .then(|| SetCookie::new(&cookie, &sticky::value(sticky_id, None)))
                    .flatten();
                routes.push(Route {
                    key: key.as_str().into(),
                    weight,
                    target,
                    condition,
                    strength,
                    rewrites,
                    sticky_id,
                    set_cookie,
                    metrics: RouteMetrics::unbound(),
                    max_body: route
                        .max_body_bytes
                        .or(gw.max_body_bytes)
                        .map_or(0, |b| b.0),
                    rate: self.rate_limit(gw, &scope, route.rate_limit.as_ref()),
                    request_headers: policy.request_headers,
                    response_headers: policy.response_headers,
                    retry: policy.retry,
                    deadline: policy.deadline,
                    outlier: policy.outlier,
                    auth: policy.auth,
                    compression: policy.compression,
                    mirror: None,
                });
            }
        }
        self.mirrors(gw, scope, template, externals, &mut routes);
        routes
    }

    /// Compiles each route's `mirror:`, once all routes of the gateway are known.
    fn mirrors(
        &mut self,
        gw: &GatewayConfig,
        scope: &str,
        template: &HttpPeer,
        externals: &mut Vec<Arc<External>>,
        routes: &mut [Route],
    ) {
        for (key, config) in &gw.routes {
            let Some(m) = &config.mirror else { continue };
            let scope = format!("{scope}, route {key:?}");
            let Some(at) = routes.iter().position(|r| &*r.key == key) else {
                continue;
            };
            let named = routes.iter().position(|r| *r.key == *m.route);
            let target = match named {
                Some(i) if i == at => {
                    self.error(gw, &scope, "mirror.route: a route cannot mirror itself");
                    continue;
                }
                Some(i) => match routes[i].target {
                    Target::Pool(_) | Target::External(_) => MirrorTarget::Route(i),
                    _ => {
                        self.error(
                            gw,
                            &scope,
                            format!("mirror.route {:?} has no instances to copy to", m.route),
                        );
                        continue;
                    }
                },
                None => match m.route.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
                    Some(inner) => match self.external(gw, inner, &scope, template) {
                        Some(Target::External(e)) => {
                            externals.push(e.clone());
                            MirrorTarget::External(e)
                        }
                        _ => continue,
                    },
                    None => {
                        self.error(
                            gw,
                            &scope,
                            format!(
                                "mirror.route {:?} is neither a route of this gateway nor [host:port]",
                                m.route
                            ),
                        );
                        continue;
                    }
                },
            };
            if m.percent.basis_points() > crate::config::units::FULL {
                self.error(gw, &scope, "mirror.percent must be at most 100%");
            }
            routes[at].mirror = Some(Box::new(Mirror::new(
                target,
                m.percent.basis_points(),
                m.max_body_bytes.0,
            )));
        }
    }

    pub(super) fn check_route_fields(&mut self, gw: &GatewayConfig, r: &RouteConfig, scope: &str) {
        if r.condition_strength.is_some() && r.condition.is_none() {
            self.error(gw, scope, "condition_strength needs a condition");
        }
        if r.balance.is_some() && r.instances.is_empty() {
            self.error(gw, scope, "balance needs instances to balance over");
        }
    }

    /// The compiled condition, strength and rewrites of a route.
    pub(super) fn route_logic(
        &mut self,
        gw: &GatewayConfig,
        r: &RouteConfig,
        scope: &str,
    ) -> (Option<Expr>, Schedule, Vec<Rewrite>) {
        let condition = r
            .condition
            .as_ref()
            .and_then(|text| match condition::parse(text) {
                Ok(e) => {
                    if let Some(hint) = condition::lint(text) {
                        self.warn(gw, scope, format!("condition {text:?}: {hint}"));
                    }
                    Some(e)
                }
                Err(e) => {
                    self.error(gw, scope, format!("invalid condition {text:?} at {e}"));
                    None
                }
            });
        // Default strength: 100% with a condition.
        let strength = r.condition_strength.map_or(FULL, |p| p.basis_points());
        let strength = Schedule::new(&[strength, FULL - strength]);
        let mut rewrites = Vec::new();
        for rw in &r.rewrites {
            match rewrite::compile(&rw.path) {
                Ok(c) => rewrites.push(c),
                Err(e) => self.error(gw, scope, e),
            }
        }
        (condition, strength, rewrites)
    }

    /// What a route key and body point at (the route key forms).
    pub(super) fn target(
        &mut self,
        gw: &GatewayConfig,
        key: &str,
        route: &RouteConfig,
        scope: &str,
        names: &FxHashMap<&str, usize>,
        template: &HttpPeer,
    ) -> Option<Target> {
        let has_body = !route.instances.is_empty() || route.respond.is_some();
        if route.health_check.is_some() && route.instances.is_empty() {
            self.error(gw, scope, "health_check needs instances to check");
        }
        if !route.instances.is_empty() && route.respond.is_some() {
            self.error(
                gw,
                scope,
                "a route has either instances or respond, not both",
            );
            return None;
        }
        if let Some(inner) = key.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
            if has_body {
                self.error(
                    gw,
                    scope,
                    "an external [host:port] route takes no instances or respond",
                );
                return None;
            }
            return self.external(gw, inner, scope, template);
        }
        if let Some(respond) = &route.respond {
            return self
                .respond(gw, respond, scope)
                .map(|r| Target::Respond(Box::new(r)));
        }
        if !route.instances.is_empty() {
            return self.pool(gw, key, route, scope, template).map(Target::Pool);
        }
        match names.get(key) {
            Some(&g) => Some(Target::Chain(g)),
            None => {
                self.error(
                    gw,
                    scope,
                    format!("route has no instances, no respond, and no gateway is named {key:?}"),
                );
                None
            }
        }
    }

    pub(super) fn external(
        &mut self,
        gw: &GatewayConfig,
        inner: &str,
        scope: &str,
        template: &HttpPeer,
    ) -> Option<Target> {
        let (host, port) = match split_host_port(inner) {
            Ok(hp) => hp,
            Err(e) => {
                self.error(gw, scope, e);
                return None;
            }
        };
        let addrs: Vec<SocketAddr> = match self.inputs.addresses(&host) {
            Some(ips) => ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            None => {
                self.warn(
                    gw,
                    scope,
                    format!("{host:?} does not resolve; the route takes no traffic until it does"),
                );
                Vec::new()
            }
        };
        let external = External {
            name: inner.into(),
            host,
            port,
            peers: ArcSwap::from_pointee(Vec::new()),
            cursor: AtomicUsize::new(0),
            template: template.clone(),
        };
        external.set_addresses(addrs);
        Some(Target::External(Arc::new(external)))
    }

    pub(super) fn pool(
        &mut self,
        gw: &GatewayConfig,
        key: &str,
        route: &RouteConfig,
        scope: &str,
        template: &HttpPeer,
    ) -> Option<Pool> {
        let mut instances = Vec::with_capacity(route.instances.len());
        let mut weights = Vec::with_capacity(route.instances.len());
        for (index, inst) in route.instances.iter().enumerate() {
            let spec: &InstanceSpec = &inst.0;
            let label = spec
                .name
                .clone()
                .unwrap_or_else(|| format!("{}:{}", spec.host, spec.port));

            if spec.weight > MAX_INSTANCE_WEIGHT {
                self.error(
                    gw,
                    scope,
                    format!(
                        "instance {label:?}: weight {} is over {MAX_INSTANCE_WEIGHT}",
                        spec.weight
                    ),
                );
            }
            let resolved = self.inputs.addresses(&spec.host);
            if resolved.is_none() {
                self.warn(
                    gw,
                    scope,
                    format!(
                        "instance {label:?}: {:?} does not resolve; it stays down until it does",
                        spec.host
                    ),
                );
            }
            // An unresolved instance keeps a placeholder address it is never sent to.
            let ip = resolved
                .as_ref()
                .map_or(IpAddr::from([0, 0, 0, 0]), |a| a[0]);
            let mut peer = template.clone();
            peer._address =
                pingora::protocols::l4::socket::SocketAddr::Inet(SocketAddr::new(ip, spec.port));
            if spec.h2 {
                // HTTP/2 with prior knowledge (h2c), or by ALPN over TLS.
                peer.options.alpn = pingora::protocols::ALPN::H2;
            }
            if let Some(tls) = &spec.tls {
                self.upstream_tls(gw, scope, &spec.host, tls, &mut peer);
            }
            let name = format!("{}:{}", spec.host, spec.port);
            let route_id = sticky::id(&[&gw.name, key]);
            // Named instances keep their cookie when their address changes.
            let identity = spec.name.as_deref().unwrap_or(&name);
            let sticky_id = sticky::id(&[&gw.name, key, identity]);
            let cookie = sticky::cookie_name(&gw.name);
            let set_cookie = (gw.sticky == Sticky::Instance)
                .then(|| SetCookie::new(&cookie, &sticky::value(route_id, Some(sticky_id))))
                .flatten();
            instances.push(Upstream {
                health: Arc::default(),
                resolved: resolved.is_some(),
                name: name.into(),
                index,
                weight: spec.weight,
                peer,
                sticky_id,
                set_cookie,
            });
            weights.push(spec.weight);
        }
        if instances.len() != route.instances.len() {
            return None;
        }
        if weights.iter().all(|w| *w == 0) {
            self.error(gw, scope, "every instance has weight 0");
        }
        let tls = instances
            .iter()
            .map(|u: &Upstream| &u.peer)
            .find(|p| p.scheme == pingora::upstreams::peer::Scheme::HTTPS);
        let check = match route
            .health_check
            .as_ref()
            .map(|c| ActiveCheck::compile(c, tls))
        {
            Some(Ok(c)) => Some(Arc::new(c)),
            Some(Err(e)) => {
                self.error(gw, scope, e);
                return None;
            }
            None => None,
        };
        let balance = route
            .balance
            .as_ref()
            .or(gw.balance.as_ref())
            .unwrap_or(if is_tcp(gw) {
                // Long-lived connections: spread by how many each instance holds.
                &Balance::LeastConn
            } else {
                &Balance::RoundRobin
            });
        Some(Pool {
            schedule: Schedule::new(&weights),
            picker: Picker::new(balance, &instances),
            instances,
            check,
        })
    }

    pub(super) fn respond(
        &mut self,
        gw: &GatewayConfig,
        r: &crate::config::RespondConfig,
        scope: &str,
    ) -> Option<Respond> {
        if !(200..=599).contains(&r.status) {
            self.error(
                gw,
                scope,
                format!("respond: status {} is not in 200..599", r.status),
            );
            return None;
        }
        let mut header = match ResponseHeader::build(r.status, Some(r.headers.len() + 2)) {
            Ok(h) => h,
            Err(e) => {
                self.error(gw, scope, format!("respond: {e}"));
                return None;
            }
        };
        let mut ok = true;
        for (name, value) in &r.headers {
            let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && http::HeaderValue::from_str(value).is_ok();
            let framing = name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding");
            if !valid || framing {
                self.error(
                    gw,
                    scope,
                    format!("respond: invalid header {name:?}: {value:?}"),
                );
                ok = false;
                continue;
            }
            let _ = header.append_header(name.clone(), value.as_str());
        }
        let _ = header.insert_header(http::header::CONTENT_LENGTH, r.body.len());
        if !r
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
        {
            let _ = header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
        }
        ok.then(|| Respond {
            header,
            body: Bytes::from(r.body.clone()),
        })
    }
}
