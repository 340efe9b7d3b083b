//! The compiled routing snapshot and the per-request routing decision.
//!
//! A [`Snapshot`] is built once from a validated config (`build`, a pure function) and
//! its structure never changes after: vhost table, routes, pre-built upstream peers,
//! direct responses. It also carries live state that changes under it, in atomics and
//! `ArcSwap`s: each instance's health (shared with the health registry), each gateway's
//! set of live routes and the schedule built from them (`refresh_health`), and
//! round-robin positions. The proxy loads the current snapshot once per request from an
//! `ArcSwap` and calls [`Snapshot::select`]; that call takes no lock and allocates
//! nothing.

mod build;
mod plain;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use ipnet::IpNet;
use pingora::http::ResponseHeader;

use crate::balance::Picker;
use crate::condition::{Expr, Request};
use crate::config::Sticky;
use crate::diag::Diagnostics;
use crate::health::ActiveCheck;
use crate::metrics::RouteMetrics;
use crate::rewrite::Rewrite;
use crate::schedule::Schedule;
use crate::sticky::{self, SetCookie};
use crate::upstream::{Tried, Upstream};
use crate::vhost::VhostTable;

pub use crate::startup::Startup;

pub use crate::external::External;
pub use build::build;

/// Chains deeper than this are refused at load (loops are refused outright).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// Which kind of listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A shared vhost listener, by index into [`Snapshot::listeners`].
    Shared(usize),
    /// A gateway's dedicated port, by gateway index.
    Dedicated(usize),
}

/// A shared (vhost-mode) listener.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    /// The certificates of a TLS listener, compiled for its SNI resolver.
    pub tls: Option<TlsListener>,
    /// `redirect_https`: the TLS listener's index and the port to put in the `Location`.
    pub redirect: Option<(usize, u16)>,
    /// Connections open with a PROXY protocol header naming the client.
    pub proxy_protocol: bool,
    pub limits: ClientLimits,
}

/// Bounds on a listener's clients: `defaults.limits` with the listener's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientLimits {
    pub framing: crate::framing::Limits,
    /// Open connections on the listener (0 = unlimited).
    pub max_connections: u32,
    /// Open connections from one client address (0 = unlimited).
    pub per_client: u32,
}

/// A TLS listener's certificates and protocols.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub store: Arc<crate::tls::CertStore>,
    pub certs: Vec<Arc<crate::tls::Loaded>>,
    pub policy: crate::tls::TlsPolicy,
    /// `ocsp_stapling`: the certificates to staple, with where to ask.
    pub stapled: Vec<(Arc<crate::tls::Loaded>, Arc<crate::ocsp::Source>)>,
    /// `acme`: the certificates weir issues itself for this listener.
    pub acme: Option<crate::acme::Settings>,
    /// `ticket_keys_file`: session-ticket keys shared with the fleet.
    pub ticket_keys: Option<Arc<crate::tickets::TicketKeys>>,
}

/// Settings from `defaults:`.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub trusted_proxies: Vec<IpNet>,
    pub retries: u32,
    pub connect_timeout: Duration,
    pub request_header_timeout: Duration,
    pub upstream_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// `defaults.shutdown`: accept for `drain` after SIGTERM, then give in-flight
    /// requests up to `grace`.
    pub drain: Duration,
    pub grace: Duration,
    /// For dedicated gateway ports, and what listeners override.
    pub limits: ClientLimits,
}

