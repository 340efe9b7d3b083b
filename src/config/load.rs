//! Reading the config from disk, bounded: the main file, then every file its `include:`
//! globs match (relative to the main file), each holding one gateway, a list, or several
//! YAML documents; and the certificate, key and token files the config names.
//!
//! Everything here that reads is bounded before it is trusted: bytes (`limits.config_bytes`
//! over all config files), YAML alias expansion, gateways, routes and instances, included
//! files and the include walk (symlinked directories are followed once each, never into a
//! loop; a file matched twice is read once). Syntax and type errors carry
//! `file:line:col`; all files are read even after an error so that every problem is
//! reported at once. Nothing is compiled here: that is `snapshot::build`'s job, which
//! reads only what this module loaded.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::shape::{self, Kind, Totals};
use super::{Config, GatewayConfig, GatewayDocument, DEFAULT_CONFIG_BYTES};
use crate::diag::{Diagnostic, Diagnostics};

/// Gateways in one config, all files together.
pub const MAX_GATEWAYS: usize = 10_000;
/// Routes in one config.
pub const MAX_ROUTES: usize = 100_000;
/// Instances in one config.
pub const MAX_INSTANCES: usize = 100_000;
/// Files the include globs may match.
pub const MAX_INCLUDED_FILES: usize = 10_000;
/// Directory entries one include walk may look at, and how deep `**` goes.
const MAX_WALK_ENTRIES: usize = 100_000;
const MAX_WALK_DEPTH: usize = 32;
/// Largest certificate, key or token file.
const MAX_BLOB_BYTES: u64 = 1 << 20;

/// One config file as read.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: Arc<str>,
}

/// A config read from disk, before validation.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The main file.
    pub main: PathBuf,
    /// The directory relative paths in the config are resolved against.
    pub base_dir: PathBuf,
    /// Every config file that was read (main first), with its text.
    pub files: Vec<SourceFile>,
    /// The include globs, resolved against `base_dir`: a new file matching one is part
    /// of the config.
    pub includes: Vec<glob::Pattern>,
    /// Where each include glob's matches start (its part before the first wildcard),
    /// made or not: a directory made there later is a change to the config.
    pub include_roots: Vec<PathBuf>,
    /// Directories whose entries can change the config.
    pub watch_dirs: Vec<PathBuf>,
    /// Certificate, key and htpasswd files, by resolved path: content, or why it cannot
    /// be read.
    pub blobs: BTreeMap<PathBuf, Result<Arc<[u8]>, String>>,
    /// Token files that exist and can be read.
    pub tokens_readable: HashSet<PathBuf>,
    /// Why the access log cannot be written, when it cannot.
    pub access_log_error: Option<String>,
    /// Problems that do not stop the config (printed by `weir check`, logged at run).
    pub warnings: Diagnostics,
    /// A hash of every file's path and content, to skip reloads that change nothing.
    pub fingerprint: u64,
}

impl Loaded {
    /// A path from the config, resolved against the main file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Every file whose change changes the config: config files, certificates and keys,
    /// token files.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.files.iter().map(|f| f.path.clone()).collect();
        out.extend(self.blobs.keys().cloned());
        if let Some(admin) = &self.config.admin {
            for f in [&admin.token_file, &admin.read_token_file]
                .into_iter()
                .flatten()
            {
                out.push(self.resolve(f));
            }
        }
        out
    }

    /// Whether `path` would be read as an included config file.
    pub fn is_included(&self, path: &Path) -> bool {
        let opts = match_options();
        self.includes
            .iter()
            .any(|p| p.matches_path_with(path, opts))
    }

    /// The config as it would be with `file` holding `text` (or removed): its gateways
    /// replaced, counts checked again. `file` must be an included file (existing or not).
    pub fn with_file(&self, file: &Path, text: Option<&str>) -> Result<Loaded, Diagnostics> {
        let mut next = self.clone();
        let same = |p: &Path| same_file(p, file);
        next.config.gateways.retain(|g| !same(&g.source));
        next.files.retain(|f| !same(&f.path));
        if let Some(text) = text {
            shape::measure(file, text, Kind::Gateways, &mut Totals::default())?;
            let mut errors = Diagnostics::default();
            next.config
                .gateways
                .extend(parse_gateway_file(file, text, &mut errors));
            if !errors.is_empty() {
                return Err(errors);
            }
            next.files.push(SourceFile {
                path: file.to_path_buf(),
                text: text.into(),
            });
        }
        let total: u64 = next.files.iter().map(|f| f.text.len() as u64).sum();
        let limit = next.config.limits.config_bytes.0;
        if total > limit {
            return Err(Diagnostic::new(
                file,
                format!("config files together would be {total} bytes, over limits.config_bytes ({limit})"),
            )
            .into());
        }
        let mut counts = Counts::default();
        if let Some(d) = counts.add(file, &next.config.gateways) {
            return Err(d.into());
        }
        // A gateway in the new text may name an htpasswd file not read yet.
        read_blobs(&mut next);
        next.fingerprint = next.compute_fingerprint();
        Ok(next)
    }

    fn compute_fingerprint(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for f in &self.files {
            (&f.path, &*f.text).hash(&mut hasher);
        }
        for (path, blob) in &self.blobs {
            path.hash(&mut hasher);
            match blob {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(e) => e.hash(&mut hasher),
            }
        }
        if let Some(admin) = &self.config.admin {
            // A token file's content is read on use; its presence is what matters here.
            for f in [&admin.token_file, &admin.read_token_file]
                .into_iter()
                .flatten()
            {
                self.resolve(f).exists().hash(&mut hasher);
            }
        }
        hasher.finish()
    }
}

