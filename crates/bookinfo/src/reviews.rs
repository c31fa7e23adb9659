//! The `reviews` service: two reviews of the book; v2 and v3 add each reviewer's stars
//! from the `ratings` service (black stars for v2, red for v3).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::env::EnvError;
use crate::web::{self, Body, Upstream};

/// Istio's text for a rating that could not be fetched.
pub const RATINGS_UNAVAILABLE: &str = "Ratings service is currently unavailable";

const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

/// Errors of the reviews service.
#[derive(Debug, thiserror::Error)]
pub enum ReviewsError {
    /// A variable has an unusable value.
    #[error("reviews: {0}")]
    Config(#[from] EnvError),
    /// `SERVICE_VERSION` names no reviews version.
    #[error("reviews: SERVICE_VERSION={0:?} is not a reviews version; fix: use v1, v2 or v3")]
    Version(String),
    /// The listener failed permanently.
    #[error("reviews: accepting connections failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// Configuration of the reviews service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewsConfig {
    /// Whether reviews carry ratings (`ENABLE_RATINGS`).
    pub ratings_enabled: bool,
    /// Star color (`STAR_COLOR`, default `black`).
    pub star_color: String,
    /// The ratings service.
    pub ratings: Upstream,
    /// `HOSTNAME`, reported as `podname`.
    pub podname: Option<String>,
    /// `CLUSTER_NAME`, reported as `clustername`.
    pub clustername: Option<String>,
    /// Limit for the ratings call: Istio's image waits 10 s with black stars and 2.5 s
    /// otherwise (the timeouts task relies on the difference).
    pub ratings_timeout: Duration,
}

impl ReviewsConfig {
    /// Reads `SERVICE_VERSION` (`v1`/`v2`/`v3`: the settings of Istio's three images),
    /// then `ENABLE_RATINGS`, `STAR_COLOR`, `RATINGS_HOSTNAME`, `SERVICES_DOMAIN`,
    /// `RATINGS_SERVICE_PORT`, `HOSTNAME`, `CLUSTER_NAME`; explicit variables override
    /// the version's settings.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, ReviewsError> {
        let (enabled, color) = match crate::env::var(env, "SERVICE_VERSION").as_deref() {
            None | Some("v1") => (false, "black"),
            Some("v2") => (true, "black"),
            Some("v3") => (true, "red"),
            Some(other) => return Err(ReviewsError::Version(other.to_string())),
        };
        let ratings_enabled = crate::env::java_bool(env, "ENABLE_RATINGS").unwrap_or(enabled);
        let star_color = crate::env::var(env, "STAR_COLOR").unwrap_or_else(|| color.to_string());
        let ratings_timeout = if star_color == "black" {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(2500)
        };
        Ok(Self {
            ratings_enabled,
            star_color,
            ratings: Upstream::from_env(
                env,
                "RATINGS_HOSTNAME",
                "ratings",
                "RATINGS_SERVICE_PORT",
            )?,
            podname: crate::env::var(env, "HOSTNAME"),
            clustername: crate::env::var(env, "CLUSTER_NAME"),
            ratings_timeout,
        })
    }
}

/// The reviews document, field order as Istio's service writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReviewsDoc {
    /// Product id, as a string.
    pub id: String,
    /// Serving pod (`"null"` when unknown, as Istio's Java service prints it).
    pub podname: String,
    /// Cluster (`"null"` when unknown).
    pub clustername: String,
    /// The reviews.
    pub reviews: Vec<Review>,
}

/// One review.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Review {
    /// Reviewer name.
    pub reviewer: String,
    /// Review text.
    pub text: String,
    /// Stars (v2/v3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<Rating>,
}

/// A review's rating: stars and color, or why there are none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Rating {
    /// Stars from the ratings service.
    Stars {
        /// Number of stars.
        stars: i64,
        /// Star color.
        color: String,
    },
    /// The ratings service could not be used.
    Error {
        /// Message.
        error: String,
    },
}

