//! The active health checker: a background service that, every tick, walks the current
//! snapshot, probes each instance whose route has a `health_check` when its interval is
//! due, ends passive back-offs, and rebuilds route schedules when a state changed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::health::{now_ms, ActiveCheck};
use crate::snapshot::{Snapshot, Target};
use crate::upstream::Upstream;

/// How often the checker looks for due probes and expired back-offs.
const TICK: Duration = Duration::from_millis(100);

/// The background service that runs active checks and ends passive back-offs.
pub struct Checker {
    pub current: Arc<ArcSwap<Snapshot>>,
}

impl Checker {
    fn tick(&self) {
        let snapshot = self.current.load_full();
        let now = now_ms();
        let mut changed = false;
        for g in &snapshot.gateways {
            for r in &g.routes {
                let Target::Pool(pool) = &r.target else {
                    continue;
                };
                for u in pool.instances.iter().filter(|u| u.resolved) {
                    // Without a check: passive back-offs and ejections end by time.
                    // With one: only ejections have an end set; probes do the rest.
                    changed |= u.health.expire_backoff(now);
                    if let Some(check) = &pool.check {
                        self.maybe_probe(g, r, u, check, now);
                    }
                }
            }
        }
        if changed {
            snapshot.refresh_health();
        }
    }

    fn maybe_probe(
        &self,
        g: &crate::snapshot::Gateway,
        r: &crate::snapshot::Route,
        u: &Upstream,
        check: &Arc<ActiveCheck>,
        now: u64,
    ) {
        let health = &u.health;
        let next = health.next_probe_ms.load(Ordering::Relaxed);
        if next == 0 {
            // First sight: probe after initial_delay, spread a little so that many new
            // instances do not all probe in the same tick.
            let spread = fastrand::u64(0..(check.interval.as_millis() as u64 / 4).max(1));
            let first = now + check.initial_delay.as_millis() as u64 + spread.min(250);
            health.next_probe_ms.store(first.max(1), Ordering::Relaxed);
            return;
        }
        if now < next || health.probing.swap(true, Ordering::Relaxed) {
            return;
        }
        health
            .next_probe_ms
            .store(now + check.interval.as_millis() as u64, Ordering::Relaxed);
        let Some(addr) = u.peer._address.as_inet().copied() else {
            health.probing.store(false, Ordering::Relaxed);
            return;
        };
        let (health, check, current) = (health.clone(), check.clone(), self.current.clone());
        let label = format!(
            "gateway {:?}, route {:?}, instance {}",
            g.name, r.key, u.name
        );
        tokio::spawn(async move {
            let backend = Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: 1,
                ext: Default::default(),
            };
            let ok = check.run(&backend, check.interval).await;
            health.probing.store(false, Ordering::Relaxed);
            if health.record_probe(ok, check.successes, check.failures) {
                log::warn!("{label} is {}", health.state().as_str());
                current.load().refresh_health();
            }
        });
    }
}

#[async_trait]
impl BackgroundService for Checker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = interval.tick() => self.tick(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
