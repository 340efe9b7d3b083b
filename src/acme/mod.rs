//! ACME: certificates issued and renewed by weir itself (RFC 8555), for the exact
//! virtual hosts of the gateways a TLS listener with `tls.acme` carries.
//!
//! - [`Settings`] are compiled with the snapshot (pure): directory, challenge, names,
//!   state directory, renewal window.
//! - A [`Manager`] per listener is live state, owned by the reloader: one thread with
//!   its own small async runtime that loads stored certificates, orders missing and
//!   expiring ones ([`issue`]), stores them ([`store`]) and publishes them to the
//!   listener's SNI resolver through [`Certs`] (an `ArcSwap`: new handshakes see a new
//!   certificate at once, open connections keep theirs). A failed order is retried
//!   with back-off (5 s doubling to an hour) while what the name has keeps serving.
//! - Challenges are answered through `crate::challenge`: HTTP-01 by the proxy on any
//!   listener, TLS-ALPN-01 by the SNI resolver.
//! - A name without a certificate yet gets the listener's default certificate, or a
//!   failed handshake: never a wait.

mod issue;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use instant_acme::{Account, AccountCredentials, NewAccount};
use tokio::sync::Notify;

use crate::tls::Loaded;
use store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
}

/// A listener's `tls.acme`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub directory: String,
    pub email: Option<String>,
    pub challenge: Challenge,
    pub ca_file: Option<PathBuf>,
    pub renew_before: Duration,
    pub state_dir: PathBuf,
    /// The names to hold certificates for, sorted.
    pub names: Vec<String>,
    /// The listener staples OCSP answers: ACME's certificates get them too.
    pub ocsp_stapling: bool,
}

pub use crate::tls::Issued as Certs;

/// Back-off after failed orders: 5 s, doubling, at most an hour.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// A listener's name and its ACME certificates.
type ListenerCerts = (Arc<str>, Arc<Certs>);

/// Every listener's ACME certificates, for the expiry gauge.
pub fn all_certs() -> Vec<ListenerCerts> {
    registry()
        .lock()
        .map(|r| r.clone())
        .unwrap_or_else(|e| e.into_inner().clone())
}

fn registry() -> &'static Mutex<Vec<ListenerCerts>> {
    static REGISTRY: OnceLock<Mutex<Vec<ListenerCerts>>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

/// Keeps one listener's ACME certificates issued and fresh.
pub struct Manager {
    listener: Arc<str>,
    settings: Mutex<Option<Settings>>,
    certs: Arc<Certs>,
    stapler: Arc<crate::ocsp::Stapler>,
    wake: Arc<Notify>,
}

impl Manager {
    /// Starts the manager of `listener`, publishing into `certs` (with OCSP staples
    /// from `stapler` when the listener staples).
    pub fn start(
        listener: Arc<str>,
        certs: Arc<Certs>,
        stapler: Arc<crate::ocsp::Stapler>,
    ) -> Result<Arc<Manager>, String> {
        let manager = Arc::new(Manager {
            listener: listener.clone(),
            settings: Mutex::new(None),
            certs: certs.clone(),
            stapler,
            wake: Arc::new(Notify::new()),
        });
        let weak = Arc::downgrade(&manager);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("acme: runtime: {e}"))?;
        std::thread::Builder::new()
            .name("weir-acme".into())
            .spawn(move || runtime.block_on(run(weak)))
            .map_err(|e| format!("acme: cannot start its thread: {e}"))?;
        if let Ok(mut r) = registry().lock() {
            r.push((listener, certs));
        }
        Ok(manager)
    }

    /// Takes a reload's settings (`None`: the listener no longer uses ACME).
    pub fn configure(&self, settings: Option<Settings>) {
        let mut current = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        if *current != settings {
            *current = settings;
            self.wake.notify_one();
        }
    }
}

/// What the manager knows of one name.
struct Name {
    cert: Option<Arc<Loaded>>,
    /// Not before this (after failures).
    next_try: Instant,
    failures: u32,
}

