//! The `details` service: the book's details as JSON on `GET /details/<id>`.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::web::{self, Body};

/// Errors of the details service.
#[derive(Debug, thiserror::Error)]
pub enum DetailsError {
    /// The listener failed permanently.
    #[error("details: accepting connections failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// Configuration of the details service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetailsConfig {
    /// `ENABLE_EXTERNAL_BOOK_SERVICE=true` asks Istio's app to call an external book
    /// API; this runtime has no external network, so it is logged and the built-in
    /// details are served.
    pub external_book_service_requested: bool,
}

impl DetailsConfig {
    /// Reads `ENABLE_EXTERNAL_BOOK_SERVICE`.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Self {
        Self {
            external_book_service_requested: crate::env::var(env, "ENABLE_EXTERNAL_BOOK_SERVICE")
                .is_some_and(|v| v == "true"),
        }
    }
}

/// The details document, field order as Istio's service writes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BookDetails {
    /// Product id as requested.
    pub id: i64,
    /// Author.
    pub author: &'static str,
    /// Year of publication.
    pub year: u32,
    /// Binding.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Page count.
    pub pages: u32,
    /// Publisher.
    pub publisher: &'static str,
    /// Language.
    pub language: &'static str,
    /// ISBN-10.
    #[serde(rename = "ISBN-10")]
    pub isbn_10: &'static str,
    /// ISBN-13.
    #[serde(rename = "ISBN-13")]
    pub isbn_13: &'static str,
}

/// The details Istio's service returns for every product id.
pub fn book_details(id: i64) -> BookDetails {
    BookDetails {
        id,
        author: "William Shakespeare",
        year: 1595,
        kind: "paperback",
        pages: 200,
        publisher: "PublisherA",
        language: "English",
        isbn_10: "1234567890",
        isbn_13: "123-1234567890",
    }
}

/// Serves the details API on `listener` until the listener fails.
pub async fn serve(listener: TcpListener, config: DetailsConfig) -> Result<(), DetailsError> {
    if config.external_book_service_requested {
        tracing::warn!(
            "ENABLE_EXTERNAL_BOOK_SERVICE=true is not supported here (no external network); \
             serving the built-in book details"
        );
    }
    web::serve(listener, "details", |req| async move { handle(req) }).await?;
    Ok(())
}

fn handle(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    tracing::debug!(method = %req.method(), path, "request");
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return web::not_found();
    }
    if path == "/health" {
        return web::json(
            StatusCode::OK,
            &serde_json::json!({ "status": "Details is healthy" }),
        );
    }
    if path == "/details" || path.starts_with("/details/") {
        // Istio's service takes the last path segment as the id.
        let last = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
        return match last.parse::<i64>() {
            Ok(id) => web::json(StatusCode::OK, &book_details(id)),
            Err(_) => web::json_error(StatusCode::BAD_REQUEST, "please provide numeric product id"),
        };
    }
    web::not_found()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_json_matches_istio() {
        assert_eq!(
            serde_json::to_string(&book_details(0)).unwrap(),
            r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}"#
        );
    }
}
