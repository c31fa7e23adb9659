//! Gateway mode: the servers (ports) an ingress gateway exposes and where each one sends
//! its connections (Istio `Gateway` + the `VirtualService`s bound to it).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Route;

/// What a gateway workload serves. A proxy with a gateway configuration takes every
/// connection whose original destination port is a server port (on its inbound capture
/// listener) as gateway traffic instead of inbound traffic for a local app.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayConfig {
    /// One entry per port; ports are unique.
    #[serde(default)]
    pub servers: Vec<GatewayServer>,
}

impl GatewayConfig {
    /// The server of a port.
    pub fn server(&self, port: u16) -> Option<&GatewayServer> {
        self.servers.iter().find(|s| s.port == port)
    }
}

/// How a gateway server reads its connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GatewayProtocol {
    /// Plain HTTP/1.x: the first request's path picks the route of the whole connection.
    #[default]
    Http,
    /// Opaque TCP: every connection takes a weighted route.
    Tcp,
}

/// One port of a gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayServer {
    /// The port clients connect to (the original destination port of captured traffic).
    pub port: u16,
    /// `HTTP` or `TCP`.
    #[serde(default)]
    pub protocol: GatewayProtocol,
    /// An explicit listener for this server (no iptables): clients connect here. Bound at
    /// start-up, like every explicit listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `TCP` servers: the weighted destinations of every connection. Empty: connections
    /// are refused (`NC`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<Route>,
    /// `HTTP` servers: routes in order; the first whose match selects the first request
    /// takes the connection. No match: `404 Not Found`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<GatewayHttpRoute>,
}

/// One HTTP route of a gateway server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayHttpRoute {
    /// Host names the request's `Host` header (without port, any case) must match: exact
    /// names, or `*.suffix` wildcards. Empty: any host (as `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Conditions on the request path (any one selects the request); empty selects every
    /// request.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "match")]
    pub matches: Vec<PathMatch>,
    /// Weighted destinations, as a service port's routes.
    pub routes: Vec<Route>,
}

/// A condition on the request path (without the query string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PathMatch {
    /// The path equals this text.
    Exact(String),
    /// The path starts with this text.
    Prefix(String),
}

impl PathMatch {
    /// True when `path` (already stripped of its query string) satisfies the condition.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

impl GatewayHttpRoute {
    /// True when the route selects a request for `host` (the `Host` header without its
    /// port; `None` when the request has none) and `path`.
    pub fn selects(&self, host: Option<&str>, path: &str) -> bool {
        host_selected(&self.hosts, host)
            && (self.matches.is_empty() || self.matches.iter().any(|m| m.matches(path)))
    }
}

/// True when `host` is one of `hosts` (`*` and `*.suffix` wildcards, any case); an empty
/// list takes every request, and a request without a host only such a list or `*`.
pub fn host_selected(hosts: &[String], host: Option<&str>) -> bool {
    if hosts.is_empty() || hosts.iter().any(|h| h == "*") {
        return true;
    }
    let Some(host) = host else {
        return false;
    };
    hosts.iter().any(|pattern| match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host
                    .get(host.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
        }
        None => pattern.eq_ignore_ascii_case(host),
    })
}
