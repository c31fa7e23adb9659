//! HTML of the product page. Every value that comes from a backend or a user is
//! escaped; only the product description (our own constant) is trusted markup.
//!
//! Stars render as `<div class="rating" data-stars="N" data-color="C">` holding
//! `<font color="C">` with N `<span class="star full">★</span>` and 5-N
//! `<span class="star empty">☆</span>`, so a browser shows colored stars and a test
//! can count them.

use std::fmt::Write;

use hyper::StatusCode;
use serde_json::Value;

use super::{Fetched, Product, ProductpageConfig};
use crate::web::escape_html as esc;

const STYLE: &str = "body{font-family:sans-serif;margin:0}nav{background:#1f2937;color:#fff;padding:1em 2em}\
.container{padding:1em 2em;max-width:60em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}\
.error{color:#dc2626}.review{padding:1em 0;border-bottom:1px solid #eee}.star{font-size:1.3em}";

fn head(out: &mut String) {
    out.push_str("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\">\n");
    let _ = writeln!(
        out,
        "<title>Simple Bookstore App</title>\n<style>{STYLE}</style>\n</head>\n<body>"
    );
}

/// The landing page: links to the product page and the services it calls.
pub(super) fn index(config: &ProductpageConfig) -> String {
    let mut out = String::new();
    head(&mut out);
    out.push_str("<nav>BookInfo Sample</nav>\n<div class=\"container\">\n<h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>\n");
    out.push_str("<table>\n<tr><th>service</th><th>address</th></tr>\n");
    for (name, up) in [
        ("details", &config.details),
        ("reviews", &config.reviews),
        ("ratings", &config.ratings),
    ] {
        let _ = writeln!(
            out,
            "<tr><td>{name}</td><td>http://{}</td></tr>",
            esc(&up.to_string())
        );
    }
    out.push_str("</table>\n<p><a href=\"productpage?u=normal\">Normal user</a></p>\n");
    out.push_str("<p><a href=\"productpage?u=test\">Test user</a></p>\n</div>\n</body>\n</html>\n");
    out
}

/// The product page for `product` with what `details` and `reviews` returned.
pub(super) fn product_page(
    product: Option<&Product>,
    details: &Fetched,
    reviews: &Fetched,
    user: Option<&str>,
) -> String {
    let mut out = String::new();
    head(&mut out);
    out.push_str("<nav>BookInfo Sample");
    match user {
        Some(user) => {
            let _ = write!(out, " <span class=\"user\">{}</span> <a href=\"logout\">Sign out</a>", esc(user));
        }
        None => out.push_str(
            " <form method=\"post\" action=\"login\" style=\"display:inline\"><input name=\"username\" placeholder=\"Username\"> <button type=\"submit\">Sign in</button></form>",
        ),
    }
    out.push_str("</nav>\n");
    if let Some(product) = product {
        let _ = writeln!(
            out,
            "<div class=\"container\">\n<h1>{}</h1>\n<p class=\"description\">{}</p>\n</div>",
            esc(product.title),
            product.description_html
        );
    }
    render_details(&mut out, details);
    render_reviews(&mut out, reviews);
    out.push_str("</body>\n</html>\n");
    out
}

/// A JSON value as display text: strings unquoted, numbers as written, null as empty.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

fn error_text(body: &Value) -> String {
    body.get("error").map(text).unwrap_or_default()
}

fn render_details(out: &mut String, details: &Fetched) {
    out.push_str("<div class=\"container details\">\n");
    if details.status == StatusCode::OK {
        out.push_str("<h4>Book Details</h4>\n<table>\n<tr><th>ISBN-10</th><th>Publisher</th><th>Pages</th><th>Type</th><th>Language</th></tr>\n<tr>");
        for key in ["ISBN-10", "publisher", "pages", "type", "language"] {
            let _ = write!(
                out,
                "<td>{}</td>",
                details.body.get(key).map(text).unwrap_or_default()
            );
        }
        out.push_str("</tr>\n</table>\n");
    } else {
        let _ = writeln!(
            out,
            "<p class=\"error\">Error fetching product details</p>\n<p class=\"details-error\">{}</p>",
            error_text(&details.body)
        );
    }
    out.push_str("</div>\n");
}

