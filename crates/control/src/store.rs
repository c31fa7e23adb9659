//! The persistent resource store: a [`config::ResourceSet`] whose every accepted change is
//! written to a state directory before it is acknowledged, and read back at start.
//!
//! The whole state (revision and objects) is one snapshot file, `state.json`, replaced by
//! write-to-temporary, fsync, rename, fsync-directory. A crash at any point therefore leaves
//! either the old or the new snapshot, never a mix of the two; a multi-object apply is atomic
//! on disk as it is in memory. A leftover temporary file from a crash is removed at start.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use config::{
    ApplyOutcome, DeleteOutcome, Diagnostic, Document, Errors, Kind, ObjectKey, ResourceSet,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The snapshot file inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// The temporary file a snapshot is written to before it replaces [`STATE_FILE`].
pub const TEMP_FILE: &str = "state.json.tmp";
/// The lock file that keeps two control planes off one state directory.
pub const LOCK_FILE: &str = "state.lock";
/// Largest snapshot read at start; a bigger file is refused rather than exhausting memory.
pub const MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

/// Problems with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
    #[error("{path}: {cause}; fix: check the state directory exists and is writable")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Another process holds the state directory.
    #[error("{path}: the state directory is in use by another control plane; fix: stop it, or pass a different --state-dir")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The snapshot cannot be read back.
    #[error("{path}: the stored state is corrupt: {reason}; fix: restore the file from a backup, or move it away to start with an empty store")]
    Corrupt {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Why an apply did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The manifests were rejected; nothing changed.
    #[error("{0}")]
    Invalid(Errors),
    /// The change could not be persisted; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    revision: u64,
    objects: Vec<serde_json::Value>,
}

/// One committed state of the store, as subscribers see it.
#[derive(Clone, Debug)]
pub struct Revision {
    /// The revision number.
    pub revision: u64,
    /// The resources at that revision.
    pub resources: Arc<ResourceSet>,
}

/// Resources kept in a state directory, with a revision that grows by one per change.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    set: Arc<ResourceSet>,
    revision: u64,
    changes: watch::Sender<Revision>,
    // Held for the store's lifetime: the OS releases the lock when the file closes.
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating if needed) the state directory and loads what it holds.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        let lock = match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Err(StoreError::Locked { path: lock_path }),
            Err((_, e)) => return Err(io(&lock_path, e.into())),
        };
        // A temporary file is a write that never committed: the snapshot beside it is current.
        let temp = dir.join(TEMP_FILE);
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&temp, e)),
        }
        let (set, revision) = load(&dir.join(STATE_FILE))?;
        let set = Arc::new(set);
        let (changes, _) = watch::channel(Revision {
            revision,
            resources: set.clone(),
        });
        Ok(Store {
            dir: dir.to_path_buf(),
            set,
            revision,
            changes,
            _lock: lock,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current revision: 0 for a new store, one more per accepted change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The resources.
    pub fn resources(&self) -> &ResourceSet {
        &self.set
    }

    /// Every committed change from now on (the current state first). Consumers such as
    /// the per-proxy configuration compute follow it; a slow one sees the latest state.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.changes.subscribe()
    }

    /// Applies a batch atomically: on any error nothing changes, in memory or on disk. The
    /// revision grows only when some object was created or configured.
    pub fn apply(&mut self, docs: Vec<Document>) -> Result<(Vec<ApplyOutcome>, u64), ApplyError> {
        let mut next = ResourceSet::clone(&self.set);
        let outcomes = next.apply(docs).map_err(ApplyError::Invalid)?;
        let changed = outcomes
            .iter()
            .any(|o| o.action != config::Action::Unchanged);
        if changed {
            self.commit(next)?;
        }
        Ok((outcomes, self.revision))
    }

    /// Deletes the objects the documents name (`delete -f`).
    pub fn delete(&mut self, docs: &[Document]) -> Result<(Vec<DeleteOutcome>, u64), StoreError> {
        let mut next = ResourceSet::clone(&self.set);
        let outcomes = next.delete_documents(docs);
        if outcomes.iter().any(|o| o.found) {
            self.commit(next)?;
        }
        Ok((outcomes, self.revision))
    }

    /// Deletes objects by key, in one revision; returns the keys that existed.
    pub fn delete_keys(&mut self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, StoreError> {
        let mut next = ResourceSet::clone(&self.set);
        let found: Vec<ObjectKey> = keys
            .iter()
            .filter(|k| next.delete(k.kind, &k.namespace, &k.name).is_some())
            .cloned()
            .collect();
        if !found.is_empty() {
            self.commit(next)?;
        }
        Ok(found)
    }

    /// One object; `namespace` is ignored for cluster-scoped kinds.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Document> {
        self.set.get(kind, namespace, name)
    }

    /// Objects of one kind, in one namespace or (`None`) all.
    pub fn list<'a>(&'a self, kind: Kind, namespace: Option<&'a str>) -> Vec<&'a Document> {
        self.set.list(kind, namespace).collect()
    }

    /// Cross-resource diagnostics of the current contents.
    pub fn analyze(&self) -> Vec<Diagnostic> {
        self.set.analyze()
    }

    /// Persists `next` as the next revision, then makes it current.
    fn commit(&mut self, next: ResourceSet) -> Result<(), StoreError> {
        let revision = self.revision + 1;
        let path = self.dir.join(STATE_FILE);
        let objects = next
            .iter()
            .map(|d| serde_json::to_value(&d.resource))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: format!("cannot serialize a resource: {e}"),
            })?;
        let bytes = serde_json::to_vec_pretty(&Snapshot { revision, objects }).map_err(|e| {
            StoreError::Corrupt {
                path: path.clone(),
                reason: format!("cannot serialize the snapshot: {e}"),
            }
        })?;
        write_atomically(&self.dir, &bytes)?;
        self.set = Arc::new(next);
        self.revision = revision;
        self.changes.send_replace(Revision {
            revision,
            resources: self.set.clone(),
        });
        Ok(())
    }
}

fn io(path: &Path, cause: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn write_atomically(dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = dir.join(TEMP_FILE);
    let target = dir.join(STATE_FILE);
    let mut file = File::create(&temp).map_err(|e| io(&temp, e))?;
    file.write_all(bytes).map_err(|e| io(&temp, e))?;
    file.sync_all().map_err(|e| io(&temp, e))?;
    drop(file);
    fs::rename(&temp, &target).map_err(|e| io(&target, e))?;
    // The rename is durable only once the directory entry is on disk.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

fn load(path: &Path) -> Result<(ResourceSet, u64), StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((ResourceSet::new(), 0)),
        Err(e) => return Err(io(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io(path, e))?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(corrupt(format!(
            "larger than the {MAX_STATE_BYTES}-byte limit"
        )));
    }
    let snapshot: Snapshot =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not a snapshot: {e}")))?;
    let mut set = ResourceSet::new();
    let label = path.display().to_string();
    for (i, object) in snapshot.objects.iter().enumerate() {
        let text = object.to_string();
        let docs = config::parse_str(&text, &format!("{label} (object {i})")).map_err(|e| {
            corrupt(format!(
                "object {i} does not parse: {}",
                e.lines().join("; ")
            ))
        })?;
        for doc in docs {
            // Already accepted once: stored without re-running cross-resource checks.
            set.upsert(doc);
        }
    }
    Ok((set, snapshot.revision))
}

#[cfg(test)]
#[path = "store/tests.rs"]
mod tests;
