//! Joining the store's documents to the local files: composing them (each document
//! refused on its own for syntax, bounds or a wrong name), building the whole, and when
//! the build names documents, taking those back to their version in service (or out)
//! and building again. Also what a start reads: etcd, else the last good copy.

use std::collections::BTreeSet;
use std::path::Path;

use super::{cache, etcd, Docs, Fleet, Refusal, Settings};
use crate::config::load::{load, Loaded};
use crate::diag::{Diagnostic, Diagnostics};
use crate::prepare::Caches;
use crate::snapshot::{build, Snapshot};

/// What a build with the store's documents gave: the config, its snapshot (none: the
/// config is as applied), and the documents that went into it.
pub type FleetBuild = (Loaded, Option<Snapshot>, Docs, Vec<Refusal>);

/// The local config with `docs` joined; documents refused on their own (syntax, bounds,
/// wrong name) are left out and returned with why.
pub fn compose(
    local: &Loaded,
    settings: &Settings,
    docs: &Docs,
) -> (Loaded, Vec<(String, Diagnostics)>) {
    let mut loaded = local.clone();
    let mut refused = Vec::new();
    let mut adding = loaded.documents();
    // Oldest first: of two documents that clash (one virtual host, one port), the
    // build names the later, so the newer write is the one refused, on every edge.
    let mut ordered: Vec<(&String, &super::Doc)> = docs.iter().collect();
    ordered.sort_by_key(|(name, d)| (d.revision, *name));
    for (name, doc) in ordered {
        if &*doc.text == etcd::NOT_UTF8 {
            let d = Diagnostic::new(
                &settings.doc_path(name),
                "the stored value is not UTF-8 text",
            );
            refused.push((name.clone(), d.into()));
            continue;
        }
        if let Err(d) = adding.add(&settings.doc_path(name), name, &doc.text) {
            refused.push((name.clone(), d));
        }
    }
    adding.finish();
    (loaded, refused)
}

/// The local part of a config: `loaded` without the store's documents.
pub fn local_part(loaded: &Loaded, settings: &Settings) -> Loaded {
    let mut local = loaded.clone();
    let ours = |p: &Path| settings.doc_name(p).is_some();
    local.config.gateways.retain(|g| !ours(&g.source));
    local.files.retain(|f| !ours(&f.path));
    local
}

/// The store documents `errors` name.
pub fn named(errors: &Diagnostics, settings: &Settings) -> BTreeSet<String> {
    errors
        .iter()
        .filter_map(|d| settings.doc_name(&d.file))
        .map(str::to_string)
        .collect()
}

/// Takes back the documents a build blamed: each goes back to its version in service
/// (`fallback`), or, when that is what failed (or it has none), out. Only what the build
/// names is touched, whatever changed last: so the outcome follows from what the store
/// holds, and edges that saw changes in another order reach the same config (of two
/// gateways claiming one host, the build names the newer write: see `compose`).
pub fn blame(docs: &mut Docs, fallback: &Docs, blamed: &BTreeSet<String>) {
    for n in blamed {
        match fallback.get(n).filter(|f| docs.get(n) != Some(*f)) {
            Some(f) => docs.insert(n.clone(), f.clone()),
            None => docs.remove(n),
        };
    }
}

/// The store's documents at start: from etcd (the certificates it holds written to the
/// state directory, when `write`), else from the last good copy; with the revision and
/// the documents last in service (for blame).
pub fn initial_docs(settings: &Settings, write: bool) -> Result<(Docs, i64, Docs), Diagnostic> {
    let cached = cache::load(settings);
    let listed = etcd::block_on(async {
        let client = etcd::connect(settings).await?;
        etcd::list(&client, settings).await
    })
    .and_then(|r| r);
    match (listed, cached) {
        (Ok(listing), cached) => {
            if write {
                etcd::write_certs(&settings.certs_dir(), &listing.certs, true)
                    .map_err(|e| Diagnostic::new(&settings.state_dir, e))?;
            }
            let docs = super::changed(&Docs::new(), &listing.gateways, listing.revision, true);
            let fallback = cached.map(|(d, _)| d).unwrap_or_default();
            Ok((docs, listing.revision, fallback))
        }
        (Err(e), Ok((docs, revision))) => {
            log::warn!(
                "config store: {e}; starting from the last good copy ({}, revision {revision})",
                cache::path(settings).display()
            );
            Ok((docs.clone(), revision, docs))
        }
        (Err(e), Err(c)) => Err(Diagnostic::new(
            &settings.state_dir,
            format!("config store: {e}, and there is no last good copy to start from ({c}): weir cannot start without its gateways"),
        )),
    }
}

