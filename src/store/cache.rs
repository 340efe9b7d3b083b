//! The last good copy of the store's documents, under the state directory
//! (`etcd-PREFIX.json`): a weir that starts while etcd is unreachable starts from it.
//! Written whole to a temporary file and renamed over, so a reader sees the old copy
//! or the new one, never half of one.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Doc, Docs, Settings};

#[derive(Debug, Serialize, Deserialize)]
struct Copy {
    prefix: String,
    revision: i64,
    gateways: std::collections::BTreeMap<String, Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    text: String,
    revision: i64,
}

/// Where the copy of `settings`' prefix lives.
pub fn path(settings: &Settings) -> PathBuf {
    let name: String = settings
        .prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    settings.state_dir.join(format!("etcd{name}.json"))
}

/// Writes the documents in service at `revision`.
pub fn save(settings: &Settings, docs: &Docs, revision: i64) -> Result<(), String> {
    let copy = Copy {
        prefix: settings.prefix.clone(),
        revision,
        gateways: docs
            .iter()
            .map(|(n, d)| {
                let e = Entry {
                    text: d.text.to_string(),
                    revision: d.revision,
                };
                (n.clone(), e)
            })
            .collect(),
    };
    let target = path(settings);
    let fail = |e: std::io::Error| format!("writing {}: {e}", target.display());
    let bytes = serde_json::to_vec(&copy).map_err(|e| e.to_string())?;
    create_private_dir(&settings.state_dir).map_err(fail)?;
    let tmp = target.with_extension("json.tmp");
    let mut file = private_file(&tmp).map_err(fail)?;
    file.write_all(&bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, &target).map_err(fail)
}

/// Reads the copy: the documents and their revision, or why there is none.
pub fn load(settings: &Settings) -> Result<(Docs, i64), String> {
    let target = path(settings);
    let bytes = super::read_small(&target, settings.max_bytes as u64 * 2)
        .map_err(|e| format!("{}: {e}", target.display()))?;
    let copy: Copy = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a copy of the store: {e}", target.display()))?;
    if copy.prefix != settings.prefix {
        return Err(format!(
            "{} holds prefix {}, not {}",
            target.display(),
            copy.prefix,
            settings.prefix
        ));
    }
    let docs = copy
        .gateways
        .into_iter()
        .map(|(n, e)| {
            let text: Arc<str> = e.text.into();
            (
                n,
                Doc {
                    text,
                    revision: e.revision,
                },
            )
        })
        .collect();
    Ok((docs, copy.revision))
}

/// Creates `dir` (and its parents) readable by weir alone.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) `path` readable by weir alone.
pub fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_and_wrong_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/weir/prod".into(),
            ca: None,
            identity: None,
            user: None,
            connect_timeout: std::time::Duration::from_secs(1),
            request_timeout: std::time::Duration::from_secs(1),
            state_dir: dir.path().join("state"),
            max_bytes: 1 << 20,
        };
        assert!(load(&s).unwrap_err().contains("cannot read"));
        let mut docs = Docs::new();
        docs.insert(
            "a".into(),
            Doc {
                text: "name: a\n".into(),
                revision: 7,
            },
        );
        save(&s, &docs, 9).unwrap();
        assert_eq!(load(&s).unwrap(), (docs, 9));
        let mode = std::fs::metadata(path(&s)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(path(&s), b"{broken").unwrap();
        assert!(load(&s).unwrap_err().contains("not a copy"));
        s.prefix = "/weir/other".into();
        std::fs::copy(
            path(&Settings {
                prefix: "/weir/prod".into(),
                ..s.clone()
            }),
            path(&s),
        )
        .ok();
        std::fs::write(
            path(&s),
            br#"{"prefix":"/weir/prod","revision":1,"gateways":{}}"#,
        )
        .unwrap();
        assert!(load(&s).unwrap_err().contains("holds prefix /weir/prod"));
    }
}