impl Defaults {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Debug)]
pub struct Gateway {
    /// The gateway as loaded (for the admin API).
    pub config: Arc<crate::config::GatewayConfig>,
    pub name: Arc<str>,
    pub source: PathBuf,
    pub routes: Vec<Route>,
    /// Weighted round-robin over the routes that can take traffic now: their effective
    /// weights, with routes that have no healthy instance left out.
    pub schedule: ArcSwap<Schedule>,
    /// Which routes can take traffic; `schedule` was built from these. Written only
    /// by `refresh_health`, read lock-free by requests.
    alive: Vec<AtomicBool>,
    /// Routes with a condition, in route order.
    pub conditional: Vec<usize>,
    pub sticky: Sticky,
    pub cookie_name: Box<str>,
    /// Bit i set: shared listener i carries this gateway's vhosts.
    pub listener_mask: u64,
    pub port: Option<u16>,
    /// A TCP gateway (`port: N/tcp`): proxied at L4 by `tcp`, never seen by `proxy`.
    pub tcp: bool,
    /// `Strict-Transport-Security` for responses over TLS.
    pub hsts: Option<http::HeaderValue>,
    /// The gateway's own `rate_limit` (routes may have theirs too).
    pub rate: Option<Arc<crate::ratelimit::RateLimit>>,
    /// `allow` / `deny`: checked before a route is chosen.
    pub access: Option<Box<crate::access::Access>>,
    /// `client_auth: required`: requests without a verified client certificate get 403.
    pub client_cert: bool,
    /// No rate limit, no stickiness, and every route plain (`Route::is_plain`) over
    /// plain HTTP/1 instances: weir's own HTTP/1 path takes its requests whole.
    pub plain: bool,
}

#[derive(Debug)]
pub struct Route {
    pub key: Arc<str>,
    /// Effective weight in basis points (100% = 10,000).
    pub weight: u32,
    pub target: Target,
    pub condition: Option<Expr>,
    /// Deterministic strength pick: entry 0 = take the matching request.
    pub strength: Schedule,
    pub rewrites: Vec<Rewrite>,
    /// Identity in sticky cookies.
    pub sticky_id: u64,
    /// `Set-Cookie` for route stickiness.
    pub set_cookie: Option<SetCookie>,
    pub metrics: RouteMetrics,
    /// Largest request body, from the route or its gateway (0 = unlimited).
    pub max_body: u64,
    pub rate: Option<Arc<crate::ratelimit::RateLimit>>,
    /// `request_headers` / `response_headers`: the gateway's, then the route's.
    pub request_headers: Option<Box<crate::headers::Rules>>,
    pub response_headers: Option<Box<crate::headers::Rules>>,
    /// What is tried again, and the route's retry budget.
    pub retry: crate::retry::RetryPolicy,
    /// `timeouts.request`: the whole request, retries included.
    pub deadline: Option<Duration>,
    /// `outlier:` (instance pools only).
    pub outlier: Option<crate::outlier::Outlier>,
    /// `basic_auth:`, the route's or its gateway's.
    pub auth: Option<Arc<crate::auth::BasicAuth>>,
    /// `compression:`, the route's or its gateway's.
    pub compression: Option<Box<crate::compress::Compression>>,
    /// `mirror:`: where a share of requests is copied.
    pub mirror: Option<Box<crate::mirror::Mirror>>,
}

#[derive(Debug)]
pub enum Target {
    Pool(Pool),
    External(Arc<External>),
    Respond(Box<Respond>),
    /// Another gateway, evaluated in-process.
    Chain(usize),
}

/// A route's own instances.
#[derive(Debug)]
pub struct Pool {
    pub instances: Vec<Upstream>,
    /// Round-robin over instances by instance weight.
    pub schedule: Schedule,
    pub picker: Picker,
    pub check: Option<Arc<ActiveCheck>>,
}

impl Pool {
    /// The next available instance not in `tried`, by the route's balance algorithm.
    pub fn pick(&self, tried: Tried, input: &Request) -> Option<&Upstream> {
        self.picker
            .pick(&self.instances, &self.schedule, tried, input)
    }

    /// The instance a sticky cookie names, if it can take the request.
    pub fn pinned(&self, index: usize, tried: Tried) -> Option<&Upstream> {
        let u = self.instances.get(index)?;
        (!tried.contains(index) && u.health.available()).then_some(u)
    }

    /// Whether an instance other than `last`, not yet tried, may take the request.
    pub fn another(&self, last: Option<usize>, tried: Tried) -> bool {
        self.instances
            .iter()
            .any(|u| Some(u.index) != last && !tried.contains(u.index) && u.health.available())
    }