/// Adds gateway documents that come from somewhere other than files (the config
/// store), each under a name of its own used in errors, with the same bounds as
/// included files. A document that is refused is left out; the others stay.
pub struct Documents<'a> {
    loaded: &'a mut Loaded,
    counts: Counts,
    bytes: u64,
    totals: Totals,
}

impl Loaded {
    /// Starts adding documents to this config.
    pub fn documents(&mut self) -> Documents<'_> {
        let mut counts = Counts::default();
        // The files already passed these bounds.
        let _ = counts.add(&self.main, &self.config.gateways);
        let bytes = self.files.iter().map(|f| f.text.len() as u64).sum();
        Documents {
            loaded: self,
            counts,
            bytes,
            totals: Totals::default(),
        }
    }
}

impl Documents<'_> {
    /// Adds the document at `path` that must hold exactly the gateway `name`.
    pub fn add(&mut self, path: &Path, name: &str, text: &str) -> Result<(), Diagnostics> {
        let limit = self.loaded.config.limits.config_bytes.0;
        let bytes = self.bytes + text.len() as u64;
        if bytes > limit {
            return Err(Diagnostic::new(
                path,
                format!("the config would be {bytes} bytes with this document, over limits.config_bytes ({limit})"),
            )
            .into());
        }
        shape::measure(path, text, Kind::Gateways, &mut self.totals)?;
        let mut errors = Diagnostics::default();
        let gateways = parse_gateway_file(path, text, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        match gateways.as_slice() {
            [g] if g.name == name => {}
            [g] => {
                return Err(Diagnostic::new(
                    path,
                    format!("holds gateway {:?}: the key must be its name", g.name),
                )
                .into())
            }
            _ => {
                return Err(Diagnostic::new(
                    path,
                    format!("must hold exactly one gateway, holds {}", gateways.len()),
                )
                .into())
            }
        }
        let mut counts = self.counts;
        if let Some(d) = counts.add(path, &gateways) {
            return Err(d.into());
        }
        self.counts = counts;
        self.bytes = bytes;
        self.loaded.config.gateways.extend(gateways);
        self.loaded.files.push(SourceFile {
            path: path.to_path_buf(),
            text: text.into(),
        });
        Ok(())
    }

    /// Reads the files the added gateways name and takes the new fingerprint.
    pub fn finish(self) {
        read_blobs(self.loaded);
        self.loaded.fingerprint = self.loaded.compute_fingerprint();
    }
}

/// Whether two paths name the same file: equal, or equal once canonical.
pub fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn match_options() -> glob::MatchOptions {
    glob::MatchOptions {
        case_sensitive: true,
        // `*` stays within one directory; `**` crosses them.
        require_literal_separator: true,
        require_literal_leading_dot: false,
    }
}

/// Totals checked as files are parsed, before anything is built from them.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    gateways: usize,
    routes: usize,
    instances: usize,
}

