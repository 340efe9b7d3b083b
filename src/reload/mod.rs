//! Live reconfiguration: the one way a config reaches service. Every change (a file
//! edit seen by the watcher, `SIGHUP`, an admin API write, a DNS answer that changed)
//! takes the same path: load (bounded, `config::load`) → prepare the build's outside
//! inputs (`prepare`) → build a snapshot (pure, `snapshot::build`) → [`Reloader::apply`],
//! which joins live state to it and swaps it in. Requests in flight finish on the
//! snapshot they loaded. An invalid change is logged with file and line, counted, and the
//! running snapshot stays.
//!
//! The watcher reacts only to the files that make up the config (the main file, files
//! the include globs match, certificates, keys, token files) and to a swapped symlinked
//! directory (a Kubernetes ConfigMap's `..data`); anything else written in the same
//! directories is ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::load::{load, Loaded};
use crate::diag::{Diagnostic, Diagnostics};
use crate::health::{HealthRegistry, InstanceHealth};
use crate::metrics::RouteMetrics;
use crate::prepare::Caches;
use crate::snapshot::{build, Snapshot, Target};
use crate::startup::Startup;
use crate::store::{self, Change, Fleet, Settings};
use crate::tls::TlsEndpoint;

mod watch;
use watch::watch_loop;

/// How often DNS names are looked up again.
const DNS_REFRESH: Duration = Duration::from_secs(30);

/// What the admin API and metrics read about the process.
#[derive(Debug, Default)]
pub struct Status {
    /// The first config is loaded and every listener accepts connections.
    pub ready: AtomicBool,
    /// Start-time settings the running config changed: they need a restart.
    pub restart_needed: Mutex<Option<String>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Loads and builds a config once, as `weir check` and the master do (no live state).
/// With a config store, its documents come from etcd, or from the last good copy when
/// etcd cannot be reached; a document that does not build is an error here.
pub fn load_once(path: &Path) -> Result<(Loaded, Snapshot), Diagnostics> {
    let loaded = load(path)?;
    if let Some(settings) = Settings::of(&loaded)? {
        let (docs, _, _) = store::join::initial_docs(&settings, false)?;
        return store::join::check_all(&loaded, &settings, &docs);
    }
    let inputs = Caches::default().prepare(&loaded.config);
    let snapshot = build(&loaded, &inputs)?;
    Ok((loaded, snapshot))
}

/// The outcome of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        gateways: usize,
        routes: usize,
    },
    /// The files are as last applied; nothing to do.
    Unchanged,
}

/// Owns the path to the config, the live state a snapshot joins, and the swap.
pub struct Reloader {
    /// The main config file, absolute (so that a later chdir changes nothing).
    pub path: PathBuf,
    pub current: Arc<ArcSwap<Snapshot>>,
    pub health: Arc<HealthRegistry>,
    pub caches: Caches,
    pub status: Arc<Status>,
    /// The start-time settings in force (bound at start).
    pub startup: Startup,
    /// The handshake side of each TLS listener bound at start; a reload hands each its
    /// new certificates and policy.
    pub tls: Vec<Arc<TlsEndpoint>>,
    /// Keeps the OCSP staples of `ocsp_stapling` listeners fresh.
    stapler: Arc<crate::ocsp::Stapler>,
    /// Issues the certificates of `acme` listeners, by listener.
    acme: Mutex<HashMap<Arc<str>, Arc<crate::acme::Manager>>>,
    /// Serialises reloads; holds what was last applied.
    applied: Mutex<Arc<Loaded>>,
    /// The config store's state, with `config_source: etcd`.
    pub fleet: Option<Arc<Fleet>>,
}

/// The absolute form of a path, without resolving symlinks (a ConfigMap's main file is
/// a symlink whose target changes).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

