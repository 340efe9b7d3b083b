//! Validation and compilation: a loaded config becomes a [`Snapshot`] or the full list of
//! what is wrong with it. Semantic errors name the file, gateway and route (and where
//! they stand in the file). This module runs the build and holds the checks on the
//! whole config; `listeners`, `routes` and `rules` hold the rest, by concern.

mod acme;
mod listeners;
mod policy;
mod routes;
mod rules;
mod upstream_tls;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;
use pingora::upstreams::peer::HttpPeer;
use rustc_hash::FxHashMap;

use super::{
    ClientLimits, Defaults, Entry, Gateway, GatewayParts, Listener, Snapshot, MAX_CHAIN_DEPTH,
};
use crate::access::Access;
use crate::config::load::Loaded;
use crate::config::units::{valid_name, NAME_PATTERN};
use crate::config::{Config, GatewayConfig, PortKind};
use crate::diag::{Diagnostic, Diagnostics};
use crate::metrics::RouteMetrics;
use crate::prepare::Inputs;
use crate::startup::{Bind, Startup};
use crate::vhost::{normalize_pattern, VhostTable};

/// Shared listeners a gateway can name (bits of `Gateway::listener_mask`).
const MAX_LISTENERS: usize = 64;
/// Instance weights above this are refused (they would only make schedules long).
const MAX_INSTANCE_WEIGHT: u32 = 1000;

/// Validates `loaded` whole and compiles it into a snapshot, or says everything that is
/// wrong. A pure function of its inputs: it reads no file, looks up no name, touches no
/// registry. Live state (health, metric series, TLS endpoints) is joined to the result
/// by the apply step (`reload`).
pub fn build(loaded: &Loaded, inputs: &Inputs) -> Result<Snapshot, Diagnostics> {
    let mut b = Builder {
        main: &loaded.main,
        errors: Diagnostics::default(),
        warnings: loaded.warnings.clone(),
        loaded,
        inputs,
        auths: FxHashMap::default(),
    };
    let config = &loaded.config;
    b.refuse_unsupported_globals(config);
    let defaults = b.defaults(config);
    let mut listeners = b.listeners(config, defaults.limits);
    let names = b.gateway_names(&config.gateways);
    let template = peer_template(&defaults);

    let mut vhosts = VhostTable::default();
    let mut ports: Vec<(u16, Entry)> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.bind.port(), Entry::Shared(i)))
        .collect();
    let mut gateways = Vec::with_capacity(config.gateways.len());
    let mut externals = Vec::new();
    for (index, gw) in config.gateways.iter().enumerate() {
        let scope = format!("gateway {:?}", gw.name);
        b.refuse_unsupported_gateway(gw, &scope);
        let listener_mask = b.listener_mask(gw, &listeners, &scope);
        let client_cert = b.client_cert_required(gw, &listeners, listener_mask, &scope);
        for host in &gw.virtual_hosts {
            match normalize_pattern(host) {
                Ok(pattern) => {
                    if let Some(other) = vhosts.insert(&pattern, index) {
                        b.error(
                            gw,
                            &scope,
                            format!(
                                "virtual host {host:?} is already used by gateway {:?}",
                                config.gateways[other].name
                            ),
                        );
                    }
                }
                Err(e) => b.error(gw, &scope, e),
            }
        }
        let port = gw.port.map(|p| p.port);
        if let Some(port) = port {
            if let Some((_, entry)) = ports.iter().find(|(p, _)| *p == port) {
                let holder = match entry {
                    Entry::Shared(l) => format!("listener {:?}", listeners[*l].name),
                    Entry::Dedicated(g) => format!("gateway {:?}", config.gateways[*g].name),
                };
                b.error(
                    gw,
                    &scope,
                    format!("port {port} is already used by {holder}"),
                );
            } else {
                ports.push((port, Entry::Dedicated(index)));
            }
        }
        let routes = b.routes(gw, &scope, &names, &template, &mut externals);
        gateways.push(Gateway::new(
            GatewayParts {
                hsts: gw.hsts.as_ref().and_then(|h| {
                    let mut v = format!("max-age={}", h.max_age);
                    if h.include_subdomains {
                        v.push_str("; includeSubDomains");
                    }
                    if h.preload {
                        v.push_str("; preload");
                    }
                    http::HeaderValue::from_str(&v).ok()
                }),
                rate: b.rate_limit(gw, &scope, gw.rate_limit.as_ref()),
                access: b.access(gw, &scope),
                config: gw.clone(),
                name: gw.name.as_str().into(),
                source: gw.source.clone(),
                sticky: gw.sticky,
                listener_mask,
                port,
                tcp: is_tcp(gw),
                client_cert,
            },
            routes,
        ));
    }
    b.acme_names(&mut listeners, &config.gateways, &gateways);
    b.check_chains(&config.gateways, &gateways);
    b.check_tcp_chains(&config.gateways, &gateways);
    if listeners.is_empty() && !ports.iter().any(|(_, e)| matches!(e, Entry::Dedicated(_))) {
        b.errors.push(Diagnostic::new(
            b.main,
            "nothing to serve: no listeners and no gateway with a port",
        ));
    }
    b.check_admin(config);
    let tracing = config
        .tracing
        .as_ref()
        .and_then(|t| match crate::trace::Settings::check(t) {
            Ok(s) => Some(s),
            Err(e) => {
                b.main_error("tracing", e);
                None
            }
        });
    locate(&mut b.warnings, loaded);
    if !b.errors.is_empty() {
        locate(&mut b.errors, loaded);
        return Err(b.errors);
    }
    let admin = config.admin.as_ref();
    let token = |f: Option<&String>| f.map(|f| loaded.resolve(f));
    let mut snapshot = Snapshot {
        vhosts,
        listeners,
        ports,
        externals,
        refresh: std::sync::Mutex::new(()),
        unrouted: RouteMetrics::unbound(),
        tracing,
        tracer: None,
        startup: Startup {
            binds: Vec::new(),
            admin: admin.and_then(|a| a.bind.parse().ok()),
            access_log: config.access_log.as_ref().map(|p| {
                if p == "stdout" {
                    p.clone()
                } else {
                    loaded.resolve(p).to_string_lossy().into_owned()
                }
            }),
            h2_idle_timeout: defaults.idle_timeout,
            config_source: config.config_source.clone(),
            state_dir: config.state_dir.clone(),
        },
        defaults,
        admin_token_file: token(admin.and_then(|a| a.token_file.as_ref())),
        admin_read_token_file: token(admin.and_then(|a| a.read_token_file.as_ref())),
        warnings: b.warnings,
        by_name: gateways
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.clone(), i))
            .collect(),
        gateways,
    };
    snapshot.startup.binds = snapshot
        .bind_addresses()
        .into_iter()
        .map(|(addr, what)| Bind {
            tls: snapshot
                .listeners
                .iter()
                .any(|l| l.bind == addr && l.tls.is_some()),
            addr,
            what,
        })
        .collect();
    Ok(snapshot)
}

