//! Gateway workloads: a pod that an Istio `Gateway`'s `selector` picks (in any namespace,
//! as Istio matches selector-based gateways by default) gets the Gateway's servers, routed
//! by the VirtualServices bound to it (`gateways: [name | namespace/name]`).
//!
//! Per server: `TCP` takes the first `tcp` rule (in VirtualService namespace/name order)
//! whose match selects the port; `HTTP` takes every `http` rule with destinations, in
//! order, with its `uri` conditions (`exact`, `prefix`) as path matches. Conditions a
//! gateway cannot evaluate (`regex`, headers, methods, ...) never select a request; they
//! are reported per resource (see `resource_checks`). Destinations resolve exactly as a
//! sidecar's routes do (subsets, weights, `unresolved` → `NC`).

use std::collections::BTreeSet;
use std::sync::Arc;

use config::model::{Document, GatewaySpec, HttpMatch, L4Match, Spec, VirtualServiceSpec};
use proxy::config::{GatewayConfig, GatewayHttpRoute, GatewayProtocol, GatewayServer, PathMatch};

use super::index::{host_matches, Key, Snapshot};
use super::service::route;
use super::{MeshOptions, Pod};

/// The protocol of a Gateway server port as weir serves it; `None` for the ones it
/// cannot (HTTPS, TLS, GRPC, HTTP2, MONGO).
pub(crate) fn protocol_of(protocol: &str) -> Option<GatewayProtocol> {
    match protocol.to_ascii_uppercase().as_str() {
        "HTTP" => Some(GatewayProtocol::Http),
        "TCP" => Some(GatewayProtocol::Tcp),
        _ => None,
    }
}

/// True when a Gateway's selector picks `labels` (an empty selector picks nothing: every
/// weir proxy is a sidecar unless a Gateway names it).
pub(crate) fn selects(doc: &Document, labels: &std::collections::BTreeMap<String, String>) -> bool {
    match &doc.resource.spec {
        Spec::Gateway(g) => {
            !g.selector.0.is_empty() && g.selector.0.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
        _ => false,
    }
}

/// True when some Gateway selects the pod.
pub(crate) fn is_gateway_pod(snap: &Snapshot, pod: &Pod) -> bool {
    snap.gateways.values().any(|d| selects(d, &pod.labels))
}

/// True when a VirtualService's `gateways` (or a match's) names the Gateway `gw`.
fn names_gateway(list: &[String], vs_ns: &str, gw: &Key) -> bool {
    list.iter().any(|g| match g.split_once('/') {
        Some((ns, name)) => ns == gw.0 && name == gw.1,
        None => vs_ns == gw.0 && g == &gw.1,
    })
}

/// True when the VirtualService binds to any Gateway (not only to `mesh`).
pub(crate) fn binds_gateways(doc: &Document) -> bool {
    matches!(&doc.resource.spec, Spec::VirtualService(vs) if vs.gateways.iter().any(|g| g != "mesh"))
}

/// The hosts a VirtualService answers on a server: for every pair of a server host
/// (`[namespace/]host`, with `*` and `.` namespaces as Istio reads them) and a
/// VirtualService host that overlap, the narrower of the two. `None` when no pair
/// overlaps (the VirtualService is not bound to the server); an empty list when the
/// answer is any host (`*`).
fn effective_hosts(
    server_hosts: &[String],
    gw_ns: &str,
    vs_ns: &str,
    vs_hosts: &[String],
) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut any = false;
    for sh in server_hosts {
        let (ns, host) = match sh.split_once('/') {
            Some((ns, host)) => (ns, host),
            None => ("*", sh.as_str()),
        };
        if !(ns == "*" || (ns == "." && vs_ns == gw_ns) || ns == vs_ns) {
            continue;
        }
        for vh in vs_hosts {
            let narrower = if host_matches(host, vh) {
                vh.as_str()
            } else if host_matches(vh, host) {
                host
            } else {
                continue;
            };
            any = true;
            if !out.iter().any(|h| h == narrower) {
                out.push(narrower.to_owned());
            }
        }
    }
    if !any {
        return None;
    }
    if out.iter().any(|h| h == "*") {
        out.clear();
    }
    Some(out)
}

fn l4_selects(m: &L4Match, port: u16, vs_ns: &str, gw: &Key) -> bool {
    m.extra.is_empty()
        && m.port.is_none_or(|p| p.0 == port)
        && (m.gateways.is_empty() || names_gateway(&m.gateways, vs_ns, gw))
}

