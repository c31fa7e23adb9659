//! `networking.istio.io`: DestinationRule and VirtualService (v1, v1beta1, v1alpha3).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use crate::decode::{string_enum, Cx, Decode, StringMap};
use crate::model::core::check_unique;
use crate::node::{Node, Value};
use crate::values::{Duration, Port};

/// DestinationRule `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// `host`: a service name, short (`reviews`) or fully qualified.
    pub host: String,
    /// `trafficPolicy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// `subsets`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// `exportTo`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// `workloadSelector`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for DestinationRuleSpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["host", "trafficPolicy", "subsets", "exportTo"],
            &["workloadSelector"],
        );
        let spec = DestinationRuleSpec {
            host: f.req(
                cx,
                "host",
                "set the service this rule applies to, e.g. `host: reviews`",
            ),
            traffic_policy: f.opt(cx, "trafficPolicy"),
            subsets: f.get(cx, "subsets"),
            export_to: f.get(cx, "exportTo"),
            extra: f.rest(),
        };
        if let Some(n) = f.node("host") {
            cx.at_key("host", |cx| check_host(cx, n, &spec.host, false));
        }
        if let Some(list) = f.node("subsets") {
            check_unique(
                cx,
                list,
                "subsets",
                spec.subsets.iter().map(|s| Some(s.name.as_str())),
                "subset name",
            );
        }
        spec
    }
}

/// Reports empty hosts and wildcards where Istio does not allow them.
fn check_host(cx: &mut Cx<'_>, node: &Node, host: &str, wildcard_ok: bool) {
    if !matches!(node.value, Value::Str(_)) {
        return;
    }
    if host.is_empty() {
        cx.error(
            node,
            "host must not be empty",
            Some("name a service, e.g. `reviews`".into()),
        );
    } else if host.contains(char::is_whitespace) {
        cx.error(
            node,
            format!("`{host}` is not a host name"),
            Some("remove the spaces".into()),
        );
    } else if !wildcard_ok && host.contains('*') && !host.starts_with("*.") && host != "*" {
        cx.error(
            node,
            format!("`{host}` is not a valid host: `*` is allowed only as the first label"),
            Some("write `*.example.com` or a full name".into()),
        );
    }
}

string_enum!(
    /// `trafficPolicy.loadBalancer.simple`.
    LbPolicy, "load balancer policy" {
        /// `UNSPECIFIED` (Istio's default, least request)
        Unspecified = "UNSPECIFIED",
        /// `ROUND_ROBIN`
        RoundRobin = "ROUND_ROBIN",
        /// `LEAST_REQUEST`
        LeastRequest = "LEAST_REQUEST",
        /// `LEAST_CONN` (deprecated alias of LEAST_REQUEST)
        LeastConn = "LEAST_CONN",
        /// `RANDOM`
        Random = "RANDOM",
        /// `PASSTHROUGH`
        Passthrough = "PASSTHROUGH",
    }
);

string_enum!(
    /// `trafficPolicy.tls.mode`.
    TlsMode, "TLS mode" {
        /// `DISABLE`
        Disable = "DISABLE",
        /// `SIMPLE`
        Simple = "SIMPLE",
        /// `MUTUAL`
        Mutual = "MUTUAL",
        /// `ISTIO_MUTUAL`
        IstioMutual = "ISTIO_MUTUAL",
    }
);

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// `loadBalancer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// `tls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// `connectionPool`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// `outlierDetection`, `portLevelSettings`, ... kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for TrafficPolicy {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["loadBalancer", "tls", "connectionPool"],
            &[
                "outlierDetection",
                "portLevelSettings",
                "tunnel",
                "proxyProtocol",
                "retryBudget",
            ],
        );
        TrafficPolicy {
            load_balancer: f.opt(cx, "loadBalancer"),
            tls: f.opt(cx, "tls"),
            connection_pool: f.opt(cx, "connectionPool"),
            extra: f.rest(),
        }
    }
}