/// The local config joined with `docs` and built, every refusal an error.
pub fn check_all(
    local: &Loaded,
    settings: &Settings,
    docs: &Docs,
) -> Result<(Loaded, Snapshot), Diagnostics> {
    let (loaded, refused) = compose(local, settings, docs);
    let mut errors = Diagnostics::default();
    for (_, d) in refused {
        errors.0.extend(d.0);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let inputs = Caches::default().prepare(&loaded.config);
    let snapshot = build(&loaded, &inputs)?;
    Ok((loaded, snapshot))
}

/// The first build with a store: its documents (from etcd, else the last good copy), the
/// local files read after the store's certificates were written, the copy saved anew.
pub fn first_build(
    caches: &Caches,
    path: &Path,
    settings: Settings,
) -> Result<(Loaded, Snapshot, Fleet), Diagnostics> {
    let (docs, revision, fallback) = initial_docs(&settings, true)?;
    let local = load(path)?;
    let (loaded, snapshot, accepted, refusals) =
        build_fleet(caches, &settings, &local, docs.clone(), &fallback, None)?;
    let snapshot = snapshot.ok_or_else(|| Diagnostic::new(path, "nothing built"))?;
    if let Err(e) = cache::save(&settings, &accepted, revision) {
        log::warn!("config store: {e}");
    }
    let fleet = Fleet::new(settings, accepted, docs, revision);
    fleet.report(refusals);
    Ok((loaded, snapshot, fleet))
}

/// Builds the local config joined with the store's `docs`. Documents the build blames
/// are taken back to their version in `fallback` (or out) and the build runs again; an
/// error that names no document fails the whole. With `same`, a config equal to it is
/// not built (`None` snapshot).
pub fn build_fleet(
    caches: &Caches,
    settings: &Settings,
    local: &Loaded,
    mut docs: Docs,
    fallback: &Docs,
    same: Option<&Loaded>,
) -> Result<FleetBuild, Diagnostics> {
    let mut refusals: Vec<Refusal> = Vec::new();
    // Each round takes at least one document back or out.
    for _ in 0..=docs.len() + fallback.len() + 1 {
        let (loaded, refused) = compose(local, settings, &docs);
        let blamed = if refused.is_empty() {
            if same.is_some_and(|s| s.fingerprint == loaded.fingerprint) {
                return Ok((loaded, None, docs, refusals));
            }
            let inputs = caches.prepare(&loaded.config);
            match build(&loaded, &inputs) {
                Ok(snapshot) => return Ok((loaded, Some(snapshot), docs, refusals)),
                Err(errors) => {
                    let named = named(&errors, settings);
                    if named.is_empty() {
                        return Err(errors);
                    }
                    vec![(named, errors)]
                }
            }
        } else {
            refused
                .into_iter()
                .map(|(n, d)| (std::iter::once(n).collect(), d))
                .collect()
        };
        for (names, errors) in blamed {
            for name in &names {
                let revision = docs.get(name).map_or(0, |d| d.revision);
                // A refused version that was itself the fallback is not reported twice.
                if !refusals.iter().any(|r| r.name == *name) {
                    refusals.push(Refusal {
                        name: name.clone(),
                        revision,
                        errors: errors.clone(),
                        kept: false,
                    });
                }
            }
            blame(&mut docs, fallback, &names);
        }
        for r in &mut refusals {
            r.kept = docs.contains_key(&r.name);
        }
    }
    Err(Diagnostic::new(&local.main, "config store: no set of its documents builds").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{docs, loaded};

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn blame_takes_back_the_changed_blamed_document() {
        let fallback = docs(&[("a", "a1", 1), ("b", "b1", 2)]);
        let mut d = docs(&[("a", "a2", 3), ("b", "b1", 2), ("c", "c1", 4)]);
        blame(&mut d, &fallback, &set(&["a"]));
        assert_eq!(d, docs(&[("a", "a1", 1), ("b", "b1", 2), ("c", "c1", 4)]));
        // A new document that is blamed goes (it had no version in service).
        blame(&mut d, &fallback, &set(&["c"]));
        assert_eq!(d, fallback);
    }

    #[test]
    fn blame_touches_only_what_the_build_names() {
        // a changed and now claims b's host; the build names b (later in name order):
        // b goes, on every edge alike, whatever their history.
        let fallback = docs(&[("a", "a1", 1), ("b", "b1", 2)]);
        let mut d = docs(&[("a", "a2", 3), ("b", "b1", 2)]);
        blame(&mut d, &fallback, &set(&["b"]));
        assert_eq!(d, docs(&[("a", "a2", 3)]));
    }

    #[test]
    fn compose_refuses_documents_one_by_one() {
        let local = loaded("");
        let settings = Settings::of(&loaded(
            "config_source: { etcd: { endpoints: [\"http://127.0.0.1:2379\"], prefix: /w } }\n",
        ))
        .unwrap()
        .unwrap();
        let d = docs(&[
            (
                "good",
                "name: good\nroutes: { a: { respond: { status: 200 } } }\n",
                1,
            ),
            ("bad", "name: bad\nroutes: [\n", 2),
            (
                "other",
                "name: elsewhere\nroutes: { a: { respond: { status: 200 } } }\n",
                3,
            ),
            (
                "json",
                "{\"name\": \"json\", \"routes\": {\"a\": {\"respond\": {\"status\": 204}}}}",
                4,
            ),
        ]);
        let (c, refused) = compose(&local, &settings, &d);
        let names: Vec<&str> = c.config.gateways.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["good", "json"]);
        let why: Vec<String> = refused.iter().map(|(n, d)| format!("{n}: {d}")).collect();
        assert_eq!(refused.len(), 2, "{why:?}");
        assert!(why[0].starts_with("bad: etcd:/w/gateways/bad:"), "{why:?}");
        assert!(why[1].contains("holds gateway \"elsewhere\""), "{why:?}");
        assert_eq!(local_part(&c, &settings).config.gateways.len(), 0);
        assert_ne!(c.fingerprint, local.fingerprint);
    }
}
