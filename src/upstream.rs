//! One upstream address a request can go to: its pre-built Pingora peer, its weight,
//! its live health (shared with the health registry) and its sticky identity.

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