/// `loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoadBalancer {
    /// `simple`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simple: Option<LbPolicy>,
    /// `consistentHash`, `localityLbSetting`, ... kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for LoadBalancer {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["simple"],
            &[
                "consistentHash",
                "localityLbSetting",
                "warmupDurationSecs",
                "warmup",
            ],
        );
        LoadBalancer {
            simple: f.opt(cx, "simple"),
            extra: f.rest(),
        }
    }
}

/// `tls` (client side).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientTls {
    /// `mode`.
    pub mode: TlsMode,
    /// Certificates, SNI, ... kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for ClientTls {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["mode"],
            &[
                "clientCertificate",
                "privateKey",
                "caCertificates",
                "credentialName",
                "subjectAltNames",
                "sni",
                "insecureSkipVerify",
                "caCrl",
            ],
        );
        ClientTls {
            mode: f.get(cx, "mode"),
            extra: f.rest(),
        }
    }
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConnectionPool {
    /// `tcp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    /// `http`, kept verbatim (HTTP limits do not apply at L4).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for ConnectionPool {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["tcp"], &["http"]);
        ConnectionPool {
            tcp: f.opt(cx, "tcp"),
            extra: f.rest(),
        }
    }
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    /// `maxConnections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `connectTimeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// `tcpKeepalive`, `maxConnectionDuration`, `idleTimeout`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for TcpSettings {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["maxConnections", "connectTimeout"],
            &["tcpKeepalive", "maxConnectionDuration", "idleTimeout"],
        );
        let settings = TcpSettings {
            max_connections: f.opt(cx, "maxConnections"),
            connect_timeout: f.opt(cx, "connectTimeout"),
            extra: f.rest(),
        };
        if let (Some(n), Some(d)) = (f.node("connectTimeout"), settings.connect_timeout) {
            if matches!(n.value, Value::Str(_)) && d.0 < std::time::Duration::from_millis(1) {
                cx.at_key("connectTimeout", |cx| {
                    cx.error(
                        n,
                        "must be at least 1ms",
                        Some("use a timeout such as `10s`".into()),
                    );
                });
            }
        }
        settings
    }
}

/// A DestinationRule subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// `name`, referenced by routes.
    pub name: String,
    /// `labels` selecting the subset's pods.
    pub labels: StringMap,
    /// `trafficPolicy` overriding the rule's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

impl Decode for Subset {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["name", "labels", "trafficPolicy"], &[]);
        Subset {
            name: f.req(cx, "name", "name the subset, e.g. `name: v1`"),
            labels: f.req(
                cx,
                "labels",
                "select the subset's pods, e.g. `labels: {version: v1}`",
            ),
            traffic_policy: f.opt(cx, "trafficPolicy"),
        }
    }
}

/// VirtualService `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// `hosts` the rules apply to.
    pub hosts: Vec<String>,
    /// `gateways` (absent: the mesh sidecars).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// `http` routes; at L4 weir applies an unconditional one per connection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// `tcp` routes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    /// `tls` routes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    /// `exportTo`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

impl Decode for VirtualServiceSpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["hosts", "gateways", "http", "tcp", "tls", "exportTo"],
            &[],
        );
        let spec = VirtualServiceSpec {
            hosts: f.req(
                cx,
                "hosts",
                "list the hosts this applies to, e.g. `hosts: [reviews]`",
            ),
            gateways: f.get(cx, "gateways"),
            http: f.get(cx, "http"),
            tcp: f.get(cx, "tcp"),
            tls: f.get(cx, "tls"),
            export_to: f.get(cx, "exportTo"),
        };
        if let Some(list) = f.node("hosts") {
            if spec.hosts.is_empty() && matches!(list.value, Value::Seq(_)) {
                cx.at_key("hosts", |cx| {
                    cx.error(
                        list,
                        "at least one host is required",
                        Some("e.g. `hosts: [reviews]`".into()),
                    );
                });
            }
            if let Value::Seq(items) = &list.value {
                for (i, (item, host)) in items.iter().zip(&spec.hosts).enumerate() {
                    cx.at_key("hosts", |cx| {
                        cx.at_index(i, |cx| check_host(cx, item, host, false))
                    });
                }
            }
        }
        spec
    }
}

