//! The `productpage` service: the Bookinfo web page and API. Each page view calls
//! `details` and `reviews` (which may call `ratings`) and renders what they return.

mod html;

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, COOKIE, LOCATION, REFERER, SET_COOKIE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::env::EnvError;
use crate::web::{self, Body, Upstream};

/// Istio's text when `details` fails.
pub const DETAILS_UNAVAILABLE: &str =
    "Sorry, product details are currently unavailable for this book.";
/// Istio's text when `reviews` fails.
pub const REVIEWS_UNAVAILABLE: &str =
    "Sorry, product reviews are currently unavailable for this book.";
/// Istio's text when `ratings` fails.
pub const RATINGS_UNAVAILABLE: &str =
    "Sorry, product ratings are currently unavailable for this book.";

/// Most extra `reviews` calls `FLOOD_FACTOR` may ask for per page view.
const MAX_FLOOD_FACTOR: u32 = 100;
/// Longest user name accepted by `/login`.
const MAX_USER_LEN: usize = 64;

/// Errors of the productpage service.
#[derive(Debug, thiserror::Error)]
pub enum ProductpageError {
    /// A variable has an unusable value.
    #[error("productpage: {0}")]
    Config(#[from] EnvError),
    /// The listener failed permanently.
    #[error("productpage: accepting connections failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// Configuration of the productpage service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductpageConfig {
    /// The details service.
    pub details: Upstream,
    /// The reviews service.
    pub reviews: Upstream,
    /// The ratings service (used by `/api/v1/products/<id>/ratings`).
    pub ratings: Upstream,
    /// Extra concurrent `reviews` calls per page view (`FLOOD_FACTOR`), for rate-limit demos.
    pub flood_factor: u32,
    /// Limit for each backend call (Istio's app uses 3 s).
    pub timeout: Duration,
}

impl ProductpageConfig {
    /// Reads Istio's `SERVICES_DOMAIN`, `DETAILS_HOSTNAME`, `REVIEWS_HOSTNAME`,
    /// `RATINGS_HOSTNAME` and `FLOOD_FACTOR`, plus `DETAILS_SERVICE_PORT`,
    /// `REVIEWS_SERVICE_PORT`, `RATINGS_SERVICE_PORT` (default 9080, the names
    /// Kubernetes gives the services' ports).
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, ProductpageError> {
        Ok(Self {
            details: Upstream::from_env(
                env,
                "DETAILS_HOSTNAME",
                "details",
                "DETAILS_SERVICE_PORT",
            )?,
            reviews: Upstream::from_env(
                env,
                "REVIEWS_HOSTNAME",
                "reviews",
                "REVIEWS_SERVICE_PORT",
            )?,
            ratings: Upstream::from_env(
                env,
                "RATINGS_HOSTNAME",
                "ratings",
                "RATINGS_SERVICE_PORT",
            )?,
            flood_factor: crate::env::count(env, "FLOOD_FACTOR", 0, MAX_FLOOD_FACTOR)?,
            timeout: Duration::from_secs(3),
        })
    }
}

/// The product catalogue entry, as Istio's `/api/v1/products` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Product {
    /// Product id.
    pub id: i64,
    /// Title.
    pub title: &'static str,
    /// Description, trusted HTML.
    #[serde(rename = "descriptionHtml")]
    pub description_html: &'static str,
}

/// The one product Bookinfo sells.
pub fn products() -> Vec<Product> {
    vec![Product {
        id: 0,
        title: "The Comedy of Errors",
        description_html: "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: \
The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most \
farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to \
puns and word play.",
    }]
}

/// What a backend call produced: the status to show and the JSON to render.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub body: Value,
    /// The backend's bytes on success, relayed as-is by the API (keeps its key order).
    pub raw: Option<bytes::Bytes>,
}

