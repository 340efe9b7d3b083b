//! Instance health: the state every instance carries, kept across reloads by a
//! registry; passive marking on failed connects; and the compiled active check of a
//! route (Pingora's own TCP and HTTP health checks). The service that runs the checks
//! over a snapshot is `probe`'s.
//!
//! States: a new instance is *unknown* and takes traffic (as HAProxy's servers start up)
//! while its first probe runs at once: a reload must never black-hole a route whose
//! instances are all new, and one probe settles it. A failed connect marks an instance
//! *down* at once; with an active check it stays down until `successes` probes pass,
//! without one it is tried again after a back-off that doubles up to a minute.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;

use crate::config::{HealthCheckConfig, HealthProtocol};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

const PASSIVE_BACKOFF_MIN_MS: u64 = 1_000;
const PASSIVE_BACKOFF_MAX_MS: u64 = 60_000;

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The health of one instance of one route; shared by every snapshot that has it.
#[derive(Debug, Default)]
pub struct InstanceHealth {
    state: AtomicU8,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
    /// Passive down without an active check: when the instance may be tried again.
    retry_at_ms: AtomicU64,
    backoff_ms: AtomicU64,
    pub(crate) next_probe_ms: AtomicU64,
    pub(crate) probing: AtomicBool,
    /// Requests in flight to this instance.
    pub inflight: AtomicUsize,
    /// Outlier detection (`outlier:`): failed responses in a row.
    pub(crate) consecutive_5xx: AtomicU32,
    /// Ejected by outlier detection until `retry_at_ms`.
    ejected: AtomicBool,
    /// How many ejections the next one counts as (decays while the instance serves).
    ejections: AtomicU32,
    /// When the last ejection ended (or will).
    eject_end_ms: AtomicU64,
    /// Idle connections for weir's own HTTP/1 path (`h1`).
    pub idle: crate::pool::Idle,
}

/// What a health state means to a reader (admin API, metrics, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    Unknown,
    Up,
    Down,
    /// Down because outlier detection ejected it.
    Ejected,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Ejected => "ejected",
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

impl InstanceHealth {
    /// May take new requests (up or unknown).
    #[inline]
    pub fn available(&self) -> bool {
        self.state.load(Ordering::Relaxed) != DOWN
    }

    pub fn state(&self) -> HealthState {
        match self.state.load(Ordering::Relaxed) {
            UP => HealthState::Up,
            DOWN if self.ejected() => HealthState::Ejected,
            DOWN => HealthState::Down,
            _ => HealthState::Unknown,
        }
    }

    /// The state of an instance whose host does not resolve: down, and never probed.
    pub fn unresolved() -> InstanceHealth {
        let h = InstanceHealth::default();
        h.state.store(DOWN, Ordering::Relaxed);
        h
    }

    fn set(&self, state: u8) -> bool {
        self.state.swap(state, Ordering::Relaxed) != state
    }

    /// A connect to this instance failed. Returns whether it was not down before.
    pub fn mark_down_passive(&self, has_active_check: bool) -> bool {
        self.ok_streak.store(0, Ordering::Relaxed);
        if !has_active_check {
            let backoff = (self.backoff_ms.load(Ordering::Relaxed) * 2)
                .clamp(PASSIVE_BACKOFF_MIN_MS, PASSIVE_BACKOFF_MAX_MS);
            self.backoff_ms.store(backoff, Ordering::Relaxed);
            self.retry_at_ms
                .store(now_ms() + backoff, Ordering::Relaxed);
        }
        self.set(DOWN)
    }

