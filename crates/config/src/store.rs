//! The in-memory resource store: atomic apply, delete, get, list, and analysis.

use std::collections::BTreeMap;
use std::fmt;

use crate::analyze::analyze;
use crate::error::{Diagnostic, Errors};
use crate::kind::Kind;
use crate::model::Document;

/// Identifies a stored object: kind, namespace (empty for cluster-scoped kinds), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Effective namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a parsed document.
    pub fn of(doc: &Document) -> Self {
        ObjectKey {
            kind: doc.resource.kind(),
            namespace: doc.resource.namespace().to_string(),
            name: doc.resource.name().to_string(),
        }
    }
}

/// What an apply did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed with the same content.
    Unchanged,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
        })
    }
}

/// One line of apply output, displayed as kubectl does:
/// `destinationrule.networking.istio.io/reviews created`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApplyOutcome {
    /// Kind.
    pub kind: Kind,
    /// Effective namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What happened.
    pub action: Action,
}

impl fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}",
            self.kind.resource_name(),
            self.name,
            self.action
        )
    }
}

/// One line of `delete -f` output: `destinationrule.networking.istio.io "reviews" deleted`,
/// or `... not found` when there was nothing to delete.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeleteOutcome {
    /// Kind.
    pub kind: Kind,
    /// Effective namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Whether the object existed.
    pub found: bool,
}

impl fmt::Display for DeleteOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.found { "deleted" } else { "not found" };
        write!(f, "{} {:?} {what}", self.kind.resource_name(), self.name)
    }
}

/// Resources by kind, namespace and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    objects: BTreeMap<ObjectKey, Document>,
}

impl ResourceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a batch atomically. The batch is rejected, and the set left unchanged, when two
    /// documents name the same object or when the resulting set has errors that the current
    /// one does not (a route to a subset or Service that would not exist, ...).
    pub fn apply(&mut self, docs: Vec<Document>) -> Result<Vec<ApplyOutcome>, Errors> {
        let mut errors = Vec::new();
        let mut seen: BTreeMap<ObjectKey, &Document> = BTreeMap::new();
        for doc in &docs {
            let key = ObjectKey::of(doc);
            if let Some(first) = seen.get(&key) {
                let scope = if key.namespace.is_empty() {
                    String::new()
                } else {
                    format!(" in namespace `{}`", key.namespace)
                };
                errors.push(
                    Diagnostic::error(
                        doc.position("metadata.name"),
                        format!(
                            "{} `{}`{scope} is defined twice in this apply (first at {})",
                            key.kind, key.name, first.source
                        ),
                    )
                    .with_object(Some(doc.resource.object_ref()))
                    .with_path("metadata.name")
                    .with_fix("remove one of the two, or give them different names"),
                );
            } else {
                seen.insert(key, doc);
            }
        }
        if !errors.is_empty() {
            return Err(Errors(errors));
        }
        let mut next = self.clone();
        let mut outcomes = Vec::with_capacity(docs.len());
        for doc in docs {
            outcomes.push(next.upsert(doc));
        }
        let before: Vec<Diagnostic> = analyze(self)
            .into_iter()
            .filter(Diagnostic::is_error)
            .collect();
        let introduced: Vec<Diagnostic> = analyze(&next)
            .into_iter()
            .filter(|d| d.is_error() && !before.contains(d))
            .collect();
        if !introduced.is_empty() {
            return Err(Errors(introduced));
        }
        *self = next;
        Ok(outcomes)
    }

    /// Stores one object without cross-resource checks, for mirroring a store that already
    /// accepted it (a Kubernetes watch delivers objects in any order). Use
    /// [`ResourceSet::analyze`] to report what is dangling.
    pub fn upsert(&mut self, mut doc: Document) -> ApplyOutcome {
        let key = ObjectKey::of(&doc);
        doc.resource.metadata.namespace = key.kind.namespaced().then(|| key.namespace.clone());
        let action = match self.objects.get(&key) {
            None => Action::Created,
            Some(old) if old.resource == doc.resource => Action::Unchanged,
            Some(_) => Action::Configured,
        };
        let outcome = ApplyOutcome {
            kind: key.kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            action,
        };
        self.objects.insert(key, doc);
        outcome
    }

    /// Removes an object; `None` when it did not exist. Deleting never fails on references:
    /// like kubectl, it leaves dangling routes to be reported by [`ResourceSet::analyze`].
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Document> {
        self.objects.remove(&key(kind, namespace, name))
    }

    /// Deletes the objects the documents name (`delete -f`), reporting each.
    pub fn delete_documents(&mut self, docs: &[Document]) -> Vec<DeleteOutcome> {
        docs.iter()
            .map(|doc| {
                let key = ObjectKey::of(doc);
                let found = self.objects.remove(&key).is_some();
                DeleteOutcome {
                    kind: key.kind,
                    namespace: key.namespace,
                    name: key.name,
                    found,
                }
            })
            .collect()
    }

    /// The object, if present. `namespace` is ignored for cluster-scoped kinds.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Document> {
        self.objects.get(&key(kind, namespace, name))
    }

    /// Every object, ordered by kind, namespace, name.
    pub fn iter(&self) -> impl Iterator<Item = &Document> {
        self.objects.values()
    }

    /// Objects of one kind, ordered by namespace and name.
    pub fn iter_kind(&self, kind: Kind) -> impl Iterator<Item = &Document> {
        self.objects
            .range(key(kind, "", "")..)
            .take_while(move |(k, _)| k.kind == kind)
            .map(|(_, d)| d)
    }

    /// Objects of one kind in one namespace (all namespaces when `None`).
    pub fn list<'a>(
        &'a self,
        kind: Kind,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Document> + 'a {
        self.iter_kind(kind).filter(move |d| {
            namespace.is_none_or(|ns| !kind.namespaced() || d.resource.namespace() == ns)
        })
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Cross-resource diagnostics (errors, warnings, infos) of the current contents.
    pub fn analyze(&self) -> Vec<Diagnostic> {
        analyze(self)
    }
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: if kind.namespaced() {
            namespace.to_string()
        } else {
            String::new()
        },
        name: name.to_string(),
    }
}
