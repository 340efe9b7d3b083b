//! `weir config push DIR` and `weir config pull DIR`: gateway files into and out of the
//! store's prefix (GitOps in, GitOps out), and `weir check --etcd`. A push is checked
//! whole, with the local config, before anything is written; each key is then written
//! with a compare-and-swap on the revision the check saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::etcd::{self, Listing, Written};
use super::join::check_all;
use super::{Change, Docs, Settings};
use crate::config::load::{load, parse_gateway_file, Loaded, MAX_GATEWAYS};
use crate::diag::Diagnostics;
use crate::snapshot::Snapshot;

/// The local config and its store settings; an error when it has none.
fn local(config: &Path) -> Result<(Loaded, Settings), String> {
    let loaded = load(config).map_err(|d| d.to_string())?;
    match Settings::of(&loaded).map_err(|d| d.to_string())? {
        Some(s) => Ok((loaded, s)),
        None => Err(format!(
            "{}: no config_source.etcd: there is no store to use",
            config.display()
        )),
    }
}

fn list(settings: &Settings) -> Result<Listing, String> {
    etcd::block_on(async {
        let client = etcd::connect(settings).await?;
        etcd::list(&client, settings).await
    })?
}

/// `weir check --etcd`: what the store holds now, with the local config.
pub fn check(config: &Path) -> Result<(Loaded, Snapshot, String), String> {
    let (local, settings) = local(config)?;
    let listing = list(&settings)?;
    let docs = super::changed(&Docs::new(), &listing.gateways, listing.revision, true);
    let (loaded, snapshot) = check_all(&local, &settings, &docs).map_err(|d| d.to_string())?;
    let note = format!(
        "{} gateway(s) in etcd under {}/ at revision {}",
        docs.len(),
        settings.prefix,
        listing.revision
    );
    Ok((loaded, snapshot, note))
}

/// The gateway files of `dir` (`*.yaml`, `*.yml`, `*.json`), one document per gateway:
/// a file's own text when it holds one gateway, else each gateway written anew.
fn read_dir(dir: &Path, local: &Loaded) -> Result<BTreeMap<String, String>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    let limit = local.config.limits.config_bytes.0;
    let mut total = 0u64;
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        total += bytes.len() as u64;
        if total > limit {
            return Err(format!(
                "{}: over limits.config_bytes ({limit}) in all",
                dir.display()
            ));
        }
        let text =
            String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", file.display()))?;
        let mut errors = Diagnostics::default();
        crate::config::shape::measure(
            &file,
            &text,
            crate::config::shape::Kind::Gateways,
            &mut Default::default(),
        )
        .map_err(|d| d.to_string())?;
        let gateways = parse_gateway_file(&file, &text, &mut errors);
        if !errors.is_empty() {
            return Err(errors.to_string());
        }
        let single = gateways.len() == 1;
        for g in gateways {
            let doc = if single {
                text.clone()
            } else {
                serde_yaml::to_string(&g).map_err(|e| e.to_string())?
            };
            if out.insert(g.name.clone(), doc).is_some() {
                return Err(format!(
                    "{}: gateway {:?} is defined twice in {}",
                    file.display(),
                    g.name,
                    dir.display()
                ));
            }
            if out.len() > MAX_GATEWAYS {
                return Err(format!(
                    "{}: more than {MAX_GATEWAYS} gateways",
                    dir.display()
                ));
            }
        }
    }
    Ok(out)
}

/// `weir config push DIR`: the gateways of `dir` into the store; with `prune`, the
/// store's gateways that `dir` does not hold are deleted. Returns what was done.
pub fn push(config: &Path, dir: &Path, prune: bool) -> Result<String, String> {
    let (local, settings) = local(config)?;
    let files = read_dir(dir, &local)?;
    let listing = list(&settings)?;
    let stored = super::changed(&Docs::new(), &listing.gateways, listing.revision, true);
    let mut next = if prune { Docs::new() } else { stored.clone() };
    for (name, text) in &files {
        let revision = stored.get(name).map_or(0, |d| d.revision);
        next.insert(
            name.clone(),
            super::Doc {
                text: text.as_str().into(),
                revision,
            },
        );
    }
    check_all(&local, &settings, &next).map_err(|d| format!("refused, nothing written:\n{d}"))?;
    let mut writes: Vec<(String, Option<&str>, i64)> = Vec::new();
    for (name, text) in &files {
        let old = stored.get(name);
        if old.is_some_and(|d| *d.text == **text) {
            continue;
        }
        writes.push((name.clone(), Some(text), old.map_or(0, |d| d.revision)));
    }
    if prune {
        for (name, d) in &stored {
            if !files.contains_key(name) {
                writes.push((name.clone(), None, d.revision));
            }
        }
    }
    let (mut put, mut deleted, mut last) = (0, 0, listing.revision);
    for (name, text, expected) in &writes {
        let written = etcd::block_on(async {
            let client = etcd::connect(&settings).await?;
            etcd::write(&client, &settings, name, *text, *expected).await
        })??;
        match written {
            Written::Done(r) => last = r,
            Written::Lost(now) => {
                return Err(format!(
                    "gateway {name:?} changed in the store while pushing (revision {now}, expected {expected}); {put} written, {deleted} deleted before it: run the push again"
                ))
            }
        }
        if text.is_some() {
            put += 1;
        } else {
            deleted += 1;
        }
    }
    Ok(format!(
        "pushed {put} gateway(s), deleted {deleted}, {} unchanged; store revision {last}",
        files.len() - put
    ))
}

/// `weir config pull DIR`: each stored gateway to `DIR/NAME.yaml`; with `prune`, the
/// other `*.yaml` files in `dir` are removed.
pub fn pull(config: &Path, dir: &Path, prune: bool) -> Result<String, String> {
    let (_, settings) = local(config)?;
    let listing = list(&settings)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names = std::collections::HashSet::new();
    for Change { name, doc } in &listing.gateways {
        let Some(doc) = doc else { continue };
        if name.contains('/') || name.starts_with('.') {
            log::warn!("gateway {name:?}: not a file name; skipped");
            continue;
        }
        let file = format!("{name}.yaml");
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, doc.text.as_bytes())
            .and_then(|_| std::fs::rename(&tmp, dir.join(&file)))
            .map_err(|e| format!("{}: {e}", dir.join(&file).display()))?;
        names.insert(file);
    }
    let mut removed = 0;
    if prune {
        for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && !names.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
                removed += 1;
            }
        }
    }
    Ok(format!(
        "pulled {} gateway(s) from {}/ at revision {} into {}{}",
        names.len(),
        settings.prefix,
        listing.revision,
        dir.display(),
        if prune {
            format!(", removed {removed} other file(s)")
        } else {
            String::new()
        }
    ))
}
