//! Encoding a registry for a scraper, in the format its `Accept` header asks for.
//!
//! Prometheus text format 0.0.4 is the default, as Envoy serves it: counters are
//! typed under their full sample name (`# TYPE istio_tcp_connections_opened_total
//! counter`), which every Prometheus version and `promtool check metrics` accept.
//! OpenMetrics 1.0 is served only to a scraper that lists
//! `application/openmetrics-text` in its `Accept` header (Prometheus does by default
//! since 2.5); its family is named without `_total` and the samples keep it, so both
//! formats produce the same series names in Prometheus.

use prometheus_client::registry::Registry;

/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text 1.0.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The two text expositions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    #[default]
    PrometheusText,
    /// OpenMetrics text 1.0.0, ending in `# EOF`.
    OpenMetrics,
}

impl Format {
    /// Picks the format for a request's `Accept` header (`None` if absent):
    /// OpenMetrics when it is listed with a non-zero quality, else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Format::PrometheusText;
        };
        let wants_openmetrics = accept.split(',').any(|range| {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            media.eq_ignore_ascii_case("application/openmetrics-text")
                && !params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    /// The `Content-Type` to serve this format with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Encoding failed (a label or metric writer reported an error).
#[derive(Debug, thiserror::Error)]
#[error("encoding the metrics exposition failed: {0}")]
pub struct EncodeError(#[from] std::fmt::Error);

/// Encodes `registry` in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, EncodeError> {
    let mut out = String::new();
    match format {
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        use Format::*;
        assert_eq!(Format::negotiate(None), PrometheusText);
        assert_eq!(Format::negotiate(Some("*/*")), PrometheusText);
        assert_eq!(Format::negotiate(Some("text/plain")), PrometheusText);
        // Prometheus 2.42's default scrape Accept header.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            PrometheusText
        );
        assert_eq!(OpenMetrics.content_type(), OPENMETRICS_CONTENT_TYPE);
        assert_eq!(PrometheusText.content_type(), PROMETHEUS_TEXT_CONTENT_TYPE);
    }
}