struct Builder<'a> {
    main: &'a Path,
    errors: Diagnostics,
    warnings: Diagnostics,
    loaded: &'a Loaded,
    inputs: &'a Inputs,
    /// htpasswd files compiled once per (file, realm) however many routes use them.
    auths: FxHashMap<(std::path::PathBuf, String), Option<Arc<crate::auth::BasicAuth>>>,
}

/// Names the gateway and, when the scope names one, the route a diagnostic concerns.
fn about(d: Diagnostic, gw: &GatewayConfig, scope: &str) -> Diagnostic {
    let route = scope
        .split_once("route \"")
        .and_then(|(_, rest)| rest.rsplit_once('"'))
        .map(|(key, _)| key);
    d.about(&gw.name, route)
}

/// Gives semantic diagnostics the position of the gateway or route they name.
fn locate(diags: &mut Diagnostics, loaded: &Loaded) {
    crate::diag::locate(diags, |path| {
        loaded
            .files
            .iter()
            .find(|f| f.path == path)
            .map(|f| &*f.text)
    });
}

/// The longest timeout weir takes.
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// A CIDR, or one address as a /32 or /128.
fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// A stop that takes longer than this is a stuck process to a supervisor.
const MAX_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(3600);

fn is_tcp(gw: &GatewayConfig) -> bool {
    gw.port.is_some_and(|p| p.kind == PortKind::Tcp)
}