/// Serves the product page and API on `listener` until the listener fails.
pub async fn serve(
    listener: TcpListener,
    config: ProductpageConfig,
) -> Result<(), ProductpageError> {
    tracing::info!(
        details = %config.details, reviews = %config.reviews, ratings = %config.ratings,
        flood_factor = config.flood_factor, "productpage configuration"
    );
    let config = Arc::new(config);
    web::serve(listener, "productpage", move |req| {
        let config = config.clone();
        async move { handle(&config, req).await }
    })
    .await?;
    Ok(())
}

async fn handle(config: &Arc<ProductpageConfig>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    tracing::debug!(method = %req.method(), path, "request");
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/" | "/index.html") => web::response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            html::index(config),
        ),
        (Method::GET, "/health") => web::response(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "Product page is healthy",
        ),
        (Method::POST, "/login") => login(req).await,
        (Method::GET, "/logout") => logout(&req),
        (Method::GET, "/productpage") => front(config, req.headers()).await,
        (Method::GET, "/api/v1/products") => web::json(StatusCode::OK, &products()),
        (Method::GET, p) if p.starts_with("/api/v1/products/") => {
            api(config, req.headers(), &p["/api/v1/products/".len()..]).await
        }
        _ => web::not_found(),
    }
}

async fn api(config: &ProductpageConfig, incoming: &HeaderMap, rest: &str) -> Response<Body> {
    let (id, what) = match rest.split_once('/') {
        Some((id, what)) => (id, what),
        None => (rest, ""),
    };
    // Only numeric ids reach the backends' URLs.
    let Ok(id) = id.parse::<i64>() else {
        return web::json_error(
            StatusCode::NOT_FOUND,
            &format!("product id must be a number, got {id:?}"),
        );
    };
    let headers = forward_headers(incoming);
    let fetched = match what {
        "" => details(config, id, &headers).await,
        "reviews" => reviews(config, id, &headers).await,
        "ratings" => ratings(config, id, &headers).await,
        _ => return web::not_found(),
    };
    match fetched.raw {
        Some(raw) => web::response(fetched.status, "application/json", raw),
        None => web::json(fetched.status, &fetched.body),
    }
}

async fn front(config: &Arc<ProductpageConfig>, incoming: &HeaderMap) -> Response<Body> {
    let product_id = 0;
    let headers = forward_headers(incoming);
    let user = session_user(incoming);
    let details = details(config, product_id, &headers).await;
    if config.flood_factor > 0 {
        // Fire-and-forget extra load, as Istio's app does for rate-limit demos.
        for _ in 0..config.flood_factor {
            let (config, headers) = (config.clone(), headers.clone());
            tokio::spawn(async move { reviews(&config, product_id, &headers).await });
        }
    }
    let reviews = reviews(config, product_id, &headers).await;
    let product = products().into_iter().find(|p| p.id == product_id);
    let page = html::product_page(product.as_ref(), &details, &reviews, user.as_deref());
    web::response(StatusCode::OK, "text/html; charset=utf-8", page)
}

async fn details(config: &ProductpageConfig, id: i64, headers: &HeaderMap) -> Fetched {
    fetch(
        config,
        &config.details,
        &format!("/details/{id}"),
        headers,
        DETAILS_UNAVAILABLE,
    )
    .await
}

/// Istio's app tries `reviews` twice (kept on purpose for its fault-injection task).
async fn reviews(config: &ProductpageConfig, id: i64, headers: &HeaderMap) -> Fetched {
    let path = format!("/reviews/{id}");
    let first = fetch(config, &config.reviews, &path, headers, REVIEWS_UNAVAILABLE).await;
    if first.status == StatusCode::OK {
        return first;
    }
    fetch(config, &config.reviews, &path, headers, REVIEWS_UNAVAILABLE).await
}

async fn ratings(config: &ProductpageConfig, id: i64, headers: &HeaderMap) -> Fetched {
    fetch(
        config,
        &config.ratings,
        &format!("/ratings/{id}"),
        headers,
        RATINGS_UNAVAILABLE,
    )
    .await
}

