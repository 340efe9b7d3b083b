//! The config watcher: the directories that make up the config (the main file's, each
//! included file's, and the nearest existing ancestor of an include glob's root, so a
//! directory made later is seen), and a reload after each settled burst of relevant
//! events. Runs on its own thread: loading and building are CPU work that must not hold
//! up the proxy.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};

use super::Reloader;
use crate::config::load::Loaded;

/// Quiet time after the last relevant file event before reloading: editors and
/// ConfigMap updates touch several files in a burst.
const SETTLE: Duration = Duration::from_millis(150);
/// A burst of relevant events delays a reload at most this long.
const MAX_SETTLE: Duration = Duration::from_secs(5);

/// Whether a file event concerns the config.
fn relevant(path: &Path, files: &HashSet<PathBuf>, loaded: &Loaded) -> bool {
    // A directory on the way to an include glob's matches, made or removed.
    if files.contains(path)
        || loaded.is_included(path)
        || loaded.include_roots.iter().any(|r| r.starts_with(path))
    {
        return true;
    }
    // A symlinked directory swapped in place (Kubernetes' `..data`): the files behind
    // the config's own symlinks changed.
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) && path.is_dir()
}

/// Watches the config's directories and reloads after each burst of relevant changes.
/// Runs on its own thread: loading and building are CPU work that must not hold up the
/// proxy.
pub(super) fn watch_loop(reloader: Arc<Reloader>) {
    let (tx, rx) = mpsc::channel::<Vec<PathBuf>>();
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res {
                if !matches!(event.kind, EventKind::Access(_)) {
                    let _ = tx.send(event.paths);
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                log::error!("cannot watch config files, reload with SIGHUP only: {e}");
                return;
            }
        };
    let mut watched = BTreeSet::new();
    let mut view = WatchView::of(&reloader.applied());
    let _ = sync_watches(&mut watcher, &mut watched, view.dirs());
    // A change made between the first load and the watches being set would be missed:
    // compare once now (a no-op when the files are as loaded).
    let _ = reloader.reload_logged(false, "watch started");
    view = WatchView::of(&reloader.applied());
    while let Ok(paths) = rx.recv() {
        if !view.any_relevant(&paths) {
            continue;
        }
        // Settle: wait for a quiet moment after the last relevant event, but never more
        // than MAX_SETTLE after the first (a busy writer must not starve the reload).
        let first = Instant::now();
        let mut last = first;
        loop {
            let deadline = (last + SETTLE).min(first + MAX_SETTLE);
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            match rx.recv_timeout(wait) {
                Ok(paths) if view.any_relevant(&paths) => last = Instant::now(),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        let _ = reloader.reload_logged(false, "files changed");
        view = WatchView::of(&reloader.applied());
        if sync_watches(&mut watcher, &mut watched, view.dirs()) {
            // Files written into a new directory before its watch was set.
            let _ = reloader.reload_logged(false, "files changed");
            view = WatchView::of(&reloader.applied());
        }
    }
}

/// What the watcher compares events with: the last applied config's files.
struct WatchView {
    loaded: Arc<Loaded>,
    files: HashSet<PathBuf>,
}

impl WatchView {
    fn of(loaded: &Arc<Loaded>) -> WatchView {
        WatchView {
            files: loaded.watched_files().into_iter().collect(),
            loaded: loaded.clone(),
        }
    }

    fn any_relevant(&self, paths: &[PathBuf]) -> bool {
        paths.iter().any(|p| relevant(p, &self.files, &self.loaded))
    }

    fn dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs: BTreeSet<PathBuf> = self.loaded.watch_dirs.iter().cloned().collect();
        dirs.retain(|d| d.is_dir());
        dirs
    }
}

/// Watches `wanted` and no more; true when a directory was added.
fn sync_watches(
    watcher: &mut impl Watcher,
    watched: &mut BTreeSet<PathBuf>,
    wanted: BTreeSet<PathBuf>,
) -> bool {
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    let mut added = false;
    for new in wanted.difference(watched) {
        added = true;
        if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
            log::warn!("cannot watch {}: {e}", new.display());
        }
    }
    *watched = wanted;
    added
}