    /// Whether any instance may take traffic.
    pub fn any_available(&self) -> bool {
        self.instances.iter().any(|u| u.health.available())
    }
}

/// A direct response (`respond:` route); no upstream.
#[derive(Debug)]
pub struct Respond {
    pub header: ResponseHeader,
    pub body: Bytes,
}

/// Why a request gets no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No gateway has this Host: 404.
    UnknownHost,
    /// The Host's gateway is not carried by this listener: 421.
    Misdirected,
    /// The gateway has no route with weight left: 503.
    NoRoute,
    /// The gateway's `allow`/`deny` lists refuse the client: 403.
    Forbidden,
    /// The gateway requires a verified client certificate and there is none: 403.
    NoClientCert,
}

/// The outcome of routing: the gateway and route that take the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub gateway: usize,
    pub route: usize,
    /// The instance an instance-sticky cookie names (still valid when routed).
    pub pinned: Option<usize>,
}

pub use crate::sticky::StickyWrites;

#[derive(Debug)]
pub struct Snapshot {
    pub gateways: Vec<Gateway>,
    pub vhosts: VhostTable,
    pub listeners: Vec<Listener>,
    /// Local port → entry, for every listener and dedicated gateway port.
    pub ports: Vec<(u16, Entry)>,
    pub defaults: Defaults,
    pub externals: Vec<Arc<External>>,
    /// Settings that take effect only when the process starts.
    pub startup: Startup,
    /// The file holding the admin API's bearer token for writes (read on each use).
    pub admin_token_file: Option<PathBuf>,
    /// The file holding the token for reads under `/api/`, when reads need one.
    pub admin_read_token_file: Option<PathBuf>,
    /// Problems that do not stop the config (e.g. a host name that does not resolve).
    pub warnings: Diagnostics,
    /// Gateway name → index.
    pub by_name: rustc_hash::FxHashMap<Arc<str>, usize>,
    /// Serialises `refresh_health` (writers only; requests never take it).
    pub refresh: Mutex<()>,
    /// Metrics of requests that reached no route (unknown host, no route left).
    pub unrouted: RouteMetrics,
    /// `tracing:` as checked; the apply step starts (or keeps) its pipeline in `tracer`.
    pub tracing: Option<crate::trace::Settings>,
    pub tracer: Option<Arc<crate::trace::Tracer>>,
}

impl Snapshot {
    /// The entry a local port belongs to.
    #[inline]
    pub fn entry(&self, port: u16) -> Option<Entry> {
        self.ports.iter().find(|(p, _)| *p == port).map(|(_, e)| *e)
    }

    /// The gateway that takes a request arriving on `entry`.
    #[inline]
    pub fn gateway_for(&self, entry: Entry, host: &[u8]) -> Result<usize, Refusal> {
        match entry {
            Entry::Dedicated(g) => Ok(g),
            Entry::Shared(listener) => {
                let g = self.vhosts.lookup(host).ok_or(Refusal::UnknownHost)?;
                if self.gateways[g].listener_mask & (1 << listener) == 0 {
                    return Err(Refusal::Misdirected);
                }
                Ok(g)
            }
        }
    }

    /// Routes a request: gateway by entry and Host; then in each
    /// gateway, a valid sticky cookie, else the first route whose condition matches
    /// (taken at its strength), else the weighted split; chains are followed in-process.
    /// The selected route is never a chain. `writes` collects the sticky cookies to set.
    pub fn select(
        &self,
        entry: Entry,
        host: &[u8],
        req: &Request,
        writes: &mut StickyWrites,
    ) -> Result<Selected, Refusal> {
        let mut gateway = self.gateway_for(entry, host)?;
        for _ in 0..=MAX_CHAIN_DEPTH {
            let g = &self.gateways[gateway];
            if g.access.as_ref().is_some_and(|a| !a.admits(req.client)) {
                return Err(Refusal::Forbidden);
            }
            if g.client_cert && req.client_cert.is_none() {
                return Err(Refusal::NoClientCert);
            }
            let (route, pinned) = match g.stuck_route(req) {
                Some(found) => found,
                None => {
                    let route = g.by_condition(req).or_else(|| g.schedule.load().pick());
                    let route = route.ok_or(Refusal::NoRoute)?;
                    if g.sticky != Sticky::None {
                        writes.push(gateway, route);
                    }
                    (route, None)
                }
            };
            match g.routes[route].target {
                Target::Chain(next) => gateway = next,
                _ => {
                    return Ok(Selected {
                        gateway,
                        route,
                        pinned,
                    })
                }
            }
        }
        // Unreachable for a validated snapshot: chains are loop-checked at load.
        Err(Refusal::NoRoute)
    }