    /// A request to this instance got a response: the passive back-off starts over.
    pub fn mark_ok_passive(&self) {
        if self.backoff_ms.load(Ordering::Relaxed) != 0 {
            self.backoff_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Records an active probe result; returns whether the state changed.
    pub fn record_probe(&self, ok: bool, successes: u32, failures: u32) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        if ok {
            self.fail_streak.store(0, Ordering::Relaxed);
            let streak = self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            let up = match state {
                UNKNOWN => self.set(UP),
                DOWN if streak >= successes => self.set(UP),
                _ => false,
            };
            if up {
                // The check brings an ejected instance back early.
                self.ejected.store(false, Ordering::Relaxed);
                self.retry_at_ms.store(0, Ordering::Relaxed);
            }
            up
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            let streak = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            match state {
                UNKNOWN => self.set(DOWN),
                UP if streak >= failures => self.set(DOWN),
                _ => false,
            }
        }
    }

    /// A passive back-off or an ejection ran out: the instance gets traffic again
    /// (half-open).
    pub(crate) fn expire_backoff(&self, now: u64) -> bool {
        let at = self.retry_at_ms.load(Ordering::Relaxed);
        if at != 0 && now >= at && self.state.load(Ordering::Relaxed) == DOWN {
            self.retry_at_ms.store(0, Ordering::Relaxed);
            self.ejected.store(false, Ordering::Relaxed);
            return self.set(UNKNOWN);
        }
        false
    }

    /// Whether outlier detection has this instance out now.
    pub fn ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Ejects the instance for `base_ms` times how many ejections it has had lately:
    /// one more than the last, less one for each `base_ms` it has served since. Returns
    /// the ejection's length, or `None` if it was out already.
    pub(crate) fn eject(&self, base_ms: u64, max_ms: u64, now: u64) -> Option<u64> {
        if !self.available() {
            return None;
        }
        let last_end = self.eject_end_ms.load(Ordering::Relaxed);
        let served = now.saturating_sub(last_end) / base_ms.max(1);
        let before = u64::from(self.ejections.load(Ordering::Relaxed));
        let n = (before + 1)
            .saturating_sub(if last_end == 0 { 0 } else { served })
            .max(1);
        let length = base_ms.saturating_mul(n).min(max_ms.max(base_ms));
        self.ejections
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
        self.eject_end_ms.store(now + length, Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.ok_streak.store(0, Ordering::Relaxed);
        self.ejected.store(true, Ordering::Relaxed);
        self.retry_at_ms.store(now + length, Ordering::Relaxed);
        self.set(DOWN);
        Some(length)
    }
}

/// Health state per (gateway, route, instance), so that a reload keeps what it knows.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// Key → (health, the build that last asked for it).
    map: HashMap<String, (Arc<InstanceHealth>, u64)>,
    /// The current build; bumped by `begin_build`.
    build: u64,
    /// Reused to form keys without allocating per lookup.
    scratch: String,
}

impl HealthRegistry {
    /// Starts a new snapshot build: what it does not ask for, `prune` forgets.
    pub fn begin_build(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).build += 1;
    }

    /// The health of an instance, kept from earlier snapshots when it existed there.
    pub fn get(&self, gateway: &str, route: &str, instance: &str) -> Arc<InstanceHealth> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let r = &mut *guard;
        r.scratch.clear();
        for part in [gateway, "\u{0}", route, "\u{0}", instance] {
            r.scratch.push_str(part);
        }
        let build = r.build;
        if let Some((health, stamp)) = r.map.get_mut(r.scratch.as_str()) {
            *stamp = build;
            return health.clone();
        }
        let health = Arc::new(InstanceHealth::default());
        r.map.insert(r.scratch.clone(), (health.clone(), build));
        health
    }

    /// Forgets instances that the last build did not have. Call after that build's
    /// snapshot is in service.
    pub fn prune(&self) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let build = guard.build;
        guard.map.retain(|_, (_, stamp)| *stamp == build);
    }

    /// Instances known (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }
}

/// A route's active health check, compiled from its `health_check:`.
pub struct ActiveCheck {
    probe: Box<dyn HealthCheck + Send + Sync>,
    pub interval: Duration,
    pub initial_delay: Duration,
    pub successes: u32,
    pub failures: u32,
}

impl std::fmt::Debug for ActiveCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveCheck")
            .field("interval", &self.interval)
            .finish()
    }
}

