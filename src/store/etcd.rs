//! Talking to etcd (v3 API, through `etcd-client`): connecting with the configured TLS,
//! user and timeouts; listing the prefix at one revision; writing one gateway with a
//! compare-and-swap on its revision; writing the stored certificates to the state
//! directory. Every answer is bounded: bytes (`limits.config_bytes`), keys (gateways
//! and certificates), time (`request_timeout`).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp, TxnOpResponse,
};

use super::{valid_cert_name, Change, Doc, Settings, MAX_CERTS, MAX_CERT_BYTES};
use crate::config::load::MAX_GATEWAYS;

/// The text a document that is not UTF-8 is given: `Documents::add` refuses it.
pub const NOT_UTF8: &str = "\0 the stored value is not UTF-8 text";

/// What one key under the prefix is.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'k> {
    Gateway(&'k str),
    Cert(&'k str),
}

/// What `key` is under `settings`' prefix, if weir reads it.
pub fn classify<'k>(settings: &Settings, key: &'k str) -> Option<Key<'k>> {
    let rest = key
        .strip_prefix(settings.prefix.as_str())?
        .strip_prefix('/')?;
    if let Some(name) = rest.strip_prefix("gateways/").filter(|n| !n.is_empty()) {
        return Some(Key::Gateway(name));
    }
    rest.strip_prefix("certs/")
        .filter(|n| !n.is_empty())
        .map(Key::Cert)
}

/// Everything under the prefix at one revision.
#[derive(Debug, Default)]
pub struct Listing {
    pub revision: i64,
    /// One change per stored gateway (a full listing).
    pub gateways: Vec<Change>,
    pub certs: Vec<(String, Vec<u8>)>,
}

/// A document from a stored value.
pub fn doc(value: &[u8], revision: i64) -> Doc {
    let text = std::str::from_utf8(value).unwrap_or(NOT_UTF8);
    Doc {
        text: text.into(),
        revision,
    }
}

async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {limit:?}")),
    }
}

/// A client for `settings`' cluster.
pub async fn connect(settings: &Settings) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.connect_timeout)
        .with_timeout(settings.request_timeout)
        // A member that dies without closing the connection is noticed in seconds.
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some((user, password)) = &settings.user {
        options = options.with_user(user.clone(), password.clone());
    }
    if settings.ca.is_some() || settings.identity.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &settings.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &settings.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    let endpoints = settings.endpoints.join(", ");
    bounded(
        settings.connect_timeout + settings.request_timeout,
        &format!("connecting to etcd at {endpoints}"),
        Client::connect(&settings.endpoints, Some(options)),
    )
    .await
}

/// Lists the prefix: its gateways and certificates, at one revision.
pub async fn list(client: &Client, settings: &Settings) -> Result<Listing, String> {
    let mut kv = client
        .kv_client()
        .max_decoding_message_size(settings.max_bytes);
    let limit = (MAX_GATEWAYS + MAX_CERTS + 1) as i64;
    let options = GetOptions::new().with_prefix().with_limit(limit);
    let prefix = format!("{}/", settings.prefix);
    let answer = bounded(
        settings.request_timeout,
        &format!("listing {prefix}"),
        kv.get(prefix.clone(), Some(options)),
    )
    .await?;
    if answer.more() {
        return Err(format!("{prefix} holds more than {limit} keys"));
    }
    let mut listing = Listing {
        revision: answer.header().map_or(0, |h| h.revision()),
        ..Listing::default()
    };
    for kv in answer.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        match classify(settings, key) {
            Some(Key::Gateway(name)) => listing.gateways.push(Change {
                name: name.to_string(),
                doc: Some(doc(kv.value(), kv.mod_revision())),
            }),
            Some(Key::Cert(name)) => listing.certs.push((name.to_string(), kv.value().to_vec())),
            None => {}
        }
    }
    if listing.gateways.len() > MAX_GATEWAYS {
        return Err(format!("{prefix} holds more than {MAX_GATEWAYS} gateways"));
    }
    Ok(listing)
}

/// The outcome of a compare-and-swap write.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Written at this revision.
    Done(i64),
    /// The key was at this revision (0: absent), not the one expected.
    Lost(i64),
}

