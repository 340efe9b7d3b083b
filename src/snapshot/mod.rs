//! The compiled, immutable routing snapshot and the per-request routing decision.
//!
//! A [`Snapshot`] is built once from a validated config (`build`) and then only read:
//! vhost table, per-gateway route schedules, pre-built upstream peers and direct
//! responses. The proxy loads the current snapshot once per request from an `ArcSwap`
//! and calls [`Snapshot::select`]; that call takes no lock and allocates nothing.

mod build;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use ipnet::IpNet;
use pingora::http::ResponseHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::health::{ActiveCheck, InstanceHealth};
use crate::schedule::Schedule;
use crate::vhost::VhostTable;

pub use build::{build, check_summary};

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
}

impl Defaults {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Debug)]
pub struct Gateway {
    pub name: Arc<str>,
    pub source: PathBuf,
    pub routes: Vec<Route>,
    /// Weighted round-robin over the routes that can take traffic now: their effective
    /// weights, with routes that have no healthy instance left out (SPEC §2.4).
    pub schedule: ArcSwap<Schedule>,
    /// Which routes `schedule` was built with; changed only by `refresh_health`.
    alive: Mutex<Vec<bool>>,
    /// Bit i set: shared listener i carries this gateway's vhosts.
    pub listener_mask: u64,
    pub port: Option<u16>,
}

#[derive(Debug)]
pub struct Route {
    pub key: Arc<str>,
    /// Effective weight in basis points (100% = 10,000).
    pub weight: u32,
    pub target: Target,
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
    pub check: Option<Arc<ActiveCheck>>,
}

impl Pool {
    /// The next available instance not in `tried` (bit i = instance i already tried).
    pub fn pick(&self, tried: u64) -> Option<&Upstream> {
        for _ in 0..self.schedule.len() {
            let i = self.schedule.pick()?;
            let untried = i >= 64 || tried & (1 << i) == 0;
            if untried && self.instances[i].health.available() {
                return Some(&self.instances[i]);
            }
        }
        None
    }

    /// Whether any instance may take traffic.
    pub fn any_available(&self) -> bool {
        self.instances.iter().any(|u| u.health.available())
    }
}

/// One upstream address with its pre-built peer.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` as configured, for logs and metrics.
    pub name: Arc<str>,
    pub index: usize,
    pub peer: HttpPeer,
    pub health: Arc<InstanceHealth>,
}

/// An external `[host:port]` target; host names are re-resolved in the background.
#[derive(Debug)]
pub struct External {
    pub host: String,
    pub port: u16,
    pub name: Arc<str>,
    pub peers: ArcSwap<Vec<Upstream>>,
    cursor: AtomicUsize,
    /// Peer options template used when the resolver builds new peers.
    template: HttpPeer,
}

impl External {
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    /// The next resolved address not in `tried`.
    pub fn pick(&self, tried: u64) -> Option<Upstream> {
        let peers = self.peers.load();
        for _ in 0..peers.len() {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % peers.len();
            if i >= 64 || tried & (1 << i) == 0 {
                return Some(peers[i].clone());
            }
        }
        None
    }

    /// Replaces the resolved addresses (kept in a stable order so picks stay fair).
    pub fn set_addresses(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        let current: Vec<SocketAddr> = self
            .peers
            .load()
            .iter()
            .filter_map(|u| u.peer._address.as_inet().copied())
            .collect();
        if current == addrs {
            return;
        }
        self.peers.store(Arc::new(self.peers_for(&addrs)));
    }

    fn peers_for(&self, addrs: &[SocketAddr]) -> Vec<Upstream> {
        addrs
            .iter()
            .enumerate()
            .map(|(index, addr)| {
                let mut peer = self.template.clone();
                peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(*addr);
                Upstream {
                    name: self.name.clone(),
                    index,
                    peer,
                    // External targets have no health checks: always available.
                    health: Arc::default(),
                }
            })
            .collect()
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
}

/// The outcome of routing: the gateway and route that take the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub gateway: usize,
    pub route: usize,
}

/// What the routing decision reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Host (or `:authority`), as sent.
    pub host: &'a [u8],
}

