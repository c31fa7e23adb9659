//! The `ratings` service: v1 answers from memory, v2 reads the `test.ratings` table of
//! a MySQL/MariaDB server on a fresh connection per request, as Istio's image does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::env::EnvError;
use crate::web::{self, Body};

/// What `MONGO_DB_URL` users are told: this runtime has no MongoDB client, and Istio
/// ships a MySQL variant of the same demo.
pub const MONGO_UNSUPPORTED: &str = "MongoDB is not supported by the local runtime; \
use the MySQL variant instead: bookinfo-mysql.yaml, bookinfo-ratings-v2-mysql.yaml \
and virtual-service-ratings-mysql.yaml";

/// Istio's error text when the database cannot be queried.
pub const DB_ERROR: &str = "could not connect to ratings database";

/// Most products the in-memory (v1) store keeps POSTed ratings for.
const MAX_STORED_PRODUCTS: usize = 1024;

/// Errors of the ratings service.
#[derive(Debug, thiserror::Error)]
pub enum RatingsError {
    /// A variable has an unusable value.
    #[error("ratings: {0}")]
    Config(#[from] EnvError),
    /// The listener failed permanently.
    #[error("ratings: accepting connections failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// Where a MySQL-backed ratings service reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlTarget {
    /// `MYSQL_DB_HOST`.
    pub host: String,
    /// `MYSQL_DB_PORT`.
    pub port: u16,
    /// `MYSQL_DB_USER`.
    pub user: String,
    /// `MYSQL_DB_PASSWORD`.
    pub password: String,
    /// Database holding the `ratings` table; Istio's app always uses `test`.
    pub database: String,
    /// Limit for one connect + query + disconnect.
    pub timeout: Duration,
}

/// Where ratings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RatingsBackend {
    /// v1: fixed ratings, updatable by POST, kept in memory.
    Local,
    /// v2 with `DB_TYPE=mysql`.
    Mysql(MysqlTarget),
    /// v2 without `DB_TYPE=mysql`: Istio's image talks to MongoDB at `MONGO_DB_URL`,
    /// which this runtime does not support.
    MongoUnsupported {
        /// `MONGO_DB_URL` as given.
        url: Option<String>,
    },
}

/// Configuration of the ratings service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatingsConfig {
    /// Source of the ratings.
    pub backend: RatingsBackend,
}

impl RatingsConfig {
    /// Reads `SERVICE_VERSION` (`v2` means database-backed; Istio's v2 image sets it),
    /// `DB_TYPE`, `MYSQL_DB_HOST`, `MYSQL_DB_PORT`, `MYSQL_DB_USER`, `MYSQL_DB_PASSWORD`
    /// and `MONGO_DB_URL`.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, RatingsError> {
        let v2 = crate::env::var(env, "SERVICE_VERSION").as_deref() == Some("v2");
        let backend = if !v2 {
            RatingsBackend::Local
        } else if crate::env::var(env, "DB_TYPE").as_deref() == Some("mysql") {
            RatingsBackend::Mysql(MysqlTarget {
                host: crate::env::var(env, "MYSQL_DB_HOST").unwrap_or_else(|| "localhost".into()),
                port: crate::env::port(env, "MYSQL_DB_PORT", 3306)?,
                user: crate::env::var(env, "MYSQL_DB_USER").unwrap_or_else(|| "root".into()),
                // Passwords are taken verbatim (no trimming).
                password: env("MYSQL_DB_PASSWORD").unwrap_or_default(),
                database: "test".into(),
                timeout: Duration::from_secs(5),
            })
        } else {
            RatingsBackend::MongoUnsupported {
                url: crate::env::var(env, "MONGO_DB_URL"),
            }
        };
        Ok(Self { backend })
    }
}

/// A ratings document: `{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RatingsDoc {
    /// Product id.
    pub id: i64,
    /// Reviewer name to stars.
    pub ratings: Value,
}

fn default_ratings(id: i64) -> RatingsDoc {
    RatingsDoc {
        id,
        ratings: serde_json::json!({ "Reviewer1": 5, "Reviewer2": 4 }),
    }
}

