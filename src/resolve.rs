//! Background re-resolution of external `[host:port]` targets named by DNS.
//!
//! Every `INTERVAL` the resolver reads the current snapshot and re-resolves each
//! external target whose host is a name; a changed address set is swapped into that
//! target. A failed lookup keeps the last good addresses.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::snapshot::Snapshot;

const INTERVAL: Duration = Duration::from_secs(30);

pub struct Resolver {
    pub current: Arc<ArcSwap<Snapshot>>,
}

impl Resolver {
    async fn refresh(&self) {
        let snapshot = self.current.load_full();
        for ext in snapshot.externals.iter().filter(|e| !e.is_ip()) {
            match tokio::net::lookup_host((ext.host.as_str(), ext.port)).await {
                Ok(addrs) => {
                    let addrs: Vec<_> = addrs.collect();
                    if !addrs.is_empty() {
                        ext.set_addresses(addrs);
                    }
                }
                Err(e) => log::warn!(
                    "re-resolving external target [{}]: {e}; keeping the last addresses",
                    ext.name
                ),
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => self.refresh().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}