impl Counts {
    /// Adds `gateways`; the error names `file` when a total goes over its bound.
    fn add(&mut self, file: &Path, gateways: &[Arc<GatewayConfig>]) -> Option<Diagnostic> {
        self.gateways += gateways.len();
        for g in gateways {
            self.routes += g.routes.len();
            self.instances += g.routes.values().map(|r| r.instances.len()).sum::<usize>();
        }
        let over = |what: &str, n: usize, max: usize| {
            (n > max).then(|| {
                Diagnostic::new(
                    file,
                    format!("too many {what}: {n} with this file, at most {max} in all"),
                )
            })
        };
        over("gateways", self.gateways, MAX_GATEWAYS)
            .or_else(|| over("routes", self.routes, MAX_ROUTES))
            .or_else(|| over("instances", self.instances, MAX_INSTANCES))
    }
}

/// Reads a file of at most `limit` bytes; `what` names the limit in the error.
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > limit {
        return Err(format!("{} bytes, over {what} ({limit})", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("over {what} ({limit} bytes)"));
    }
    Ok(bytes)
}

fn read_text(path: &Path, limit: u64, what: &str) -> Result<String, Diagnostic> {
    let bytes = read_bounded(path, limit, what).map_err(|e| Diagnostic::new(path, e))?;
    String::from_utf8(bytes).map_err(|_| Diagnostic::new(path, "not UTF-8 text"))
}

/// Reads the main config file and everything it names.
pub fn load(main: &Path) -> Result<Loaded, Diagnostics> {
    let text = read_text(main, DEFAULT_CONFIG_BYTES, "the largest main file (64MiB)").map_err(
        |mut d| {
            d.message = format!("cannot read config file: {}", d.message);
            d
        },
    )?;
    load_from_str(main, &text)
}

/// Parses the main config from `text` (as if read from `main`) and reads its includes.
pub fn load_from_str(main: &Path, text: &str) -> Result<Loaded, Diagnostics> {
    let mut errors = Diagnostics::default();
    let mut totals = Totals::default();
    shape::measure(main, text, Kind::Main, &mut totals)?;
    let mut config: Config = match serde_yaml::from_str(text) {
        Ok(c) => c,
        Err(e) => return Err(Diagnostic::from_yaml(main, &e).into()),
    };
    for g in &mut config.gateways {
        // Just parsed: not shared yet, so this changes it in place.
        Arc::make_mut(g).source = main.to_path_buf();
    }
    let limit = config.limits.config_bytes.0;
    if text.len() as u64 > limit {
        return Err(Diagnostic::new(
            main,
            format!("{} bytes, over limits.config_bytes ({limit})", text.len()),
        )
        .into());
    }
    let mut counts = Counts::default();
    if let Some(d) = counts.add(main, &config.gateways) {
        return Err(d.into());
    }
    let base_dir = main
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut loaded = Loaded {
        files: vec![SourceFile {
            path: main.to_path_buf(),
            text: text.into(),
        }],
        main: main.to_path_buf(),
        includes: Vec::new(),
        include_roots: Vec::new(),
        watch_dirs: vec![base_dir.clone()],
        blobs: BTreeMap::new(),
        tokens_readable: HashSet::new(),
        access_log_error: None,
        warnings: Diagnostics::default(),
        fingerprint: 0,
        base_dir,
        config,
    };
    read_includes(&mut loaded, &mut counts, &mut totals, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    read_blobs(&mut loaded);
    for f in &loaded.files {
        if let Some(parent) = f.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            loaded.watch_dirs.push(parent.to_path_buf());
        }
    }
    let watched = loaded.watched_files();
    for f in &watched {
        if let Some(parent) = f.parent().filter(|p| !p.as_os_str().is_empty()) {
            loaded.watch_dirs.push(parent.to_path_buf());
        }
    }
    loaded.watch_dirs.sort();
    loaded.watch_dirs.dedup();
    loaded.fingerprint = loaded.compute_fingerprint();
    Ok(loaded)
}

