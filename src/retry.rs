//! When a failed try is tried again (a route's `retries:`), and the retry budget that
//! keeps retries from multiplying an outage.
//!
//! This module owns the policy (compiled once per snapshot) and the budget (live, one
//! per route): a token bucket in thousandths of a retry. Every request deposits the
//! budget's share (20% deposits 200); a retry withdraws 1,000; the balance is capped, so
//! only recent requests count, and starts full so that a quiet route can still retry.
//! Without `retries:`, a route retries connect failures and, for idempotent requests,
//! upstream connections reset before any response byte, `defaults.retries` times.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::config::{Percent, RetriesConfig, RetryMethods, DEFAULT_RETRY_BUDGET};

/// Most retries a route may configure.
pub const MAX_ATTEMPTS: u32 = 10;
/// A retry in budget units.
const RETRY_COST: i64 = 1_000;
/// Retries a full budget holds: what a quiet route may spend at once.
const BUDGET_CAP: i64 = 10 * RETRY_COST;

/// What went wrong with one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection was made: nothing was sent.
    Connect,
    /// The connection closed or reset before any response byte.
    Reset,
    /// No response within `upstream_read`.
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

impl Failure {
    /// What an upstream error after connecting was, if a retry could mend it.
    pub fn of(e: &pingora::Error) -> Option<Failure> {
        use pingora::{ErrorSource, ErrorType::*};
        if e.esource() != &ErrorSource::Upstream {
            return None;
        }
        match e.etype() {
            ReadTimedout | WriteTimedout => Some(Failure::Timeout),
            ConnectionClosed | ReadError | WriteError => Some(Failure::Reset),
            _ => None,
        }
    }

    /// The `reason` label of `weir_retries_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Status(_) => "status",
        }
    }
}

#[derive(Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    connect: bool,
    reset: bool,
    timeout: bool,
    /// Bit `s - 500` set: status `s` is retried.
    statuses: u128,
    idempotent_only: bool,
    budget: Budget,
}

impl RetryPolicy {
    /// The policy of a route without `retries:`.
    pub fn default_for(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            connect: true,
            reset: true,
            timeout: false,
            statuses: 0,
            idempotent_only: true,
            budget: Budget::new(DEFAULT_RETRY_BUDGET),
        }
    }

    pub fn compile(c: &RetriesConfig) -> Result<RetryPolicy, String> {
        if c.attempts > MAX_ATTEMPTS {
            return Err(format!(
                "retries.attempts: {} is more than {MAX_ATTEMPTS}",
                c.attempts
            ));
        }
        let mut p = RetryPolicy {
            attempts: c.attempts,
            connect: false,
            reset: false,
            timeout: false,
            statuses: 0,
            idempotent_only: c.methods == RetryMethods::Idempotent,
            budget: Budget::new(c.budget),
        };
        for what in &c.on {
            match what.trim() {
                "connect" => p.connect = true,
                "reset" => p.reset = true,
                "timeout" => p.timeout = true,
                "5xx" => p.statuses = u128::MAX >> 28,
                code => match code.parse::<u16>() {
                    Ok(s @ 500..=599) => p.statuses |= 1 << (s - 500),
                    _ => {
                        return Err(format!(
                            "retries.on: {what:?} is not connect, reset, timeout, 5xx or a status 500-599"
                        ))
                    }
                },
            }
        }
        Ok(p)
    }

    /// Whether this failure of a request with this method may be tried again (attempts
    /// and budget are the caller's to check). Connect failures sent nothing: any method.
    pub fn covers(&self, failure: Failure, method: &http::Method) -> bool {
        self.covers_kind(failure, method.is_idempotent())
    }

    /// `covers`, for a method known only as idempotent or not.
    pub fn covers_kind(&self, failure: Failure, idempotent: bool) -> bool {
        let kind = match failure {
            Failure::Connect => return self.connect,
            Failure::Reset => self.reset,
            Failure::Timeout => self.timeout,
            Failure::Status(s) => self.retries_status(s),
        };
        kind && (!self.idempotent_only || idempotent)
    }

    /// Retries only what happens before a response (connect failures, resets): a
    /// response never has to be held back to decide.
    pub fn before_response_only(&self) -> bool {
        !self.timeout && self.statuses == 0
    }

    /// Whether some status is retried at all (so responses need looking at).
    #[inline]
    pub fn retries_status(&self, status: u16) -> bool {
        (500..600).contains(&status) && self.statuses & (1 << (status - 500)) != 0
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}

