//! Assembling the Pingora server: one proxy service listening on every shared listener
//! and dedicated gateway port, the admin listener, and the background services (health
//! checks, reloads, DNS re-resolution, readiness), around one `ArcSwap` of snapshots.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::accept::{Accept, Port};
use crate::accesslog::{self, AccessLog};
use crate::admin::Admin;
use crate::lifecycle::{Finisher, Signals};
use crate::probe::Checker;
use crate::proxy::Weir;
use crate::reload::{ReloadService, Reloader};

/// Pingora's own wait between stopping accepting and shutting the runtimes down. It is
/// a backstop only: `lifecycle::Finisher` ends the process once the last connection
/// closes or `defaults.shutdown.grace` (at most 1h) is over.
const GRACE_PERIOD_SECONDS: u64 = 3600 + 5;
/// Tasks still running when the runtimes shut down get this long.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 1;

/// How `weir run` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub daemon: bool,
    pub upgrade: bool,
}

/// A listening endpoint with read buffering sized for what reads it. Pingora's default,
/// a 64 KiB read buffer allocated at accept, made an idle connection cost over 100 KiB.
/// A plain connection is read by the HTTP/1 parser into its own buffer, so it needs
/// none; a TLS one reads a record (up to 16 KiB) at a time.
fn endpoint(addr: SocketAddr, tls: bool) -> ListenerConfig {
    let read = if tls { TLS_READ_BUFFER } else { 0 };
    ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::default().read(read))
}

/// The read buffer of a TLS connection: one TLS record.
const TLS_READ_BUFFER: usize = 16 << 10;