/// Reads every file the include globs match, each once, in glob order then name order.
fn read_includes(
    loaded: &mut Loaded,
    counts: &mut Counts,
    totals: &mut Totals,
    errors: &mut Diagnostics,
) {
    let main = loaded.main.clone();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    if let Ok(c) = std::fs::canonicalize(&main) {
        seen.insert(c);
    }
    let mut used: u64 = loaded.files[0].text.len() as u64;
    let limit = loaded.config.limits.config_bytes.0;
    let mut found_files = 0usize;
    for pattern in loaded.config.include.clone() {
        let full = loaded.base_dir.join(&pattern);
        let Some(full_text) = full.to_str() else {
            errors.push(Diagnostic::new(
                &main,
                format!("include {pattern:?}: path is not UTF-8"),
            ));
            continue;
        };
        let compiled = match glob::Pattern::new(full_text) {
            Ok(p) => p,
            Err(e) => {
                errors.push(Diagnostic::new(
                    &main,
                    format!("include {pattern:?}: invalid glob: {e}"),
                ));
                continue;
            }
        };
        let walk = walk_glob(&full, &compiled);
        if let Some(e) = walk.error {
            errors.push(Diagnostic::new(&main, format!("include {pattern:?}: {e}")));
        }
        loaded.watch_dirs.extend(walk.dirs);
        // A root not made yet is watched for from its nearest existing ancestor.
        let (root, _) = glob_base(&full);
        loaded
            .watch_dirs
            .extend(root.ancestors().find(|a| a.is_dir()).map(PathBuf::from));
        loaded.include_roots.push(root);
        loaded.includes.push(compiled);
        for file in walk.files {
            let canonical = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if !seen.insert(canonical) {
                continue;
            }
            found_files += 1;
            if found_files > MAX_INCLUDED_FILES {
                errors.push(Diagnostic::new(
                    &main,
                    format!("include: more than {MAX_INCLUDED_FILES} files match"),
                ));
                return;
            }
            let text = match read_text(
                &file,
                limit - used.min(limit),
                "limits.config_bytes, all config files together",
            ) {
                Ok(t) => t,
                Err(d) => {
                    errors.push(d);
                    return;
                }
            };
            used += text.len() as u64;
            if let Err(d) = shape::measure(&file, &text, Kind::Gateways, totals) {
                errors.push(d);
                return;
            }
            let gateways = parse_gateway_file(&file, &text, errors);
            if let Some(d) = counts.add(&file, &gateways) {
                errors.push(d);
                return;
            }
            loaded.config.gateways.extend(gateways);
            loaded.files.push(SourceFile {
                path: file,
                text: text.into(),
            });
        }
    }
}

/// Reads certificate and key files (bounded); what cannot be read is kept as the error,
/// for the build to report where the file is named.
fn read_blobs(loaded: &mut Loaded) {
    let mut paths = Vec::new();
    for tls in loaded
        .config
        .listeners
        .values()
        .filter_map(|l| l.tls.as_ref())
    {
        for c in &tls.certificates {
            paths.push(loaded.resolve(&c.cert));
            paths.push(loaded.resolve(&c.key));
        }
        if let Some(ca) = tls.acme.as_ref().and_then(|a| a.ca_file.as_ref()) {
            paths.push(loaded.resolve(ca));
        }
        if let Some(f) = &tls.ticket_keys_file {
            paths.push(loaded.resolve(f));
        }
        if let Some(auth) = &tls.client_auth {
            for f in std::iter::once(&auth.ca).chain(&auth.crl) {
                paths.push(loaded.resolve(f));
            }
        }
    }
    // CA and client certificates for TLS to upstreams.
    for g in &loaded.config.gateways {
        for r in g.routes.values() {
            for tls in r.instances.iter().filter_map(|i| i.0.tls.as_ref()) {
                let client = tls.client_cert.iter().flat_map(|c| [&c.cert, &c.key]);
                for f in tls.ca.iter().chain(client) {
                    paths.push(loaded.resolve(f));
                }
            }
        }
    }
    // htpasswd files of `basic_auth`, read (and watched) like certificates.
    for g in &loaded.config.gateways {
        let routes = g.routes.values().filter_map(|r| r.basic_auth.as_ref());
        for auth in g.basic_auth.iter().chain(routes) {
            paths.push(loaded.resolve(&auth.users_file));
        }
    }
    for path in paths {
        let blob = read_bounded(&path, MAX_BLOB_BYTES, "1MiB").map(Arc::from);
        loaded.blobs.insert(path, blob);
    }
    if let Some(admin) = &loaded.config.admin {
        for f in [&admin.token_file, &admin.read_token_file]
            .into_iter()
            .flatten()
        {
            let path = loaded.resolve(f);
            if read_bounded(&path, MAX_BLOB_BYTES, "1MiB").is_ok() {
                loaded.tokens_readable.insert(path);
            }
        }
    }
    loaded.access_log_error = match loaded.config.access_log.as_deref() {
        None | Some("stdout") => None,
        Some(p) => access_log_writable(&loaded.resolve(p)).err(),
    };
}

