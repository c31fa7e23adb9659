//! `networking.istio.io` Gateway: the ports and hosts a gateway workload exposes.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use crate::decode::{Cx, Decode, StringMap};
use crate::model::map_is_empty;
use crate::node::Node;
use crate::values::Port;

/// Istio Gateway `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GatewaySpec {
    /// `selector`: the gateway pods.
    #[serde(skip_serializing_if = "map_is_empty")]
    pub selector: StringMap,
    /// `servers`.
    pub servers: Vec<Server>,
}

impl Decode for GatewaySpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["selector", "servers"], &[]);
        GatewaySpec {
            selector: f.get(cx, "selector"),
            servers: f.req(cx, "servers", "add `servers:` with a port and hosts"),
        }
    }
}

/// A Gateway server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Server {
    /// `port`.
    pub port: ServerPort,
    /// `hosts`.
    pub hosts: Vec<String>,
    /// `tls`, `bind`, `name`, `defaultEndpoint`, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for Server {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["port", "hosts"],
            &["tls", "bind", "name", "defaultEndpoint"],
        );
        Server {
            port: f.req(
                cx,
                "port",
                "add `port: {number: 80, name: http, protocol: HTTP}`",
            ),
            hosts: f.req(cx, "hosts", "list the hosts exposed, e.g. `hosts: [\"*\"]`"),
            extra: f.rest(),
        }
    }
}

/// A Gateway server port.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerPort {
    /// `number`.
    pub number: Port,
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `protocol` (HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS).
    pub protocol: String,
    /// `targetPort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<Port>,
}

impl Decode for ServerPort {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(node, &["number", "name", "protocol", "targetPort"], &[]);
        ServerPort {
            number: f.req(cx, "number", "set the port number"),
            name: f.opt(cx, "name"),
            protocol: f.req(
                cx,
                "protocol",
                "set the protocol: HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP or TLS",
            ),
            target_port: f.opt(cx, "targetPort"),
        }
    }
}
