//! The fleet's config store (`config_source: etcd`): which gateway documents the store
//! holds and which of them are in service, how they join the local files, and which
//! document is to blame when the whole does not build.
//!
//! Gateways live one per key, `PREFIX/gateways/NAME`; certificates may live under
//! `PREFIX/certs/NAME` and are written to `STATE_DIR/certs/NAME` (0600) for the local
//! TLS config to name. A document joins the config under the name
//! `etcd:PREFIX/gateways/NAME`, which is what its errors say instead of a file. The
//! talking to etcd is `etcd`; the watch loop is `watch`; the last good copy on disk is
//! `cache`.

pub mod cache;
pub mod etcd;
pub mod join;
pub mod push;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::load::Loaded;
use crate::diag::{Diagnostic, Diagnostics};

/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weir";
/// Largest password file.
const MAX_SECRET_BYTES: u64 = 4 << 10;
/// Largest certificate or key stored under `PREFIX/certs/`.
pub const MAX_CERT_BYTES: usize = 1 << 20;
/// Certificates the store may hold.
pub const MAX_CERTS: usize = 10_000;

/// One gateway document as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub text: Arc<str>,
    /// The key's modification revision in etcd.
    pub revision: i64,
}

/// Gateway documents by gateway name.
pub type Docs = BTreeMap<String, Doc>;

/// `config_source.etcd`, checked, with its files read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub endpoints: Vec<String>,
    /// Without a trailing `/`.
    pub prefix: String,
    /// PEM: the CA etcd's certificate chains to.
    pub ca: Option<Vec<u8>>,
    /// PEM: this client's certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    pub user: Option<(String, String)>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub state_dir: PathBuf,
    /// The largest answer read from etcd (`limits.config_bytes` and some room).
    pub max_bytes: usize,
}

impl Settings {
    /// The store settings of `loaded`, if it has any; errors name the main file.
    pub fn of(loaded: &Loaded) -> Result<Option<Settings>, Diagnostic> {
        let Some(source) = &loaded.config.config_source else {
            return Ok(None);
        };
        let e = &source.etcd;
        let fail = |m: String| Diagnostic::new(&loaded.main, m).scoped("config_source.etcd");
        if e.endpoints.is_empty() {
            return Err(fail("endpoints: at least one is needed".into()));
        }
        let tls = e.tls.is_some();
        for ep in &e.endpoints {
            let scheme_ok = match ep.split_once("://") {
                Some(("http", rest)) => !tls && !rest.is_empty(),
                Some(("https", rest)) => tls && !rest.is_empty(),
                _ => false,
            };
            if !scheme_ok {
                let want = if tls {
                    "https://HOST:PORT (tls is set)"
                } else {
                    "http://HOST:PORT (https:// needs tls)"
                };
                return Err(fail(format!("endpoint {ep:?}: expected {want}")));
            }
        }
        let prefix = e.prefix.trim_end_matches('/').to_string();
        if !e.prefix.starts_with('/') || prefix.contains("//") {
            return Err(fail(format!(
                "prefix {:?}: must start with / (such as /weir/prod)",
                e.prefix
            )));
        }
        let read_bounded = |what: &str, p: &str, limit: u64| -> Result<Vec<u8>, Diagnostic> {
            let path = loaded.resolve(p);
            read_small(&path, limit).map_err(|m| fail(format!("{what} {}: {m}", path.display())))
        };
        let read = |what: &str, p: &str| read_bounded(what, p, MAX_CERT_BYTES as u64);
        let (mut ca, mut identity) = (None, None);
        if let Some(t) = &e.tls {
            ca = t.ca.as_deref().map(|p| read("tls.ca", p)).transpose()?;
            identity = match (&t.cert, &t.key) {
                (Some(c), Some(k)) => Some((read("tls.cert", c)?, read("tls.key", k)?)),
                (None, None) => None,
                _ => return Err(fail("tls: cert and key go together".into())),
            };
        }
        let user = match (&e.username, &e.password_file) {
            (Some(u), Some(p)) => {
                let secret = read_bounded("password_file", p, MAX_SECRET_BYTES)?;
                let text = String::from_utf8(secret)
                    .map_err(|_| fail("password_file: not UTF-8 text".into()))?;
                Some((u.clone(), text.trim_end_matches(['\r', '\n']).to_string()))
            }
            (None, None) => None,
            _ => return Err(fail("username and password_file go together".into())),
        };
        let state_dir = loaded.resolve(
            loaded
                .config
                .state_dir
                .as_deref()
                .unwrap_or(DEFAULT_STATE_DIR),
        );
        Ok(Some(Settings {
            endpoints: e.endpoints.clone(),
            prefix,
            ca,
            identity,
            user,
            connect_timeout: e.connect_timeout.0,
            request_timeout: e.request_timeout.0,
            state_dir,
            max_bytes: usize::try_from(loaded.config.limits.config_bytes.0)
                .unwrap_or(usize::MAX)
                .saturating_add(1 << 20),
        }))
    }

