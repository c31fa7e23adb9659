//! Telemetry API metric customization: `disabled` and `tagOverrides` per metric.
//!
//! The control plane translates a `Telemetry` resource into a [`TagOverrides`] and
//! hands it to [`crate::TcpMetrics::set_overrides`]; connections resolved afterwards
//! use it. Series created before a change keep their labels (Prometheus counters must
//! not be rewritten under a scraper).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::labels::{LabelValue, Reporter, TcpLabel, TcpLabels};

/// One of the four TCP metrics, named as in the Telemetry API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpMetric {
    /// `TCP_OPENED_CONNECTIONS` → `istio_tcp_connections_opened_total`.
    OpenedConnections,
    /// `TCP_CLOSED_CONNECTIONS` → `istio_tcp_connections_closed_total`.
    ClosedConnections,
    /// `TCP_SENT_BYTES` → `istio_tcp_sent_bytes_total`.
    SentBytes,
    /// `TCP_RECEIVED_BYTES` → `istio_tcp_received_bytes_total`.
    ReceivedBytes,
}

impl TcpMetric {
    /// All four, in a fixed order.
    pub const ALL: [TcpMetric; 4] = [
        TcpMetric::OpenedConnections,
        TcpMetric::ClosedConnections,
        TcpMetric::SentBytes,
        TcpMetric::ReceivedBytes,
    ];

    /// The Telemetry API name (`overrides[].match.metric`).
    pub fn api_name(self) -> &'static str {
        match self {
            TcpMetric::OpenedConnections => "TCP_OPENED_CONNECTIONS",
            TcpMetric::ClosedConnections => "TCP_CLOSED_CONNECTIONS",
            TcpMetric::SentBytes => "TCP_SENT_BYTES",
            TcpMetric::ReceivedBytes => "TCP_RECEIVED_BYTES",
        }
    }

    /// The series name Prometheus sees.
    pub fn exposed_name(self) -> &'static str {
        match self {
            TcpMetric::OpenedConnections => "istio_tcp_connections_opened_total",
            TcpMetric::ClosedConnections => "istio_tcp_connections_closed_total",
            TcpMetric::SentBytes => "istio_tcp_sent_bytes_total",
            TcpMetric::ReceivedBytes => "istio_tcp_received_bytes_total",
        }
    }

    /// Looks a metric up by its Telemetry API name.
    pub fn from_api_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.api_name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where an upserted label takes its value from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagValue {
    /// A fixed string.
    Literal(String),
    /// The printed value of a standard label of the same connection.
    Label(TcpLabel),
    /// A pod label of the source workload.
    SourceLabel(String),
    /// A pod label of the destination workload.
    DestinationLabel(String),
    /// A pod label of the downstream peer (Istio's `downstream_peer.labels[...]`): the
    /// source workload on the destination reporter, unknown on the source reporter
    /// (the client application is no mesh peer).
    DownstreamPeerLabel(String),
    /// A pod label of the upstream peer (Istio's `upstream_peer.labels[...]`): the
    /// destination workload on the source reporter, unknown on the destination
    /// reporter.
    UpstreamPeerLabel(String),
}

impl TagValue {
    fn eval(&self, labels: &TcpLabels) -> LabelValue {
        let reporter = labels.reporter();
        match self {
            TagValue::Literal(v) => LabelValue::from(v.as_str()),
            TagValue::Label(l) => LabelValue::from(labels.standard(*l)),
            TagValue::SourceLabel(k) => labels.workload_label(true, k).into(),
            TagValue::DestinationLabel(k) => labels.workload_label(false, k).into(),
            TagValue::DownstreamPeerLabel(k) => match reporter {
                Reporter::Destination => labels.workload_label(true, k).into(),
                Reporter::Source => LabelValue::unknown(),
            },
            TagValue::UpstreamPeerLabel(k) => match reporter {
                Reporter::Source => labels.workload_label(false, k).into(),
                Reporter::Destination => LabelValue::unknown(),
            },
        }
    }
}

/// What a tag override does to one label name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagOperation {
    /// Drop the label (`operation: REMOVE`).
    Remove,
    /// Set the label, replacing a standard value in place or adding an extra label
    /// after the standard ones (`operation: UPSERT`).
    Upsert(TagValue),
}