fn render_reviews(out: &mut String, reviews: &Fetched) {
    out.push_str("<div class=\"container reviews\">\n");
    if reviews.status != StatusCode::OK {
        let _ = writeln!(
            out,
            "<p class=\"error\">Error fetching product reviews</p>\n<p class=\"reviews-error\">{}</p>\n</div>",
            error_text(&reviews.body)
        );
        return;
    }
    out.push_str("<h4>Book Reviews</h4>\n");
    let podname = reviews.body.get("podname").map(text).unwrap_or_default();
    let cluster = reviews
        .body
        .get("clustername")
        .map(text)
        .filter(|c| c != "null" && !c.is_empty());
    let empty = Vec::new();
    let list = reviews
        .body
        .get("reviews")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for review in list {
        out.push_str("<section class=\"review\">\n");
        if let Some(rating) = review.get("rating") {
            render_rating(out, rating);
        }
        let _ = writeln!(
            out,
            "<blockquote><p>\"{}\"</p></blockquote>\n<div class=\"reviewer\">{}</div>",
            review.get("text").map(text).unwrap_or_default(),
            review.get("reviewer").map(text).unwrap_or_default()
        );
        let _ = write!(out, "<div class=\"served-by\">Reviews served by: {podname}");
        if let Some(cluster) = &cluster {
            let _ = write!(out, " on cluster {cluster}");
        }
        out.push_str("</div>\n</section>\n");
    }
    out.push_str("</div>\n");
}

/// Stars as the reviews service gave them; like Istio's page, 0 stars shows nothing
/// and an error shows its text.
fn render_rating(out: &mut String, rating: &Value) {
    if let Some(stars) = rating
        .get("stars")
        .and_then(Value::as_i64)
        .filter(|s| *s > 0)
    {
        let color = rating.get("color").map(text).unwrap_or_default();
        let full = stars.min(5);
        let _ = write!(out, "<div class=\"rating\" data-stars=\"{stars}\" data-color=\"{color}\"><font color=\"{color}\">");
        for _ in 0..full {
            out.push_str("<span class=\"star full\">★</span>");
        }
        for _ in full..5 {
            out.push_str("<span class=\"star empty\">☆</span>");
        }
        out.push_str("</font></div>\n");
    } else if let Some(error) = rating.get("error") {
        let _ = writeln!(out, "<p class=\"rating-error error\">{}</p>", text(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(body: Value) -> Fetched {
        Fetched {
            status: StatusCode::OK,
            body,
            raw: None,
        }
    }

    #[test]
    fn stars_and_escaping() {
        let reviews = ok(json!({
            "id": "0", "podname": "reviews-v3-1", "clustername": "null",
            "reviews": [
                {"reviewer": "R<1>", "text": "a \"b\"", "rating": {"stars": 4, "color": "red"}},
                {"reviewer": "R2", "text": "c", "rating": {"error": "Ratings service is currently unavailable"}}
            ]
        }));
        let page = product_page(
            None,
            &ok(json!({"publisher": "P&Q"})),
            &reviews,
            Some("jason"),
        );
        assert_eq!(
            page.matches("<span class=\"star full\">★</span>").count(),
            4
        );
        assert_eq!(
            page.matches("<span class=\"star empty\">☆</span>").count(),
            1
        );
        assert!(page.contains(
            "<div class=\"rating\" data-stars=\"4\" data-color=\"red\"><font color=\"red\">"
        ));
        assert!(page.contains(
            "<p class=\"rating-error error\">Ratings service is currently unavailable</p>"
        ));
        assert!(page.contains("<div class=\"reviewer\">R&lt;1&gt;</div>"));
        assert!(page.contains("&quot;b&quot;"));
        assert!(page.contains("<td>P&amp;Q</td>"));
        assert!(page.contains("Reviews served by: reviews-v3-1</div>"));
        assert!(page.contains("<span class=\"user\">jason</span>"));
    }

    #[test]
    fn hostile_color_is_escaped() {
        let mut out = String::new();
        render_rating(&mut out, &json!({"stars": 9, "color": "\"><script>"}));
        assert!(!out.contains("<script>"));
        assert_eq!(out.matches("star full").count(), 5);
    }
}