impl Reloader {
    /// Loads and builds the first config; errors are the caller's to print.
    pub fn start(path: &Path) -> Result<Reloader, Diagnostics> {
        let path = absolute(path);
        let caches = Caches::default();
        let mut loaded = load(&path)?;
        let (fleet, snapshot) = match Settings::of(&loaded)? {
            None => {
                let inputs = caches.prepare(&loaded.config);
                (None, build(&loaded, &inputs)?)
            }
            Some(settings) => {
                let (composed, snapshot, fleet) =
                    store::join::first_build(&caches, &path, settings)?;
                loaded = composed;
                (Some(Arc::new(fleet)), snapshot)
            }
        };
        log_warnings(&snapshot.warnings);
        let mut tls = Vec::new();
        for l in &snapshot.listeners {
            if let Some(t) = &l.tls {
                let endpoint = TlsEndpoint::new(l.name.clone(), t.store.clone(), &t.policy)
                    .map_err(|e| Diagnostic::new(&path, e))?;
                endpoint.set_ticket_keys(t.ticket_keys.clone());
                tls.push(Arc::new(endpoint));
            }
        }
        crate::metrics::loaded(unix_now());
        let startup = snapshot.startup.clone();
        let health = Arc::new(HealthRegistry::default());
        let snapshot = join_live_state(snapshot, None, &health, startup.admin.is_some());
        snapshot.refresh_health();
        health.prune();
        let stapler = Arc::new(crate::ocsp::Stapler::default());
        staple(&stapler, &snapshot);
        let acme = Mutex::new(HashMap::new());
        manage_acme(&acme, &stapler, &tls, &snapshot);
        Ok(Reloader {
            stapler,
            acme,
            tls,
            startup,
            path,
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            health,
            caches,
            status: Arc::new(Status::default()),
            applied: Mutex::new(Arc::new(loaded)),
            fleet,
        })
    }