impl Builder<'_> {
    fn error(&mut self, gw: &GatewayConfig, scope: &str, message: impl Into<String>) {
        let d = about(
            Diagnostic::new(&gw.source, message).scoped(scope),
            gw,
            scope,
        );
        self.errors.push(d);
    }

    fn warn(&mut self, gw: &GatewayConfig, scope: &str, message: impl Into<String>) {
        let d = about(
            Diagnostic::new(&gw.source, message).scoped(scope),
            gw,
            scope,
        );
        self.warnings.push(d);
    }

    /// A `rate_limit:` compiled, or an error naming it.
    /// A gateway's `allow` and `deny` lists, each entry a CIDR or an address.
    fn access(&mut self, gw: &GatewayConfig, scope: &str) -> Option<Box<Access>> {
        if gw.allow.is_empty() && gw.deny.is_empty() {
            return None;
        }
        let mut lists = [Vec::new(), Vec::new()];
        for (key, given, list) in [("allow", &gw.allow, 0), ("deny", &gw.deny, 1)] {
            for cidr in given {
                match parse_net(cidr) {
                    Some(net) => lists[list].push(net),
                    None => self.error(
                        gw,
                        scope,
                        format!(
                            "{key}: invalid CIDR {cidr:?}: expected e.g. 10.0.0.0/8 or 127.0.0.1"
                        ),
                    ),
                }
            }
        }
        let [allow, deny] = lists;
        Some(Box::new(Access { allow, deny }))
    }

    fn rate_limit(
        &mut self,
        gw: &GatewayConfig,
        scope: &str,
        config: Option<&crate::config::RateLimitConfig>,
    ) -> Option<Arc<crate::ratelimit::RateLimit>> {
        match crate::ratelimit::RateLimit::new(config?) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                self.error(gw, scope, e);
                None
            }
        }
    }

    fn main_error(&mut self, scope: &str, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(self.main, message).scoped(scope));
    }

    fn refuse_unsupported_globals(&mut self, config: &Config) {
        if let Some(admin) = &config.admin {
            if admin.bind.parse::<SocketAddr>().is_err() {
                self.main_error(
                    "admin",
                    format!(
                        "invalid bind {:?}: expected IP:PORT such as 127.0.0.1:9900",
                        admin.bind
                    ),
                );
            }
        }
    }

    fn refuse_unsupported_gateway(&mut self, gw: &GatewayConfig, scope: &str) {
        if !valid_name(&gw.name) {
            self.error(
                gw,
                scope,
                format!("invalid gateway name: must match {NAME_PATTERN}"),
            );
        }
        if gw.routes.is_empty() {
            self.error(gw, scope, "gateway has no routes");
        }
        if is_tcp(gw) {
            self.check_tcp_gateway(gw, scope);
        }
    }

    fn defaults(&mut self, config: &Config) -> Defaults {
        let d = &config.defaults;
        let mut trusted = Vec::new();
        for cidr in &d.trusted_proxies {
            match parse_net(cidr) {
                Some(net) => trusted.push(net),
                None => self.main_error(
                    "defaults.trusted_proxies",
                    format!("invalid CIDR {cidr:?}: expected e.g. 10.0.0.0/8 or 127.0.0.1"),
                ),
            }
        }
        let t = &d.timeouts;
        for (key, value) in [
            ("connect", t.connect),
            ("request_header", t.request_header),
            ("upstream_read", t.upstream_read),
            ("idle", t.idle),
            ("client_body", t.client_body),
        ] {
            // Deadlines are instants: a bound keeps them representable.
            if value.0 > MAX_TIMEOUT {
                self.main_error(
                    &format!("defaults.timeouts.{key}"),
                    "a timeout must be at most 24h",
                );
            }
        }
        for (key, value) in [("drain", d.shutdown.drain), ("grace", d.shutdown.grace)] {
            if value.0 > MAX_SHUTDOWN {
                self.main_error(
                    &format!("defaults.shutdown.{key}"),
                    "a shutdown phase must be at most 1h",
                );
            }
        }
        if d.retries > 16 {
            self.main_error("defaults.retries", "retries must be 16 or fewer");
        }
        if t.client_body.0.is_zero() {
            self.main_error(
                "defaults.timeouts.client_body",
                "client_body must be more than 0 (it bounds how long a body may stall)",
            );
        }
        let mut base = ClientLimits::default();
        base.framing.body.idle = t.client_body.0;
        let limits = self.client_limits("defaults.limits", base, &d.limits);
        Defaults {
            limits,
            trusted_proxies: trusted,
            retries: d.retries,
            connect_timeout: d.timeouts.connect.0,
            request_header_timeout: d.timeouts.request_header.0,
            upstream_read_timeout: d.timeouts.upstream_read.0,
            idle_timeout: d.timeouts.idle.0,
            drain: d.shutdown.drain.0,
            grace: d.shutdown.grace.0,
        }
    }

    /// What `run` would refuse or warn about in `admin:` and `access_log:`, checked for
    /// `weir check` too.
    fn check_admin(&mut self, config: &Config) {
        if let Some(e) = &self.loaded.access_log_error {
            self.main_error("access_log", e.clone());
        }
        let Some(admin) = &config.admin else {
            return;
        };
        for (field, file) in [
            ("admin.token_file", &admin.token_file),
            ("admin.read_token_file", &admin.read_token_file),
        ] {
            if let Some(f) = file {
                let path = self.loaded.resolve(f);
                if !self.loaded.tokens_readable.contains(&path) {
                    self.main_error("admin", format!("{field} {}: cannot read", path.display()));
                }
            }
        }
        let open = admin
            .bind
            .parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        if open && admin.token_file.is_none() {
            self.warnings.push(
                Diagnostic::new(self.main, format!("admin listener on {} is not loopback-only and has no token_file: anyone who reaches it can read the API", admin.bind))
                    .scoped("admin"),
            );
        }
    }

    /// Gateway name → index; reports invalid and duplicate names.
    fn gateway_names<'c>(
        &mut self,
        gateways: &'c [Arc<GatewayConfig>],
    ) -> FxHashMap<&'c str, usize> {
        let mut names = FxHashMap::default();
        for (i, gw) in gateways.iter().enumerate() {
            if let Some(first) = names.insert(gw.name.as_str(), i) {
                let scope = format!("gateway {:?}", gw.name);
                self.error(
                    gw,
                    &scope,
                    format!(
                        "duplicate gateway name (also defined in {})",
                        gateways[first].source.display()
                    ),
                );
                names.insert(gw.name.as_str(), first);
            }
        }
        names
    }

    fn listener_mask(&mut self, gw: &GatewayConfig, listeners: &[Listener], scope: &str) -> u64 {
        let Some(named) = &gw.listeners else {
            return if listeners.len() >= 64 {
                u64::MAX
            } else {
                (1u64 << listeners.len()) - 1
            };
        };
        let mut mask = 0;
        for name in named {
            match listeners.iter().position(|l| &*l.name == name) {
                Some(i) => mask |= 1 << i,
                None => self.error(gw, scope, format!("unknown listener {name:?}")),
            }
        }
        mask
    }
}