    /// Where gateway documents live.
    pub fn gateways_prefix(&self) -> String {
        format!("{}/gateways/", self.prefix)
    }

    /// The key of gateway `name`.
    pub fn gateway_key(&self, name: &str) -> String {
        format!("{}{name}", self.gateways_prefix())
    }

    /// The name a document goes by in the config (and its errors).
    pub fn doc_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("etcd:{}", self.gateway_key(name)))
    }

    /// The gateway name of a document path, if `path` is one of this store's.
    pub fn doc_name<'p>(&self, path: &'p Path) -> Option<&'p str> {
        let text = path.to_str()?.strip_prefix("etcd:")?;
        text.strip_prefix(&self.gateways_prefix())
    }

    /// Where certificates from the store are written.
    pub fn certs_dir(&self) -> PathBuf {
        self.state_dir.join("certs")
    }
}

/// A file of at most `limit` bytes.
fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    crate::config::load::read_bounded(path, limit, "the limit")
}

/// Whether `name` may be a stored certificate's file name.
pub fn valid_cert_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 200
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The store's live state beside the reloader: what etcd holds, which documents are in
/// service, which were refused.
#[derive(Debug)]
pub struct Fleet {
    pub settings: Settings,
    /// The documents in service (the last good version of each).
    accepted: Mutex<Docs>,
    /// What the store holds, valid or not: every build starts from it, so that the
    /// outcome follows from the store and not from the order changes came in.
    stored: Mutex<Docs>,
    /// Documents refused, by name, with the revision refused (each reported once).
    refused: Mutex<BTreeMap<String, i64>>,
    /// Connected to etcd and watching.
    pub up: AtomicBool,
    /// The store revision the config in service reflects.
    pub revision: AtomicI64,
    /// Why the store cannot be reached, while it cannot.
    pub last_error: Mutex<Option<String>>,
}

/// A document a build refused, and why.
#[derive(Debug)]
pub struct Refusal {
    pub name: String,
    pub revision: i64,
    pub errors: Diagnostics,
    /// Its last good version stays in service.
    pub kept: bool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fleet {
    pub fn new(settings: Settings, accepted: Docs, stored: Docs, revision: i64) -> Fleet {
        crate::metrics::store_revision(revision);
        Fleet {
            settings,
            accepted: Mutex::new(accepted),
            stored: Mutex::new(stored),
            refused: Mutex::default(),
            up: AtomicBool::new(false),
            revision: AtomicI64::new(revision),
            last_error: Mutex::new(None),
        }
    }

    pub fn accepted(&self) -> Docs {
        locked(&self.accepted).clone()
    }

    pub fn stored(&self) -> Docs {
        locked(&self.stored).clone()
    }

    pub fn set_accepted(&self, docs: Docs, revision: i64) {
        *locked(&self.accepted) = docs;
        let before = self.revision.fetch_max(revision, Ordering::Relaxed);
        crate::metrics::store_revision(before.max(revision));
    }

    /// The store's revision of gateway `name` (0: no such key).
    pub fn stored_revision(&self, name: &str) -> i64 {
        locked(&self.stored).get(name).map_or(0, |d| d.revision)
    }

    /// Records changes seen at `revision` (`full`: the whole store); returns what the
    /// store now holds.
    pub fn note_stored(&self, changes: &[Change], revision: i64, full: bool) -> Docs {
        let mut stored = locked(&self.stored);
        *stored = changed(&stored, changes, revision, full);
        stored.clone()
    }

    /// Logs and counts refusals not reported before (a document stays refused until it
    /// changes: it is not reported again with every other change).
    pub fn report(&self, refusals: Vec<Refusal>) {
        let mut refused = locked(&self.refused);
        let now: BTreeMap<String, i64> = refusals
            .iter()
            .map(|r| (r.name.clone(), r.revision))
            .collect();
        for r in refusals {
            if refused.get(&r.name) == Some(&r.revision) {
                continue;
            }
            crate::metrics::store_rejected();
            let kept = if r.kept {
                "its last good version stays in service"
            } else {
                "not in service"
            };
            log::error!(
                "config store: gateway {:?} (revision {}) refused, {kept}:",
                r.name,
                r.revision
            );
            for e in r.errors.iter() {
                log::error!("  {e}");
            }
        }
        *refused = now;
    }

    /// Marks the store reachable or not (with why), for `/readyz` and the metrics.
    pub fn set_up(&self, up: bool, error: Option<String>) {
        self.up.store(up, Ordering::Relaxed);
        crate::metrics::store_up(up);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// One line for `/readyz`.
    pub fn status_line(&self) -> String {
        let revision = self.revision.load(Ordering::Relaxed);
        if self.up.load(Ordering::Relaxed) {
            return format!("config store: etcd up, revision {revision}");
        }
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "connecting".into());
        format!("config store: etcd unreachable ({why}); serving the last good config (revision {revision})")
    }
}

/// One change to a gateway document: its new version, or none (deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub doc: Option<Doc>,
}