/// Fails early, with a clear message, when an address is taken: Pingora would only
/// panic later, inside its runtime.
fn check_bindable(addrs: &[(SocketAddr, String)]) -> Result<(), String> {
    for (addr, what) in addrs {
        TcpListener::bind(addr).map_err(|e| format!("{what}: cannot bind {addr}: {e}"))?;
    }
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn worker_threads() -> usize {
    std::env::var("WEIR_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// Whether something listens on `addr`: a connection to it succeeds. (Binding it to
/// see whether it is taken could race Pingora's own bind and make it fail.) The probe
/// closes before sending a byte, which weir's listeners take for a port check: nothing
/// is logged or counted as a failed handshake.
fn is_listening(addr: SocketAddr) -> bool {
    let target = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    };
    std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
}

/// Marks weir ready once every listener accepts connections, and tells systemd.
struct Readiness {
    reloader: Arc<Reloader>,
    /// The addresses to connect to: the HTTP ones, bound after the TCP gateways' (one
    /// Pingora service binds its endpoints in order, before it accepts on any). A probe
    /// to a TCP gateway would be proxied and logged; only a config of TCP gateways
    /// alone is probed there.
    probe: Vec<SocketAddr>,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let bound = self.reloader.startup.binds.len();
        loop {
            let all = self.probe.iter().all(|a| is_listening(*a));
            if all {
                self.reloader.status.ready.store(true, Ordering::Relaxed);
                crate::sdnotify::notify("READY=1");
                log::info!("ready: {bound} listener address(es) bound");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Forgets idle rate-limit buckets now and then, so that their memory follows the
/// clients that are active; and closes idle upstream connections (`pool`) past the
/// idle timeout, which nothing else would take any more.
struct RateSweeper {
    current: Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
}

#[async_trait]
impl BackgroundService for RateSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
            let snapshot = self.current.load_full();
            for limit in snapshot.rate_limits() {
                limit.sweep();
            }
            let idle = snapshot.defaults.idle_timeout;
            for g in &snapshot.gateways {
                for r in &g.routes {
                    if let crate::snapshot::Target::Pool(p) = &r.target {
                        p.instances.iter().for_each(|u| u.health.idle.sweep(idle));
                    }
                }
            }
        }
    }
}

/// Runs weir in the foreground (or as a daemon) until it is told to stop.
pub fn run(config_path: &Path, options: RunOptions) -> Result<(), String> {
    let reloader = Arc::new(Reloader::start(config_path).map_err(|d| d.to_string())?);
    let startup = reloader.startup.clone();
    let mut addrs: Vec<(SocketAddr, String)> = startup
        .binds
        .iter()
        .map(|b| (b.addr, b.what.clone()))
        .collect();
    let admin_bind = startup.admin;
    if let Some(a) = admin_bind {
        addrs.push((a, "admin listener".to_string()));
    }
    if !options.upgrade {
        check_bindable(&addrs)?;
    }

    let conf = ServerConf {
        threads: worker_threads(),
        grace_period_seconds: Some(GRACE_PERIOD_SECONDS),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECONDS),
        pid_file: env_or("WEIR_PID_FILE", "/tmp/weir.pid"),
        upgrade_sock: env_or("WEIR_UPGRADE_SOCK", "/tmp/weir_upgrade.sock"),
        daemon: options.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let current = reloader.current.clone();
    crate::metrics::start(
        &startup
            .binds
            .iter()
            .map(|b| current.load().port_label(b.addr.port()))
            .collect::<Vec<_>>(),
    );
    let access_log = match &startup.access_log {
        Some(target) => Some(
            AccessLog::new(target).map_err(|e| format!("access_log {target}: cannot open: {e}"))?,
        ),
        None => None,
    };
    let mut proxy = pingora::proxy::http_proxy(
        &server.configuration,
        Weir {
            current: current.clone(),
            access_log: access_log.clone(),
            metrics: admin_bind.is_some(),
        },
    );
    // An HTTP/2 connection with no stream open is closed after `idle` (Pingora's default
    // keeps it forever). Pingora reads this once: a reload does not change it.
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(startup.h2_idle_timeout);
    // CONNECT reaches weir's request filter, which answers 405 itself and closes
    // (Pingora's own 405 would say `Server: Pingora`). Nothing is ever tunnelled.
    options.allow_connect_method_proxying = true;
    proxy.server_options = Some(options);
    let mut ports = Vec::new();
    let mut endpoints = Vec::new();
    // TCP gateways' ports first: see `Readiness`.
    let is_tcp = |addr: SocketAddr| {
        let snapshot = current.load();
        matches!(snapshot.entry(addr.port()), Some(crate::snapshot::Entry::Dedicated(g)) if snapshot.gateways[g].tcp)
    };
    let mut binds = startup.binds.clone();
    binds.sort_by_key(|b| !is_tcp(b.addr));
    let mut probe: Vec<SocketAddr> = binds
        .iter()
        .map(|b| b.addr)
        .filter(|a| !is_tcp(*a))
        .collect();
    if probe.is_empty() {
        probe = binds.iter().map(|b| b.addr).collect();
    }
    for b in &binds {
        let snapshot = current.load();
        let listener = snapshot.listeners.iter().find(|l| l.bind == b.addr);
        let tls = listener
            .filter(|l| l.tls.is_some())
            .and_then(|l| reloader.tls.iter().find(|t| t.name == l.name))
            .cloned();
        let kind = if tls.is_some() { " (TLS)" } else { "" };
        log::info!("{} listening on {}{kind}", b.what, b.addr);
        endpoints.push(endpoint(b.addr, tls.is_some()));
        ports.push(Port {
            bind: b.addr,
            tls,
            open: Arc::default(),
        });
    }
    let mut proxy = Service::new(
        "weir proxy".to_string(),
        Accept::new(
            proxy,
            ports,
            current.clone(),
            admin_bind.is_some(),
            access_log.clone(),
        ),
    );
    for e in endpoints {
        proxy.add_listener(e);
    }
    server.add_service(proxy);
    if let Some(addr) = admin_bind {
        let mut admin = Service::new("weir admin".to_string(), Admin::new(reloader.clone()));
        admin.threads = Some(1);
        log::info!("admin listener listening on {addr}");
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
    }
    if let Some(log) = access_log {
        server.add_service(background_service("access log", accesslog::Writer { log }));
    }
    server.add_service(background_service(
        "rate limits",
        RateSweeper {
            current: current.clone(),
        },
    ));
    server.add_service(background_service(
        "health",
        Checker {
            current: current.clone(),
        },
    ));
    server.add_service(background_service(
        "reload",
        ReloadService {
            reloader: reloader.clone(),
        },
    ));
    if let Some(fleet) = reloader.fleet.clone() {
        let r = reloader.clone();
        let apply: crate::store::watch::Apply = Arc::new(move |changes, revision, full| {
            let started = std::time::Instant::now();
            let result = r.store_changed(changes, revision, full);
            crate::reload::record(
                &result,
                &format!("config store, revision {revision}"),
                started,
            );
        });
        server.add_service(background_service(
            "config store",
            crate::store::watch::StoreWatch { fleet, apply },
        ));
    }
    server.add_service(background_service(
        "stop",
        Finisher {
            current: current.clone(),
        },
    ));
    let signals = Signals {
        current,
        status: reloader.status.clone(),
    };
    server.add_service(background_service(
        "readiness",
        Readiness { reloader, probe },
    ));
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    Ok(())
}