    /// What was last applied.
    pub fn applied(&self) -> Arc<Loaded> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files and applies them. Unless `force`, files whose content did not
    /// change since the last apply are not rebuilt.
    pub fn reload(&self, force: bool) -> Result<Outcome, Diagnostics> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let loaded = load(&self.path)?;
        log::debug!("reload: read and parsed in {:?}", started.elapsed());
        if let Some(fleet) = &self.fleet {
            let same = (!force).then_some(&**applied);
            let built = store::join::build_fleet(
                &self.caches,
                &fleet.settings,
                &loaded,
                fleet.stored(),
                &fleet.accepted(),
                same,
            )?;
            return Ok(self.swap_in_fleet(fleet, built, &mut applied, None));
        }
        if !force && loaded.fingerprint == applied.fingerprint {
            return Ok(Outcome::Unchanged);
        }
        self.build_and_apply(loaded, &mut applied)
    }

    /// Applies a config already loaded (and changed in memory) by the caller, e.g. the
    /// admin API; `check` runs after the build and before the swap, and may refuse.
    pub fn apply_loaded(
        &self,
        loaded: Loaded,
        check: impl FnOnce(&Snapshot) -> Result<(), Diagnostics>,
    ) -> Result<Outcome, Diagnostics> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let inputs = self.caches.prepare(&loaded.config);
        let snapshot = build(&loaded, &inputs)?;
        check(&snapshot)?;
        Ok(self.swap_in(snapshot, loaded, &mut applied))
    }

    /// Applies changes from the config store at `revision` (`full`: they are the whole
    /// store). The whole store is built anew; a document that does not validate is
    /// refused, logged and counted once; its version in service (if any) stays and the
    /// rest applies.
    pub fn store_changed(
        &self,
        changes: &[Change],
        revision: i64,
        full: bool,
    ) -> Result<Outcome, Diagnostics> {
        let Some(fleet) = &self.fleet else {
            return Ok(Outcome::Unchanged);
        };
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let candidate = fleet.note_stored(changes, revision, full);
        let fallback = fleet.accepted();
        let local = store::join::local_part(&applied, &fleet.settings);
        let built = store::join::build_fleet(
            &self.caches,
            &fleet.settings,
            &local,
            candidate,
            &fallback,
            Some(&applied),
        )?;
        Ok(self.swap_in_fleet(fleet, built, &mut applied, Some(revision)))
    }

    /// Validates a config as a reload would, without applying it (the admin API checks
    /// a write before it goes to the store).
    pub fn validate(&self, loaded: &Loaded) -> Result<(), Diagnostics> {
        let inputs = self.caches.prepare(&loaded.config);
        build(loaded, &inputs).map(|_| ())
    }

    fn swap_in_fleet(
        &self,
        fleet: &Fleet,
        (loaded, snapshot, docs, refusals): store::join::FleetBuild,
        applied: &mut Arc<Loaded>,
        revision: Option<i64>,
    ) -> Outcome {
        let revision = revision.unwrap_or_else(|| fleet.revision.load(Ordering::Relaxed));
        let outcome = match snapshot {
            Some(s) => self.swap_in(s, loaded, applied),
            None => Outcome::Unchanged,
        };
        if let Err(e) = store::cache::save(&fleet.settings, &docs, revision) {
            log::warn!("config store: {e}");
        }
        fleet.set_accepted(docs, revision);
        fleet.report(refusals);
        outcome
    }

    /// Rebuilds what was last applied with fresh inputs (a DNS answer changed).
    pub fn rebuild(&self) -> Result<Outcome, Diagnostics> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = (**applied).clone();
        self.build_and_apply(loaded, &mut applied)
    }

    fn build_and_apply(
        &self,
        loaded: Loaded,
        applied: &mut Arc<Loaded>,
    ) -> Result<Outcome, Diagnostics> {
        let started = Instant::now();
        let inputs = self.caches.prepare(&loaded.config);
        let prepared = Instant::now();
        let snapshot = build(&loaded, &inputs)?;
        let built = Instant::now();
        let outcome = self.swap_in(snapshot, loaded, applied);
        log::debug!(
            "reload: prepared in {:?}, built in {:?}, applied in {:?}",
            prepared - started,
            built - prepared,
            built.elapsed()
        );
        Ok(outcome)
    }

    fn swap_in(&self, snapshot: Snapshot, loaded: Loaded, applied: &mut Arc<Loaded>) -> Outcome {
        log_warnings(&snapshot.warnings);
        let outcome = Outcome::Applied {
            gateways: snapshot.gateways.len(),
            routes: snapshot.gateways.iter().map(|g| g.routes.len()).sum(),
        };
        self.apply(snapshot);
        *applied = Arc::new(loaded);
        outcome
    }

    /// The one apply step: joins live state (instance health, metric series) to a new
    /// snapshot, carries over what must survive (bound ports, rotation positions),
    /// hands the TLS endpoints their certificates and policy, reports start-time
    /// changes, swaps, and then forgets what the old snapshot alone had.
    pub fn apply(&self, next: Snapshot) {
        let old = self.current.load_full();
        let metrics = self.startup.admin.is_some();
        let mut next = join_live_state(next, Some(&old), &self.health, metrics);
        let bound: Vec<u16> = self.startup.binds.iter().map(|b| b.addr.port()).collect();
        next.keep_bound_ports(&old, &bound);
        next.carry_over(&old);
        next.refresh_health();
        self.note_restart_changes(&next.startup);
        staple(&self.stapler, &next);
        manage_acme(&self.acme, &self.stapler, &self.tls, &next);
        for endpoint in &self.tls {
            let Some(t) = next
                .listeners
                .iter()
                .find(|l| l.name == endpoint.name)
                .and_then(|l| l.tls.as_ref())
            else {
                continue;
            };
            endpoint.set_ticket_keys(t.ticket_keys.clone());
            if let Err(e) = endpoint.apply(t.store.clone(), &t.policy) {
                log::error!("{e}; the listener keeps its previous TLS settings");
            }
        }
        let next = Arc::new(next);
        let old = self.current.swap(next.clone());
        self.health.prune();
        // The new config serves from here on. Deleting the series of removed routes and
        // freeing the old snapshot (tens of milliseconds for a large one; it is freed
        // when the last request holding it finishes) happen off the reload's path.
        let cleanup = move || {
            crate::exposition::forget_removed(&old, &next);
            drop(old);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("weir-cleanup".into())
            .spawn(cleanup)
        {
            log::warn!("cannot start the cleanup thread: {e}");
        }
    }

    /// `reload`, with the outcome logged and counted.
    /// A supervisor hears `RELOADING=1` and `READY=1` around a reload someone asked for
    /// (`force`: SIGHUP, `weir reload`) once weir is ready.
    pub fn reload_logged(&self, force: bool, why: &str) -> Result<Outcome, Diagnostics> {
        let started = Instant::now();
        let ready = force && self.status.ready.load(Ordering::Relaxed);
        if ready {
            crate::sdnotify::notify("RELOADING=1");
        }
        let result = self.reload(force);
        record(&result, why, started);
        if ready {
            crate::sdnotify::notify("READY=1");
        }
        result
    }

    fn note_restart_changes(&self, next: &Startup) {
        let changes = self.startup.changes(next);
        let message = (!changes.is_empty()).then(|| {
            format!(
                "changes that need a restart or upgrade (weir -u): {}",
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

/// Logs and counts the outcome of a reload.
pub fn record(result: &Result<Outcome, Diagnostics>, why: &str, started: Instant) {
    match result {
        Ok(Outcome::Applied { gateways, routes }) => {
            crate::metrics::reload(true, unix_now());
            log::info!(
                "config reloaded ({why}) in {:.1} ms: {gateways} gateway(s), {routes} route(s)",
                started.elapsed().as_secs_f64() * 1000.0,
            );
        }
        Ok(Outcome::Unchanged) => log::debug!("config unchanged ({why})"),
        Err(errors) => {
            crate::metrics::reload(false, unix_now());
            for e in errors.iter() {
                log::error!("config reload rejected ({why}), running config kept: {e}");
            }
        }
    }
}

fn log_warnings(warnings: &Diagnostics) {
    for w in warnings.iter() {
        log::warn!("{w}");
    }
}

/// The tracing pipeline for `settings`: the running one if they did not change.
fn tracer_for(
    settings: Option<&crate::trace::Settings>,
    running: Option<&Arc<crate::trace::Tracer>>,
) -> Option<Arc<crate::trace::Tracer>> {
    let settings = settings?;
    if let Some(t) = running.filter(|t| t.settings == *settings) {
        return Some(t.clone());
    }
    match crate::trace::Tracer::start(settings.clone()) {
        Ok(t) => {
            log::info!("tracing: spans go to {}", settings.endpoint);
            Some(Arc::new(t))
        }
        Err(e) => {
            log::error!("{e}; requests are not traced");
            None
        }
    }
}

/// Puts the live state into a freshly built snapshot: each resolved instance's health
/// from the registry (kept from earlier snapshots), and metric handles (those of the
/// same route in `old`, else bound anew). Without an admin listener nothing could read
/// the series, so none are made (a route's series cost about 8 KiB).
fn join_live_state(
    mut next: Snapshot,
    old: Option<&Snapshot>,
    health: &HealthRegistry,
    metrics: bool,
) -> Snapshot {
    next.tracer = tracer_for(next.tracing.as_ref(), old.and_then(|o| o.tracer.as_ref()));
    health.begin_build();
    for g in &mut next.gateways {
        let before = old.and_then(|o| o.gateway_by_name(&g.name).map(|i| &o.gateways[i]));
        keep_rate_state(&mut g.rate, before.and_then(|b| b.rate.as_ref()));
        for (i, r) in g.routes.iter_mut().enumerate() {
            // Routes rarely move: look at the same position first.
            let same = before.and_then(|b| {
                b.routes
                    .get(i)
                    .filter(|x| x.key == r.key)
                    .or_else(|| b.routes.iter().find(|x| x.key == r.key))
            });
            r.metrics = match same {
                Some(x) => x.metrics.clone(),
                None if metrics => RouteMetrics::bind(&g.name, &r.key),
                None => RouteMetrics::unbound(),
            };
            keep_rate_state(&mut r.rate, same.and_then(|x| x.rate.as_ref()));
            if let Target::Pool(pool) = &mut r.target {
                for u in &mut pool.instances {
                    u.health = if u.resolved {
                        health.get(&g.name, &r.key, &u.name)
                    } else {
                        Arc::new(InstanceHealth::unresolved())
                    };
                }
            }
        }
    }
    if metrics {
        next.unrouted = RouteMetrics::bind("", "");
    }
    next
}

/// Hands each TLS listener's `acme` settings to its manager, started on first use.
fn manage_acme(
    managers: &Mutex<HashMap<Arc<str>, Arc<crate::acme::Manager>>>,
    stapler: &Arc<crate::ocsp::Stapler>,
    endpoints: &[Arc<TlsEndpoint>],
    snapshot: &Snapshot,
) {
    let mut managers = managers.lock().unwrap_or_else(|e| e.into_inner());
    for endpoint in endpoints {
        let settings = snapshot
            .listeners
            .iter()
            .find(|l| l.name == endpoint.name)
            .and_then(|l| l.tls.as_ref())
            .and_then(|t| t.acme.clone());
        if let Some(m) = managers.get(&endpoint.name) {
            m.configure(settings);
            continue;
        }
        let Some(settings) = settings else {
            continue;
        };
        let issued = endpoint.issued();
        match crate::acme::Manager::start(endpoint.name.clone(), issued, stapler.clone()) {
            Ok(m) => {
                m.configure(Some(settings));
                managers.insert(endpoint.name.clone(), m);
            }
            Err(e) => log::error!("listener {:?}: {e}", endpoint.name),
        }
    }
}

/// Hands the stapled certificates of every listener their staples.
fn staple(stapler: &Arc<crate::ocsp::Stapler>, snapshot: &Snapshot) {
    for t in snapshot.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        stapler.attach(t.stapled.iter().map(|(l, s)| (&l.staple, &l.key, s)));
    }
}

/// A rate limit whose settings did not change keeps its buckets across a reload.
fn keep_rate_state(
    next: &mut Option<Arc<crate::ratelimit::RateLimit>>,
    old: Option<&Arc<crate::ratelimit::RateLimit>>,
) {
    if let (Some(n), Some(o)) = (next.as_ref(), old) {
        if n.config == o.config {
            *next = Some(o.clone());
        }
    }
}

/// The background service that drives reloads: the watcher thread, `SIGHUP`, and the
/// periodic DNS refresh. Started inside Pingora's runtime, so after `-d` has
/// daemonized the process.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
}

impl ReloadService {
    async fn in_background(&self, work: impl FnOnce(&Reloader) + Send + 'static) {
        let r = self.reloader.clone();
        let _ = tokio::task::spawn_blocking(move || work(&r)).await;
    }
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
        let mut dns = tokio::time::interval(DNS_REFRESH);
        dns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        dns.tick().await;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    self.in_background(|r| { let _ = r.reload_logged(true, "SIGHUP"); }).await;
                }
                _ = dns.tick() => {
                    self.in_background(|r| {
                        if r.caches.refresh_dns() {
                            let started = Instant::now();
                            record(&r.rebuild(), "DNS answers changed", started);
                        }
                    }).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_made_only_with_an_admin_listener() {
        let yaml = "listeners: { http: { bind: \"127.0.0.1:8080\" } }\ngateways:\n- name: g\n  virtual_hosts: [g.test]\n  routes: { a: { respond: { status: 200 } } }\n";
        let loaded = crate::config::load::load_from_str(Path::new("t.yaml"), yaml).unwrap();
        let health = HealthRegistry::default();
        for metrics in [false, true] {
            let s = build(&loaded, &Default::default()).unwrap();
            let s = join_live_state(s, None, &health, metrics);
            assert_eq!(s.gateways[0].routes[0].metrics.is_bound(), metrics);
            assert_eq!(s.unrouted.is_bound(), metrics);
        }
    }
}