/// Whether the access log can be opened for appending, without creating it: an existing
/// file must open for writing, a new one needs an existing directory.
fn access_log_writable(path: &Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: cannot write: {e}", path.display());
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(fail);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() && !m.permissions().readonly() => Ok(()),
        Ok(_) => Err(format!(
            "{}: {} is not a writable directory",
            path.display(),
            dir.display()
        )),
        Err(e) => Err(fail(e)),
    }
}

/// What one include glob found.
#[derive(Debug, Default)]
struct Walk {
    files: Vec<PathBuf>,
    /// Directories looked into (watched for new files).
    dirs: Vec<PathBuf>,
    error: Option<String>,
}

/// The directory part of a glob, before its first pattern character.
fn glob_base(pattern: &Path) -> (PathBuf, usize) {
    let mut base = PathBuf::new();
    let mut rest = 0;
    let mut in_pattern = false;
    for part in pattern.components() {
        let text = part.as_os_str().to_string_lossy();
        if in_pattern || text.contains(['*', '?', '[']) {
            in_pattern = true;
            rest += 1;
        } else {
            base.push(part);
        }
    }
    (base, rest)
}

/// The files a glob matches, sorted. Directories are entered once each by canonical
/// path (a symlink loop ends there), no deeper than the pattern needs (`**`: a cap), and
/// the walk stops after a bounded number of entries.
fn walk_glob(full: &Path, pattern: &glob::Pattern) -> Walk {
    let (base, rest) = glob_base(full);
    let mut walk = Walk::default();
    if rest == 0 {
        if base.is_file() {
            walk.files.push(base);
        }
        return walk;
    }
    let deep = full.to_string_lossy().contains("**");
    let max_depth = if deep { MAX_WALK_DEPTH } else { rest };
    let mut visited = HashSet::new();
    let mut budget = MAX_WALK_ENTRIES;
    let mut stack = vec![(base, 1usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(canonical) = std::fs::canonicalize(&dir) else {
            continue;
        };
        if !visited.insert(canonical) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        walk.dirs.push(dir.clone());
        let mut names: Vec<PathBuf> = Vec::new();
        for entry in entries.flatten() {
            if budget == 0 {
                walk.error = Some(format!(
                    "the walk stopped after {MAX_WALK_ENTRIES} directory entries"
                ));
                return walk;
            }
            budget -= 1;
            names.push(entry.path());
        }
        names.sort();
        for path in names {
            // `metadata` follows symlinks: a linked directory is walked like any other,
            // once.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if depth < max_depth {
                    stack.push((path, depth + 1));
                }
            } else if meta.is_file() && pattern.matches_path_with(&path, match_options()) {
                walk.files.push(path);
            }
        }
    }
    walk.files.sort();
    walk
}