/// Retries allowed as a share of recent requests.
#[derive(Debug)]
pub struct Budget {
    deposit: i64,
    balance: AtomicI64,
}

impl Budget {
    pub fn new(share: Percent) -> Budget {
        Budget {
            // Basis points to thousandths of a retry.
            deposit: i64::from(share.basis_points()) / 10,
            balance: AtomicI64::new(BUDGET_CAP),
        }
    }

    /// A request arrived. A full budget (the usual case) is only read.
    #[inline]
    pub fn deposit(&self) {
        if self.balance.load(Ordering::Relaxed) < BUDGET_CAP {
            let after = self.balance.fetch_add(self.deposit, Ordering::Relaxed) + self.deposit;
            if after > BUDGET_CAP {
                // Two racing deposits may overshoot a little: trim back.
                let _ = self
                    .balance
                    .fetch_sub(after - BUDGET_CAP, Ordering::Relaxed);
            }
        }
    }

    /// Takes one retry from the budget; false if it cannot afford one.
    pub fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= RETRY_COST).then_some(b - RETRY_COST)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> RetriesConfig {
        serde_yaml::from_str(yaml).expect("retries parse")
    }

    #[test]
    fn policy_covers_what_it_names() {
        let p = RetryPolicy::compile(&config(
            "{ attempts: 2, on: [connect, timeout, 502, 503], methods: idempotent }",
        ))
        .expect("compiles");
        let (get, post) = (http::Method::GET, http::Method::POST);
        assert!(p.covers(Failure::Connect, &post));
        assert!(p.covers(Failure::Timeout, &get));
        assert!(!p.covers(Failure::Timeout, &post));
        assert!(!p.covers(Failure::Reset, &get));
        assert!(p.covers(Failure::Status(503), &get));
        assert!(!p.covers(Failure::Status(504), &get));
        assert!(!p.covers(Failure::Status(200), &get));
        let all = RetryPolicy::compile(&config("{ attempts: 1, on: [5xx], methods: all }"))
            .expect("compiles");
        assert!(all.covers(Failure::Status(500), &post) && all.covers(Failure::Status(599), &post));
        assert!(!all.retries_status(499) && !all.retries_status(600));
        let d = RetryPolicy::default_for(2);
        assert!(d.covers(Failure::Reset, &get) && !d.covers(Failure::Reset, &post));
        assert!(!d.covers(Failure::Status(502), &get));
    }

    #[test]
    fn bad_policies_are_named() {
        for (yaml, want) in [
            ("{ attempts: 11 }", "more than 10"),
            ("{ attempts: 1, on: [404] }", "\"404\" is not"),
            ("{ attempts: 1, on: [resets] }", "\"resets\" is not"),
        ] {
            let e = RetryPolicy::compile(&config(yaml)).expect_err(yaml);
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn budget_allows_a_share_of_recent_requests() {
        let b = Budget::new(Percent(2_000));
        // A full budget holds ten retries.
        assert_eq!((0..20).filter(|_| b.withdraw()).count(), 10);
        // Then one retry per five requests.
        let mut granted = 0;
        for _ in 0..100 {
            b.deposit();
            granted += usize::from(b.withdraw());
        }
        assert_eq!(granted, 20);
        // Deposits never build past the cap.
        for _ in 0..10_000 {
            b.deposit();
        }
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 10);
    }
}
