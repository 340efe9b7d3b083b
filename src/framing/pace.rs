//! How long a request body may take (slow-body attacks): the next bytes of a body must
//! come within `timeouts.client_body` of the last ones, and once a body is older than
//! that, it must have kept an average of at least `limits.min_body_rate`. One rule for
//! every protocol: the HTTP/1 guard applies it to the bytes it reads, and HTTP/2
//! streams to the data their proxy reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The bounds on a request body's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// Longest wait for a body's next bytes.
    pub idle: Duration,
    /// Lowest average rate, in bytes per second, after the first `idle` (0: none).
    pub min_rate: u64,
}

impl Default for BodyPace {
    fn default() -> Self {
        BodyPace {
            idle: Duration::from_secs(30),
            min_rate: 1024,
        }
    }
}

/// One body's progress against its pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    started: Instant,
    last: Instant,
    bytes: u64,
}

impl Pacing {
    pub fn start(now: Instant) -> Pacing {
        Pacing {
            started: now,
            last: now,
            bytes: 0,
        }
    }

    /// `n` more bytes of the body came at `now`.
    pub fn advance(&mut self, n: u64, now: Instant) {
        if n > 0 {
            self.bytes = self.bytes.saturating_add(n);
            self.last = now;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// When the body has taken too long unless more of it comes first: `idle` after
    /// its last bytes, or when its average would fall below the rate (never within
    /// its first `idle`).
    pub fn deadline(&self, pace: BodyPace) -> Instant {
        let quiet = self.last + pace.idle;
        if pace.min_rate == 0 {
            return quiet;
        }
        // At this many seconds from the start, `bytes` would be an average of exactly
        // `min_rate`.
        let kept = Duration::from_secs_f64(self.bytes as f64 / pace.min_rate as f64);
        quiet.min(self.started + kept.max(pace.idle))
    }
}

/// A body's progress as its reader reports it, for a watcher in another task (an
/// HTTP/2 stream's body is read inside Pingora's proxy; its connection's task holds
/// it to its pace).
#[derive(Debug)]
pub struct Progress {
    base: Instant,
    bytes: AtomicU64,
    /// Microseconds from `base` to the last bytes.
    last_us: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    pub fn new(now: Instant) -> Progress {
        Progress {
            base: now,
            bytes: AtomicU64::new(0),
            last_us: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    /// `n` more bytes came at `now`.
    pub fn advance(&self, n: u64, now: Instant) {
        if n > 0 {
            self.bytes.fetch_add(n, Ordering::Relaxed);
            let us = now.saturating_duration_since(self.base).as_micros();
            self.last_us
                .fetch_max(u64::try_from(us).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// The body is all read: no pace to keep any more.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// The body's progress so far; None once it is all read.
    pub fn pacing(&self) -> Option<Pacing> {
        if self.done.load(Ordering::Relaxed) {
            return None;
        }
        let last = Duration::from_micros(self.last_us.load(Ordering::Relaxed));
        Some(Pacing {
            started: self.base,
            last: self.base + last,
            bytes: self.bytes.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: BodyPace = BodyPace {
        idle: Duration::from_secs(10),
        min_rate: 1000,
    };

    #[test]
    fn a_quiet_body_is_due_idle_after_its_last_bytes() {
        let t0 = Instant::now();
        let mut p = Pacing::start(t0);
        assert_eq!(p.deadline(PACE), t0 + Duration::from_secs(10));
        p.advance(1_000_000, t0 + Duration::from_secs(4));
        assert_eq!(p.deadline(PACE), t0 + Duration::from_secs(14));
        // No bytes is no progress.
        p.advance(0, t0 + Duration::from_secs(9));
        assert_eq!(p.deadline(PACE), t0 + Duration::from_secs(14));
    }

    #[test]
    fn a_trickle_is_due_when_its_average_falls_below_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacing::start(t0);
        // One byte every 3 s: never quiet for 10 s, but 1 byte/s on average.
        for i in 1..=10 {
            p.advance(1, t0 + Duration::from_secs(3 * i));
        }
        // 10 bytes at 1000 B/s are 10 ms worth: due at the end of the first `idle`.
        assert_eq!(p.deadline(PACE), t0 + Duration::from_secs(10));
        // A fast body is due only by its quiet time.
        let mut fast = Pacing::start(t0);
        fast.advance(50_000, t0 + Duration::from_secs(20));
        assert_eq!(fast.deadline(PACE), t0 + Duration::from_secs(30));
        let off = BodyPace {
            min_rate: 0,
            ..PACE
        };
        assert_eq!(p.deadline(off), t0 + Duration::from_secs(40));
    }
}
