//! External `[host:port]` targets: their resolved addresses, swapped in by the
//! background resolver, and the round-robin over them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::upstreams::peer::HttpPeer;

use crate::upstream::{Tried, Upstream};

/// An external `[host:port]` target; host names are re-resolved in the background.
#[derive(Debug)]
pub struct External {
    pub host: String,
    pub port: u16,
    pub name: Arc<str>,
    pub peers: ArcSwap<Vec<Upstream>>,
    pub(crate) cursor: AtomicUsize,
    /// Peer options template used when the resolver builds new peers.
    pub(crate) template: HttpPeer,
}

impl External {
    /// The next resolved address not in `tried`.
    pub fn pick(&self, tried: Tried) -> Option<Upstream> {
        let peers = self.peers.load();
        for _ in 0..peers.len() {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % peers.len();
            if !tried.contains(i) {
                return Some(peers[i].clone());
            }
        }
        None
    }

    /// Whether an address other than `last`, not yet tried, is there.
    pub fn another(&self, last: Option<usize>, tried: Tried) -> bool {
        self.peers
            .load()
            .iter()
            .any(|u| Some(u.index) != last && !tried.contains(u.index))
    }

    /// Replaces the resolved addresses (kept in a stable order so picks stay fair).
    pub fn set_addresses(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        let current: Vec<SocketAddr> = self
            .peers
            .load()
            .iter()
            .filter_map(|u| u.peer._address.as_inet().copied())
            .collect();
        if current == addrs {
            return;
        }
        self.peers.store(Arc::new(self.peers_for(&addrs)));
    }

    fn peers_for(&self, addrs: &[SocketAddr]) -> Vec<Upstream> {
        addrs
            .iter()
            .enumerate()
            .map(|(index, addr)| {
                let mut peer = self.template.clone();
                peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(*addr);
                Upstream {
                    name: self.name.clone(),
                    index,
                    weight: 1,
                    peer,
                    // External targets have no health checks: always available.
                    health: Arc::default(),
                    resolved: true,
                    sticky_id: 0,
                    set_cookie: None,
                }
            })
            .collect()
    }
}
