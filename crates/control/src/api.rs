//! The control plane's local HTTP/JSON API, served on a loopback port, that the `weir apply`,
//! `get`, `delete` and `analyze` commands talk to. Every answer is a [`Reply`]: the lines to
//! print on standard output, the lines for standard error, and the store's revision; the
//! request succeeded when the HTTP status is 2xx.
//!
//! - `POST /apply`, `POST /delete`: body [`Manifests`].
//! - `GET /resources/{kind}?name=N&namespace=NS&output=yaml|json|wide|table`: no namespace
//!   means all namespaces.
//! - `GET /analyze`, `GET /healthz`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use config::{Diagnostic, Document, Kind, Severity};
use serde::{Deserialize, Serialize};

use crate::store::{ApplyError, Store};

pub mod client;

/// The default address of the API.
pub const DEFAULT_ADDR: &str = "127.0.0.1:15080";

/// Manifests sent to `/apply` or `/delete`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifests {
    /// The YAML or JSON text.
    pub text: String,
    /// How diagnostics name it (the file path, `-` for standard input).
    pub file: String,
}

/// Every answer of the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Output lines (or one block of YAML/JSON).
    pub lines: Vec<String>,
    /// Lines for standard error (errors, or notices such as "No resources found").
    pub errors: Vec<String>,
    /// The store's revision after the request.
    pub revision: u64,
}

/// Query of `GET /resources/{kind}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GetQuery {
    /// One object's name; all when absent.
    pub name: Option<String>,
    /// The namespace; all when absent.
    pub namespace: Option<String>,
    /// `yaml`, `json`, `wide`, or `table` (the default).
    pub output: Option<String>,
}

/// More findings for `/analyze` than the store's own cross-resource checks: what the
/// computed mesh cannot honour. Called with the store revision the answer must reflect.
pub type MoreDiagnostics =
    Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Vec<Diagnostic>> + Send>> + Send + Sync>;

/// A store shared between the API, the sources and the configuration compute.
pub type Shared = Arc<Mutex<Store>>;
type Answer = (StatusCode, Json<Reply>);

/// Wraps a store for sharing.
pub fn shared(store: Store) -> Shared {
    Arc::new(Mutex::new(store))
}

/// The API's routes over a shared store.
pub fn router(shared: Shared) -> Router {
    router_with(shared, None)
}

/// The API's routes, with `more` findings added to `/analyze`.
pub fn router_with(shared: Shared, more: Option<MoreDiagnostics>) -> Router {
    Router::new()
        .route("/apply", post(apply))
        .route("/delete", post(delete))
        .route("/resources/{kind}", get(resources))
        .route(
            "/analyze",
            get(move |store: State<Shared>| analyze(store, more.clone())),
        )
        .route("/healthz", get(healthz))
        // Manifests up to the parser's limit, with room for the JSON envelope.
        .layer(DefaultBodyLimit::max(2 * config::MAX_INPUT_BYTES))
        .with_state(shared)
}

/// Locks a shared store.
pub fn lock(store: &Shared) -> MutexGuard<'_, Store> {
    // A panic while holding the lock cannot leave the store half-changed (changes are
    // committed by assignment after the write), so a poisoned lock is still consistent.
    store.lock().unwrap_or_else(|p| p.into_inner())
}

fn failed(status: StatusCode, errors: Vec<String>, revision: u64) -> Answer {
    (
        status,
        Json(Reply {
            lines: Vec::new(),
            errors,
            revision,
        }),
    )
}

fn parse(store: &Shared, m: &Manifests, verb: &str) -> Result<Vec<Document>, Answer> {
    let revision = || lock(store).revision();
    let docs = config::parse_str(&m.text, &m.file)
        .map_err(|e| failed(StatusCode::UNPROCESSABLE_ENTITY, e.lines(), revision()))?;
    if docs.is_empty() {
        return Err(failed(
            StatusCode::UNPROCESSABLE_ENTITY,
            vec![format!(
                "{}: no objects passed to {verb}; fix: give a file with at least one manifest",
                m.file
            )],
            revision(),
        ));
    }
    Ok(docs)
}

async fn apply(State(store): State<Shared>, Json(m): Json<Manifests>) -> Answer {
    let docs = match parse(&store, &m, "apply") {
        Ok(d) => d,
        Err(a) => return a,
    };
    let mut s = lock(&store);
    match s.apply(docs) {
        Ok((outcomes, revision)) => (
            StatusCode::OK,
            Json(Reply {
                lines: outcomes.iter().map(ToString::to_string).collect(),
                errors: Vec::new(),
                revision,
            }),
        ),
        Err(ApplyError::Invalid(e)) => {
            failed(StatusCode::UNPROCESSABLE_ENTITY, e.lines(), s.revision())
        }
        Err(ApplyError::Store(e)) => failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            vec![e.to_string()],
            s.revision(),
        ),
    }
}

async fn delete(State(store): State<Shared>, Json(m): Json<Manifests>) -> Answer {
    let docs = match parse(&store, &m, "delete") {
        Ok(d) => d,
        Err(a) => return a,
    };
    let mut s = lock(&store);
    match s.delete(&docs) {
        Ok((outcomes, revision)) => (
            StatusCode::OK,
            Json(Reply {
                lines: outcomes.iter().map(ToString::to_string).collect(),
                errors: Vec::new(),
                revision,
            }),
        ),
        Err(e) => failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            vec![e.to_string()],
            s.revision(),
        ),
    }
}

