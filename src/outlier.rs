//! Outlier detection (a route's `outlier:`): an instance that answers `consecutive_5xx`
//! failures in a row (5xx responses, or connections reset or timed out) is ejected, for
//! `base_ejection` times how many times it has been ejected lately, but never more than
//! `max_ejected` of its route at once. It returns when the ejection ends (or when an
//! active check passes). This module owns the policy; the counters live in the
//! instance's [`InstanceHealth`](crate::health::InstanceHealth).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::OutlierConfig;
use crate::health::now_ms;
use crate::upstream::Upstream;

/// The longest ejection, however often an instance fails (unless `base_ejection` is
/// longer).
const MAX_EJECTION_MS: u64 = 300_000;
const MAX_BASE: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct Outlier {
    consecutive: u32,
    base_ms: u64,
    /// Basis points of the route's instances.
    max_ejected: u32,
}

impl Outlier {
    pub fn compile(c: &OutlierConfig) -> Result<Outlier, String> {
        if c.consecutive_5xx == 0 || c.consecutive_5xx > 10_000 {
            return Err("outlier.consecutive_5xx must be 1 to 10000".into());
        }
        if c.base_ejection.0.is_zero() || c.base_ejection.0 > MAX_BASE {
            return Err("outlier.base_ejection must be more than 0 and at most 1h".into());
        }
        if c.max_ejected.basis_points() > crate::config::units::FULL {
            return Err("outlier.max_ejected must be at most 100%".into());
        }
        Ok(Outlier {
            consecutive: c.consecutive_5xx,
            base_ms: c.base_ejection.0.as_millis() as u64,
            max_ejected: c.max_ejected.basis_points(),
        })
    }

    /// Records one outcome of `u`, one of `route`'s instances. Returns the ejection's length if this failure
    /// ejected it.
    #[inline]
    pub fn record(&self, route: &[Upstream], u: &Upstream, failed: bool) -> Option<Duration> {
        let streak = &u.health.consecutive_5xx;
        if !failed {
            // Usually zero already: read before writing a shared line.
            if streak.load(Ordering::Relaxed) != 0 {
                streak.store(0, Ordering::Relaxed);
            }
            return None;
        }
        if streak.fetch_add(1, Ordering::Relaxed) + 1 < self.consecutive {
            return None;
        }
        if !self.room_for_one_more(route) {
            return None;
        }
        u.health
            .eject(self.base_ms, MAX_EJECTION_MS, now_ms())
            .map(Duration::from_millis)
    }

    /// Whether ejecting one more instance keeps within `max_ejected`.
    fn room_for_one_more(&self, route: &[Upstream]) -> bool {
        let out = route.iter().filter(|i| i.health.ejected()).count() as u64;
        let all = route.len() as u64;
        (out + 1) * u64::from(crate::config::units::FULL) <= u64::from(self.max_ejected) * all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::InstanceHealth;

    #[test]
    fn ejections_grow_when_repeated_and_decay_while_serving() {
        let h = InstanceHealth::default();
        let base = 1_000;
        assert_eq!(h.eject(base, 300_000, 10_000), Some(1_000));
        assert!(h.ejected() && !h.available());
        // Out already: not ejected twice.
        assert_eq!(h.eject(base, 300_000, 10_500), None);
        assert!(h.expire_backoff(11_000));
        assert!(!h.ejected() && h.available());
        // Ejected again at once: twice as long; then three times.
        assert_eq!(h.eject(base, 300_000, 11_000), Some(2_000));
        assert!(h.expire_backoff(13_000));
        assert_eq!(h.eject(base, 300_000, 13_000), Some(3_000));
        assert!(h.expire_backoff(16_000));
        // After serving for two base periods, the count has decayed by two.
        assert_eq!(h.eject(base, 300_000, 18_000), Some(2_000));
        assert!(h.expire_backoff(20_000));
        // Capped.
        assert_eq!(h.eject(base, 1_500, 20_000), Some(1_500));
    }

    #[test]
    fn bad_settings_are_named() {
        let c = |yaml: &str| -> OutlierConfig { serde_yaml::from_str(yaml).expect("parses") };
        assert!(Outlier::compile(&c("{}")).is_ok());
        for (yaml, want) in [
            ("{ consecutive_5xx: 0 }", "consecutive_5xx"),
            ("{ base_ejection: 0s }", "base_ejection"),
            ("{ base_ejection: 2h }", "base_ejection"),
        ] {
            let e = Outlier::compile(&c(yaml)).expect_err(yaml);
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }
}
