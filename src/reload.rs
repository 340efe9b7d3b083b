//! Live reconfiguration (SPEC §4): read the config whole, validate it, build a new
//! snapshot and swap it in atomically; requests in flight finish on the snapshot they
//! loaded. An invalid change is logged with file and line, counted, and the running
//! snapshot stays. Triggers: a file watcher on every directory the config comes from
//! (robust to write-and-rename editors and to symlink swaps of a ConfigMap directory),
//! and `SIGHUP`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{EventKind, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::load::load;
use crate::diag::{Diagnostic, Diagnostics};
use crate::health::HealthRegistry;
use crate::snapshot::{build, Snapshot};
use crate::tls::TlsEndpoint;

/// Quiet time after the last file event before reloading: editors and ConfigMap
/// updates touch several files in a burst.
const SETTLE: Duration = Duration::from_millis(150);

/// What the admin API and metrics read about reloads.
#[derive(Debug, Default)]
pub struct Status {
    /// The first config is loaded and every listener accepts connections.
    pub ready: AtomicBool,
    /// Listener changes that the running process cannot apply.
    pub restart_needed: Mutex<Option<String>>,
    /// The errors of the last failed reload, for the admin API.
    pub last_error: Mutex<Option<String>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Owns the path to the config and the swap of snapshots.
pub struct Reloader {
    pub path: PathBuf,
    pub current: Arc<ArcSwap<Snapshot>>,
    pub health: Arc<HealthRegistry>,
    pub status: Arc<Status>,
    /// The addresses bound at start: a reload cannot change them.
    bound: Vec<(SocketAddr, String)>,
    /// Which of them terminate TLS: a reload cannot change that either.
    tls_bound: Vec<SocketAddr>,
    /// The handshake side of each TLS listener bound at start; a reload hands each its
    /// new certificates and policy.
    pub tls: Vec<Arc<TlsEndpoint>>,
    /// Serialises reloads; holds the fingerprint of the files last applied.
    applied: Mutex<u64>,
}

/// Outcome of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// The files are as last applied; nothing to do.
    Unchanged,
}

impl Reloader {
    /// Loads the first config; errors are the caller's to print.
    pub fn start(path: &Path) -> Result<Reloader, Diagnostics> {
        let health = Arc::new(HealthRegistry::default());
        let loaded = load(path)?;
        let snapshot = build(&loaded, &health)?;
        let status = Status::default();
        crate::metrics::loaded(unix_now());
        let mut tls = Vec::new();
        for l in &snapshot.listeners {
            if let Some(t) = &l.tls {
                let endpoint = TlsEndpoint::new(l.name.clone(), t.store.clone(), &t.policy)
                    .map_err(|e| Diagnostic::new(path, e))?;
                tls.push(Arc::new(endpoint));
            }
        }
        let tls_bound = snapshot
            .listeners
            .iter()
            .filter(|l| l.tls.is_some())
            .map(|l| l.bind)
            .collect();
        Ok(Reloader {
            tls,
            tls_bound,
            path: path.to_path_buf(),
            bound: snapshot.bind_addresses(),
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            health,
            status: Arc::new(status),
            applied: Mutex::new(loaded.fingerprint),
        })
    }

    pub fn bound(&self) -> &[(SocketAddr, String)] {
        &self.bound
    }

