//! Telemetry API overrides from the configuration (`telemetry.overrides`) as the
//! telemetry crate's [`TagOverrides`], with the tag-value expressions Istio's docs use.

use telemetry::{TagOperation, TagOverrides, TagValue, TcpLabel, TcpMetric};

use crate::config::{TagOperationKind, TelemetryConfig};

/// Metric names of the Telemetry API that a TCP proxy never reports; overrides naming
/// them are accepted and have no effect.
const HTTP_METRICS: [&str; 6] = [
    "REQUEST_COUNT",
    "REQUEST_DURATION",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "GRPC_REQUEST_MESSAGES",
    "GRPC_RESPONSE_MESSAGES",
];

/// The expression forms a tag value may take, for error messages.
pub(crate) const SUPPORTED_VALUES: &str = "a quoted literal ('v1' or \"v1\"), a standard label name (e.g. destination_service_name), upstream_peer.labels['KEY'].value, downstream_peer.labels['KEY'].value, source.labels['KEY'] or destination.labels['KEY']";

/// Why an override cannot be applied; the caller adds the configuration's name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OverrideError {
    pub(crate) field: String,
    pub(crate) value: String,
    pub(crate) problem: String,
    pub(crate) fix: String,
}

/// Which metrics an override's `metric` selects: `Ok(None)` for all four, `Ok(Some(..))`
/// for one, `Err(())` for an HTTP metric (ignored).
fn select(name: &str) -> Option<Result<Option<TcpMetric>, ()>> {
    if name == "ALL_METRICS" {
        return Some(Ok(None));
    }
    if let Some(m) = TcpMetric::from_api_name(name) {
        return Some(Ok(Some(m)));
    }
    HTTP_METRICS.contains(&name).then_some(Err(()))
}

/// Converts `telemetry.overrides`, in order (later entries win on the same tag).
pub(crate) fn tag_overrides(config: &TelemetryConfig) -> Result<TagOverrides, OverrideError> {
    let mut out = TagOverrides::none();
    for (i, o) in config.overrides.iter().enumerate() {
        let field = format!("telemetry.overrides[{i}]");
        let Some(selected) = select(&o.metric) else {
            return Err(OverrideError {
                field: format!("{field}.metric"),
                value: o.metric.clone(),
                problem: "is not a Telemetry API metric".into(),
                fix: format!(
                    "use ALL_METRICS, TCP_OPENED_CONNECTIONS, TCP_CLOSED_CONNECTIONS, TCP_SENT_BYTES or TCP_RECEIVED_BYTES (HTTP metrics {} are accepted and ignored)",
                    HTTP_METRICS.join(", ")
                ),
            });
        };
        let mut ops = Vec::new();
        for (name, tag) in &o.tag_overrides {
            let tfield = format!("{field}.tagOverrides[{name:?}]");
            if name.trim().is_empty() {
                return Err(OverrideError {
                    field: tfield,
                    value: name.clone(),
                    problem: "tag name must not be empty".into(),
                    fix: "name the label to set or remove, e.g. request_protocol".into(),
                });
            }
            let op = match (tag.operation, &tag.value) {
                (TagOperationKind::Remove, None) => TagOperation::Remove,
                (TagOperationKind::Remove, Some(v)) => {
                    return Err(OverrideError {
                        field: format!("{tfield}.value"),
                        value: v.clone(),
                        problem: "must not be set when operation is REMOVE".into(),
                        fix: "delete `value`, or use operation: UPSERT".into(),
                    })
                }
                (TagOperationKind::Upsert, None) => {
                    return Err(OverrideError {
                        field: format!("{tfield}.value"),
                        value: String::new(),
                        problem: "must be set when operation is UPSERT".into(),
                        fix: format!("set value to {SUPPORTED_VALUES}, or use operation: REMOVE"),
                    })
                }
                (TagOperationKind::Upsert, Some(v)) => match parse_value(v) {
                    Some(value) => TagOperation::Upsert(value),
                    None => {
                        return Err(OverrideError {
                            field: format!("{tfield}.value"),
                            value: v.clone(),
                            problem: "is not a supported expression".into(),
                            fix: format!("use {SUPPORTED_VALUES}"),
                        })
                    }
                },
            };
            ops.push((name, op));
        }
        // HTTP metrics are checked like the others, then ignored.
        let Ok(metric) = selected else { continue };
        if let Some(disabled) = o.disabled {
            out.set_disabled(metric, disabled);
        }
        for (name, op) in ops {
            out.set_tag(metric, name, op);
        }
    }
    Ok(out)
}