/// Parses an included file: every YAML document in it is a gateway or a list of them.
pub fn parse_gateway_file(
    file: &Path,
    text: &str,
    errors: &mut Diagnostics,
) -> Vec<Arc<GatewayConfig>> {
    let mut gateways = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        match GatewayDocument::deserialize(document) {
            Ok(GatewayDocument(list)) => {
                gateways.extend(list.into_iter().map(|mut g| {
                    g.source = file.to_path_buf();
                    Arc::new(g)
                }));
            }
            Err(e) => {
                errors.push(Diagnostic::from_yaml(file, &e));
                // The parser cannot resynchronise after an error inside a document.
                break;
            }
        }
    }
    gateways
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_has_position() {
        let err = load_from_str(
            Path::new("w.yaml"),
            "gateways:\n  - name: a\n    bogus: 1\n",
        )
        .unwrap_err();
        let d = &err.0[0];
        assert_eq!(d.position.map(|p| p.0), Some(3));
        assert!(d.message.contains("unknown field `bogus`"), "{}", d.message);
        assert!(d.to_string().starts_with("w.yaml:3:"), "{d}");
    }

    #[test]
    fn bad_percent_has_position() {
        let err = load_from_str(
            Path::new("w.yaml"),
            "gateways:\n  - name: a\n    routes:\n      r:\n        weight: 50\n",
        )
        .unwrap_err();
        assert_eq!(err.0[0].position.map(|p| p.0), Some(5), "{err}");
    }

    #[test]
    fn included_files_multi_document_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("gw")).unwrap();
        std::fs::write(
            dir.path().join("gw/a.yaml"),
            "name: a\n---\n- name: b\n- name: c\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("gw/b.yaml"), "name: d\n").unwrap();
        let main = dir.path().join("weir.yaml");
        std::fs::write(&main, "include: [gw/*.yaml]\ngateways: [{name: m}]\n").unwrap();
        let loaded = load(&main).unwrap();
        let names: Vec<_> = loaded
            .config
            .gateways
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(names, ["m", "a", "b", "c", "d"]);
        assert_eq!(loaded.files.len(), 3);
        assert!(loaded.config.gateways[1].source.ends_with("gw/a.yaml"));
    }

    #[test]
    fn errors_in_several_files_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.yaml"), "name: a\nport: nope\n").unwrap();
        std::fs::write(dir.path().join("y.yaml"), "name: b\nroutes: [\n").unwrap();
        let main = dir.path().join("weir.yaml");
        std::fs::write(&main, "include: ['*.yaml']\n").unwrap();
        let err = load(&main).unwrap_err();
        assert_eq!(err.len(), 2, "{err}");
        assert!(err.0[0].to_string().contains("x.yaml:2:"), "{err}");
    }

    #[test]
    fn overlapping_globs_read_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("gw/sub")).unwrap();
        std::fs::write(dir.path().join("gw/a.yaml"), "name: a\n").unwrap();
        std::fs::write(dir.path().join("gw/sub/b.yaml"), "name: b\n").unwrap();
        let main = dir.path().join("weir.yaml");
        std::fs::write(
            &main,
            "include: [gw/*.yaml, 'gw/**/*.yaml', './gw/a.yaml']\n",
        )
        .unwrap();
        let loaded = load(&main).unwrap();
        let names: Vec<_> = loaded.config.gateways.iter().map(|g| &*g.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(loaded.watch_dirs.iter().any(|d| d.ends_with("gw/sub")));
    }

    #[test]
    fn symlink_loops_end() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("gw/x")).unwrap();
        std::fs::create_dir_all(dir.path().join("gw/y")).unwrap();
        symlink("../y", dir.path().join("gw/x/to-y")).unwrap();
        symlink("../x", dir.path().join("gw/y/to-x")).unwrap();
        symlink("..", dir.path().join("gw/x/up")).unwrap();
        std::fs::write(dir.path().join("gw/y/g.yaml"), "name: g\n").unwrap();
        let main = dir.path().join("weir.yaml");
        std::fs::write(&main, "include: ['gw/**/*.yaml']\n").unwrap();
        let loaded = load(&main).unwrap();
        assert_eq!(loaded.config.gateways.len(), 1);
    }

    #[test]
    fn byte_limit_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("big.yaml"),
            format!("name: a\n#{}\n", "x".repeat(2000)),
        )
        .unwrap();
        let main = dir.path().join("weir.yaml");
        std::fs::write(
            &main,
            "limits: { config_bytes: 1KiB }\ninclude: ['big.yaml']\n",
        )
        .unwrap();
        let err = load(&main).unwrap_err().to_string();
        assert!(
            err.contains("big.yaml") && err.contains("limits.config_bytes"),
            "{err}"
        );
    }

    #[test]
    fn counts_are_bounded() {
        let mut text = String::from("gateways:\n");
        for i in 0..=MAX_GATEWAYS {
            text.push_str(&format!("- {{name: g{i}}}\n"));
        }
        let err = load_from_str(Path::new("w.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("w.yaml: too many gateways"), "{err}");
    }

    #[test]
    fn with_file_replaces_gateways_of_that_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("gw")).unwrap();
        std::fs::write(dir.path().join("gw/a.yaml"), "name: a\n").unwrap();
        let main = dir.path().join("weir.yaml");
        std::fs::write(&main, "include: [gw/*.yaml]\n").unwrap();
        let loaded = load(&main).unwrap();
        let a = dir.path().join("gw/a.yaml");
        let next = loaded.with_file(&a, Some("name: b\n")).unwrap();
        assert_eq!(next.config.gateways[0].name, "b");
        assert_ne!(next.fingerprint, loaded.fingerprint);
        let gone = loaded.with_file(&a, None).unwrap();
        assert!(gone.config.gateways.is_empty());
        assert!(loaded.is_included(&dir.path().join("gw/new.yaml")));
        assert!(!loaded.is_included(&dir.path().join("gw/new.log")));
    }
}