    pub fn route(&self, s: Selected) -> &Route {
        &self.gateways[s.gateway].routes[s.route]
    }

    /// Where a shared listener with `redirect_https` sends plain requests: the TLS
    /// listener's index and port.
    pub fn redirect_of(&self, entry: Entry) -> Option<(usize, u16)> {
        match entry {
            Entry::Shared(l) => self.listeners[l].redirect,
            Entry::Dedicated(_) => None,
        }
    }

    /// The `Strict-Transport-Security` value for responses of the selected gateway.
    pub fn hsts(&self, s: Selected) -> Option<&http::HeaderValue> {
        self.gateways[s.gateway].hsts.as_ref()
    }

    /// The route-sticky `Set-Cookie` of a (gateway, route) recorded in [`StickyWrites`].
    pub fn route_cookie(&self, gateway: usize, route: usize) -> Option<&SetCookie> {
        self.gateways[gateway].routes[route].set_cookie.as_ref()
    }

    pub fn gateway_by_name(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The name a local port is known by in metrics: its listener's, or the gateway's.
    /// The client limits of the listener on `port`: its own, or `defaults.limits` for
    /// a gateway's dedicated port.
    pub fn limits_for(&self, port: u16) -> ClientLimits {
        match self.entry(port) {
            Some(Entry::Shared(l)) => self.listeners[l].limits,
            _ => self.defaults.limits,
        }
    }

    pub fn port_label(&self, port: u16) -> String {
        match self.entry(port) {
            Some(Entry::Shared(l)) => self.listeners[l].name.to_string(),
            Some(Entry::Dedicated(g)) => format!("gateway:{}", self.gateways[g].name),
            None => format!("port:{port}"),
        }
    }

    /// Every address weir listens on, with what it is for. Dedicated gateway ports bind
    /// all interfaces, as HAProxy's frontends for Vamp gateways did.
    pub fn bind_addresses(&self) -> Vec<(SocketAddr, String)> {
        self.ports
            .iter()
            .map(|(port, entry)| match entry {
                Entry::Shared(l) => (
                    self.listeners[*l].bind,
                    format!("listener {:?}", self.listeners[*l].name),
                ),
                Entry::Dedicated(g) => (
                    SocketAddr::from(([0, 0, 0, 0], *port)),
                    format!("gateway {:?} port", self.gateways[*g].name),
                ),
            })
            .collect()
    }

    /// Keeps bound ports routed after a reload moved their listener or gateway port:
    /// until a restart, the port still bound keeps serving the listener (or gateway) of
    /// the same name.
    pub fn keep_bound_ports(&mut self, old: &Snapshot, bound: &[u16]) {
        for &port in bound {
            if self.entry(port).is_some() {
                continue;
            }
            let kept = match old.entry(port) {
                Some(Entry::Shared(l)) => self
                    .listeners
                    .iter()
                    .position(|n| n.name == old.listeners[l].name)
                    .map(Entry::Shared),
                Some(Entry::Dedicated(g)) => self
                    .gateway_by_name(&old.gateways[g].name)
                    .map(Entry::Dedicated),
                None => None,
            };
            if let Some(entry) = kept {
                self.ports.push((port, entry));
            }
        }
    }

    /// How long a request must wait under its gateway's or route's rate limit, if it
    /// is over one.
    pub fn rate_limited(&self, sel: Selected, req: &Request) -> Option<std::time::Duration> {
        let g = &self.gateways[sel.gateway];
        let limits = [g.rate.as_deref(), g.routes[sel.route].rate.as_deref()];
        limits
            .into_iter()
            .flatten()
            .find_map(|l| l.check(req).err())
    }

    /// Every rate limit in the snapshot.
    pub fn rate_limits(&self) -> impl Iterator<Item = &crate::ratelimit::RateLimit> {
        self.gateways.iter().flat_map(|g| {
            g.rate
                .as_deref()
                .into_iter()
                .chain(g.routes.iter().filter_map(|r| r.rate.as_deref()))
        })
    }

    /// Keeps round-robin positions from `old` where a gateway's routes (or a route's
    /// instances) are unchanged, so a reload does not restart every rotation.
    pub fn carry_over(&self, old: &Snapshot) {
        for g in &self.gateways {
            let Some(o) = old.gateway_by_name(&g.name).map(|i| &old.gateways[i]) else {
                continue;
            };
            let same_routes = g.routes.len() == o.routes.len()
                && g.routes
                    .iter()
                    .zip(&o.routes)
                    .all(|(a, b)| a.key == b.key && a.weight == b.weight);
            if same_routes {
                g.schedule.load().set_position(o.schedule.load().position());
            }
            for r in &g.routes {
                let (Target::Pool(p), Some(Target::Pool(q))) = (
                    &r.target,
                    o.routes.iter().find(|x| x.key == r.key).map(|x| &x.target),
                ) else {
                    continue;
                };
                let same = p.instances.len() == q.instances.len()
                    && p.instances
                        .iter()
                        .zip(&q.instances)
                        .all(|(a, b)| a.name == b.name);
                if same {
                    p.schedule.set_position(q.schedule.position());
                }
            }
        }
    }

    /// A connect to `upstream` of `route` failed: counts it in
    /// `weir_upstream_errors_total`, marks the instance down (passive health) and, when
    /// that changed its state, logs it and rebuilds the route schedules. One function
    /// for HTTP and TCP gateways.
    pub fn connect_failed(&self, gateway: &str, route: &Route, upstream: &Upstream, kind: &str) {
        crate::metrics::upstream_error(gateway, &route.key, &upstream.name, kind);
        let has_check = matches!(&route.target, Target::Pool(p) if p.check.is_some());
        if upstream.health.mark_down_passive(has_check) {
            log::warn!(
                "gateway {gateway:?}, route {:?}: instance {} is down: connect failed ({kind})",
                route.key,
                upstream.name
            );
            self.refresh_health();
        }
    }

    /// Whether a route can take traffic now.
    fn route_alive(&self, route: &Route) -> bool {
        match &route.target {
            Target::Pool(p) => p.any_available(),
            Target::Chain(g) => !self.gateways[*g].schedule.load().is_empty(),
            Target::External(e) => !e.peers.load().is_empty(),
            Target::Respond(_) => true,
        }
    }

    /// Rebuilds the route schedule of every gateway whose set of live routes changed.
    /// Called after instance health changes, off the request path (or on the error path
    /// of a failed connect). Returns whether any schedule changed.
    pub fn refresh_health(&self) -> bool {
        let _one_at_a_time = self.refresh.lock().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        // Chains make one gateway's liveness depend on another's: repeat until stable.
        for _ in 0..=MAX_CHAIN_DEPTH {
            let mut changed = false;
            for g in &self.gateways {
                let alive: Vec<bool> = g.routes.iter().map(|r| self.route_alive(r)).collect();
                let same = g
                    .alive
                    .iter()
                    .zip(&alive)
                    .all(|(a, b)| a.load(Ordering::Relaxed) == *b);
                if !same {
                    for (a, b) in g.alive.iter().zip(&alive) {
                        a.store(*b, Ordering::Relaxed);
                    }
                    g.schedule
                        .store(Arc::new(Schedule::new(&g.effective_weights())));
                    changed = true;
                }
            }
            any |= changed;
            if !changed {
                break;
            }
        }
        any
    }
}

/// What `Gateway::new` takes besides its routes.
pub struct GatewayParts {
    pub hsts: Option<http::HeaderValue>,
    pub config: Arc<crate::config::GatewayConfig>,
    pub name: Arc<str>,
    pub source: PathBuf,
    pub sticky: Sticky,
    pub listener_mask: u64,
    pub port: Option<u16>,
    pub tcp: bool,
    pub rate: Option<Arc<crate::ratelimit::RateLimit>>,
    pub access: Option<Box<crate::access::Access>>,
    pub client_cert: bool,
}

impl Gateway {
    pub fn new(parts: GatewayParts, routes: Vec<Route>) -> Gateway {
        let alive = routes.iter().map(|_| AtomicBool::new(true)).collect();
        let weights: Vec<u32> = routes.iter().map(|r| r.weight).collect();
        let plain = parts.is_plain()
            && routes.iter().all(|r| match &r.target {
                Target::Pool(p) if r.is_plain() => p.instances.iter().all(|u| u.is_plain_http1()),
                _ => false,
            });
        Gateway {
            plain,
            cookie_name: sticky::cookie_name(&parts.name).into(),
            conditional: (0..routes.len())
                .filter(|i| routes[*i].condition.is_some())
                .collect(),
            config: parts.config,
            name: parts.name,
            source: parts.source,
            schedule: ArcSwap::from_pointee(Schedule::new(&weights)),
            alive,
            routes,
            sticky: parts.sticky,
            listener_mask: parts.listener_mask,
            port: parts.port,
            tcp: parts.tcp,
            hsts: parts.hsts,
            rate: parts.rate,
            access: parts.access,
            client_cert: parts.client_cert,
        }
    }

