//! Validation and compilation: a loaded config becomes a [`Snapshot`] or the full list of
//! what is wrong with it. Semantic errors name the file, gateway and route.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use ipnet::IpNet;
use pingora::http::ResponseHeader;
use pingora::upstreams::peer::HttpPeer;
use rustc_hash::FxHashMap;

use super::{
    Defaults, Entry, External, Gateway, GatewayParts, Listener, Pool, Respond, Route, Snapshot,
    Target, TlsListener, MAX_CHAIN_DEPTH,
};
use crate::balance::Picker;
use crate::condition::{self, Expr};
use crate::config::load::Loaded;
use crate::config::units::{split_host_port, InstanceSpec, FULL};
use crate::config::{
    Balance, Config, GatewayConfig, HealthProtocol, PortKind, RouteConfig, Sticky,
};
use crate::diag::{Diagnostic, Diagnostics};
use crate::health::ActiveCheck;
use crate::metrics::RouteMetrics;
use crate::prepare::Inputs;
use crate::rewrite::{self, Rewrite};
use crate::schedule::{effective_weights, Schedule};
use crate::startup::{Bind, Startup};
use crate::sticky::{self, SetCookie};
use crate::upstream::Upstream;
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
    };
    let config = &loaded.config;
    b.refuse_unsupported_globals(config);
    let defaults = b.defaults(config);
    let listeners = b.listeners(config);
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
                config: Arc::new(gw.clone()),
                name: gw.name.as_str().into(),
                source: gw.source.clone(),
                sticky: gw.sticky,
                listener_mask,
                port,
                tcp: is_tcp(gw),
            },
            routes,
        ));
    }
    b.check_chains(&config.gateways, &gateways);
    b.check_tcp_chains(&config.gateways, &gateways);
    if listeners.is_empty() && !ports.iter().any(|(_, e)| matches!(e, Entry::Dedicated(_))) {
        b.errors.push(Diagnostic::new(
            b.main,
            "nothing to serve: no listeners and no gateway with a port",
        ));
    }
    b.check_admin(config);
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

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

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
                "invalid gateway name: must match ^[A-Za-z0-9][A-Za-z0-9._:-]*$",
            );
        }
        if gw.routes.is_empty() {
            self.error(gw, scope, "gateway has no routes");
        }
        if is_tcp(gw) {
            self.check_tcp_gateway(gw, scope);
        }
    }

    /// Chains stay within one kind: HTTP gateways chain to HTTP gateways only, and TCP
    /// gateways do not chain.
    fn check_tcp_chains(&mut self, configs: &[GatewayConfig], gateways: &[Gateway]) {
        for (gw, g) in configs.iter().zip(gateways) {
            for r in &g.routes {
                if let Target::Chain(next) = r.target {
                    if g.tcp || gateways[next].tcp {
                        let scope = format!("gateway {:?}: route {:?}", g.name, r.key);
                        self.error(gw, &scope, "a chain cannot start or end at a TCP gateway");
                    }
                }
            }
        }
    }

    /// What a TCP gateway cannot have: everything that reads HTTP.
    fn check_tcp_gateway(&mut self, gw: &GatewayConfig, scope: &str) {
        let refuse = |b: &mut Self, what: &str| {
            b.error(
                gw,
                scope,
                format!("a TCP gateway (port N/tcp) cannot have {what}"),
            );
        };
        if !gw.virtual_hosts.is_empty() || gw.listeners.is_some() {
            refuse(self, "virtual_hosts or listeners (it has only its port)");
        }
        if gw.sticky != Sticky::None {
            refuse(self, "sticky (cookies are HTTP)");
        }
        if gw.hsts.is_some() {
            refuse(self, "hsts");
        }
        let hashed = |b: &Option<Balance>| {
            matches!(
                b,
                Some(Balance::HashHeader(_) | Balance::HashCookie(_) | Balance::HashPath)
            )
        };
        if hashed(&gw.balance) {
            refuse(self, "balance hash(...) (use source_ip)");
        }
        for (key, r) in &gw.routes {
            let scope = format!("{scope}: route {key:?}");
            let mut refuse = |what: &str| {
                self.error(
                    gw,
                    &scope,
                    format!("a TCP gateway (port N/tcp) cannot have {what}"),
                );
            };
            if r.condition.is_some() || r.condition_strength.is_some() {
                refuse("conditions");
            }
            if !r.rewrites.is_empty() {
                refuse("rewrites");
            }
            if r.respond.is_some() {
                refuse("respond routes");
            }
            if hashed(&r.balance) {
                refuse("balance hash(...) (use source_ip)");
            }
            if r.instances.iter().any(|i| i.0.h2) {
                refuse("h2 instances");
            }
            if r.health_check
                .as_ref()
                .is_some_and(|c| c.protocol == HealthProtocol::Http)
            {
                refuse("HTTP health checks (use protocol: tcp)");
            }
        }
    }

    fn defaults(&mut self, config: &Config) -> Defaults {
        let d = &config.defaults;
        let mut trusted = Vec::new();
        for cidr in &d.trusted_proxies {
            let parsed = cidr
                .parse::<IpNet>()
                .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted.push(net),
                Err(_) => self.main_error(
                    "defaults.trusted_proxies",
                    format!("invalid CIDR {cidr:?}: expected e.g. 10.0.0.0/8 or 127.0.0.1"),
                ),
            }
        }
        if d.retries > 16 {
            self.main_error("defaults.retries", "retries must be 16 or fewer");
        }
        Defaults {
            trusted_proxies: trusted,
            retries: d.retries,
            connect_timeout: d.timeouts.connect.0,
            request_header_timeout: d.timeouts.request_header.0,
            upstream_read_timeout: d.timeouts.upstream_read.0,
            idle_timeout: d.timeouts.idle.0,
        }
    }

    fn listeners(&mut self, config: &Config) -> Vec<Listener> {
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
    fn tls_listener(&mut self, scope: &str, t: &crate::config::TlsConfig) -> Option<TlsListener> {
        if t.certificates.is_empty() && t.self_signed.is_empty() {
            self.main_error(scope, "tls: no certificates (and no self_signed names)");
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
        Some(TlsListener {
            store: Arc::new(crate::tls::CertStore::new(&certs, t.default_certificate)),
            certs,
            policy,
        })
    }

    /// A certificate and key from the files the loader read.
    fn certificate(&self, cert: &str, key: &str) -> Result<crate::tls::Loaded, String> {
        let (cert_path, key_path) = (self.loaded.resolve(cert), self.loaded.resolve(key));
        let blob = |path: &Path, what: &str| match self.loaded.blobs.get(path) {
            Some(Ok(bytes)) => Ok(bytes.clone()),
            Some(Err(e)) => Err(format!("{what} {}: {e}", path.display())),
            None => Err(format!("{what} {}: not read", path.display())),
        };
        let cert_pem = blob(&cert_path, "certificate")?;
        let key_pem = blob(&key_path, "key")?;
        crate::tls::parse_pair(&cert_path, &cert_pem, &key_path, &key_pem)
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
    fn gateway_names<'c>(&mut self, gateways: &'c [GatewayConfig]) -> FxHashMap<&'c str, usize> {
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

    fn routes(
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
            if let Some(target) = self.target(gw, key, route, &scope, names, template) {
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
                });
            }
        }
        routes
    }

    fn check_route_fields(&mut self, gw: &GatewayConfig, r: &RouteConfig, scope: &str) {
        if r.condition_strength.is_some() && r.condition.is_none() {
            self.error(gw, scope, "condition_strength needs a condition");
        }
        if r.balance.is_some() && r.instances.is_empty() {
            self.error(gw, scope, "balance needs instances to balance over");
        }
    }

    /// The compiled condition, strength and rewrites of a route.
    fn route_logic(
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
    fn target(
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

    fn external(
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

    fn pool(
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
                // HTTP/2 with prior knowledge (h2c): plain TCP has no ALPN to negotiate it.
                peer.options.alpn = pingora::protocols::ALPN::H2;
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
        let check = match route.health_check.as_ref().map(ActiveCheck::compile) {
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

    fn respond(
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

    /// Refuses chain loops and over-deep chains, naming the cycle.
    fn check_chains(&mut self, configs: &[GatewayConfig], gateways: &[Gateway]) {
        if configs.len() != gateways.len() {
            return;
        }
        let edges: Vec<Vec<usize>> = gateways
            .iter()
            .map(|g| {
                g.routes
                    .iter()
                    .filter_map(|r| match r.target {
                        Target::Chain(n) => Some(n),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; gateways.len()];
        let mut reported = false;
        for start in 0..gateways.len() {
            let mut path = Vec::new();
            if let Some(cycle) = find_cycle(start, &edges, &mut state, &mut path) {
                if !reported {
                    let names: Vec<&str> = cycle.iter().map(|&i| &*gateways[i].name).collect();
                    let first = &configs[cycle[0]];
                    self.error(
                        first,
                        &format!("gateway {:?}", first.name),
                        format!("gateway chain loop: {}", names.join(" -> ")),
                    );
                    reported = true;
                }
            }
        }
        if reported {
            return;
        }
        for (i, g) in configs.iter().enumerate() {
            if chain_depth(i, &edges) > MAX_CHAIN_DEPTH {
                self.error(
                    g,
                    &format!("gateway {:?}", g.name),
                    format!("gateway chain deeper than {MAX_CHAIN_DEPTH}"),
                );
            }
        }
    }
}

fn find_cycle(
    node: usize,
    edges: &[Vec<usize>],
    state: &mut [u8],
    path: &mut Vec<usize>,
) -> Option<Vec<usize>> {
    match state[node] {
        2 => return None,
        1 => {
            let from = path.iter().position(|&n| n == node).unwrap_or(0);
            let mut cycle = path[from..].to_vec();
            cycle.push(node);
            return Some(cycle);
        }
        _ => {}
    }
    state[node] = 1;
    path.push(node);
    for &next in &edges[node] {
        if let Some(c) = find_cycle(next, edges, state, path) {
            return Some(c);
        }
    }
    path.pop();
    state[node] = 2;
    None
}

/// Longest chain from `node` in an acyclic graph (1 = no chain).
fn chain_depth(node: usize, edges: &[Vec<usize>]) -> usize {
    1 + edges[node]
        .iter()
        .map(|&n| chain_depth(n, edges))
        .max()
        .unwrap_or(0)
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
