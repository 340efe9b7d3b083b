//! Connection limits: how many connections a listener holds open, and how many one
//! client address may hold.
//!
//! This module owns the live counts (they outlive snapshots: a reload changes the
//! limits, not the connections already open). A listener at `max_connections` takes no
//! more clients until one leaves, as HAProxy's `maxconn` does; a client at
//! `max_connections_per_client` has its new connection closed at once. The counts are
//! taken once per connection, never per request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

/// Shards of the per-client table (each behind its own lock).
const SHARDS: usize = 16;

/// One listener's open connections.
#[derive(Debug, Default)]
pub struct ListenerCount {
    open: AtomicU32,
    freed: Notify,
}

/// Open connections by client address, for every listener.
#[derive(Debug, Default)]
pub struct ClientCounts {
    shards: [Mutex<FxHashMap<IpAddr, u32>>; SHARDS],
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The client already holds its share.
    PerClient,
    /// The listener stayed full for as long as a client may wait.
    Limit,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::PerClient => "per_client",
            Refused::Limit => "limit",
        }
    }
}

impl ListenerCount {
    /// Takes a place on the listener, waiting up to `wait` while it is full
    /// (`limit` 0: no limit, and nothing counted).
    pub async fn enter(
        self: &Arc<Self>,
        limit: u32,
        wait: Duration,
    ) -> Result<Option<ListenerPlace>, Refused> {
        if limit == 0 {
            return Ok(None);
        }
        let waiting = async {
            loop {
                let freed = self.freed.notified();
                if self.try_enter(limit) {
                    return;
                }
                freed.await;
            }
        };
        match tokio::time::timeout(wait, waiting).await {
            Ok(()) => Ok(Some(ListenerPlace(self.clone()))),
            Err(_) => Err(Refused::Limit),
        }
    }

    fn try_enter(&self, limit: u32) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }
}

/// A place taken on a listener, given back on drop.
#[derive(Debug)]
pub struct ListenerPlace(Arc<ListenerCount>);

impl Drop for ListenerPlace {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl ClientCounts {
    fn shard(&self, ip: IpAddr) -> &Mutex<FxHashMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            IpAddr::V6(v6) => (u128::from(v6) as usize) ^ ((u128::from(v6) >> 64) as usize),
        };
        &self.shards[(h.wrapping_mul(0x9E37_79B9) >> 7) & (SHARDS - 1)]
    }

    /// Counts one more connection from `ip`, unless it already holds `limit`
    /// (`limit` 0: no limit, and nothing counted).
    pub fn enter(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Result<Option<ClientPlace>, Refused> {
        if limit == 0 {
            return Ok(None);
        }
        let mut map = self.shard(ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return Err(Refused::PerClient);
        }
        *n += 1;
        Ok(Some(ClientPlace {
            counts: self.clone(),
            ip,
        }))
    }

    /// Connections `ip` holds open (for tests).
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let map = self.shard(ip).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

/// A client's connection, counted until dropped.
#[derive(Debug)]
pub struct ClientPlace {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .shard(self.ip)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // Entries live only while connections do: the table stays as small as
                // the set of connected clients.
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_share_and_entries_go_when_it_leaves() {
        let counts = Arc::new(ClientCounts::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let one = counts.enter(a, 2).unwrap();
        let two = counts.enter(a, 2).unwrap();
        assert_eq!(counts.enter(a, 2).unwrap_err(), Refused::PerClient);
        assert!(counts.enter(b, 2).unwrap().is_some());
        drop(one);
        let three = counts.enter(a, 2).unwrap();
        drop((two, three));
        assert_eq!(counts.open(a), 0);
        assert!(counts.shards.iter().all(|s| s.lock().unwrap().is_empty()));
        assert!(counts.enter(a, 0).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_full_listener_makes_clients_wait_for_a_place() {
        let count = Arc::new(ListenerCount::default());
        let first = count.enter(1, Duration::from_secs(5)).await.unwrap();
        let wait = Duration::from_millis(50);
        assert_eq!(count.enter(1, wait).await.unwrap_err(), Refused::Limit);
        let c = count.clone();
        let waiter = tokio::spawn(async move { c.enter(1, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(waiter.await.unwrap().unwrap().is_some());
    }
}