    #[inline]
    fn is_alive(&self, route: usize) -> bool {
        self.alive[route].load(Ordering::Relaxed)
    }

    /// The route (and instance) a valid sticky cookie names.
    fn stuck_route(&self, req: &Request) -> Option<(usize, Option<usize>)> {
        if self.sticky == Sticky::None {
            return None;
        }
        let (route_id, instance_id) = sticky::decode(req.cookie(&self.cookie_name)?)?;
        let route = self.routes.iter().position(|r| r.sticky_id == route_id)?;
        if !self.is_alive(route) {
            return None;
        }
        if self.sticky == Sticky::Instance {
            if let Target::Pool(pool) = &self.routes[route].target {
                let instance = pool
                    .instances
                    .iter()
                    .position(|u| Some(u.sticky_id) == instance_id)?;
                return pool
                    .pinned(instance, Tried::default())
                    .map(|_| (route, Some(instance)));
            }
        }
        Some((route, None))
    }

    /// The first route whose condition matches, if its strength takes the request.
    fn by_condition(&self, req: &Request) -> Option<usize> {
        let first = self.conditional.iter().copied().find(|i| {
            self.routes[*i]
                .condition
                .as_ref()
                .is_some_and(|c| c.eval(req))
        })?;
        let taken = self.routes[first].strength.pick() == Some(0);
        (taken && self.is_alive(first)).then_some(first)
    }