/// An HTTP route.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HttpRoute {
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `match` conditions (HTTP attributes are not visible at L4).
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    /// `route` destinations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    /// HTTP-only behaviour (`fault`, `retries`, `timeout`, `redirect`, ...): accepted and kept,
    /// not enforced at L4.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

/// HTTP route fields that an L4 proxy cannot honour.
pub const HTTP_ONLY_ROUTE_FIELDS: &[&str] = &[
    "redirect",
    "directResponse",
    "delegate",
    "rewrite",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirrors",
    "mirrorPercentage",
    "mirrorPercent",
    "mirror_percent",
    "corsPolicy",
    "headers",
];

impl Decode for HttpRoute {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["name", "match", "route"], HTTP_ONLY_ROUTE_FIELDS);
        let route = HttpRoute {
            name: f.opt(cx, "name"),
            matches: f.get(cx, "match"),
            route: f.get(cx, "route"),
            extra: f.rest(),
        };
        let terminal = ["redirect", "directResponse", "delegate"]
            .iter()
            .any(|k| f.has_key(k));
        if route.route.is_empty() && !terminal {
            let (line, column) = f.key_position("route");
            cx.at_key("route", |cx| {
                cx.error_at(
                    line,
                    column,
                    "an HTTP route needs at least one destination",
                    Some("add `route: [{destination: {host: ...}}]`".into()),
                );
            });
        }
        if let Some(list) = f.node("route") {
            cx.at_key("route", |cx| check_weights(cx, list, &route.route));
        }
        route
    }
}

/// Weights: each 0..=100, and adding up to 100 when there is more than one destination.
fn check_weights(cx: &mut Cx<'_>, list: &Node, route: &[RouteDestination]) {
    let Value::Seq(items) = &list.value else {
        return;
    };
    let mut in_range = true;
    for (i, (item, dest)) in items.iter().zip(route).enumerate() {
        if let Some(w) = dest.weight {
            if !(0..=100).contains(&w) {
                in_range = false;
                let at = weight_node(item).unwrap_or(item);
                cx.at_index(i, |cx| {
                    cx.at_key("weight", |cx| {
                        cx.error(
                            at,
                            format!("weight {w} is out of range"),
                            Some("use a weight from 0 to 100".into()),
                        );
                    });
                });
            }
        }
    }
    if in_range && route.len() > 1 {
        let sum: i64 = route.iter().map(|d| i64::from(d.weight.unwrap_or(0))).sum();
        if sum != 100 {
            let weights: Vec<String> = route
                .iter()
                .map(|d| d.weight.unwrap_or(0).to_string())
                .collect();
            cx.error(
                list,
                format!("weights add up to {sum} ({}), not 100", weights.join(" + ")),
                Some(format!(
                    "make the weights of the {} destinations add up to 100",
                    route.len()
                )),
            );
        }
    }
}

fn weight_node(item: &Node) -> Option<&Node> {
    match &item.value {
        Value::Map(entries) => entries.iter().find(|e| e.key == "weight").map(|e| &e.value),
        _ => None,
    }
}

/// An HTTP match condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HttpMatch {
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `uri`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// `headers`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// `port` (the one condition visible at L4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// `gateways`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// `method`, `authority`, `queryParams`, ... kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for HttpMatch {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["name", "uri", "headers", "port", "gateways"],
            &[
                "scheme",
                "method",
                "authority",
                "sourceLabels",
                "queryParams",
                "ignoreUriCase",
                "withoutHeaders",
                "sourceNamespace",
                "statPrefix",
            ],
        );
        HttpMatch {
            name: f.opt(cx, "name"),
            uri: f.opt(cx, "uri"),
            headers: f.get(cx, "headers"),
            port: f.opt(cx, "port"),
            gateways: f.get(cx, "gateways"),
            extra: f.rest(),
        }
    }
}

