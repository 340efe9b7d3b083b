//! One upstream address a request can go to: its pre-built Pingora peer, its weight,
//! its live health (shared with the health registry) and its sticky identity; and the
//! types of an attempt to reach one: the instances already [`Tried`] for a request, and
//! the [`InFlight`] guard that counts a request or connection on its instance.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use crate::health::InstanceHealth;
use crate::sticky::SetCookie;

/// One upstream address with its pre-built peer.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` as configured, for logs and metrics.
    pub name: Arc<str>,
    pub index: usize,
    pub weight: u32,
    pub peer: HttpPeer,
    /// Live state. A freshly built snapshot holds a placeholder; the apply step puts in
    /// the registry's entry, so that what is known of an instance survives reloads.
    pub health: Arc<InstanceHealth>,
    /// False when the host name did not resolve: the instance is down until it does.
    pub resolved: bool,
    /// Identity in sticky cookies.
    pub sticky_id: u64,
    /// `Set-Cookie` for instance stickiness.
    pub set_cookie: Option<SetCookie>,
}

impl Upstream {
    /// Reached over plain HTTP/1 (no TLS, no h2c) without an instance cookie: weir's
    /// own HTTP/1 path (`h1`) can take its requests.
    pub fn is_plain_http1(&self) -> bool {
        self.set_cookie.is_none()
            && !self.peer.is_tls()
            && self.peer.options.alpn == pingora::protocols::ALPN::H1
    }
}

/// The instances (or resolved addresses) of one route that already failed for this
/// request, by index. Indexes from 64 on are never marked: they stay eligible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn add(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    #[inline]
    pub fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Holds an instance's in-flight count up (read by `least_conn` and the admin API)
/// while a request or connection uses it.
#[derive(Debug)]
pub struct InFlight(Arc<InstanceHealth>);

impl InFlight {
    pub fn new(u: &Upstream) -> InFlight {
        u.health.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(u.health.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_marks_the_first_64() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        t.add(3);
        t.add(63);
        t.add(64);
        assert!(t.contains(3) && t.contains(63));
        assert!(!t.contains(4) && !t.contains(64), "index 64 stays eligible");
        assert!(!t.is_empty());
    }

    #[test]
    fn in_flight_counts_while_held() {
        let u = Upstream {
            name: "a:1".into(),
            index: 0,
            weight: 1,
            peer: HttpPeer::new("127.0.0.1:1", false, String::new()),
            health: Arc::default(),
            resolved: true,
            sticky_id: 0,
            set_cookie: None,
        };
        let a = InFlight::new(&u);
        let b = InFlight::new(&u);
        assert_eq!(u.health.inflight.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        assert_eq!(u.health.inflight.load(Ordering::Relaxed), 0);
    }
}
