//! The Bookinfo apps wired together over real loopback sockets.

mod common;

use bookinfo::details::{self, DetailsConfig};
use bookinfo::productpage::{self, ProductpageConfig};
use bookinfo::ratings::{self, RatingsConfig};
use bookinfo::reviews::{self, ReviewsConfig};
use common::{env, get, get_json, request, spawn, Running};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn details_app() -> Running {
    spawn(|l| details::serve(l, DetailsConfig::default())).await
}

async fn ratings_v1() -> Running {
    let config = RatingsConfig::from_env(&env(vec![])).unwrap();
    spawn(|l| ratings::serve(l, config)).await
}

async fn reviews_app(version: &str, ratings_port: u16) -> Running {
    let config = ReviewsConfig::from_env(&env(vec![
        ("SERVICE_VERSION", version.to_string()),
        ("RATINGS_HOSTNAME", "127.0.0.1".into()),
        ("RATINGS_SERVICE_PORT", ratings_port.to_string()),
        ("HOSTNAME", format!("reviews-{version}-pod")),
    ]))
    .unwrap();
    spawn(|l| reviews::serve(l, config)).await
}

async fn productpage_app(details_port: u16, reviews_port: u16, ratings_port: u16) -> Running {
    let config = ProductpageConfig::from_env(&env(vec![
        ("DETAILS_HOSTNAME", "127.0.0.1".into()),
        ("DETAILS_SERVICE_PORT", details_port.to_string()),
        ("REVIEWS_HOSTNAME", "127.0.0.1".into()),
        ("REVIEWS_SERVICE_PORT", reviews_port.to_string()),
        ("RATINGS_HOSTNAME", "127.0.0.1".into()),
        ("RATINGS_SERVICE_PORT", ratings_port.to_string()),
    ]))
    .unwrap();
    spawn(|l| productpage::serve(l, config)).await
}

fn full_stars(page: &str) -> usize {
    page.matches("<span class=\"star full\">★</span>").count()
}

fn empty_stars(page: &str) -> usize {
    page.matches("<span class=\"star empty\">☆</span>").count()
}

