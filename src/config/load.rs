//! Reading the config from disk: the main file, then every file its `include:` globs
//! match (relative to the main file), each holding one gateway, a list, or several YAML
//! documents. Syntax and type errors carry `file:line:col`; all files are read even after
//! an error so that every problem is reported at once.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, GatewayDocument};
use crate::diag::{Diagnostic, Diagnostics};

/// A config read from disk, before validation.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The main file.
    pub main: PathBuf,
    /// Every file that was read (main first), for the watcher.
    pub files: Vec<PathBuf>,
    /// The directory relative paths in the config are resolved against.
    pub base_dir: PathBuf,
    /// Directories whose changes can change the config: each file's, each include's.
    pub watch_dirs: Vec<PathBuf>,
    /// A hash of every file's path and content, to skip reloads that change nothing.
    pub fingerprint: u64,
}

impl Loaded {
    /// A path from the config, resolved against the main file's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// Reads the main config file and its includes.
pub fn load(main: &Path) -> Result<Loaded, Diagnostics> {
    let text = std::fs::read_to_string(main)
        .map_err(|e| Diagnostic::new(main, format!("cannot read config file: {e}")))?;
    load_from_str(main, &text)
}

/// Parses the main config from `text` (as if read from `main`) and reads its includes.
pub fn load_from_str(main: &Path, text: &str) -> Result<Loaded, Diagnostics> {
    let mut errors = Diagnostics::default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (main, text).hash(&mut hasher);
    let mut config: Config = match serde_yaml::from_str(text) {
        Ok(c) => c,
        Err(e) => return Err(Diagnostic::from_yaml(main, &e).into()),
    };
    for g in &mut config.gateways {
        g.source = main.to_path_buf();
    }
    let base_dir = main
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut files = vec![main.to_path_buf()];
    let mut watch_dirs = vec![base_dir.clone()];
    for pattern in config.include.clone() {
        watch_dirs.push(glob_base(&base_dir.join(&pattern)));
        for file in expand_include(main, &base_dir, &pattern, &mut errors) {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    (&file, &text).hash(&mut hasher);
                    config
                        .gateways
                        .extend(parse_gateway_file(&file, &text, &mut errors));
                }
                Err(e) => errors.push(Diagnostic::new(&file, format!("cannot read: {e}"))),
            }
            files.push(file);
        }
    }
    if errors.is_empty() {
        // Certificates and keys are part of the config: their changes reload it too.
        for tls in config.listeners.values().filter_map(|l| l.tls.as_ref()) {
            for c in &tls.certificates {
                for path in [&c.cert, &c.key] {
                    let path = base_dir.join(path);
                    if let Ok(bytes) = std::fs::read(&path) {
                        (&path, &bytes).hash(&mut hasher);
                    }
                    if let Some(parent) = path.parent() {
                        watch_dirs.push(parent.to_path_buf());
                    }
                }
            }
        }
        for f in &files {
            if let Some(parent) = f.parent().filter(|p| !p.as_os_str().is_empty()) {
                watch_dirs.push(parent.to_path_buf());
            }
        }
        watch_dirs.sort();
        watch_dirs.dedup();
        Ok(Loaded {
            config,
            main: main.to_path_buf(),
            files,
            base_dir,
            watch_dirs,
            fingerprint: hasher.finish(),
        })
    } else {
        Err(errors)
    }
}

/// The directory part of a glob, before its first pattern character.
fn glob_base(pattern: &Path) -> PathBuf {
    let mut base = PathBuf::new();
    for part in pattern.components() {
        let text = part.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[', '{']) {
            break;
        }
        base.push(part);
    }
    base
}

/// The files one `include:` glob matches, sorted so that load order is stable.
fn expand_include(
    main: &Path,
    base_dir: &Path,
    pattern: &str,
    errors: &mut Diagnostics,
) -> Vec<PathBuf> {
    let full = base_dir.join(pattern);
    let Some(full) = full.to_str() else {
        errors.push(Diagnostic::new(
            main,
            format!("include {pattern:?}: path is not UTF-8"),
        ));
        return Vec::new();
    };
    match glob::glob(full) {
        Ok(paths) => {
            let mut found: Vec<PathBuf> = paths
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            found
        }
        Err(e) => {
            errors.push(Diagnostic::new(
                main,
                format!("include {pattern:?}: invalid glob: {e}"),
            ));
            Vec::new()
        }
    }
}

/// Parses an included file: every YAML document in it is a gateway or a list of them.
pub fn parse_gateway_file(
    file: &Path,
    text: &str,
    errors: &mut Diagnostics,
) -> Vec<super::GatewayConfig> {
    let mut gateways = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        match GatewayDocument::deserialize(document) {
            Ok(GatewayDocument(list)) => {
                gateways.extend(list.into_iter().map(|mut g| {
                    g.source = file.to_path_buf();
                    g
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
        // The main file matches its own glob pattern only if it is a gateway file; skip it.
        std::fs::write(&main, "include: ['[xy].yaml']\n").unwrap();
        let err = load(&main).unwrap_err();
        assert_eq!(err.len(), 2, "{err}");
        assert!(err.0[0].to_string().contains("x.yaml:2:"), "{err}");
    }
}