async fn resources(
    State(store): State<Shared>,
    Path(kind): Path<String>,
    Query(q): Query<GetQuery>,
) -> Answer {
    let s = lock(&store);
    let revision = s.revision();
    let kind = match Kind::lookup(&kind) {
        Ok(k) => k,
        Err(e) => {
            return failed(
                StatusCode::BAD_REQUEST,
                vec![format!("error: {e}")],
                revision,
            )
        }
    };
    let output = q.output.as_deref().unwrap_or("table");
    if !matches!(output, "yaml" | "json" | "wide" | "table") {
        return failed(
            StatusCode::BAD_REQUEST,
            vec![format!(
                "error: unknown output format `{output}`; use -o yaml, -o json or -o wide"
            )],
            revision,
        );
    }
    let docs: Vec<&Document> = match &q.name {
        Some(name) => {
            let ns = q.namespace.as_deref().unwrap_or("default");
            match s.get(kind, ns, name) {
                Some(d) => vec![d],
                None => {
                    return failed(
                        StatusCode::NOT_FOUND,
                        vec![format!(
                            "Error from server (NotFound): {} {name:?} not found",
                            resource_plural(kind)
                        )],
                        revision,
                    )
                }
            }
        }
        None => s.list(kind, q.namespace.as_deref()),
    };
    let resources: Vec<&config::Resource> = docs.iter().map(|d| &d.resource).collect();
    let single = q.name.is_some();
    let text = match output {
        "yaml" if single => config::to_yaml(resources[0]),
        "yaml" => config::list_to_yaml(&resources),
        "json" if single => config::to_json(resources[0]),
        "json" => config::list_to_json(&resources),
        _ => {
            let lines = table(kind, &docs, q.namespace.is_none(), output == "wide");
            if lines.is_empty() {
                let scope = match &q.namespace {
                    Some(ns) => format!(" in {ns} namespace."),
                    None => ".".to_string(),
                };
                return failed(
                    StatusCode::OK,
                    vec![format!("No resources found{scope}")],
                    revision,
                );
            }
            return (
                StatusCode::OK,
                Json(Reply {
                    lines,
                    errors: Vec::new(),
                    revision,
                }),
            );
        }
    };
    match text {
        Ok(t) => (
            StatusCode::OK,
            Json(Reply {
                lines: vec![t.trim_end().to_string()],
                errors: Vec::new(),
                revision,
            }),
        ),
        Err(e) => failed(
            StatusCode::INTERNAL_SERVER_ERROR,
            vec![e.to_string()],
            revision,
        ),
    }
}

/// `destinationrules.networking.istio.io`, `services`: how kubectl names a resource type.
fn resource_plural(kind: Kind) -> String {
    if kind.group().is_empty() {
        kind.plural().to_string()
    } else {
        format!("{}.{}", kind.plural(), kind.group())
    }
}

/// kubectl-style columns, padded to the widest cell plus three spaces.
fn table(kind: Kind, docs: &[&Document], all_namespaces: bool, wide: bool) -> Vec<String> {
    if docs.is_empty() {
        return Vec::new();
    }
    let show_ns = all_namespaces && kind.namespaced();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = Vec::new();
    if show_ns {
        header.push("NAMESPACE".to_string());
    }
    header.push("NAME".to_string());
    if wide {
        header.push("APIVERSION".to_string());
    }
    rows.push(header);
    for d in docs {
        let mut row = Vec::new();
        if show_ns {
            row.push(d.resource.namespace().to_string());
        }
        row.push(d.resource.name().to_string());
        if wide {
            row.push(d.resource.api_version.clone());
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == columns {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}", width = widths[c] + 3));
                }
            }
            line
        })
        .collect()
}

async fn analyze(State(store): State<Shared>, more: Option<MoreDiagnostics>) -> Answer {
    let (mut diagnostics, revision) = {
        let s = lock(&store);
        (s.analyze(), s.revision())
    };
    if let Some(more) = more {
        let mut seen: std::collections::HashSet<String> =
            diagnostics.iter().map(ToString::to_string).collect();
        for d in more(revision).await {
            if seen.insert(d.to_string()) {
                diagnostics.push(d);
            }
        }
    }
    let has_errors = diagnostics.iter().any(|d| d.severity == Severity::Error);
    let mut lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    if lines.is_empty() {
        lines.push("No validation issues found.".to_string());
    }
    let (lines, errors) = if has_errors {
        (Vec::new(), lines)
    } else {
        (lines, Vec::new())
    };
    let status = if has_errors {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(Reply {
            lines,
            errors,
            revision,
        }),
    )
}

async fn healthz(State(store): State<Shared>) -> Answer {
    (
        StatusCode::OK,
        Json(Reply {
            lines: vec!["ok".to_string()],
            errors: Vec::new(),
            revision: lock(&store).revision(),
        }),
    )
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, store, None, shutdown).await
}

/// [`serve`], with `more` findings added to `/analyze`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    store: Shared,
    more: Option<MoreDiagnostics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router_with(store, more))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
#[path = "api/tests.rs"]
mod tests;