/// Puts (or with `None` deletes) gateway `name` if its revision is still `expected`
/// (0: it must not exist).
pub async fn write(
    client: &Client,
    settings: &Settings,
    name: &str,
    text: Option<&str>,
    expected: i64,
) -> Result<Written, String> {
    let key = settings.gateway_key(name);
    let op = match text {
        Some(t) => TxnOp::put(key.clone(), t, None),
        None => TxnOp::delete(key.clone(), None),
    };
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            expected,
        )])
        .and_then([op])
        .or_else([TxnOp::get(key.clone(), None)]);
    let mut kv = client.kv_client();
    let answer = bounded(
        settings.request_timeout,
        &format!("writing {key}"),
        kv.txn(txn),
    )
    .await?;
    if answer.succeeded() {
        return Ok(Written::Done(answer.header().map_or(0, |h| h.revision())));
    }
    let current = answer
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map_or(0, |kv| kv.mod_revision())),
            _ => None,
        })
        .unwrap_or(0);
    Ok(Written::Lost(current))
}

/// Writes the store's certificates to `dir` (0600 each), only those that changed; with
/// `full`, removes the files the store no longer holds. Returns how many files changed.
pub fn write_certs(dir: &Path, certs: &[(String, Vec<u8>)], full: bool) -> Result<usize, String> {
    let fail = |e: std::io::Error| format!("{}: {e}", dir.display());
    let mut changed = 0;
    if certs.is_empty() && !dir.exists() {
        return Ok(0);
    }
    super::cache::create_private_dir(dir).map_err(fail)?;
    for (name, bytes) in certs {
        if !valid_cert_name(name) || bytes.len() > MAX_CERT_BYTES {
            log::warn!(
                "config store: certificate {name:?} ignored (names are [A-Za-z0-9._-], at most {MAX_CERT_BYTES} bytes)"
            );
            continue;
        }
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|b| b == *bytes) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut file = super::cache::private_file(&tmp).map_err(fail)?;
        std::io::Write::write_all(&mut file, bytes).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        changed += 1;
    }
    if full {
        let keep: std::collections::HashSet<&str> = certs.iter().map(|(n, _)| n.as_str()).collect();
        for entry in std::fs::read_dir(dir).map_err(fail)?.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if valid_cert_name(name) && !keep.contains(name) {
                std::fs::remove_file(entry.path()).map_err(fail)?;
                changed += 1;
            }
        }
    }
    Ok(changed)
}

/// Runs `f` to completion on a runtime of its own (for callers outside any runtime:
/// the CLI, the start, the admin API's blocking writes).
pub fn block_on<T>(f: impl Future<Output = T>) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    Ok(runtime.block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified() {
        let s = Settings {
            endpoints: vec![],
            prefix: "/weir/prod".into(),
            ca: None,
            identity: None,
            user: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            state_dir: "/tmp".into(),
            max_bytes: 1,
        };
        assert_eq!(
            classify(&s, "/weir/prod/gateways/web"),
            Some(Key::Gateway("web"))
        );
        assert_eq!(
            classify(&s, "/weir/prod/certs/a.pem"),
            Some(Key::Cert("a.pem"))
        );
        assert_eq!(classify(&s, "/weir/prod/gateways/"), None);
        assert_eq!(classify(&s, "/weir/production/gateways/web"), None);
        assert_eq!(classify(&s, "/weir/prod/other/x"), None);
        assert_eq!(&*doc(b"\xff", 1).text, NOT_UTF8);
    }

    #[test]
    fn certs_are_written_private_and_pruned() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("certs");
        let certs = vec![
            ("a.pem".to_string(), b"A".to_vec()),
            ("../x".to_string(), b"X".to_vec()),
        ];
        assert_eq!(write_certs(&d, &certs, true).unwrap(), 1);
        assert_eq!(std::fs::read(d.join("a.pem")).unwrap(), b"A");
        let mode = std::fs::metadata(d.join("a.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            write_certs(&d, &certs, true).unwrap(),
            0,
            "unchanged: not rewritten"
        );
        assert_eq!(write_certs(&d, &[], true).unwrap(), 1);
        assert!(!d.join("a.pem").exists());
    }
}