/// A backend's JSON on 200; otherwise its status (500 when there was no answer) with
/// `{"error": unavailable}`.
async fn fetch(
    config: &ProductpageConfig,
    upstream: &Upstream,
    path: &str,
    headers: &HeaderMap,
    unavailable: &str,
) -> Fetched {
    let failed = |status| Fetched {
        status,
        body: serde_json::json!({ "error": unavailable }),
        raw: None,
    };
    match web::get(upstream, path, headers, config.timeout).await {
        Ok((StatusCode::OK, body)) => match serde_json::from_slice(&body) {
            Ok(json) => Fetched {
                status: StatusCode::OK,
                body: json,
                raw: Some(body),
            },
            Err(e) => {
                tracing::warn!(%upstream, path, error = %e, "backend answered 200 with a body that is not JSON");
                failed(StatusCode::INTERNAL_SERVER_ERROR)
            }
        },
        Ok((status, _)) => {
            tracing::warn!(%upstream, path, %status, "backend answered with an error");
            failed(status)
        }
        Err(e) => {
            tracing::warn!(error = %e, path, "backend unavailable");
            failed(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Headers for backend calls: Istio's propagated set, plus `end-user` from the session.
fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = web::propagated(incoming);
    if let Some(user) = session_user(incoming) {
        if let Ok(v) = HeaderValue::from_str(&user) {
            headers.insert("end-user", v);
        }
    }
    headers
}

/// The signed-in user from the `user` cookie set by `/login`.
fn session_user(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "user")
        .map(|(_, v)| v.to_string())
        .filter(|v| valid_user(v))
}

/// User names are kept to a cookie- and header-safe alphabet.
fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn redirect_back(headers: &HeaderMap) -> Response<Body> {
    // Only same-site paths are followed; anything else goes to the product page.
    let target = headers
        .get(REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.find("/productpage").map(|i| &r[i..]))
        .filter(|p| p.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("/productpage")
        .to_string();
    let mut resp = web::response(StatusCode::FOUND, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(&target) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

async fn login(req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers().clone();
    let body = match web::read_body(req).await {
        Ok(b) => b,
        Err(e) => return web::response(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", e),
    };
    let form = String::from_utf8_lossy(&body);
    let user = form
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "username")
        .map(|(_, v)| v.replace('+', " "));
    let Some(user) = user.filter(|u| valid_user(u)) else {
        return web::response(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            format!("username must be 1-{MAX_USER_LEN} characters of letters, digits, '-', '_', '.', '@'\n"),
        );
    };
    let mut resp = redirect_back(&headers);
    if let Ok(v) = HeaderValue::from_str(&format!("user={user}; Path=/; HttpOnly")) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}

fn logout(req: &Request<Incoming>) -> Response<Body> {
    let mut resp = redirect_back(req.headers());
    resp.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("user=; Path=/; Max-Age=0; HttpOnly"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::from_pairs;

    #[test]
    fn config_from_istio_variables() {
        let c = ProductpageConfig::from_env(&from_pairs(&[])).unwrap();
        assert_eq!(c.details, Upstream::new("details", 9080));
        assert_eq!(c.reviews, Upstream::new("reviews", 9080));
        assert_eq!(c.ratings, Upstream::new("ratings", 9080));
        assert_eq!(c.flood_factor, 0);
        let err =
            ProductpageConfig::from_env(&from_pairs(&[("FLOOD_FACTOR", "1000")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "productpage: environment variable FLOOD_FACTOR=\"1000\" is not a whole number within range; fix: set FLOOD_FACTOR to a number from 0 to 100, or unset it"
        );
    }

    #[test]
    fn session_cookie() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=b; user=jason"));
        assert_eq!(session_user(&h).as_deref(), Some("jason"));
        h.insert(COOKIE, HeaderValue::from_static("user=<script>"));
        assert_eq!(session_user(&h), None);
    }

    #[test]
    fn products_api_shape() {
        let v = serde_json::to_value(products()).unwrap();
        assert_eq!(v[0]["id"], 0);
        assert_eq!(v[0]["title"], "The Comedy of Errors");
        assert!(v[0]["descriptionHtml"]
            .as_str()
            .unwrap()
            .starts_with("<a href="));
    }
}