/// The path conditions of one HTTP match: `Some(None)` selects every request,
/// `Some(Some(m))` one path condition, `None` nothing this gateway can evaluate.
fn path_condition(m: &HttpMatch, port: u16, vs_ns: &str, gw: &Key) -> Option<Option<PathMatch>> {
    let applies = m.port.is_none_or(|p| p.0 == port)
        && (m.gateways.is_empty() || names_gateway(&m.gateways, vs_ns, gw));
    if !applies || !m.headers.is_empty() || !m.extra.is_empty() {
        return None;
    }
    match &m.uri {
        None => Some(None),
        Some(u) => match (&u.exact, &u.prefix) {
            (Some(e), _) => Some(Some(PathMatch::Exact(e.clone()))),
            (None, Some(p)) => Some(Some(PathMatch::Prefix(p.clone()))),
            // `regex`: not evaluated by weir's gateways.
            (None, None) => None,
        },
    }
}

/// The VirtualServices bound to Gateway `gw` whose hosts overlap the server's, in
/// namespace/name order, with the hosts each answers there (empty: any).
fn bound<'a>(
    snap: &'a Snapshot,
    gw: &Key,
    server_hosts: &'a [String],
) -> impl Iterator<Item = (&'a str, &'a VirtualServiceSpec, Vec<String>)> + 'a {
    let gw = gw.clone();
    snap.virtual_services.docs.values().filter_map(move |d| {
        let Spec::VirtualService(vs) = &d.resource.spec else {
            return None;
        };
        let ns = d.resource.namespace();
        if !names_gateway(&vs.gateways, ns, &gw) {
            return None;
        }
        let hosts = effective_hosts(server_hosts, &gw.0, ns, &vs.hosts)?;
        Some((ns, vs, hosts))
    })
}

/// The gateway configuration of `pod`: `None` when no Gateway selects it.
pub(crate) fn compute(snap: &Snapshot, opts: &MeshOptions, pod: &Pod) -> Option<GatewayConfig> {
    let gateways: Vec<(&Key, &Arc<Document>)> = snap
        .gateways
        .iter()
        .filter(|(_, d)| selects(d, &pod.labels))
        .collect();
    if gateways.is_empty() {
        return None;
    }
    // Dependencies are not tracked per gateway: the engine recomputes gateway pods on
    // every service change.
    let mut deps = BTreeSet::new();
    let mut servers: Vec<GatewayServer> = Vec::new();
    for (key, doc) in gateways {
        let Spec::Gateway(GatewaySpec { servers: specs, .. }) = &doc.resource.spec else {
            continue;
        };
        for s in specs {
            let Some(protocol) = protocol_of(&s.port.protocol) else {
                continue;
            };
            let port = s.port.number.0;
            // Two servers on one port: the first keeps it; HTTP routes of a second HTTP
            // server on the same port are added after the first's (as Istio merges
            // virtual hosts of one port).
            let existing = servers.iter().position(|x| x.port == port);
            if let Some(i) = existing {
                if servers[i].protocol != protocol || protocol == GatewayProtocol::Tcp {
                    continue;
                }
            }
            let mut server = GatewayServer {
                port,
                protocol,
                listen: None,
                tcp: Vec::new(),
                http: Vec::new(),
            };
            match protocol {
                GatewayProtocol::Tcp => {
                    let rule = bound(snap, key, &s.hosts).find_map(|(ns, vs, _)| {
                        vs.tcp
                            .iter()
                            .find(|r| {
                                r.matches.is_empty()
                                    || r.matches.iter().any(|m| l4_selects(m, port, ns, key))
                            })
                            .map(|r| (ns, r))
                    });
                    if let Some((ns, r)) = rule {
                        server.tcp = r
                            .route
                            .iter()
                            .map(|rd| route(snap, opts, ns, rd, r.route.len(), port, &mut deps))
                            .collect();
                    }
                }
                GatewayProtocol::Http => {
                    for (ns, vs, hosts) in bound(snap, key, &s.hosts) {
                        for r in vs.http.iter().filter(|r| !r.route.is_empty()) {
                            let matches = if r.matches.is_empty() {
                                Some(Vec::new())
                            } else {
                                let conditions: Vec<Option<PathMatch>> = r
                                    .matches
                                    .iter()
                                    .filter_map(|m| path_condition(m, port, ns, key))
                                    .collect();
                                if conditions.is_empty() {
                                    None
                                } else if conditions.iter().any(Option::is_none) {
                                    Some(Vec::new())
                                } else {
                                    Some(conditions.into_iter().flatten().collect())
                                }
                            };
                            let Some(matches) = matches else { continue };
                            server.http.push(GatewayHttpRoute {
                                hosts: hosts.clone(),
                                matches,
                                routes: r
                                    .route
                                    .iter()
                                    .map(|rd| {
                                        route(snap, opts, ns, rd, r.route.len(), port, &mut deps)
                                    })
                                    .collect(),
                            });
                        }
                    }
                }
            }
            match existing {
                Some(i) => servers[i].http.append(&mut server.http),
                None => servers.push(server),
            }
        }
    }
    servers.sort_by_key(|s| s.port);
    Some(GatewayConfig { servers })
}