/// Parses `expect`: `"200"`, `"200-399"`.
pub fn parse_expect(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("invalid expect {text:?}: expected a status or a range such as 200-399");
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(lo..=599).contains(&hi) {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl ActiveCheck {
    /// Compiles a `health_check:`; errors are messages for the route's diagnostics.
    /// `tls`: the peer of a TLS instance of the route; HTTP probes then use its TLS
    /// settings (name, verification, CA, client certificate).
    pub fn compile(
        c: &HealthCheckConfig,
        tls: Option<&pingora::upstreams::peer::HttpPeer>,
    ) -> Result<ActiveCheck, String> {
        let interval = c.interval.map_or(Duration::from_secs(2), |d| d.0);
        let timeout = c.timeout.map_or(Duration::from_secs(1), |d| d.0);
        if interval.is_zero() || timeout.is_zero() {
            return Err("health_check: interval and timeout must be above 0".into());
        }
        let successes = c.successes.unwrap_or(2).max(1);
        let failures = c.failures.unwrap_or(3).max(1);
        let probe: Box<dyn HealthCheck + Send + Sync> = match c.protocol {
            HealthProtocol::Tcp => {
                if c.path.is_some() || c.expect.is_some() || c.host.is_some() {
                    return Err("health_check: path, host and expect are for protocol http".into());
                }
                let mut tcp = TcpHealthCheck::new();
                tcp.peer_template.options.connection_timeout = Some(timeout);
                tcp.peer_template.options.total_connection_timeout = Some(timeout);
                tcp
            }
            HealthProtocol::Http => {
                let (lo, hi) = parse_expect(c.expect.as_deref().unwrap_or("200-399"))?;
                let path = c.path.as_deref().unwrap_or("/");
                if !path.starts_with('/') {
                    return Err(format!("health_check: path {path:?} must start with /"));
                }
                let host = c.host.as_deref().unwrap_or("localhost");
                let mut http = HttpHealthCheck::new(host, tls.is_some());
                if let Some(p) = tls {
                    let t = &mut http.peer_template;
                    t.sni = p.sni.clone();
                    t.options.verify_cert = p.options.verify_cert;
                    t.options.verify_hostname = p.options.verify_hostname;
                    t.options.ca = p.options.ca.clone();
                    t.client_cert_key = p.client_cert_key.clone();
                }
                http.req = RequestHeader::build("GET", path.as_bytes(), None)
                    .map_err(|e| format!("health_check: {e}"))?;
                http.req
                    .insert_header("Host", host)
                    .and_then(|_| http.req.insert_header("User-Agent", "weir-health-check"))
                    .map_err(|e| format!("health_check: {e}"))?;
                http.peer_template.options.connection_timeout = Some(timeout);
                http.peer_template.options.total_connection_timeout = Some(timeout);
                http.peer_template.options.read_timeout = Some(timeout);
                http.reuse_connection = false;
                http.validator = Some(Box::new(move |resp: &ResponseHeader| {
                    let code = resp.status.as_u16();
                    if (lo..=hi).contains(&code) {
                        Ok(())
                    } else {
                        pingora::Error::e_explain(
                            pingora::ErrorType::Custom("health check"),
                            format!("status {code} not in {lo}-{hi}"),
                        )
                    }
                }));
                Box::new(http)
            }
        };
        Ok(ActiveCheck {
            probe,
            interval,
            initial_delay: c.initial_delay.map_or(Duration::ZERO, |d| d.0),
            successes,
            failures,
        })
    }

    pub(crate) async fn run(&self, backend: &Backend, timeout_guard: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout_guard, self.probe.check(backend)).await,
            Ok(Ok(()))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_thresholds() {
        let h = InstanceHealth::default();
        assert_eq!(h.state(), HealthState::Unknown);
        assert!(h.available());
        // The first probe decides for an unknown instance.
        assert!(h.record_probe(true, 2, 3));
        assert_eq!(h.state(), HealthState::Up);
        assert!(!h.record_probe(false, 2, 3));
        assert!(!h.record_probe(false, 2, 3));
        assert!(h.record_probe(false, 2, 3), "third failure marks down");
        assert!(!h.available());
        assert!(!h.record_probe(true, 2, 3));
        assert!(h.record_probe(true, 2, 3), "second success marks up");
    }

    #[test]
    fn passive_down_and_backoff() {
        let h = InstanceHealth::default();
        assert!(h.mark_down_passive(false));
        assert!(!h.mark_down_passive(false), "already down");
        assert!(!h.available());
        let at = h.retry_at_ms.load(Ordering::Relaxed);
        assert!(!h.expire_backoff(at - 1));
        assert!(h.expire_backoff(at));
        assert!(h.available(), "half-open after the back-off");
        // With an active check, only probes bring it back.
        let h = InstanceHealth::default();
        h.record_probe(true, 1, 1);
        assert!(h.mark_down_passive(true));
        assert!(!h.expire_backoff(u64::MAX));
        assert!(h.record_probe(true, 1, 1));
    }

    #[test]
    fn expect_ranges() {
        assert_eq!(parse_expect("200-399").unwrap(), (200, 399));
        assert_eq!(parse_expect("204").unwrap(), (204, 204));
        assert!(parse_expect("399-200").is_err());
        assert!(parse_expect("abc").is_err());
        assert!(parse_expect("600").is_err());
    }

    #[test]
    fn registry_keeps_state_by_identity() {
        let reg = HealthRegistry::default();
        reg.begin_build();
        let a = reg.get("g", "r", "127.0.0.1:1");
        let other = reg.get("g", "r", "127.0.0.1:2");
        a.mark_down_passive(true);
        reg.begin_build();
        let again = reg.get("g", "r", "127.0.0.1:1");
        assert!(Arc::ptr_eq(&a, &again));
        reg.prune();
        assert_eq!(
            reg.len(),
            1,
            "the instance the last build dropped is forgotten"
        );
        assert!(!Arc::ptr_eq(&other, &reg.get("g", "r", "127.0.0.1:2")));
        assert!(!Arc::ptr_eq(&a, &reg.get("g", "r2", "127.0.0.1:1")));
    }
}