#[derive(Deserialize)]
struct RatingsReply {
    ratings: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Serves the reviews API on `listener` until the listener fails.
pub async fn serve(listener: TcpListener, config: ReviewsConfig) -> Result<(), ReviewsError> {
    tracing::info!(
        ratings_enabled = config.ratings_enabled,
        star_color = %config.star_color,
        ratings = %config.ratings,
        "reviews configuration"
    );
    let config = Arc::new(config);
    web::serve(listener, "reviews", move |req| {
        let config = config.clone();
        async move { handle(&config, req).await }
    })
    .await?;
    Ok(())
}

async fn handle(config: &ReviewsConfig, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    tracing::debug!(method = %req.method(), path, "request");
    if req.method() != Method::GET {
        return web::not_found();
    }
    if path == "/health" {
        return web::json(
            StatusCode::OK,
            &serde_json::json!({ "status": "Reviews is healthy" }),
        );
    }
    let Some(id) = path
        .strip_prefix("/reviews/")
        .and_then(|s| s.parse::<i32>().ok())
    else {
        return web::not_found();
    };
    let stars = if config.ratings_enabled {
        fetch_ratings(config, id, &web::propagated(req.headers())).await
    } else {
        [None, None]
    };
    let reviews = REVIEWS
        .iter()
        .zip(stars)
        .map(|((reviewer, text), stars)| Review {
            reviewer: (*reviewer).to_string(),
            text: (*text).to_string(),
            rating: config.ratings_enabled.then(|| match stars {
                Some(stars) => Rating::Stars {
                    stars,
                    color: config.star_color.clone(),
                },
                None => Rating::Error {
                    error: RATINGS_UNAVAILABLE.to_string(),
                },
            }),
        })
        .collect();
    let null = || "null".to_string();
    web::json(
        StatusCode::OK,
        &ReviewsDoc {
            id: id.to_string(),
            podname: config.podname.clone().unwrap_or_else(null),
            clustername: config.clustername.clone().unwrap_or_else(null),
            reviews,
        },
    )
}

/// Stars for Reviewer1 and Reviewer2; `None` for each one the ratings service did not give.
async fn fetch_ratings(
    config: &ReviewsConfig,
    id: i32,
    headers: &hyper::HeaderMap,
) -> [Option<i64>; 2] {
    let path = format!("/ratings/{id}");
    let body = match web::get(&config.ratings, &path, headers, config.ratings_timeout).await {
        Ok((StatusCode::OK, body)) => body,
        Ok((status, _)) => {
            tracing::warn!(ratings = %config.ratings, %status, "ratings service answered with an error");
            return [None, None];
        }
        Err(e) => {
            tracing::warn!(error = %e, "ratings service unavailable");
            return [None, None];
        }
    };
    let ratings = match serde_json::from_slice::<RatingsReply>(&body) {
        Ok(reply) => reply.ratings.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "ratings service sent a body that is not a ratings document");
            return [None, None];
        }
    };
    let stars = |name: &str| ratings.get(name).and_then(serde_json::Value::as_i64);
    [stars("Reviewer1"), stars("Reviewer2")]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::from_pairs;

    #[test]
    fn versions_match_istio_images() {
        let v1 = ReviewsConfig::from_env(&from_pairs(&[])).unwrap();
        assert!(!v1.ratings_enabled);
        let v2 = ReviewsConfig::from_env(&from_pairs(&[("SERVICE_VERSION", "v2")])).unwrap();
        assert_eq!(
            (v2.ratings_enabled, v2.star_color.as_str()),
            (true, "black")
        );
        assert_eq!(v2.ratings_timeout, Duration::from_secs(10));
        let v3 = ReviewsConfig::from_env(&from_pairs(&[("SERVICE_VERSION", "v3")])).unwrap();
        assert_eq!((v3.ratings_enabled, v3.star_color.as_str()), (true, "red"));
        assert_eq!(v3.ratings_timeout, Duration::from_millis(2500));
        let image_env = ReviewsConfig::from_env(&from_pairs(&[
            ("ENABLE_RATINGS", "true"),
            ("STAR_COLOR", "red"),
        ]))
        .unwrap();
        assert_eq!(
            (image_env.ratings_enabled, image_env.star_color.as_str()),
            (true, "red")
        );
        let err = ReviewsConfig::from_env(&from_pairs(&[("SERVICE_VERSION", "v9")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "reviews: SERVICE_VERSION=\"v9\" is not a reviews version; fix: use v1, v2 or v3"
        );
    }

    #[test]
    fn ratings_serialize_like_istio() {
        let r = Review {
            reviewer: "Reviewer1".into(),
            text: "t".into(),
            rating: Some(Rating::Stars {
                stars: 5,
                color: "red".into(),
            }),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"reviewer":"Reviewer1","text":"t","rating":{"stars":5,"color":"red"}}"#
        );
        let e = Rating::Error {
            error: RATINGS_UNAVAILABLE.into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":"Ratings service is currently unavailable"}"#
        );
    }
}
