//! Rate limits (`rate_limit:` on a gateway or route): requests per period, per client
//! address, header value or cookie value, answered 429 with `Retry-After` over it.
//!
//! This module owns one limit's compiled form and its live state: a keyed GCRA limiter
//! from `governor` (lock-free per key). A bucket holds `requests + burst` and refills at
//! `requests` per `per`. Keys are hashed with a per-limit random key into a fixed space
//! of `KEY_SPACE` buckets, so no stream of made-up header values can grow the state past
//! that; idle buckets are swept every few seconds. A reload keeps a limit's state when
//! its settings are unchanged (`reload` hands the old one on).

use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::condition::Request;
use crate::config::RateLimitConfig;

/// Distinct buckets one limit keeps at most.
const KEY_SPACE: u64 = 1 << 20;

/// What requests are counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
enum By {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

/// One compiled rate limit with its buckets.
pub struct RateLimit {
    pub config: RateLimitConfig,
    by: By,
    limiter: DefaultKeyedRateLimiter<u64>,
    clock: DefaultClock,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("config", &self.config)
            .finish()
    }
}

fn parse_by(by: &str) -> Result<By, String> {
    let by = by.trim();
    if by == "client_ip" {
        return Ok(By::ClientIp);
    }
    let inner = |prefix: &str| {
        by.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(str::trim)
            .filter(|n| !n.is_empty())
    };
    if let Some(name) = inner("header(") {
        return http::HeaderName::from_bytes(name.as_bytes())
            .map(By::Header)
            .map_err(|_| format!("rate_limit.by: invalid header name {name:?}"));
    }
    if let Some(name) = inner("cookie(") {
        return Ok(By::Cookie(name.to_string()));
    }
    Err(format!(
        "rate_limit.by: expected client_ip, header(NAME) or cookie(NAME), found {by:?}"
    ))
}

impl RateLimit {
    pub fn new(config: &RateLimitConfig) -> Result<RateLimit, String> {
        let by = parse_by(&config.by)?;
        let per = config.per.0;
        if config.requests == 0 || per.is_zero() {
            return Err("rate_limit: requests and per must be above zero".to_string());
        }
        let burst = config
            .requests
            .checked_add(config.burst)
            .and_then(|n| u32::try_from(n).ok())
            .and_then(NonZeroU32::new)
            .ok_or("rate_limit: requests + burst must be at most 4294967295")?;
        let interval = per
            .checked_div(u32::try_from(config.requests).unwrap_or(u32::MAX))
            .filter(|d| !d.is_zero())
            .ok_or("rate_limit: more than one request per nanosecond")?;
        let quota = Quota::with_period(interval)
            .ok_or("rate_limit: invalid period")?
            .allow_burst(burst);
        Ok(RateLimit {
            config: config.clone(),
            by,
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            hasher: std::collections::hash_map::RandomState::new(),
        })
    }

    /// The bucket a request counts in.
    fn key(&self, req: &Request) -> u64 {
        let mut h = self.hasher.build_hasher();
        match &self.by {
            By::ClientIp => match req.client {
                Some(ip) => h.write(&match ip {
                    std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    std::net::IpAddr::V6(v6) => v6.octets(),
                }),
                None => h.write_u8(0),
            },
            By::Header(name) => match req.headers.get(name) {
                Some(v) => h.write(v.as_bytes()),
                None => h.write_u8(0),
            },
            By::Cookie(name) => match req.cookie(name) {
                Some(v) => h.write(v.as_bytes()),
                None => h.write_u8(0),
            },
        }
        h.finish() % KEY_SPACE
    }

    /// `Ok` when the request may go on; otherwise how long until it could.
    pub fn check(&self, req: &Request) -> Result<(), Duration> {
        self.limiter
            .check_key(&self.key(req))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets buckets that are full again (as good as new).
    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn config(requests: u64, per: Duration, burst: u64, by: &str) -> RateLimitConfig {
        RateLimitConfig {
            requests,
            per: ConfigDuration(per),
            burst,
            by: by.to_string(),
        }
    }

    #[test]
    fn a_bucket_holds_requests_plus_burst_per_key() {
        let limit = RateLimit::new(&config(3, Duration::from_secs(60), 2, "client_ip")).unwrap();
        let headers = http::HeaderMap::new();
        let a = Request::new(b"h", "/", "GET", &headers, "127.0.0.1".parse().ok());
        let b = Request::new(b"h", "/", "GET", &headers, "127.0.0.2".parse().ok());
        for _ in 0..5 {
            assert!(limit.check(&a).is_ok());
        }
        let wait = limit.check(&a).unwrap_err();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limit.check(&b).is_ok(), "another client has its own bucket");
    }

    #[test]
    fn keys_by_header_or_cookie() {
        let limit =
            RateLimit::new(&config(1, Duration::from_secs(60), 0, "header(X-Key)")).unwrap();
        let mut one = http::HeaderMap::new();
        one.insert("x-key", http::HeaderValue::from_static("one"));
        let mut two = http::HeaderMap::new();
        two.insert("x-key", http::HeaderValue::from_static("two"));
        let r1 = Request::new(b"h", "/", "GET", &one, None);
        let r2 = Request::new(b"h", "/", "GET", &two, None);
        assert!(limit.check(&r1).is_ok());
        assert!(limit.check(&r1).is_err());
        assert!(limit.check(&r2).is_ok());
        let limit = RateLimit::new(&config(1, Duration::from_secs(60), 0, "cookie(sid)")).unwrap();
        let mut c = http::HeaderMap::new();
        c.insert("cookie", http::HeaderValue::from_static("a=1; sid=abc"));
        let r = Request::new(b"h", "/", "GET", &c, None);
        assert!(limit.check(&r).is_ok());
        assert!(limit.check(&r).is_err());
    }

    #[test]
    fn refuses_settings_it_cannot_honour() {
        for (requests, per, by) in [
            (0, 1, "client_ip"),
            (1, 0, "client_ip"),
            (1, 1, "header()"),
            (1, 1, "header(bad name)"),
            (1, 1, "path"),
        ] {
            assert!(RateLimit::new(&config(requests, Duration::from_secs(per), 0, by)).is_err());
        }
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(2500)), 3);
        assert_eq!(retry_after(Duration::ZERO), 1);
    }
}