#[derive(Debug)]
pub struct Snapshot {
    pub gateways: Vec<Gateway>,
    pub vhosts: VhostTable,
    pub listeners: Vec<Listener>,
    /// Local port → entry, for every listener and dedicated gateway port.
    pub ports: Vec<(u16, Entry)>,
    pub defaults: Defaults,
    pub externals: Vec<Arc<External>>,
    /// Every file the config was read from.
    pub files: Vec<PathBuf>,
    /// Directories whose changes may change the config.
    pub watch_dirs: Vec<PathBuf>,
    /// The admin listener's address (bound at start only).
    pub admin: Option<SocketAddr>,
    /// Gateway name → index.
    pub by_name: rustc_hash::FxHashMap<Arc<str>, usize>,
}

impl Snapshot {
    /// The entry a local port belongs to.
    #[inline]
    pub fn entry(&self, port: u16) -> Option<Entry> {
        self.ports.iter().find(|(p, _)| *p == port).map(|(_, e)| *e)
    }

    /// The gateway that takes a request arriving on `entry`.
    #[inline]
    pub fn gateway_for(&self, entry: Entry, req: &RequestView) -> Result<usize, Refusal> {
        match entry {
            Entry::Dedicated(g) => Ok(g),
            Entry::Shared(listener) => {
                let g = self.vhosts.lookup(req.host).ok_or(Refusal::UnknownHost)?;
                if self.gateways[g].listener_mask & (1 << listener) == 0 {
                    return Err(Refusal::Misdirected);
                }
                Ok(g)
            }
        }
    }

    /// Routes a request: gateway by entry and Host, then route by weight, following
    /// chains to other gateways. The selected route is never a chain.
    pub fn select(&self, entry: Entry, req: &RequestView) -> Result<Selected, Refusal> {
        let mut gateway = self.gateway_for(entry, req)?;
        for _ in 0..=MAX_CHAIN_DEPTH {
            let route = self.gateways[gateway]
                .schedule
                .load()
                .pick()
                .ok_or(Refusal::NoRoute)?;
            match self.gateways[gateway].routes[route].target {
                Target::Chain(next) => gateway = next,
                _ => return Ok(Selected { gateway, route }),
            }
        }
        // Unreachable for a validated snapshot: chains are loop-checked at load.
        Err(Refusal::NoRoute)
    }

    pub fn route(&self, s: Selected) -> &Route {
        &self.gateways[s.gateway].routes[s.route]
    }

    pub fn gateway_by_name(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
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

    /// Whether a route can take traffic now.
    fn route_alive(&self, route: &Route) -> bool {
        match &route.target {
            Target::Pool(p) => p.any_available(),
            Target::Chain(g) => !self.gateways[*g].schedule.load().is_empty(),
            Target::External(_) | Target::Respond(_) => true,
        }
    }

    /// Rebuilds the route schedule of every gateway whose set of live routes changed.
    /// Called after instance health changes, off the request path (or on the error path
    /// of a failed connect). Returns whether any schedule changed.
    pub fn refresh_health(&self) -> bool {
        let mut any = false;
        // Chains make one gateway's liveness depend on another's: repeat until stable.
        for _ in 0..=MAX_CHAIN_DEPTH {
            let mut changed = false;
            for g in &self.gateways {
                let alive: Vec<bool> = g.routes.iter().map(|r| self.route_alive(r)).collect();
                let mut stored = g.alive.lock().unwrap_or_else(|e| e.into_inner());
                if *stored != alive {
                    g.schedule
                        .store(Arc::new(Schedule::new(&g.effective_weights(&alive))));
                    *stored = alive;
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

impl Gateway {
    pub fn new(
        name: Arc<str>,
        source: PathBuf,
        routes: Vec<Route>,
        listener_mask: u64,
        port: Option<u16>,
    ) -> Gateway {
        let alive = vec![true; routes.len()];
        let weights: Vec<u32> = routes.iter().map(|r| r.weight).collect();
        Gateway {
            name,
            source,
            schedule: ArcSwap::from_pointee(Schedule::new(&weights)),
            alive: Mutex::new(alive),
            routes,
            listener_mask,
            port,
        }
    }

    /// Route weights with dead routes at zero.
    fn effective_weights(&self, alive: &[bool]) -> Vec<u32> {
        self.routes
            .iter()
            .zip(alive)
            .map(|(r, a)| if *a { r.weight } else { 0 })
            .collect()
    }

    /// Each route's share of weighted traffic now, 0..1 (health taken into account).
    pub fn weight_ratios(&self) -> Vec<f64> {
        let alive = self.alive.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let w = self.effective_weights(&alive);
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
