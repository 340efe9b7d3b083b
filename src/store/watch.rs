//! The watch loop: list the prefix at a revision, apply it, watch from the next
//! revision and apply each change as it comes, through the reloader's one path. When
//! the connection is lost or the watch is cancelled (a compaction passed it), the
//! store is marked unreachable, weir keeps serving what it has, and after a back-off
//! it lists again at the current revision.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, EventType, WatchOptions};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::etcd::{self, classify, Key};
use super::{Change, Fleet};

/// First wait before connecting again; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Applies a batch of changes at a revision (`true`: the batch is the whole store).
pub type Apply = Arc<dyn Fn(&[Change], i64, bool) + Send + Sync>;

pub struct StoreWatch {
    pub fleet: Arc<Fleet>,
    /// The reloader's store path (validate, build, apply, count).
    pub apply: Apply,
}

#[async_trait]
impl BackgroundService for StoreWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let fleet = self.fleet.clone();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let why = tokio::select! {
                why = self.session(&fleet, &mut backoff) => why,
                _ = shutdown.changed() => return,
            };
            let was_up = fleet.up.load(std::sync::atomic::Ordering::Relaxed);
            fleet.set_up(false, Some(why.clone()));
            if was_up {
                log::warn!("config store: {why}; serving the last good config, reconnecting");
            } else {
                log::debug!("config store: {why}; trying again in {backoff:?}");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

impl StoreWatch {
    /// Connects, lists, applies, then applies changes until something fails; says what.
    async fn session(&self, fleet: &Arc<Fleet>, backoff: &mut Duration) -> String {
        let settings = &fleet.settings;
        let client = match etcd::connect(settings).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let listing = match etcd::list(&client, settings).await {
            Ok(l) => l,
            Err(e) => return e,
        };
        let revision = listing.revision;
        self.certs(fleet, listing.certs, true).await;
        self.apply(listing.gateways, revision, true).await;
        fleet.set_up(true, None);
        *backoff = FIRST_BACKOFF;
        log::info!(
            "config store: watching {}/ at etcd revision {revision}",
            settings.prefix
        );
        match self.watch(fleet, &client, revision).await {
            Ok(()) => "the watch ended".into(),
            Err(e) => e,
        }
    }

    async fn watch(&self, fleet: &Arc<Fleet>, client: &Client, from: i64) -> Result<(), String> {
        let settings = &fleet.settings;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from + 1)
            .with_progress_notify();
        let mut stream = client
            .watch_client()
            .max_decoding_message_size(settings.max_bytes)
            .watch(format!("{}/", settings.prefix), Some(options))
            .await
            .map_err(|e| format!("watching: {e}"))?;
        loop {
            let Some(answer) = stream.message().await.map_err(|e| format!("watch: {e}"))? else {
                return Ok(());
            };
            if answer.canceled() || answer.compact_revision() != 0 {
                return Err(format!(
                    "the watch was cancelled ({}; compacted to {}): listing again",
                    answer.cancel_reason(),
                    answer.compact_revision()
                ));
            }
            let revision = answer.header().map_or(from, |h| h.revision());
            let mut changes = Vec::new();
            let mut certs = Vec::new();
            for event in answer.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                let put = event.event_type() == EventType::Put;
                match classify(settings, key) {
                    Some(Key::Gateway(name)) => changes.push(Change {
                        name: name.to_string(),
                        doc: put.then(|| etcd::doc(kv.value(), kv.mod_revision())),
                    }),
                    Some(Key::Cert(name)) if put => {
                        certs.push((name.to_string(), kv.value().to_vec()));
                    }
                    Some(Key::Cert(name)) => {
                        let path = settings.certs_dir().join(name);
                        if super::valid_cert_name(name) {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                    None => {}
                }
            }
            if !certs.is_empty() {
                self.certs(fleet, certs, false).await;
            }
            if !changes.is_empty() {
                self.apply(changes, revision, false).await;
            }
        }
    }

    /// Writes certificates to the state directory; the file watcher reloads the
    /// listeners that name them.
    async fn certs(&self, fleet: &Arc<Fleet>, certs: Vec<(String, Vec<u8>)>, full: bool) {
        let dir = fleet.settings.certs_dir();
        let done = tokio::task::spawn_blocking(move || etcd::write_certs(&dir, &certs, full)).await;
        match done {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => log::info!("config store: {n} certificate file(s) written or removed"),
            Ok(Err(e)) => log::error!("config store: certificates: {e}"),
            Err(e) => log::error!("config store: certificates: {e}"),
        }
    }

    /// Applies changes off the async threads (building is CPU work).
    async fn apply(&self, changes: Vec<Change>, revision: i64, full: bool) {
        let apply = self.apply.clone();
        let done = tokio::task::spawn_blocking(move || apply(&changes, revision, full)).await;
        if let Err(e) = done {
            log::error!("config store: applying revision {revision}: {e}");
        }
    }
}