/// Overrides for one metric.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricOverrides {
    /// Do not report this metric at all.
    pub disabled: bool,
    /// Label name → operation.
    pub tags: BTreeMap<String, TagOperation>,
}

impl MetricOverrides {
    /// True when the metric is reported with exactly the standard labels.
    pub fn is_identity(&self) -> bool {
        !self.disabled && self.tags.is_empty()
    }

    /// The label set this metric's series uses for a connection with `labels`.
    pub fn apply(&self, labels: &TcpLabels) -> TcpLabels {
        if self.tags.is_empty() {
            return labels.clone();
        }
        let remove = self
            .tags
            .iter()
            .filter(|(_, op)| matches!(op, TagOperation::Remove))
            .filter_map(|(name, _)| TcpLabel::from_name(name));
        let set: Vec<(Arc<str>, LabelValue)> = self
            .tags
            .iter()
            .filter_map(|(name, op)| match op {
                TagOperation::Remove => None,
                TagOperation::Upsert(v) => Some((label_name(name)?, v.eval(labels))),
            })
            .collect();
        labels.clone().customized(remove, set)
    }
}

/// A tag name as a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`), as Envoy's Prometheus
/// output spells tags: other characters become `_`, a leading digit gets a `_` prefix.
/// Telemetry resources may name tags freely (`app.kubernetes.io/role`); one invalid name
/// printed as is would make Prometheus reject the whole scrape. `None` for an empty name.
fn label_name(tag: &str) -> Option<Arc<str>> {
    if tag.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(tag.len() + 1);
    if tag.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(tag.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    Some(out.into())
}

/// Overrides for all four TCP metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagOverrides {
    metrics: [MetricOverrides; 4],
}

impl TagOverrides {
    /// No overrides: every metric on, standard labels.
    pub fn none() -> Self {
        Self::default()
    }

    /// The overrides of one metric.
    pub fn metric(&self, m: TcpMetric) -> &MetricOverrides {
        &self.metrics[m.index()]
    }

    /// The overrides of one metric, for editing.
    pub fn metric_mut(&mut self, m: TcpMetric) -> &mut MetricOverrides {
        &mut self.metrics[m.index()]
    }

    /// Enables or disables a metric (`disabled`). `None` means all metrics
    /// (`ALL_METRICS`).
    pub fn set_disabled(&mut self, m: Option<TcpMetric>, disabled: bool) -> &mut Self {
        for o in self.select(m) {
            o.disabled = disabled;
        }
        self
    }

    /// Sets a tag operation for one metric or (`None`) all of them. Operations on the
    /// same name replace each other, so later Telemetry resources win.
    pub fn set_tag(&mut self, m: Option<TcpMetric>, name: &str, op: TagOperation) -> &mut Self {
        for o in self.select(m) {
            o.tags.insert(name.to_owned(), op.clone());
        }
        self
    }

    fn select(&mut self, m: Option<TcpMetric>) -> impl Iterator<Item = &mut MetricOverrides> {
        self.metrics
            .iter_mut()
            .enumerate()
            .filter(move |(i, _)| m.is_none_or(|m| m.index() == *i))
            .map(|(_, o)| o)
    }

    /// True when no metric is customized.
    pub fn is_identity(&self) -> bool {
        self.metrics.iter().all(MetricOverrides::is_identity)
    }