/// A string condition: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StringMatch {
    /// `exact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// `prefix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `regex` (RE2 syntax).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

impl Decode for StringMatch {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["exact", "prefix", "regex"], &[]);
        let m = StringMatch {
            exact: f.opt(cx, "exact"),
            prefix: f.opt(cx, "prefix"),
            regex: f.opt(cx, "regex"),
        };
        let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if set != 1 && matches!(node.value, Value::Map(_)) {
            let message = if set == 0 {
                "no condition given"
            } else {
                "more than one condition given"
            };
            cx.error(
                node,
                message,
                Some("set exactly one of `exact`, `prefix` or `regex`".into()),
            );
        }
        m
    }
}

/// A weighted destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteDestination {
    /// `destination`.
    pub destination: Destination,
    /// `weight` (percent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// `headers` (HTTP only), kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for RouteDestination {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["destination", "weight"], &["headers"]);
        RouteDestination {
            destination: f.req(cx, "destination", "add `destination: {host: ...}`"),
            weight: f.opt(cx, "weight"),
            extra: f.rest(),
        }
    }
}

/// A destination: service host, optional subset and port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// `host`.
    pub host: String,
    /// `subset`, defined by a DestinationRule for the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

impl Decode for Destination {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["host", "subset", "port"], &[]);
        let d = Destination {
            host: f.req(
                cx,
                "host",
                "name the destination service, e.g. `host: reviews`",
            ),
            subset: f.opt(cx, "subset"),
            port: f.opt(cx, "port"),
        };
        if let Some(n) = f.node("host") {
            cx.at_key("host", |cx| check_host(cx, n, &d.host, false));
        }
        d
    }
}

/// `port: {number: N}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PortSelector {
    /// `number`.
    pub number: Port,
}

impl Decode for PortSelector {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["number"], &[]);
        PortSelector {
            number: f.req(cx, "number", "set the port, e.g. `port: {number: 9080}`"),
        }
    }
}

/// A TCP route.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TcpRoute {
    /// `match` conditions.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4Match>,
    /// `route` destinations.
    pub route: Vec<RouteDestination>,
}

impl Decode for TcpRoute {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["match", "route"], &[]);
        let route = TcpRoute {
            matches: f.get(cx, "match"),
            route: f.req(cx, "route", "add `route: [{destination: {host: ...}}]`"),
        };
        if let Some(list) = f.node("route") {
            if route.route.is_empty() && matches!(list.value, Value::Seq(_)) {
                cx.at_key("route", |cx| {
                    cx.error(
                        list,
                        "a TCP route needs at least one destination",
                        Some("add `- destination: {host: ...}`".into()),
                    );
                });
            }
            cx.at_key("route", |cx| check_weights(cx, list, &route.route));
        }
        route
    }
}

/// An L4 match condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct L4Match {
    /// `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// `gateways`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// `destinationSubnets`, `sourceLabels`, ... kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for L4Match {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["port", "gateways"],
            &[
                "destinationSubnets",
                "sourceLabels",
                "sourceNamespace",
                "sourceSubnet",
            ],
        );
        L4Match {
            port: f.opt(cx, "port"),
            gateways: f.get(cx, "gateways"),
            extra: f.rest(),
        }
    }
}

/// A TLS (SNI) route; its match conditions are kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TlsRoute {
    /// `match` conditions.
    #[serde(rename = "match")]
    pub matches: Vec<Json>,
    /// `route` destinations.
    pub route: Vec<RouteDestination>,
}

impl Decode for TlsRoute {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["match", "route"], &[]);
        let route = TlsRoute {
            matches: f.req(cx, "match", "add `match: [{sniHosts: [...]}]`"),
            route: f.req(cx, "route", "add `route: [{destination: {host: ...}}]`"),
        };
        if let Some(list) = f.node("route") {
            cx.at_key("route", |cx| check_weights(cx, list, &route.route));
        }
        route
    }
}