struct State {
    backend: RatingsBackend,
    posted: Mutex<HashMap<i64, Value>>,
}

/// Serves the ratings API on `listener` until the listener fails.
pub async fn serve(listener: TcpListener, config: RatingsConfig) -> Result<(), RatingsError> {
    match &config.backend {
        RatingsBackend::Local => tracing::info!("ratings v1: in-memory ratings"),
        RatingsBackend::Mysql(t) => tracing::info!(
            host = %t.host, port = t.port, user = %t.user, database = %t.database,
            "ratings v2: MySQL, one connection per request"
        ),
        RatingsBackend::MongoUnsupported { url } => tracing::error!(
            mongo_db_url = url.as_deref().unwrap_or("<unset>"),
            "{MONGO_UNSUPPORTED}"
        ),
    }
    let state = Arc::new(State {
        backend: config.backend,
        posted: Mutex::new(HashMap::new()),
    });
    web::serve(listener, "ratings", move |req| {
        let state = state.clone();
        async move { handle(&state, req).await }
    })
    .await?;
    Ok(())
}

/// The product id Istio's app reads: the last path segment's leading digits
/// (`parseInt`), `None` when there are none.
fn product_id(path: &str) -> Option<i64> {
    let last = path.rsplit('/').next().unwrap_or("");
    let digits: String = last.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    tracing::debug!(method = %req.method(), path, "request");
    if path == "/health" && req.method() == Method::GET {
        return web::json(
            StatusCode::OK,
            &serde_json::json!({ "status": "Ratings is healthy" }),
        );
    }
    if !path.starts_with("/ratings/") {
        return web::not_found();
    }
    let Some(id) = product_id(&path) else {
        return web::json_error(StatusCode::BAD_REQUEST, "please provide numeric product ID");
    };
    match *req.method() {
        Method::GET => get_ratings(state, id).await,
        Method::POST => post_ratings(state, id, req).await,
        _ => web::not_found(),
    }
}

async fn get_ratings(state: &State, id: i64) -> Response<Body> {
    match &state.backend {
        RatingsBackend::Local => {
            let stored = lock(&state.posted).get(&id).cloned();
            let doc = match stored {
                Some(ratings) => RatingsDoc { id, ratings },
                None => default_ratings(id),
            };
            web::json(StatusCode::OK, &doc)
        }
        RatingsBackend::Mysql(target) => match query_mysql(target).await {
            Ok((first, second)) => web::json(
                StatusCode::OK,
                &RatingsDoc {
                    id,
                    ratings: serde_json::json!({ "Reviewer1": first, "Reviewer2": second }),
                },
            ),
            Err(e) => {
                tracing::error!(host = %target.host, port = target.port, error = %e, "{DB_ERROR}");
                web::json_error(StatusCode::INTERNAL_SERVER_ERROR, DB_ERROR)
            }
        },
        RatingsBackend::MongoUnsupported { url } => {
            tracing::error!(
                mongo_db_url = url.as_deref().unwrap_or("<unset>"),
                "{MONGO_UNSUPPORTED}"
            );
            web::json_error(StatusCode::INTERNAL_SERVER_ERROR, MONGO_UNSUPPORTED)
        }
    }
}

async fn post_ratings(state: &State, id: i64, req: Request<Incoming>) -> Response<Body> {
    let body = match web::read_body(req).await {
        Ok(b) => b,
        Err(e) => return web::json_error(StatusCode::BAD_REQUEST, &e),
    };
    let Ok(ratings) = serde_json::from_slice::<Value>(&body) else {
        return web::json_error(StatusCode::BAD_REQUEST, "please provide valid ratings JSON");
    };
    if !matches!(state.backend, RatingsBackend::Local) {
        return web::json_error(
            StatusCode::NOT_IMPLEMENTED,
            "Post not implemented for database backed ratings",
        );
    }
    let mut posted = lock(&state.posted);
    if posted.len() >= MAX_STORED_PRODUCTS && !posted.contains_key(&id) {
        return web::json_error(
            StatusCode::INSUFFICIENT_STORAGE,
            &format!("ratings are stored for at most {MAX_STORED_PRODUCTS} products"),
        );
    }
    posted.insert(id, ratings.clone());
    web::json(StatusCode::OK, &RatingsDoc { id, ratings })
}