/// The manager's thread: work, then sleep until something is due or settings change.
async fn run(manager: Weak<Manager>) {
    let mut account: Option<(Settings, Account)> = None;
    let mut names: HashMap<String, Name> = HashMap::new();
    loop {
        let Some(me) = manager.upgrade() else {
            return;
        };
        let settings = me
            .settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (wake, listener) = (me.wake.clone(), me.listener.clone());
        let out = Out {
            certs: me.certs.clone(),
            stapler: me.stapler.clone(),
        };
        drop(me);
        let next = match settings {
            Some(s) => step(&listener, &s, &mut account, &mut names, &out).await,
            None => {
                names.clear();
                out.certs.store(Arc::default());
                Instant::now() + MAX_WAIT
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// One round: load what is stored, order what is missing or due, publish.
async fn step(
    listener: &str,
    s: &Settings,
    account: &mut Option<(Settings, Account)>,
    names: &mut HashMap<String, Name>,
    out: &Out,
) -> Instant {
    let store = Store::new(&s.state_dir);
    names.retain(|n, _| s.names.contains(n));
    for name in &s.names {
        names.entry(name.clone()).or_insert_with(|| Name {
            cert: stored(&store, name),
            next_try: Instant::now(),
            failures: 0,
        });
    }
    out.publish(s, names);
    let mut next = Instant::now() + MAX_WAIT;
    for name in &s.names {
        let Some(n) = names.get_mut(name) else {
            continue;
        };
        if let Some(at) = n.cert.as_ref().and_then(|c| renew_in(c, s.renew_before)) {
            next = next.min(Instant::now() + at);
            continue;
        }
        if n.next_try > Instant::now() {
            next = next.min(n.next_try);
            continue;
        }
        match order(s, &store, account, name).await {
            Ok(loaded) => {
                log::info!("acme: listener {listener:?}: certificate for {name} issued");
                crate::metrics::acme_order(true);
                n.cert = Some(loaded);
                n.failures = 0;
                out.publish(s, names);
            }
            Err(e) => {
                crate::metrics::acme_order(false);
                n.failures += 1;
                let wait = FIRST_RETRY
                    .saturating_mul(1 << (n.failures - 1).min(12))
                    .min(MAX_WAIT);
                n.next_try = Instant::now() + wait;
                next = next.min(n.next_try);
                log::warn!(
                    "acme: listener {listener:?}: {name}: {e}; trying again in {}s",
                    wait.as_secs()
                );
            }
        }
    }
    next
}

/// Orders and stores a certificate for `name`, with the account (made if needed).
async fn order(
    s: &Settings,
    store: &Store,
    account: &mut Option<(Settings, Account)>,
    name: &str,
) -> Result<Arc<Loaded>, String> {
    let same = |a: &Settings| {
        a.directory == s.directory && a.ca_file == s.ca_file && a.state_dir == s.state_dir
    };
    if !account.as_ref().is_some_and(|(a, _)| same(a)) {
        *account = Some((s.clone(), open_account(s, store).await?));
    }
    let Some((_, acct)) = account.as_ref() else {
        return Err("no account".into());
    };
    let issued = issue::issue(acct, name, s.challenge).await?;
    store.save_certificate(name, &issued.chain, &issued.key)?;
    stored(store, name).ok_or_else(|| format!("the certificate stored for {name} does not load"))
}

/// The account stored for this directory, or a new one (then stored).
async fn open_account(s: &Settings, store: &Store) -> Result<Account, String> {
    let builder = || match &s.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let fail = |e: instant_acme::Error| format!("account: {e}");
    if let Some(json) = store.account() {
        let saved: Result<SavedAccount, _> = serde_json::from_slice(&json);
        match saved {
            Ok(saved) if saved.directory == s.directory => {
                return builder()
                    .map_err(fail)?
                    .from_credentials(saved.credentials)
                    .await
                    .map_err(fail);
            }
            Ok(_) => log::info!("acme: new directory {}: a new account", s.directory),
            Err(e) => log::warn!(
                "acme: {}/account.json unreadable ({e}): a new account",
                store.dir().display()
            ),
        }
    }
    let contact = s.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()
        .map_err(fail)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            s.directory.clone(),
            None,
        )
        .await
        .map_err(fail)?;
    let saved = SavedAccount {
        directory: s.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec(&saved).map_err(|e| format!("account: {e}"))?;
    store.save_account(&json)?;
    Ok(account)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// A stored certificate for `name` that loads and covers it.
fn stored(store: &Store, name: &str) -> Option<Arc<Loaded>> {
    let (cert_path, chain, key_path, key) = store.certificate(name)?;
    match crate::tls::parse_pair(&cert_path, &chain, &key_path, &key) {
        Ok(l) if l.names.iter().any(|n| n == name) => Some(Arc::new(l)),
        Ok(_) => {
            log::warn!("acme: {} does not cover {name}", cert_path.display());
            None
        }
        Err(e) => {
            log::warn!("acme: stored certificate ignored: {e}");
            None
        }
    }
}

/// Where the manager's certificates go.
struct Out {
    certs: Arc<Certs>,
    stapler: Arc<crate::ocsp::Stapler>,
}

impl Out {
    /// Publishes the certificates held to the listener's resolver, each with its OCSP
    /// staple on a stapling listener.
    fn publish(&self, s: &Settings, names: &HashMap<String, Name>) {
        let map: HashMap<String, Arc<Loaded>> = names
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.cert.clone()?)))
            .collect();
        if s.ocsp_stapling {
            for c in map.values().filter(|c| c.staple.get().is_none()) {
                match crate::ocsp::Source::of(&c.key.cert) {
                    Ok(source) => self
                        .stapler
                        .attach([(&c.staple, &c.key, &Arc::new(source))]),
                    Err(e) => log::debug!("acme: {:?} is not stapled: {e}", c.names),
                }
            }
        }
        self.certs.store(Arc::new(map));
    }
}

/// How long until `cert` should be renewed; `None` when it is due now. Due when
/// `renew_before` is left of its validity, or half its lifetime if that is shorter
/// (so a window longer than the lifetime does not renew in a loop).
fn renew_in(cert: &Loaded, renew_before: Duration) -> Option<Duration> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let at = renew_at(cert.not_before, cert.not_after, renew_before);
    (at > now).then(|| Duration::from_secs((at - now) as u64))
}

/// The unix time to renew a certificate valid from `not_before` to `not_after`.
fn renew_at(not_before: i64, not_after: i64, renew_before: Duration) -> i64 {
    let window = renew_before.as_secs().min(i64::MAX as u64) as i64;
    let half = not_before + (not_after - not_before) / 2;
    (not_after.saturating_sub(window)).max(half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time() {
        let day = 86_400;
        let month = Duration::from_secs(30 * day as u64);
        // A 90-day certificate: 30 days before it expires.
        assert_eq!(renew_at(0, 90 * day, month), 60 * day);
        // A 10-day certificate: a 30-day window would renew it at once, forever;
        // half its life instead.
        assert_eq!(renew_at(0, 10 * day, month), 5 * day);
    }
}