/// Parses one tag-value expression; `None` when it is not one of [`SUPPORTED_VALUES`].
pub(crate) fn parse_value(text: &str) -> Option<TagValue> {
    let t = text.trim();
    if let Some(lit) = quoted(t) {
        return Some(TagValue::Literal(lit.to_owned()));
    }
    if let Some(label) = TcpLabel::from_name(t) {
        return Some(TagValue::Label(label));
    }
    type Make = fn(String) -> TagValue;
    let forms: [(&str, bool, Make); 4] = [
        ("upstream_peer.labels", true, TagValue::UpstreamPeerLabel),
        (
            "downstream_peer.labels",
            true,
            TagValue::DownstreamPeerLabel,
        ),
        ("source.labels", false, TagValue::SourceLabel),
        ("destination.labels", false, TagValue::DestinationLabel),
    ];
    for (prefix, peer, make) in forms {
        let Some(rest) = t.strip_prefix(prefix) else {
            continue;
        };
        let rest = rest.trim_start();
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        let key = quoted(inner[..close].trim())?;
        let tail = inner[close + 1..].trim();
        // Peer metadata values are protobuf `Value`s, so Istio's docs add `.value`;
        // accept the expression with or without it.
        let tail_ok = tail.is_empty() || (peer && tail == ".value");
        if key.is_empty() || !tail_ok {
            return None;
        }
        return Some(make(key.to_owned()));
    }
    None
}

/// The text between matching single or double quotes, without escapes.
fn quoted(t: &str) -> Option<&str> {
    for q in ['\'', '"'] {
        if let Some(inner) = t.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            if !inner.contains(q) {
                return Some(inner);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{MetricOverride, TagOverride};

    #[test]
    fn expressions() {
        let cases = [
            ("'v1'", Some(TagValue::Literal("v1".into()))),
            ("\"a b\"", Some(TagValue::Literal("a b".into()))),
            (
                "destination_service_name",
                Some(TagValue::Label(TcpLabel::DestinationServiceName)),
            ),
            (
                "upstream_peer.labels['app'].value",
                Some(TagValue::UpstreamPeerLabel("app".into())),
            ),
            (
                "downstream_peer.labels[\"version\"]",
                Some(TagValue::DownstreamPeerLabel("version".into())),
            ),
            (
                "source.labels['app']",
                Some(TagValue::SourceLabel("app".into())),
            ),
            (
                "destination.labels['team']",
                Some(TagValue::DestinationLabel("team".into())),
            ),
            ("destination.labels['team'].value", None),
            ("upstream_peer.labels[app]", None),
            ("'unterminated", None),
            ("request.host", None),
            ("destination_port", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_value(text), want, "{text}");
        }
    }

    fn telemetry(overrides: Vec<MetricOverride>) -> TelemetryConfig {
        TelemetryConfig {
            enabled: true,
            overrides,
        }
    }

    fn over(metric: &str, tags: &[(&str, TagOperationKind, Option<&str>)]) -> MetricOverride {
        MetricOverride {
            metric: metric.into(),
            disabled: None,
            tag_overrides: tags
                .iter()
                .map(|(n, operation, value)| {
                    (
                        n.to_string(),
                        TagOverride {
                            operation: *operation,
                            value: value.map(str::to_owned),
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn conversion_selects_metrics_and_ignores_http_ones() {
        use TagOperationKind::{Remove, Upsert};
        let mut sent_off = over("TCP_SENT_BYTES", &[]);
        sent_off.disabled = Some(true);
        let t = telemetry(vec![
            over("ALL_METRICS", &[("request_protocol", Remove, None)]),
            over("TCP_OPENED_CONNECTIONS", &[("team", Upsert, Some("'db'"))]),
            over("REQUEST_COUNT", &[("x", Upsert, Some("'y'"))]),
            sent_off,
        ]);
        let o = tag_overrides(&t).unwrap();
        for m in TcpMetric::ALL {
            assert_eq!(
                o.metric(m).tags.get("request_protocol"),
                Some(&TagOperation::Remove)
            );
            assert!(!o.metric(m).tags.contains_key("x"));
            assert_eq!(o.metric(m).disabled, m == TcpMetric::SentBytes);
        }
        assert_eq!(
            o.metric(TcpMetric::OpenedConnections).tags.get("team"),
            Some(&TagOperation::Upsert(TagValue::Literal("db".into())))
        );
        assert_eq!(o.metric(TcpMetric::ClosedConnections).tags.len(), 1);
    }

    #[test]
    fn conversion_errors_name_the_field() {
        use TagOperationKind::{Remove, Upsert};
        let err = |o: MetricOverride| tag_overrides(&telemetry(vec![o])).unwrap_err();
        let e = err(over("TCP_OPENED_CONNECTION", &[]));
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("telemetry.overrides[0].metric", "TCP_OPENED_CONNECTION")
        );
        let e = err(over("ALL_METRICS", &[("a", Upsert, Some("request.host"))]));
        assert_eq!(
            (e.field.as_str(), e.value.as_str(), e.problem.as_str()),
            (
                "telemetry.overrides[0].tagOverrides[\"a\"].value",
                "request.host",
                "is not a supported expression"
            )
        );
        assert_eq!(e.fix, format!("use {SUPPORTED_VALUES}"));
        let e = err(over("ALL_METRICS", &[("a", Upsert, None)]));
        assert_eq!(e.problem, "must be set when operation is UPSERT");
        let e = err(over("ALL_METRICS", &[("a", Remove, Some("'x'"))]));
        assert_eq!(e.problem, "must not be set when operation is REMOVE");
        let e = err(over("REQUEST_COUNT", &[("", Remove, None)]));
        assert_eq!(e.field, "telemetry.overrides[0].tagOverrides[\"\"]");
    }
}
