//! Assembling the Pingora server: one proxy service listening on every shared listener
//! and dedicated gateway port, plus background services, from one initial snapshot.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::config::load::load;
use crate::diag::Diagnostics;
use crate::proxy::Weir;
use crate::resolve::Resolver;
use crate::snapshot::{build, Entry, Snapshot};

/// Seconds between SIGTERM and shutting the runtimes down (Pingora's default is 300).
const GRACE_PERIOD_SECONDS: u64 = 3;
/// Longest wait for in-flight requests once the runtimes shut down.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;

/// How `weir run` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub daemon: bool,
    pub upgrade: bool,
}

/// Reads and compiles the config at `path`.
pub fn load_snapshot(path: &Path) -> Result<Snapshot, Diagnostics> {
    let loaded = load(path)?;
    build(&loaded)
}

/// Every address weir listens on, with what it is for.
fn bind_addresses(s: &Snapshot) -> Vec<(SocketAddr, String)> {
    s.ports
        .iter()
        .map(|(port, entry)| match entry {
            Entry::Shared(l) => (
                s.listeners[*l].bind,
                format!("listener {:?}", s.listeners[*l].name),
            ),
            Entry::Dedicated(g) => (
                SocketAddr::from(([0, 0, 0, 0], *port)),
                format!("gateway {:?} port", s.gateways[*g].name),
            ),
        })
        .collect()
}

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

/// Runs weir in the foreground (or as a daemon) until it is told to stop.
pub fn run(config_path: &Path, options: RunOptions) -> Result<(), String> {
    let snapshot = load_snapshot(config_path).map_err(|d| d.to_string())?;
    let addrs = bind_addresses(&snapshot);
    if !options.upgrade {
        check_bindable(&addrs)?;
    }
    let current = Arc::new(ArcSwap::from_pointee(snapshot));

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

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Weir {
            current: current.clone(),
        },
        "weir proxy",
    );
    for (addr, what) in &addrs {
        log::info!("{what} listening on {addr}");
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.add_service(background_service("resolver", Resolver { current }));
    server.run_forever();
}