/// A poisoned lock only means another request panicked mid-insert; the map is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `SELECT Rating FROM ratings` on a new connection, closed afterwards. Missing rows
/// read as 0 and NULL as null, as Istio's app reports them.
async fn query_mysql(t: &MysqlTarget) -> Result<(Option<i64>, Option<i64>), String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(t.host.clone())
        .tcp_port(t.port)
        .user(Some(t.user.clone()))
        .pass(Some(t.password.clone()))
        .db_name(Some(t.database.clone()))
        // Never switch a loopback TCP connection to the server's Unix socket: the
        // connection must be the TCP one the mesh sees.
        .prefer_socket(false);
    let work = async {
        use mysql_async::prelude::Queryable;
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| e.to_string())?;
        let rows: Result<Vec<mysql_async::Row>, _> = conn.query("SELECT Rating FROM ratings").await;
        let closed = conn.disconnect().await;
        let rows = rows.map_err(|e| e.to_string())?;
        if let Err(e) = closed {
            tracing::debug!(error = %e, "closing the ratings database connection");
        }
        let rating = |i: usize| -> Result<Option<i64>, String> {
            match rows.get(i) {
                None => Ok(Some(0)),
                Some(row) => match row.get_opt::<Option<i64>, usize>(0) {
                    Some(Ok(v)) => Ok(v),
                    Some(Err(e)) => Err(format!("row {i}: Rating is not an integer: {e}")),
                    None => Err(format!("row {i} has no Rating column")),
                },
            }
        };
        Ok((rating(0)?, rating(1)?))
    };
    match tokio::time::timeout(t.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer from {}:{} within {:?}",
            t.host, t.port, t.timeout
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::from_pairs;

    #[test]
    fn versions_choose_backends() {
        let v1 =
            RatingsConfig::from_env(&from_pairs(&[("MONGO_DB_URL", "mongodb://m:27017/test")]))
                .unwrap();
        assert_eq!(v1.backend, RatingsBackend::Local);
        let mysql = RatingsConfig::from_env(&from_pairs(&[
            ("SERVICE_VERSION", "v2"),
            ("DB_TYPE", "mysql"),
            ("MYSQL_DB_HOST", "mysqldb"),
            ("MYSQL_DB_PORT", "3306"),
            ("MYSQL_DB_USER", "root"),
            ("MYSQL_DB_PASSWORD", "password"),
        ]))
        .unwrap();
        let RatingsBackend::Mysql(t) = mysql.backend else {
            panic!("expected MySQL, got {:?}", mysql.backend)
        };
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_str(),
                t.password.as_str()
            ),
            ("mysqldb", 3306, "root", "password")
        );
        assert_eq!(t.database, "test");
        let mongo = RatingsConfig::from_env(&from_pairs(&[
            ("SERVICE_VERSION", "v2"),
            ("MONGO_DB_URL", "mongodb://mongodb:27017/test"),
        ]))
        .unwrap();
        assert_eq!(
            mongo.backend,
            RatingsBackend::MongoUnsupported {
                url: Some("mongodb://mongodb:27017/test".into())
            }
        );
        let bad = RatingsConfig::from_env(&from_pairs(&[
            ("SERVICE_VERSION", "v2"),
            ("DB_TYPE", "mysql"),
            ("MYSQL_DB_PORT", "x"),
        ]));
        assert!(bad.unwrap_err().to_string().contains("MYSQL_DB_PORT=\"x\""));
    }

    #[test]
    fn product_ids_parse_like_parse_int() {
        assert_eq!(product_id("/ratings/0"), Some(0));
        assert_eq!(product_id("/ratings/12abc"), Some(12));
        assert_eq!(product_id("/ratings/"), None);
        assert_eq!(product_id("/ratings/abc"), None);
        assert_eq!(product_id("/ratings/99999999999999999999999"), None);
    }

    #[test]
    fn default_document() {
        assert_eq!(
            serde_json::to_string(&default_ratings(0)).unwrap(),
            r#"{"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}"#
        );
    }
}