/// `docs` with `changes` (seen at `revision`) made; `full`: the changes are everything
/// the store holds. A change older than the version held (a write this weir applied
/// before its watch caught up) is skipped.
pub fn changed(docs: &Docs, changes: &[Change], revision: i64, full: bool) -> Docs {
    let mut next = if full { Docs::new() } else { docs.clone() };
    for c in changes {
        let at = c.doc.as_ref().map_or(revision, |d| d.revision);
        if !full && next.get(&c.name).is_some_and(|d| d.revision > at) {
            continue;
        }
        match &c.doc {
            Some(d) => next.insert(c.name.clone(), d.clone()),
            None => next.remove(&c.name),
        };
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn doc(t: &str, r: i64) -> Doc {
        Doc {
            text: t.into(),
            revision: r,
        }
    }

    pub(super) fn docs(items: &[(&str, &str, i64)]) -> Docs {
        items
            .iter()
            .map(|(n, t, r)| (n.to_string(), doc(t, *r)))
            .collect()
    }

    #[test]
    fn changes_and_full_listings() {
        let d = docs(&[("a", "a1", 1), ("b", "b1", 2)]);
        let c = [
            Change {
                name: "a".into(),
                doc: None,
            },
            Change {
                name: "c".into(),
                doc: Some(doc("c1", 5)),
            },
        ];
        assert_eq!(
            changed(&d, &c, 5, false),
            docs(&[("b", "b1", 2), ("c", "c1", 5)])
        );
        assert_eq!(changed(&d, &c[1..], 5, true), docs(&[("c", "c1", 5)]));
        // An older change than the version held is skipped (delete seen at 1, put at 1).
        let old = [
            Change {
                name: "b".into(),
                doc: None,
            },
            Change {
                name: "a".into(),
                doc: Some(doc("a0", 0)),
            },
        ];
        assert_eq!(changed(&d, &old, 1, false), d);
    }

    pub(super) fn loaded(extra: &str) -> Loaded {
        crate::config::load::load_from_str(
            Path::new("/etc/weir/weir.yaml"),
            &format!("listeners: {{ http: {{ bind: \"127.0.0.1:8080\" }} }}\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn settings_are_checked() {
        let s = |yaml: &str| Settings::of(&loaded(yaml)).map_err(|d| d.to_string());
        assert_eq!(s("").unwrap(), None);
        let ok = s("config_source: { etcd: { endpoints: [\"http://127.0.0.1:2379\"], prefix: /weir/prod/ } }\nstate_dir: state\n")
            .unwrap()
            .unwrap();
        assert_eq!(ok.prefix, "/weir/prod");
        assert_eq!(ok.state_dir, Path::new("/etc/weir/state"));
        assert_eq!(ok.gateway_key("web"), "/weir/prod/gateways/web");
        let p = ok.doc_path("web");
        assert_eq!(p, Path::new("etcd:/weir/prod/gateways/web"));
        assert_eq!(ok.doc_name(&p), Some("web"));
        assert_eq!(ok.doc_name(Path::new("/etc/weir/weir.yaml")), None);
        for (yaml, want) in [
            ("{ endpoints: [], prefix: /w }", "at least one"),
            ("{ endpoints: [\"127.0.0.1:2379\"], prefix: /w }", "expected http://"),
            ("{ endpoints: [\"https://127.0.0.1:2379\"], prefix: /w }", "https:// needs tls"),
            ("{ endpoints: [\"http://127.0.0.1:2379\"], prefix: w }", "must start with /"),
            ("{ endpoints: [\"http://127.0.0.1:2379\"], prefix: /w, username: u }", "go together"),
            ("{ endpoints: [\"http://127.0.0.1:2379\"], prefix: /w, username: u, password_file: /nonexistent/p }", "cannot read"),
        ] {
            let e = s(&format!("config_source: {{ etcd: {yaml} }}\n")).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
            assert!(e.starts_with("/etc/weir/weir.yaml"), "{e}");
        }
    }

    #[test]
    fn cert_names() {
        assert!(valid_cert_name("example.com.pem"));
        assert!(!valid_cert_name("../x"));
        assert!(!valid_cert_name(".hidden"));
        assert!(!valid_cert_name("a/b"));
        assert!(!valid_cert_name(""));
    }
}