    /// Route weights with dead routes at zero.
    fn effective_weights(&self) -> Vec<u32> {
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| if self.is_alive(i) { r.weight } else { 0 })
            .collect()
    }

    /// Each route's share of weighted traffic now, 0..1 (health taken into account).
    pub fn weight_ratios(&self) -> Vec<f64> {
        let w = self.effective_weights();
        let total: u32 = w.iter().sum();
        w.iter()
            .map(|x| {
                if total == 0 {
                    0.0
                } else {
                    *x as f64 / total as f64
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use http::HeaderMap;

    use super::*;
    use crate::config::load::load_from_str;
    use crate::prepare::Inputs;

    /// A snapshot built in memory: two shared listeners; gateway `shop` on both with a
    /// canary route for a header, `intra` on the second only, `front` chaining to `shop`.
    fn snapshot() -> Snapshot {
        let yaml = "listeners: { a: { bind: \"127.0.0.1:1\" }, b: { bind: \"127.0.0.1:2\" } }
gateways:
  - name: shop
    virtual_hosts: [shop.test, \"*.shop.test\"]
    routes:
      canary: { weight: 25%, condition: \"has header x-beta\", instances: [\"127.0.0.1:10\"] }
      stable: { weight: 75%, instances: [\"127.0.0.1:11\", \"127.0.0.1:12\"] }
  - name: intra
    virtual_hosts: [intra.test]
    listeners: [b]
    routes: { r: { respond: { status: 200 } } }
  - name: front
    virtual_hosts: [front.test]
    routes: { shop: {} }
";
        let loaded = load_from_str(Path::new("t.yaml"), yaml).unwrap();
        crate::snapshot::build(&loaded, &Inputs::default()).unwrap()
    }

    fn route_of(
        s: &Snapshot,
        entry: Entry,
        host: &str,
        headers: &HeaderMap,
    ) -> Result<String, Refusal> {
        let req = Request::new(host.as_bytes(), "/", "GET", headers, None);
        let mut writes = StickyWrites::default();
        let sel = s.select(entry, req.host, &req, &mut writes)?;
        Ok(format!(
            "{}/{}",
            s.gateways[sel.gateway].name,
            s.route(sel).key
        ))
    }

    #[test]
    fn select_by_host_listener_condition_and_weight() {
        let s = snapshot();
        let none = HeaderMap::new();
        let mut beta = HeaderMap::new();
        beta.insert("x-beta", "1".parse().unwrap());
        let a = Entry::Shared(0);
        assert_eq!(
            route_of(&s, a, "shop.test:8080", &beta).unwrap(),
            "shop/canary"
        );
        assert_eq!(
            route_of(&s, a, "www.shop.test", &beta).unwrap(),
            "shop/canary"
        );
        assert_eq!(
            route_of(&s, a, "nobody.test", &none),
            Err(Refusal::UnknownHost)
        );
        assert_eq!(
            route_of(&s, a, "intra.test", &none),
            Err(Refusal::Misdirected)
        );
        assert_eq!(
            route_of(&s, Entry::Shared(1), "intra.test", &none).unwrap(),
            "intra/r"
        );
        // A chain is followed: the selected route is never the chain itself.
        assert_eq!(route_of(&s, a, "front.test", &beta).unwrap(), "shop/canary");
        // Without the header: the weighted split, exactly 25/75 over a period.
        let mut canary = 0;
        for _ in 0..400 {
            if route_of(&s, a, "shop.test", &none).unwrap() == "shop/canary" {
                canary += 1;
            }
        }
        assert_eq!(canary, 100);
    }

    #[test]
    fn refresh_health_takes_dead_routes_out_and_back() {
        let s = snapshot();
        let none = HeaderMap::new();
        let a = Entry::Shared(0);
        let Target::Pool(stable) = &s.gateways[0].routes[1].target else {
            panic!("stable has instances");
        };
        for u in &stable.instances {
            u.health.mark_down_passive(true);
        }
        assert!(s.refresh_health());
        assert!(!s.refresh_health(), "nothing changed the second time");
        for _ in 0..20 {
            assert_eq!(route_of(&s, a, "shop.test", &none).unwrap(), "shop/canary");
        }
        assert_eq!(s.gateways[0].weight_ratios(), vec![1.0, 0.0]);
        let Target::Pool(canary) = &s.gateways[0].routes[0].target else {
            panic!("canary has instances");
        };
        canary.instances[0].health.mark_down_passive(true);
        s.refresh_health();
        assert_eq!(route_of(&s, a, "shop.test", &none), Err(Refusal::NoRoute));
        // The chained gateway has no live route either.
        assert_eq!(route_of(&s, a, "front.test", &none), Err(Refusal::NoRoute));
        stable.instances[0].health.record_probe(true, 1, 1);
        s.refresh_health();
        assert_eq!(route_of(&s, a, "front.test", &none).unwrap(), "shop/stable");
    }
}
