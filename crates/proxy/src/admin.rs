//! Admin (`/config_dump`, `/connections`, `/logging`, `/quitquitquit`), stats
//! (`/stats/prometheus`) and readiness (`/healthz/ready`) endpoints.
//!
//! They run on their own thread with a current-thread runtime, so a slow scrape or a
//! large dump never takes time from the data plane.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use telemetry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::sidecar::{LogLevelSetter, Shared, StartError};

/// What the endpoints read.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) log_level: Option<LogLevelSetter>,
    pub(crate) quit: CancellationToken,
}

/// The admin thread.
pub(crate) struct AdminServer {
    pub(crate) admin_addr: SocketAddr,
    pub(crate) stats_addr: SocketAddr,
    pub(crate) readiness_addr: SocketAddr,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Stops the servers and waits for the thread.
    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            // Joining blocks; do it off the runtime's worker.
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Stops the servers without waiting.
    pub(crate) fn stop_detached(mut self) {
        self.stop.cancel();
        self.thread.take();
    }
}

fn bind_std(what: &str, addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let l = std::net::TcpListener::bind(addr).map_err(|error| StartError::Bind {
        what: what.to_owned(),
        addr,
        error,
    })?;
    l.set_nonblocking(true).map_err(|error| StartError::Bind {
        what: what.to_owned(),
        addr,
        error,
    })?;
    Ok(l)
}

/// Binds the three listeners now (so errors surface at start) and serves them on a
/// new thread.
pub(crate) fn spawn(state: AdminState, config: &ProxyConfig) -> Result<AdminServer, StartError> {
    let admin = bind_std("admin.listen", config.admin.listen)?;
    let stats = bind_std("stats.listen", config.stats.listen)?;
    let readiness = bind_std("readiness.listen", config.readiness.listen)?;
    let addr = |l: &std::net::TcpListener, what: &str, a: SocketAddr| {
        l.local_addr().map_err(|error| StartError::Bind {
            what: what.to_owned(),
            addr: a,
            error,
        })
    };
    let admin_addr = addr(&admin, "admin.listen", config.admin.listen)?;
    let stats_addr = addr(&stats, "stats.listen", config.stats.listen)?;
    let readiness_addr = addr(&readiness, "readiness.listen", config.readiness.listen)?;
    let stop = CancellationToken::new();
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("weir-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin runtime failed to start; admin, stats and readiness endpoints are down");
                    return;
                }
            };
            rt.block_on(serve_all(state, admin, stats, readiness, thread_stop));
        })
        .map_err(StartError::Admin)?;
    Ok(AdminServer {
        admin_addr,
        stats_addr,
        readiness_addr,
        stop,
        thread: Some(thread),
    })
}

async fn serve_all(
    state: AdminState,
    admin: std::net::TcpListener,
    stats: std::net::TcpListener,
    readiness: std::net::TcpListener,
    stop: CancellationToken,
) {
    let admin_router = Router::new()
        .route("/", get(index))
        .route("/config_dump", get(config_dump))
        .route("/connections", get(connections))
        .route("/logging", get(logging).post(logging))
        .route("/quitquitquit", post(quit))
        .route("/stats/prometheus", get(prometheus))
        .route("/ready", get(ready))
        .with_state(state.clone());
    let stats_router = Router::new()
        .route("/stats/prometheus", get(prometheus))
        .with_state(state.clone());
    let ready_router = Router::new()
        .route("/healthz/ready", get(ready))
        .with_state(state);
    let run = |l: std::net::TcpListener, router: Router, what: &'static str| {
        let stop = stop.clone();
        async move {
            let listener = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, endpoint = what, "cannot serve endpoint");
                    return;
                }
            };
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, endpoint = what, "endpoint server failed");
            }
        }
    };
    tokio::join!(
        run(admin, admin_router, "admin"),
        run(stats, stats_router, "stats"),
        run(readiness, ready_router, "readiness"),
    );
}

async fn index() -> &'static str {
    "weir proxy admin\n\
     GET  /config_dump        effective configuration, its version and identity (JSON)\n\
     GET  /connections        live connections with peer and bytes (JSON)\n\
     POST /logging?level=L    change the log filter (e.g. debug, info, proxy=trace)\n\
     POST /quitquitquit       drain and exit\n\
     GET  /stats/prometheus   metrics\n\
     GET  /ready              readiness\n"
}

fn json(value: serde_json::Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
    )
        .into_response()
}

async fn config_dump(State(s): State<AdminState>) -> Response {
    let identity = s
        .shared
        .certs
        .as_ref()
        .and_then(|c| c.current().identity().map(str::to_owned));
    let current = s.shared.current();
    let config = serde_json::to_value(&*current.config).unwrap_or_default();
    json(serde_json::json!({
        "version": current.version,
        "identity": identity,
        "metadata": {
            "NAME": s.shared.local.metadata().name,
            "NAMESPACE": s.shared.local.metadata().namespace,
            "WORKLOAD_NAME": s.shared.local.metadata().workload_name,
            "CLUSTER_ID": s.shared.local.metadata().cluster_id,
            "OWNER": s.shared.local.metadata().owner,
            "LABELS": s.shared.local.metadata().labels,
        },
        "config": config,
    }))
}

async fn connections(State(s): State<AdminState>) -> Response {
    let list = s.shared.live.snapshot();
    json(serde_json::json!({ "connections": list }))
}

async fn logging(
    State(s): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(setter) = &s.log_level else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "log level changes are not available in this process\n",
        )
            .into_response();
    };
    let Some(level) = q.get("level") else {
        return (
            StatusCode::BAD_REQUEST,
            "missing ?level=; use e.g. /logging?level=debug or /logging?level=info,proxy=trace\n",
        )
            .into_response();
    };
    match setter(level) {
        Ok(now) => {
            tracing::info!(filter = %now, "log filter changed");
            format!("log filter: {now}\n").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn quit(State(s): State<AdminState>) -> &'static str {
    s.quit.cancel();
    "draining\n"
}

async fn prometheus(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = telemetry::Format::negotiate(accept);
    s.shared.health.set_live(s.shared.live.len());
    match telemetry::encode(&s.registry, format) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}