    /// True when some label value comes from a pod label, which is not part of a
    /// label set's identity.
    pub(crate) fn reads_workload_labels(&self) -> bool {
        self.metrics.iter().flat_map(|o| o.tags.values()).any(|op| {
            matches!(
                op,
                TagOperation::Upsert(
                    TagValue::SourceLabel(_)
                        | TagValue::DestinationLabel(_)
                        | TagValue::DownstreamPeerLabel(_)
                        | TagValue::UpstreamPeerLabel(_)
                )
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Workload;

    #[test]
    fn names() {
        for m in TcpMetric::ALL {
            assert_eq!(TcpMetric::from_api_name(m.api_name()), Some(m));
        }
        assert_eq!(TcpMetric::from_api_name("REQUEST_COUNT"), None);
    }

    #[test]
    fn select_one_or_all() {
        let mut o = TagOverrides::none();
        assert!(o.is_identity());
        o.set_disabled(Some(TcpMetric::SentBytes), true);
        o.set_tag(None, "source_principal", TagOperation::Remove);
        assert!(o.metric(TcpMetric::SentBytes).disabled);
        assert!(!o.metric(TcpMetric::ReceivedBytes).disabled);
        for m in TcpMetric::ALL {
            assert_eq!(o.metric(m).tags.len(), 1);
        }
        assert!(!o.is_identity());
    }

    #[test]
    fn apply_remove_upsert_copy() {
        let labels = TcpLabels::builder(Reporter::Destination).build();
        let mut o = MetricOverrides::default();
        o.tags
            .insert("source_principal".into(), TagOperation::Remove);
        o.tags.insert("unknown_name".into(), TagOperation::Remove);
        o.tags.insert(
            "role".into(),
            TagOperation::Upsert(TagValue::Literal("client".into())),
        );
        o.tags.insert(
            "mesh_reporter".into(),
            TagOperation::Upsert(TagValue::Label(TcpLabel::Reporter)),
        );
        let out = o.apply(&labels);
        assert_eq!(out.get("source_principal"), None);
        assert_eq!(out.get("role"), Some("client"));
        assert_eq!(out.get("mesh_reporter"), Some("destination"));
        let names: Vec<_> = out.iter().map(|(k, _)| k).collect();
        assert_eq!(names.len(), 24);
        assert_eq!(names[22..], ["mesh_reporter", "role"]);
    }

    #[test]
    fn upserted_names_become_prometheus_label_names() {
        let labels = TcpLabels::builder(Reporter::Destination).build();
        let mut o = MetricOverrides::default();
        for name in ["app.kubernetes.io/role", "9lives", "ok_name", "", "é"] {
            o.tags.insert(
                name.into(),
                TagOperation::Upsert(TagValue::Literal(format!("v{name}"))),
            );
        }
        let out = o.apply(&labels);
        let extra: Vec<_> = out.iter().skip(23).collect();
        assert_eq!(
            extra,
            [
                ("_", "vé"),
                ("_9lives", "v9lives"),
                ("app_kubernetes_io_role", "vapp.kubernetes.io/role"),
                ("ok_name", "vok_name"),
            ]
        );
        // A spelling that sanitizes to a standard label replaces it in place.
        o.tags.insert(
            "source-app".into(),
            TagOperation::Upsert(TagValue::Literal("x".into())),
        );
        let out = o.apply(&labels);
        assert_eq!(out.get("source_app"), Some("x"));
        assert_eq!(out.iter().count(), 27);
    }

    #[test]
    fn workload_label_values() {
        let w = |role: &str| Workload {
            name: role.into(),
            labels: [("role".to_string(), role.to_string())].into(),
            ..Workload::default()
        };
        let (client, server) = (w("client"), w("server"));
        let svc = crate::DestinationService::unknown();
        let flags = crate::ResponseFlags::None;
        let outbound = TcpLabels::outbound(&client, &server, &svc, flags);
        let inbound =
            TcpLabels::inbound(&server, &client, &svc, crate::SecurityPolicy::None, flags);
        let mut o = MetricOverrides::default();
        for (name, v) in [
            ("src", TagValue::SourceLabel("role".into())),
            ("dst", TagValue::DestinationLabel("role".into())),
            ("down", TagValue::DownstreamPeerLabel("role".into())),
            ("up", TagValue::UpstreamPeerLabel("role".into())),
            ("missing", TagValue::SourceLabel("nope".into())),
        ] {
            o.tags.insert(name.into(), TagOperation::Upsert(v));
        }
        let get = |l: &TcpLabels, k: &str| o.apply(l).get(k).map(str::to_owned);
        for (labels, want) in [
            (&outbound, ["client", "server", "unknown", "server"]),
            (&inbound, ["client", "server", "client", "unknown"]),
        ] {
            let got: Vec<_> = ["src", "dst", "down", "up"]
                .iter()
                .map(|k| get(labels, k).unwrap())
                .collect();
            assert_eq!(got, want);
            assert_eq!(get(labels, "missing").as_deref(), Some("unknown"));
        }
        // Captured pod labels are not part of the series identity.
        let bare = TcpLabels::outbound(
            &Workload {
                labels: Default::default(),
                ..client.clone()
            },
            &server,
            &svc,
            flags,
        );
        assert_eq!(bare, outbound);
        assert_eq!(o.apply(&bare).get("src"), Some("unknown"));
    }
}