/// The peer every upstream starts from: timeouts from `defaults`.
fn peer_template(d: &Defaults) -> HttpPeer {
    let mut peer = HttpPeer::new("127.0.0.1:1", false, String::new());
    peer.options.connection_timeout = Some(d.connect_timeout);
    peer.options.read_timeout = Some(d.upstream_read_timeout);
    peer.options.write_timeout = Some(d.upstream_read_timeout);
    peer.options.idle_timeout = Some(d.idle_timeout);
    peer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_from_str;
    use crate::snapshot::Target;

    fn try_build(yaml: &str) -> Result<Snapshot, Diagnostics> {
        let loaded = load_from_str(Path::new("t.yaml"), yaml)?;
        build(&loaded, &Inputs::default())
    }

    fn errors(yaml: &str) -> String {
        try_build(yaml)
            .expect_err("config should be refused")
            .to_string()
    }

    const LISTENER: &str = "listeners: { http: { bind: \"127.0.0.1:8080\" } }\n";

    #[test]
    fn weights_must_sum_and_name_the_sum() {
        let e = errors(&format!(
            "{LISTENER}gateways:\n- name: g\n  routes:\n    a: {{ weight: 90%, respond: {{status: 200}} }}\n    b: {{ weight: 20%, respond: {{status: 200}} }}\n"
        ));
        assert!(
            e.contains(
                "t.yaml:3:3: gateway \"g\": route weights must sum to 100% (or 0%), found 110%"
            ),
            "{e}"
        );
    }

    #[test]
    fn limits_merge_per_listener_and_refuse_what_cannot_be_honoured() {
        let s = try_build(
            "listeners:\n  a: { bind: \"127.0.0.1:8080\", limits: { max_headers: 10 } }\n  b: { bind: \"127.0.0.1:8081\" }\ndefaults: { limits: { max_uri_bytes: 1KiB, max_connections_per_client: 7 } }\n",
        )
        .unwrap();
        let (a, b) = (s.listeners[0].limits, s.listeners[1].limits);
        assert_eq!(
            (a.framing.headers, a.framing.uri_bytes, a.per_client),
            (10, 1024, 7)
        );
        assert_eq!((b.framing.headers, b.framing.header_bytes), (100, 32 << 10));
        for (limits, message) in [
            ("max_headers: 300", "max_headers must be from 1 to 256"),
            (
                "max_request_header_bytes: 2MiB",
                "max_request_header_bytes must be from 1KiB",
            ),
            (
                "max_uri_bytes: 64KiB",
                "max_uri_bytes must be less than max_request_header_bytes",
            ),
        ] {
            let e = errors(&format!(
                "{LISTENER}defaults: {{ limits: {{ {limits} }} }}\n"
            ));
            assert!(e.contains("defaults.limits") && e.contains(message), "{e}");
        }
        let e = errors(&format!(
            "{LISTENER}defaults: {{ timeouts: {{ request_header: 18446744073709551615ms }} }}\n"
        ));
        assert!(
            e.contains("defaults.timeouts.request_header: a timeout must be at most 24h"),
            "{e}"
        );
        let e = errors(&format!(
            "{LISTENER}defaults: {{ shutdown: {{ drain: 2h, grace: 61m }} }}\n"
        ));
        assert!(
            e.contains("defaults.shutdown.drain: a shutdown phase must be at most 1h"),
            "{e}"
        );
        assert!(e.contains("defaults.shutdown.grace"), "{e}");
        let ok = crate::config::load::load_from_str(
            std::path::Path::new("t.yaml"),
            &format!("{LISTENER}defaults: {{ shutdown: {{ drain: 0s }} }}\ngateways: []\n"),
        )
        .unwrap();
        let d = build(&ok, &Default::default()).unwrap().defaults;
        assert_eq!(
            (d.drain, d.grace),
            (
                std::time::Duration::ZERO,
                std::time::Duration::from_secs(30)
            )
        );
    }

    #[test]
    fn a_bad_rate_limit_names_its_gateway_and_route() {
        let e = errors(&format!(
            "{LISTENER}gateways:\n- name: g\n  routes:\n    r: {{ rate_limit: {{ requests: 5, per: 1s, by: path }}, respond: {{status: 200}} }}\n"
        ));
        assert!(
            e.contains("gateway \"g\", route \"r\": rate_limit.by"),
            "{e}"
        );
    }

    #[test]
    fn route_without_target_names_gateway_and_route() {
        let e = errors(&format!(
            "{LISTENER}gateways:\n- name: g\n  routes:\n    nowhere: {{}}\n"
        ));
        assert!(
            e.contains("gateway \"g\", route \"nowhere\": route has no instances"),
            "{e}"
        );
    }

    #[test]
    fn all_errors_reported() {
        let e = errors(&format!(
            "{LISTENER}gateways:\n- name: g\n  virtual_hosts: [a.com]\n  routes: {{ x: {{}} }}\n- name: g\n  virtual_hosts: [A.com]\n  routes: {{ y: {{ condition: \"user-agent ==\", respond: {{status: 200}} }} }}\n"
        ));
        assert!(e.contains("duplicate gateway name"), "{e}");
        assert!(
            e.contains("virtual host \"A.com\" is already used by gateway \"g\""),
            "{e}"
        );
        assert!(
            e.contains("route \"y\": invalid condition \"user-agent ==\" at column 14: expected a user agent"),
            "{e}"
        );
        assert!(e.contains("route \"x\""), "{e}");
    }

    #[test]
    fn chain_loop_detected() {
        let e = errors(&format!(
            "{LISTENER}gateways:\n- name: a\n  routes: {{ b: {{}} }}\n- name: b\n  routes: {{ c: {{}} }}\n- name: c\n  routes: {{ a: {{}} }}\n"
        ));
        assert!(e.contains("gateway chain loop: a -> b -> c -> a"), "{e}");
    }

    #[test]
    fn chain_resolves_in_process() {
        let s = try_build(&format!(
            "{LISTENER}gateways:\n- name: front\n  virtual_hosts: [f.test]\n  routes: {{ back: {{}} }}\n- name: back\n  routes: {{ r: {{ respond: {{status: 201}} }} }}\n"
        ))
        .unwrap();
        let headers = http::HeaderMap::new();
        let req = crate::condition::Request::new(b"f.test", "/", "GET", &headers, None);
        let mut writes = super::super::StickyWrites::default();
        let sel = s
            .select(Entry::Shared(0), b"f.test", &req, &mut writes)
            .unwrap();
        assert_eq!(sel.gateway, 1);
        assert!(matches!(s.route(sel).target, Target::Respond(_)));
    }

    #[test]
    fn invalid_fields_refused() {
        let e = errors(&format!(
            "{LISTENER}gateways:\n- name: t\n  port: 9000/tcp\n  balance: hash(path)\n  routes: {{ r: {{ respond: {{status: 200}} }} }}\n- name: h\n  virtual_hosts: [h.test]\n  routes: {{ t: {{}} }}\n"
        ));
        for want in [
            "gateway \"t\": route \"r\": a TCP gateway (port N/tcp) cannot have respond routes",
            "gateway \"t\": a TCP gateway (port N/tcp) cannot have balance hash(...)",
            "gateway \"h\": route \"t\": a chain cannot start or end at a TCP gateway",
        ] {
            assert!(e.contains(want), "missing {want}: {e}");
        }
        let e = errors(&format!(
            "{LISTENER}admin: {{ bind: \"nowhere\" }}\ngateways: []\n"
        ));
        assert!(e.contains("admin: invalid bind \"nowhere\""), "{e}");
        let e = errors(
            "listeners: { https: { bind: \"127.0.0.1:1\", tls: { certificates: [ { cert: none.pem, key: none.key } ], min_version: \"1.3\", alpn: [spdy] } }, http: { bind: \"127.0.0.1:2\", redirect_https: nope } }\ngateways: []\n",
        );
        for want in [
            "unknown protocol \"spdy\"",
            "none.pem: cannot read",
            "redirect_https: no listener \"nope\"",
        ] {
            assert!(e.contains(want), "missing {want}: {e}");
        }
    }

    #[test]
    fn bad_values_refused() {
        let e = errors(&format!(
            "{LISTENER}defaults: {{ trusted_proxies: [nope] }}\ngateways:\n- name: \"-bad\"\n  virtual_hosts: [\"a b\"]\n  listeners: [ghost]\n  routes: {{ r: {{ respond: {{status: 99}} }}, \"[a:b]\": {{}} }}\n"
        ));
        for want in [
            "invalid CIDR",
            "invalid gateway name",
            "invalid virtual host",
            "unknown listener \"ghost\"",
            "status 99",
            "invalid address",
        ] {
            assert!(e.contains(want), "missing {want}: {e}");
        }
    }

    #[test]
    fn port_conflicts() {
        let e = errors(&format!(
            "{LISTENER}gateways:\n- name: a\n  port: 8080\n  routes: {{ r: {{ respond: {{status: 200}} }} }}\n"
        ));
        assert!(
            e.contains("port 8080 is already used by listener \"http\""),
            "{e}"
        );
    }

    #[test]
    fn nothing_to_serve() {
        let e = errors("gateways: []\n");
        assert!(e.contains("nothing to serve"), "{e}");
    }

    #[test]
    fn remainder_weights_and_summary() {
        let s = try_build(&format!(
            "{LISTENER}gateways:\n- name: g\n  virtual_hosts: [g.test]\n  routes:\n    a: {{ respond: {{status: 200}} }}\n    b: {{ respond: {{status: 200}} }}\n    c: {{ instances: [\"127.0.0.1:9\", {{host: 127.0.0.1, port: 10, weight: 3}}] }}\n"
        ))
        .unwrap();
        let w: Vec<u32> = s.gateways[0].routes.iter().map(|r| r.weight).collect();
        assert_eq!(w, vec![3300, 3300, 3400]);
    }
}