#[tokio::test]
async fn details_and_health_answer_like_istio() {
    let details = details_app().await;
    let (status, body) = get_json(details.port, "/details/0").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,
               "publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"})
    );
    assert_eq!(
        get_json(details.port, "/details/x").await,
        (400, json!({"error":"please provide numeric product id"}))
    );
    assert_eq!(
        get_json(details.port, "/health").await,
        (200, json!({"status":"Details is healthy"}))
    );

    let ratings = ratings_v1().await;
    assert_eq!(
        get_json(ratings.port, "/health").await,
        (200, json!({"status":"Ratings is healthy"}))
    );
    assert_eq!(
        get_json(ratings.port, "/ratings/0").await,
        (200, json!({"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}))
    );
    assert_eq!(
        get_json(ratings.port, "/ratings/").await,
        (400, json!({"error":"please provide numeric product ID"}))
    );

    let reviews = reviews_app("v1", ratings.port).await;
    assert_eq!(
        get_json(reviews.port, "/health").await,
        (200, json!({"status":"Reviews is healthy"}))
    );
    assert_eq!(get(reviews.port, "/nothing").await.0, 404);
}

#[tokio::test]
async fn reviews_json_per_version() {
    let ratings = ratings_v1().await;
    let v1 = reviews_app("v1", ratings.port).await;
    let v3 = reviews_app("v3", ratings.port).await;
    let (status, body) = get_json(v1.port, "/reviews/0").await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "0");
    assert_eq!(body["podname"], "reviews-v1-pod");
    assert_eq!(body["clustername"], "null");
    assert_eq!(body["reviews"][0]["reviewer"], "Reviewer1");
    assert_eq!(body["reviews"][1]["reviewer"], "Reviewer2");
    assert!(body["reviews"][0].get("rating").is_none());
    let (_, body) = get_json(v3.port, "/reviews/0").await;
    assert_eq!(
        body["reviews"][0]["rating"],
        json!({"stars":5,"color":"red"})
    );
    assert_eq!(
        body["reviews"][1]["rating"],
        json!({"stars":4,"color":"red"})
    );
}

#[tokio::test]
async fn productpage_shows_the_stars_of_each_reviews_version() {
    let details = details_app().await;
    let ratings = ratings_v1().await;
    for (version, color) in [("v1", None), ("v2", Some("black")), ("v3", Some("red"))] {
        let reviews = reviews_app(version, ratings.port).await;
        let page = productpage_app(details.port, reviews.port, ratings.port).await;
        let (status, html) = get(page.port, "/productpage").await;
        assert_eq!(status, 200, "{version}");
        assert!(html.contains("<h1>The Comedy of Errors</h1>"), "{version}");
        assert!(html.contains(
            "<td>1234567890</td><td>PublisherA</td><td>200</td><td>paperback</td><td>English</td>"
        ));
        assert!(html.contains("An extremely entertaining play by Shakespeare."));
        assert!(html.contains(&format!("Reviews served by: reviews-{version}-pod")));
        match color {
            None => {
                assert_eq!(full_stars(&html), 0, "{version}");
                assert!(!html.contains("class=\"rating\""), "{version}");
            }
            Some(color) => {
                assert_eq!(full_stars(&html), 9, "{version}: 5 + 4 stars");
                assert_eq!(empty_stars(&html), 1, "{version}");
                assert_eq!(
                    html.matches(&format!("<font color=\"{color}\">")).count(),
                    2,
                    "{version}"
                );
                assert!(html.contains(&format!("data-stars=\"5\" data-color=\"{color}\"")));
                assert!(html.contains(&format!("data-stars=\"4\" data-color=\"{color}\"")));
            }
        }
    }
}

#[tokio::test]
async fn ratings_down_shows_istios_error_text() {
    let details = details_app().await;
    let down = common::closed_port().await;
    let reviews = reviews_app("v3", down).await;
    let page = productpage_app(details.port, reviews.port, down).await;
    let (status, html) = get(page.port, "/productpage").await;
    assert_eq!(status, 200);
    assert_eq!(full_stars(&html), 0);
    assert_eq!(
        html.matches(
            "<p class=\"rating-error error\">Ratings service is currently unavailable</p>"
        )
        .count(),
        2
    );
    let (_, body) = get_json(reviews.port, "/reviews/0").await;
    assert_eq!(
        body["reviews"][0]["rating"],
        json!({"error":"Ratings service is currently unavailable"})
    );
    assert_eq!(
        get_json(page.port, "/api/v1/products/0/ratings").await,
        (
            500,
            json!({"error":"Sorry, product ratings are currently unavailable for this book."})
        )
    );
}

#[tokio::test]
async fn reviews_and_details_down_show_istios_error_text() {
    let down = common::closed_port().await;
    let page = productpage_app(down, down, down).await;
    let (status, html) = get(page.port, "/productpage").await;
    assert_eq!(status, 200);
    assert!(html.contains("Error fetching product reviews"));
    assert!(html.contains("<p class=\"reviews-error\">Sorry, product reviews are currently unavailable for this book.</p>"));
    assert!(html.contains("Error fetching product details"));
    assert!(html.contains("<p class=\"details-error\">Sorry, product details are currently unavailable for this book.</p>"));
    assert_eq!(
        get_json(page.port, "/api/v1/products/0/reviews").await,
        (
            500,
            json!({"error":"Sorry, product reviews are currently unavailable for this book."})
        )
    );
    assert_eq!(
        get_json(page.port, "/api/v1/products/0").await,
        (
            500,
            json!({"error":"Sorry, product details are currently unavailable for this book."})
        )
    );
}

#[tokio::test]
async fn productpage_api_and_health() {
    let details = details_app().await;
    let ratings = ratings_v1().await;
    let reviews = reviews_app("v2", ratings.port).await;
    let page = productpage_app(details.port, reviews.port, ratings.port).await;
    assert_eq!(
        get(page.port, "/health").await,
        (200, "Product page is healthy".to_string())
    );
    let (status, products) = get_json(page.port, "/api/v1/products").await;
    assert_eq!(status, 200);
    assert_eq!(products[0]["id"], 0);
    assert_eq!(products[0]["title"], "The Comedy of Errors");
    assert_eq!(
        get_json(page.port, "/api/v1/products/0").await.1["ISBN-13"],
        "123-1234567890"
    );
    // The API relays the backends' documents as they wrote them.
    let (_, raw) = get(page.port, "/api/v1/products/0/reviews").await;
    assert!(raw.starts_with(r#"{"id":"0","podname":"reviews-v2-pod","clustername":"null","reviews":[{"reviewer":"Reviewer1","#), "{raw}");
    let (_, raw) = get(page.port, "/api/v1/products/0").await;
    assert!(
        raw.starts_with(r#"{"id":0,"author":"William Shakespeare","year":1595,"#),
        "{raw}"
    );
    let (status, reviews_json) = get_json(page.port, "/api/v1/products/0/reviews").await;
    assert_eq!(status, 200);
    assert_eq!(
        reviews_json["reviews"][1]["rating"],
        json!({"stars":4,"color":"black"})
    );
    assert_eq!(
        get_json(page.port, "/api/v1/products/0/ratings").await,
        (200, json!({"id":0,"ratings":{"Reviewer1":5,"Reviewer2":4}}))
    );
    assert_eq!(get_json(page.port, "/api/v1/products/abc").await.0, 404);
}

/// A one-shot HTTP server that records the request head and answers with ratings.
async fn recording_ratings() -> (u16, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"id":0,"ratings":{"Reviewer1":1,"Reviewer2":2}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    (port, task)
}

#[tokio::test]
async fn tracing_headers_and_end_user_propagate_through_two_hops() {
    let details = details_app().await;
    let (ratings_port, recorded) = recording_ratings().await;
    let reviews = reviews_app("v2", ratings_port).await;
    let page = productpage_app(details.port, reviews.port, ratings_port).await;
    let (status, _, html) = request(
        "GET",
        page.port,
        "/productpage",
        &[
            ("x-request-id", "req-42"),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            (
                "traceparent",
                "00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01",
            ),
            ("cookie", "user=jason"),
            ("x-not-propagated", "1"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        full_stars(&html),
        3,
        "1 + 2 stars from the recording server"
    );
    let head = tokio::time::timeout(std::time::Duration::from_secs(10), recorded)
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("get /ratings/0 http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nx-request-id: req-42\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7\r\n"),
        "{head}"
    );
    assert!(head
        .contains("\r\ntraceparent: 00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01\r\n"));
    assert!(head.contains("\r\nend-user: jason\r\n"), "{head}");
    assert!(!head.contains("x-not-propagated"), "{head}");
    assert!(html.contains("<span class=\"user\">jason</span>"));
}

#[tokio::test]
async fn login_sets_the_user_cookie() {
    let down = common::closed_port().await;
    let page = productpage_app(down, down, down).await;
    let (status, headers, _) = request(
        "POST",
        page.port,
        "/login",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("referer", "http://x/productpage"),
        ],
        "username=jason&passwd=x",
    )
    .await;
    assert_eq!(status, 302);
    assert_eq!(headers["location"], "/productpage");
    assert_eq!(headers["set-cookie"], "user=jason; Path=/; HttpOnly");
    let (status, _, _) = request("POST", page.port, "/login", &[], "username=%3Cscript%3E").await;
    assert_eq!(status, 400);
    let (status, headers, _) = request("GET", page.port, "/logout", &[], "").await;
    assert_eq!(status, 302);
    assert_eq!(headers["set-cookie"], "user=; Path=/; Max-Age=0; HttpOnly");
}

#[tokio::test]
async fn mongo_ratings_say_it_is_unsupported_and_name_the_mysql_files() {
    let config = RatingsConfig::from_env(&env(vec![
        ("SERVICE_VERSION", "v2".into()),
        ("MONGO_DB_URL", "mongodb://mongodb:27017/test".into()),
    ]))
    .unwrap();
    let ratings = spawn(|l| ratings::serve(l, config)).await;
    let (status, body) = get_json(ratings.port, "/ratings/0").await;
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"error": "MongoDB is not supported by the local runtime; use the MySQL variant instead: \
bookinfo-mysql.yaml, bookinfo-ratings-v2-mysql.yaml and virtual-service-ratings-mysql.yaml"})
    );
    let reviews = reviews_app("v3", ratings.port).await;
    let (_, body) = get_json(reviews.port, "/reviews/0").await;
    assert_eq!(
        body["reviews"][0]["rating"],
        json!({"error":"Ratings service is currently unavailable"})
    );
}

#[tokio::test]
async fn ratings_v1_accepts_posted_ratings_and_bounds_bodies() {
    let ratings = ratings_v1().await;
    let (status, _, body) = request(
        "POST",
        ratings.port,
        "/ratings/7",
        &[],
        r#"{"Reviewer1":1,"Reviewer2":2}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"id":7,"ratings":{"Reviewer1":1,"Reviewer2":2}})
    );
    assert_eq!(
        get_json(ratings.port, "/ratings/7").await.1,
        json!({"id":7,"ratings":{"Reviewer1":1,"Reviewer2":2}})
    );
    let (status, _, body) = request("POST", ratings.port, "/ratings/7", &[], "not json").await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"error":"please provide valid ratings JSON"}"#)
    );
    let big = "x".repeat(70 * 1024);
    let (status, _, _) = request("POST", ratings.port, "/ratings/7", &[], &big).await;
    assert_eq!(status, 400);
}
