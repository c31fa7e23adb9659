//! `security.istio.io` PeerAuthentication and `telemetry.istio.io` Telemetry.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use crate::decode::{string_enum, Cx, Decode};
use crate::model::LabelSelector;
use crate::node::{Node, Value};
use crate::values::Duration;

string_enum!(
    /// PeerAuthentication `mtls.mode`.
    MtlsMode, "mTLS mode" {
        /// `UNSET`: inherit from the parent scope.
        Unset = "UNSET",
        /// `DISABLE`
        Disable = "DISABLE",
        /// `PERMISSIVE`: plain text and mTLS.
        Permissive = "PERMISSIVE",
        /// `STRICT`: mTLS only.
        Strict = "STRICT",
    }
);

/// PeerAuthentication `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// `selector` (absent: the whole namespace, or the mesh in the root namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// `mtls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// `portLevelMtls`, by port number.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u16, Mtls>,
}

/// `mtls: {mode: ...}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Mtls {
    /// `mode`.
    pub mode: MtlsMode,
}

impl Decode for Mtls {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["mode"], &[]);
        Mtls {
            mode: f.get(cx, "mode"),
        }
    }
}

impl Decode for PeerAuthenticationSpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["selector", "mtls", "portLevelMtls"], &[]);
        let selector: Option<LabelSelector> = f.opt(cx, "selector");
        let mtls: Option<Mtls> = f.opt(cx, "mtls");
        let raw: BTreeMap<String, Mtls> = f.get(cx, "portLevelMtls");
        let mut port_level_mtls = BTreeMap::new();
        if let Some(Value::Map(entries)) = f.node("portLevelMtls").map(|n| &n.value) {
            for e in entries {
                match e.key.parse::<u16>() {
                    Ok(p) if p > 0 => {
                        if let Some(m) = raw.get(&e.key) {
                            port_level_mtls.insert(p, *m);
                        }
                    }
                    _ => cx.at_key("portLevelMtls", |cx| {
                        cx.error_at(
                            e.line,
                            e.column,
                            format!("`{}` is not a port number", e.key),
                            Some("key each entry by a port number from 1 to 65535".into()),
                        );
                    }),
                }
            }
        }
        let spec = PeerAuthenticationSpec {
            selector,
            mtls,
            port_level_mtls,
        };
        let no_selector = spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.0.is_empty());
        if !spec.port_level_mtls.is_empty() && no_selector {
            let (line, column) = f.key_position("portLevelMtls");
            cx.at_key("portLevelMtls", |cx| {
                cx.error_at(
                    line,
                    column,
                    "portLevelMtls requires a workload selector",
                    Some("add `selector: {matchLabels: ...}`, or move the mode to `mtls`".into()),
                );
            });
        }
        spec
    }
}

string_enum!(
    /// Istio standard metrics, as named in `overrides[].match.metric`.
    MetricName, "metric" {
        /// `ALL_METRICS`
        AllMetrics = "ALL_METRICS",
        /// `REQUEST_COUNT`
        RequestCount = "REQUEST_COUNT",
        /// `REQUEST_DURATION`
        RequestDuration = "REQUEST_DURATION",
        /// `REQUEST_SIZE`
        RequestSize = "REQUEST_SIZE",
        /// `RESPONSE_SIZE`
        ResponseSize = "RESPONSE_SIZE",
        /// `TCP_OPENED_CONNECTIONS`
        TcpOpenedConnections = "TCP_OPENED_CONNECTIONS",
        /// `TCP_CLOSED_CONNECTIONS`
        TcpClosedConnections = "TCP_CLOSED_CONNECTIONS",
        /// `TCP_SENT_BYTES`
        TcpSentBytes = "TCP_SENT_BYTES",
        /// `TCP_RECEIVED_BYTES`
        TcpReceivedBytes = "TCP_RECEIVED_BYTES",
        /// `GRPC_REQUEST_MESSAGES`
        GrpcRequestMessages = "GRPC_REQUEST_MESSAGES",
        /// `GRPC_RESPONSE_MESSAGES`
        GrpcResponseMessages = "GRPC_RESPONSE_MESSAGES",
    }
);

string_enum!(
    /// Which reporter an override applies to.
    WorkloadMode, "workload mode" {
        /// `CLIENT_AND_SERVER`
        ClientAndServer = "CLIENT_AND_SERVER",
        /// `CLIENT` (reporter="source")
        Client = "CLIENT",
        /// `SERVER` (reporter="destination")
        Server = "SERVER",
    }
);

string_enum!(
    /// `tagOverrides.*.operation`.
    TagOperation, "tag operation" {
        /// `UPSERT`: set the label to `value`.
        Upsert = "UPSERT",
        /// `REMOVE`: drop the label.
        Remove = "REMOVE",
    }
);

/// Telemetry `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TelemetrySpec {
    /// `selector` (absent: the namespace, or the mesh in the root namespace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// `metrics`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    /// `accessLogging`, `tracing`, `targetRef(s)`: accepted and kept, not acted on.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for TelemetrySpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["selector", "metrics"],
            &["accessLogging", "tracing", "targetRef", "targetRefs"],
        );
        TelemetrySpec {
            selector: f.opt(cx, "selector"),
            metrics: f.get(cx, "metrics"),
            extra: f.rest(),
        }
    }
}