    /// Reads, validates and swaps in the config. Unless `force`, files whose content
    /// did not change since the last applied load are not rebuilt.
    pub fn reload(&self, force: bool) -> Result<Outcome, Diagnostics> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let loaded = load(&self.path)?;
        if !force && loaded.fingerprint == *applied {
            return Ok(Outcome::Unchanged);
        }
        let parsed = Instant::now();
        let mut snapshot = build(&loaded, &self.health)?;
        let built = Instant::now();
        let old = self.current.load();
        let bound: Vec<u16> = self.bound.iter().map(|(a, _)| a.port()).collect();
        snapshot.keep_bound_ports(&old, &bound);
        snapshot.carry_over(&old);
        drop(old);
        snapshot.refresh_health();
        self.note_listener_changes(&snapshot);
        for endpoint in &self.tls {
            if let Some(t) = snapshot
                .listeners
                .iter()
                .find(|l| l.name == endpoint.name)
                .and_then(|l| l.tls.as_ref())
            {
                endpoint
                    .apply(t.store.clone(), &t.policy)
                    .map_err(|e| Diagnostic::new(&self.path, e))?;
            }
        }
        let carried = Instant::now();
        // The old snapshot is freed here unless requests in flight still hold it.
        let old = self.current.swap(Arc::new(snapshot));
        crate::metrics::forget_removed(&old, &self.current.load());
        drop(old);
        let swapped = Instant::now();
        self.health.prune();
        log::debug!(
            "reload phases: read+parse {:?}, validate+build {:?}, carry over {:?}, swap {:?}, prune {:?}",
            parsed - started,
            built - parsed,
            carried - built,
            swapped - carried,
            swapped.elapsed()
        );
        *applied = loaded.fingerprint;
        Ok(Outcome::Applied)
    }

    /// `reload`, with the outcome logged and counted.
    pub fn reload_logged(&self, force: bool, why: &str) {
        let started = Instant::now();
        match self.reload(force) {
            Ok(Outcome::Applied) => {
                crate::metrics::reload(true, unix_now());
                *self
                    .status
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                let s = self.current.load();
                let routes: usize = s.gateways.iter().map(|g| g.routes.len()).sum();
                log::info!(
                    "config reloaded ({why}) in {:.1} ms: {} gateway(s), {routes} route(s)",
                    started.elapsed().as_secs_f64() * 1000.0,
                    s.gateways.len()
                );
            }
            Ok(Outcome::Unchanged) => log::debug!("config unchanged ({why})"),
            Err(errors) => {
                crate::metrics::reload(false, unix_now());
                for e in errors.iter() {
                    log::error!("config reload rejected, running config kept: {e}");
                }
                *self
                    .status
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(errors.to_string());
            }
        }
    }

    fn note_listener_changes(&self, next: &Snapshot) {
        let wanted = next.bind_addresses();
        let mut changes = Vec::new();
        for (addr, what) in &wanted {
            if !self.bound.iter().any(|(a, _)| a == addr) {
                changes.push(format!("{what} wants {addr}, which is not bound"));
            }
        }
        for (addr, what) in &self.bound {
            if !wanted.iter().any(|(a, _)| a == addr) {
                changes.push(format!("{what} on {addr} is no longer configured"));
            }
        }
        for l in &next.listeners {
            let was_tls = self.tls_bound.contains(&l.bind);
            let bound = self.bound.iter().any(|(a, _)| *a == l.bind);
            if bound && was_tls != l.tls.is_some() {
                let now = if was_tls { "plain" } else { "TLS" };
                changes.push(format!("listener {:?} on {} turns {now}", l.name, l.bind));
            }
        }
        let message = (!changes.is_empty()).then(|| {
            format!(
                "listener changes need a restart or upgrade (weir -u): {}",
                changes.join("; ")
            )
        });
        if let Some(m) = &message {
            log::warn!("{m}");
        }
        *self
            .status
            .restart_needed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = message;
    }
}

/// The directories to watch: where each config file is, and each include glob's base.
fn watch_dirs(reloader: &Reloader) -> BTreeSet<PathBuf> {
    let snapshot = reloader.current.load();
    let mut dirs: BTreeSet<PathBuf> = snapshot.watch_dirs.iter().cloned().collect();
    if let Some(parent) = reloader.path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        dirs.insert(parent.to_path_buf());
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Watches the config's directories and reloads after each burst of changes. Runs on
/// its own thread: parsing and building are CPU work that must not hold up the proxy.
fn watch_loop(reloader: Arc<Reloader>) {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if !matches!(event.kind, EventKind::Access(_)) {
                    let _ = tx.send(());
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                log::error!("cannot watch config files, reload with SIGHUP only: {e}");
                return;
            }
        };
    let mut watched = BTreeSet::new();
    sync_watches(&mut watcher, &mut watched, watch_dirs(&reloader));
    while rx.recv().is_ok() {
        while rx.recv_timeout(SETTLE).is_ok() {}
        reloader.reload_logged(false, "files changed");
        sync_watches(&mut watcher, &mut watched, watch_dirs(&reloader));
    }
}

fn sync_watches(
    watcher: &mut impl Watcher,
    watched: &mut BTreeSet<PathBuf>,
    wanted: BTreeSet<PathBuf>,
) {
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for new in wanted.difference(watched) {
        if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
            log::warn!("cannot watch {}: {e}", new.display());
        }
    }
    *watched = wanted;
}

/// The background service that drives reloads: the watcher thread, and `SIGHUP`.
/// Started inside Pingora's runtime, so after `-d` has daemonized the process.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let r = self.reloader.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("weir-watch".into())
            .spawn(move || watch_loop(r))
        {
            log::error!("cannot start the config watcher: {e}");
        }
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot handle SIGHUP: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    let r = self.reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload_logged(true, "SIGHUP")).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
