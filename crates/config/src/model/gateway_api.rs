//! Kubernetes Gateway API (`gateway.networking.k8s.io`): Gateway and TCPRoute, as used by
//! Istio's tcp-echo sample. Parsed and validated; routing from them is not implemented.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use crate::decode::{Cx, Decode};
use crate::node::Node;
use crate::values::Port;

/// Gateway API `Gateway` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesGatewaySpec {
    /// `gatewayClassName`, e.g. `istio`.
    pub gateway_class_name: String,
    /// `listeners`.
    pub listeners: Vec<Listener>,
    /// `addresses`, `infrastructure`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for KubernetesGatewaySpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["gatewayClassName", "listeners"],
            &[
                "addresses",
                "infrastructure",
                "backendTLS",
                "allowedListeners",
            ],
        );
        KubernetesGatewaySpec {
            gateway_class_name: f.req(cx, "gatewayClassName", "set `gatewayClassName: istio`"),
            listeners: f.req(
                cx,
                "listeners",
                "add a listener with a name, port and protocol",
            ),
            extra: f.rest(),
        }
    }
}

/// A Gateway API listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Listener {
    /// `name`, referenced by routes' `sectionName`.
    pub name: String,
    /// `port`.
    pub port: Port,
    /// `protocol` (HTTP, HTTPS, TLS, TCP, UDP).
    pub protocol: String,
    /// `hostname`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `allowedRoutes`, `tls`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for Listener {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["name", "port", "protocol", "hostname"],
            &["allowedRoutes", "tls"],
        );
        Listener {
            name: f.req(cx, "name", "name the listener"),
            port: f.req(cx, "port", "set the port number"),
            protocol: f.req(
                cx,
                "protocol",
                "set the protocol: HTTP, HTTPS, TLS, TCP or UDP",
            ),
            hostname: f.opt(cx, "hostname"),
            extra: f.rest(),
        }
    }
}

/// Gateway API `TCPRoute` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteSpec {
    /// `parentRefs`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentRef>,
    /// `rules`.
    pub rules: Vec<TcpRouteRule>,
}

impl Decode for TcpRouteSpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["parentRefs", "rules"], &[]);
        TcpRouteSpec {
            parent_refs: f.get(cx, "parentRefs"),
            rules: f.req(cx, "rules", "add `rules: [{backendRefs: [...]}]`"),
        }
    }
}

/// A route's parent (a Gateway, or a Service for mesh routing).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// `name`.
    pub name: String,
    /// `namespace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `sectionName`: a listener name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// `group`, `kind`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for ParentRef {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["name", "namespace", "sectionName", "port"],
            &["group", "kind"],
        );
        ParentRef {
            name: f.req(cx, "name", "name the parent Gateway"),
            namespace: f.opt(cx, "namespace"),
            section_name: f.opt(cx, "sectionName"),
            port: f.opt(cx, "port"),
            extra: f.rest(),
        }
    }
}

/// A TCPRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRouteRule {
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `backendRefs`.
    pub backend_refs: Vec<BackendRef>,
}

impl Decode for TcpRouteRule {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["name", "backendRefs"], &[]);
        TcpRouteRule {
            name: f.opt(cx, "name"),
            backend_refs: f.req(
                cx,
                "backendRefs",
                "add `backendRefs: [{name: SERVICE, port: N}]`",
            ),
        }
    }
}

/// A backend: a Service and port, with a relative weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackendRef {
    /// Service `name`.
    pub name: String,
    /// `namespace`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// `weight` (relative, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `group`, `kind`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for BackendRef {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["name", "namespace", "port", "weight"],
            &["group", "kind"],
        );
        BackendRef {
            name: f.req(cx, "name", "name the backend Service"),
            namespace: f.opt(cx, "namespace"),
            port: f.opt(cx, "port"),
            weight: f.opt(cx, "weight"),
            extra: f.rest(),
        }
    }
}