/// One `metrics` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// `providers`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// `reportingInterval`: how often TCP metrics of live connections are updated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<Duration>,
    /// `overrides`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverride>,
}

impl Decode for Metrics {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["providers", "reportingInterval", "overrides"], &[]);
        let m = Metrics {
            providers: f.get(cx, "providers"),
            reporting_interval: f.opt(cx, "reportingInterval"),
            overrides: f.get(cx, "overrides"),
        };
        if let (Some(n), Some(d)) = (f.node("reportingInterval"), m.reporting_interval) {
            if matches!(n.value, Value::Str(_)) && d.0 < std::time::Duration::from_millis(1) {
                cx.at_key("reportingInterval", |cx| {
                    cx.error(
                        n,
                        "must be at least 1ms",
                        Some("use an interval such as `15s`".into()),
                    );
                });
            }
        }
        m
    }
}

/// `providers[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProviderRef {
    /// `name`, e.g. `prometheus`.
    pub name: String,
}

impl Decode for ProviderRef {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["name"], &[]);
        let p = ProviderRef {
            name: f.req(cx, "name", "name a provider, e.g. `name: prometheus`"),
        };
        if let Some(n) = f.node("name") {
            non_empty(cx, n, "name", &p.name, "name a provider, e.g. `prometheus`");
        }
        p
    }
}

fn non_empty(cx: &mut Cx<'_>, node: &Node, key: &str, text: &str, fix: &str) {
    if text.is_empty() && matches!(node.value, Value::Str(_)) {
        cx.at_key(key, |cx| {
            cx.error(
                node,
                "must be at least 1 character long",
                Some(fix.to_string()),
            );
        });
    }
}

/// `overrides[]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsOverride {
    /// `match` (absent: all metrics, both reporters).
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub selector: Option<MetricSelector>,
    /// `disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// `tagOverrides`, by label name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

impl Decode for MetricsOverride {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["match", "disabled", "tagOverrides"], &[]);
        let o = MetricsOverride {
            selector: f.opt(cx, "match"),
            disabled: f.opt(cx, "disabled"),
            tag_overrides: f.get(cx, "tagOverrides"),
        };
        // Istio rejects an empty tag name; there is no label to set or remove.
        if let Some(Value::Map(entries)) = f.node("tagOverrides").map(|n| &n.value) {
            for e in entries.iter().filter(|e| e.key.is_empty()) {
                cx.at_key("tagOverrides", |cx| {
                    cx.at_key("", |cx| {
                        cx.error_at(
                            e.line,
                            e.column,
                            "tag name must not be empty",
                            Some(
                                "name the label to set or remove, e.g. `request_protocol:`".into(),
                            ),
                        );
                    });
                });
            }
        }
        o
    }
}

/// `overrides[].match`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricSelector {
    /// `metric`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricName>,
    /// `customMetric`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    /// `mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

impl Decode for MetricSelector {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["metric", "customMetric", "mode"], &[]);
        let s = MetricSelector {
            metric: f.opt(cx, "metric"),
            custom_metric: f.opt(cx, "customMetric"),
            mode: f.opt(cx, "mode"),
        };
        if let (Some(n), Some(c)) = (f.node("customMetric"), &s.custom_metric) {
            non_empty(
                cx,
                n,
                "customMetric",
                c,
                "name the custom metric, or use `metric:` for a standard one",
            );
        }
        if s.metric.is_some() && s.custom_metric.is_some() {
            let (line, column) = f.key_position("customMetric");
            cx.at_key("customMetric", |cx| {
                cx.error_at(
                    line,
                    column,
                    "`metric` and `customMetric` are mutually exclusive",
                    Some("keep only one of them".into()),
                );
            });
        }
        s
    }
}

/// `tagOverrides.NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TagOverride {
    /// `operation` (default UPSERT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<TagOperation>,
    /// `value`: a CEL expression (`filter_state...`, `'literal'`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Decode for TagOverride {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["operation", "value"], &[]);
        let before = cx.diags.len();
        let t = TagOverride {
            operation: f.opt(cx, "operation"),
            value: f.opt(cx, "value"),
        };
        if cx.diags.len() > before {
            // An invalid operation or value is already reported; the rule below would guess.
            return t;
        }
        match (t.operation.unwrap_or(TagOperation::Upsert), &t.value) {
            (TagOperation::Upsert, None) if matches!(node.value, Value::Map(_) | Value::Null) => {
                cx.error(
                    node,
                    "value must be set when operation is UPSERT",
                    Some("add `value: <expression>`, or use `operation: REMOVE`".into()),
                );
            }
            (TagOperation::Remove, Some(_)) => {
                let (line, column) = f.key_position("value");
                cx.at_key("value", |cx| {
                    cx.error_at(
                        line,
                        column,
                        "value must not be set when operation is REMOVE",
                        Some("delete `value`, or use `operation: UPSERT`".into()),
                    );
                });
            }
            _ => {}
        }
        t
    }
}
