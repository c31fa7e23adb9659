//! The gateway part of the workload resource.

use proxy::config::{
    GatewayConfig, GatewayHttpRoute, GatewayProtocol, GatewayServer, PathMatch, Route,
};

use super::{
    opt_socket_from_proto, port_from_proto, route_from_proto, route_to_proto, ConvertError,
};
use crate::proto;

fn routes_from_proto(list: &[proto::Route], at: &str) -> Result<Vec<Route>, ConvertError> {
    list.iter()
        .enumerate()
        .map(|(i, r)| route_from_proto(r, &format!("{at}[{i}]")))
        .collect()
}

fn path_to_proto(m: &PathMatch) -> proto::PathMatch {
    use proto::path_match::Kind;
    proto::PathMatch {
        kind: Some(match m {
            PathMatch::Exact(p) => Kind::Exact(p.clone()),
            PathMatch::Prefix(p) => Kind::Prefix(p.clone()),
        }),
    }
}

fn path_from_proto(m: &proto::PathMatch, at: &str) -> Result<PathMatch, ConvertError> {
    use proto::path_match::Kind;
    match &m.kind {
        Some(Kind::Exact(p)) => Ok(PathMatch::Exact(p.clone())),
        Some(Kind::Prefix(p)) => Ok(PathMatch::Prefix(p.clone())),
        None => Err(ConvertError::Invalid {
            field: at.to_owned(),
            problem: "neither `exact` nor `prefix` is set".to_owned(),
            fix: "send one path condition per match".to_owned(),
        }),
    }
}

/// Encodes a gateway's servers.
pub fn gateway_to_proto(g: &GatewayConfig) -> proto::Gateway {
    proto::Gateway {
        servers: g
            .servers
            .iter()
            .map(|s| proto::GatewayServer {
                port: u32::from(s.port),
                protocol: match s.protocol {
                    GatewayProtocol::Http => proto::GatewayProtocol::Http,
                    GatewayProtocol::Tcp => proto::GatewayProtocol::Tcp,
                } as i32,
                listen: s.listen.map(|a| a.to_string()),
                tcp: s.tcp.iter().map(route_to_proto).collect(),
                http: s
                    .http
                    .iter()
                    .map(|h| proto::GatewayHttpRoute {
                        hosts: h.hosts.clone(),
                        matches: h.matches.iter().map(path_to_proto).collect(),
                        routes: h.routes.iter().map(route_to_proto).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Decodes a gateway's servers; `at` prefixes field paths in errors.
pub fn gateway_from_proto(g: &proto::Gateway, at: &str) -> Result<GatewayConfig, ConvertError> {
    let mut servers = Vec::with_capacity(g.servers.len());
    for (i, s) in g.servers.iter().enumerate() {
        let at = format!("{at}.servers[{i}]");
        let protocol = match proto::GatewayProtocol::try_from(s.protocol) {
            Ok(proto::GatewayProtocol::Http) => GatewayProtocol::Http,
            Ok(proto::GatewayProtocol::Tcp) => GatewayProtocol::Tcp,
            _ => {
                return Err(ConvertError::UnknownEnum {
                    field: format!("{at}.protocol"),
                    kind: "GatewayProtocol",
                    value: s.protocol,
                    expected: "HTTP, TCP",
                })
            }
        };
        let mut http = Vec::with_capacity(s.http.len());
        for (j, h) in s.http.iter().enumerate() {
            let hat = format!("{at}.http[{j}]");
            http.push(GatewayHttpRoute {
                hosts: h.hosts.clone(),
                matches: h
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(k, m)| path_from_proto(m, &format!("{hat}.matches[{k}]")))
                    .collect::<Result<_, _>>()?,
                routes: routes_from_proto(&h.routes, &format!("{hat}.routes"))?,
            });
        }
        servers.push(GatewayServer {
            port: port_from_proto(s.port, &format!("{at}.port"))?,
            protocol,
            listen: opt_socket_from_proto(s.listen.as_ref(), &format!("{at}.listen"))?,
            tcp: routes_from_proto(&s.tcp, &format!("{at}.tcp"))?,
            http,
        });
    }
    Ok(GatewayConfig { servers })
}
