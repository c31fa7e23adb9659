//! A directory of manifests kept in the store: every `*.yaml`, `*.yml` and `*.json` file
//! (not recursive, as `kubectl apply -f DIR`). A scan applies what the files hold and
//! deletes the objects this source applied earlier that are no longer in any file.
//!
//! A scan is all or nothing: if any file fails to parse or validate, the store keeps its
//! state (the last good contents of the directory) and the error names the file, line and
//! field. A file caught half-written is such a failure and is picked up by the next scan.
//! Ownership is kept in memory: after a restart, an object whose file was removed while the
//! control plane was down stays until `weir delete` removes it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use config::{Document, ObjectKey};

use crate::api::{lock, Shared};
use crate::store::{ApplyError, StoreError};

/// Problems reading the directory or applying it.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The directory cannot be listed.
    #[error(
        "cannot read the watched directory {path}: {cause}; fix: check it exists and is readable"
    )]
    Read {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        cause: std::io::Error,
    },
    /// A manifest is invalid; nothing from this scan was applied.
    #[error("{}; the store keeps the directory's last good contents", .0.join("; "))]
    Invalid(Vec<String>),
    /// The change could not be persisted.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one scan changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// kubectl-style lines for objects created or configured.
    pub applied: Vec<String>,
    /// Objects removed because their manifests left the directory.
    pub deleted: Vec<ObjectKey>,
}

impl ScanOutcome {
    /// True when the scan changed nothing.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.deleted.is_empty()
    }
}

/// The directory source.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    owned: BTreeSet<ObjectKey>,
    /// (path, length, modification time) of every file at the last successful scan, so an
    /// unchanged directory costs a listing, not a parse.
    fingerprint: Option<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

impl DirSource {
    /// A source for `dir`; nothing is read until [`DirSource::scan`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            owned: BTreeSet::new(),
            fingerprint: None,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory and brings the store in line with it.
    pub fn scan(&mut self, store: &Shared) -> Result<ScanOutcome, DirError> {
        let files = self.list()?;
        if self.fingerprint.as_ref() == Some(&files) {
            return Ok(ScanOutcome::default());
        }
        let mut docs: Vec<Document> = Vec::new();
        let mut errors = Vec::new();
        for (path, _, _) in &files {
            match config::parse_path(path) {
                Ok(mut d) => docs.append(&mut d),
                Err(e) => errors.extend(e.lines()),
            }
        }
        if !errors.is_empty() {
            return Err(DirError::Invalid(errors));
        }
        let keys: BTreeSet<ObjectKey> = docs.iter().map(ObjectKey::of).collect();
        let gone: Vec<ObjectKey> = self.owned.difference(&keys).cloned().collect();
        let mut outcome = ScanOutcome::default();
        {
            let mut s = lock(store);
            if !docs.is_empty() {
                let (outcomes, _) = s.apply(docs).map_err(|e| match e {
                    ApplyError::Invalid(errors) => DirError::Invalid(errors.lines()),
                    ApplyError::Store(e) => DirError::Store(e),
                })?;
                outcome.applied = outcomes
                    .iter()
                    .filter(|o| o.action != config::Action::Unchanged)
                    .map(ToString::to_string)
                    .collect();
            }
            if !gone.is_empty() {
                outcome.deleted = s.delete_keys(&gone)?;
            }
        }
        self.owned = keys;
        self.fingerprint = Some(files);
        Ok(outcome)
    }

    fn list(&self) -> Result<Vec<(PathBuf, u64, Option<SystemTime>)>, DirError> {
        let read = |cause| DirError::Read {
            path: self.dir.clone(),
            cause,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            let path = entry.path();
            let manifest = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            // Editors' and `kubectl`'s temporary files start with a dot.
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let Ok(meta) = std::fs::metadata(&path) else {
                continue; // removed between listing and stat: the next scan sees it gone
            };
            if manifest && !hidden && meta.is_file() {
                files.push((path, meta.len(), meta.modified().ok()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Scans every `interval` until `stop` completes, logging each change and error once.
    pub async fn watch(
        mut self,
        store: Shared,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let dir = self.dir.display().to_string();
            // Parsing and the fsync'd commit block: keep them off the async workers.
            let store2 = store.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let result = self.scan(&store2);
                (self, result)
            })
            .await;
            let result = match joined {
                Ok((source, result)) => {
                    self = source;
                    result
                }
                Err(e) => {
                    tracing::error!(source = %dir, "the directory scan failed: {e}; watching stops");
                    return;
                }
            };
            match result {
                Ok(outcome) => {
                    last_error = None;
                    for line in &outcome.applied {
                        tracing::info!(source = %dir, "{line}");
                    }
                    for key in &outcome.deleted {
                        tracing::info!(source = %dir, kind = ?key.kind, namespace = %key.namespace, name = %key.name, "deleted: its manifest left the directory");
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        tracing::warn!(source = %dir, "{text}");
                        last_error = Some(text);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
