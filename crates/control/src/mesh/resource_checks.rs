//! What a single resource asks for that weir's sidecars (at L4) or gateways (by HTTP
//! path) cannot do, found when the resource changes (so the report costs nothing per
//! proxy).

use config::model::{Document, HttpRoute, Spec, TlsMode, TrafficPolicy, WorkloadMode};
use config::{Diagnostic, Severity};

use super::diagnostic;

/// The diagnostics of one resource.
pub(crate) fn check(doc: &Document) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    match &doc.resource.spec {
        Spec::VirtualService(vs) => {
            let for_sidecars = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
            let for_gateways = vs.gateways.iter().any(|g| g != "mesh");
            for (i, r) in vs.http.iter().enumerate() {
                let l4_only = r
                    .matches
                    .iter()
                    .all(|m| m.uri.is_none() && m.headers.is_empty() && m.extra.is_empty());
                if for_sidecars && !l4_only {
                    out.push(diagnostic(
                        doc,
                        &format!("spec.http[{i}].match"),
                        Severity::Warning,
                        "this HTTP route matches on request attributes an L4 proxy cannot see, so sidecars skip it; the first HTTP route without such a match applies to whole connections".into(),
                        Some("move the route behind a rule without `match`, or use a `tcp` route with `match.port`".into()),
                    ));
                } else if r.route.is_empty() {
                    out.push(diagnostic(
                        doc,
                        &format!("spec.http[{i}]"),
                        Severity::Warning,
                        "this HTTP route has no `route` destinations (redirect, direct response or delegate), which weir cannot perform; it is skipped".into(),
                        Some("give the rule `route: [{destination: {host: ...}}]`".into()),
                    ));
                }
                if for_gateways {
                    gateway_match_checks(doc, i, r, &mut out);
                }
            }
            for (i, r) in vs.tcp.iter().enumerate() {
                for (j, m) in r.matches.iter().enumerate() {
                    if let Some(key) = m.extra.keys().next() {
                        out.push(diagnostic(
                            doc,
                            &format!("spec.tcp[{i}].match[{j}].{key}"),
                            Severity::Warning,
                            format!("TCP match on `{key}` depends on the client and is not supported; this match never selects a connection"),
                            Some("match on `port` only, or split the rule into separate VirtualServices".into()),
                        ));
                    }
                }
            }
            if !vs.tls.is_empty() {
                out.push(diagnostic(
                    doc,
                    "spec.tls",
                    Severity::Warning,
                    "TLS (SNI) routes are not supported by weir's sidecars; they are ignored"
                        .into(),
                    Some("use `tcp` routes with `match.port`".into()),
                ));
            }
        }
        Spec::Gateway(gw) => {
            if gw.selector.0.is_empty() {
                out.push(diagnostic(
                    doc,
                    "spec.selector",
                    Severity::Warning,
                    "the Gateway has no selector, so no pod serves it".into(),
                    Some(
                        "select the gateway pods, e.g. `selector: {istio: ingressgateway}`".into(),
                    ),
                ));
            }
            for (i, server) in gw.servers.iter().enumerate() {
                if super::gateway::protocol_of(&server.port.protocol).is_none() {
                    out.push(diagnostic(
                        doc,
                        &format!("spec.servers[{i}].port.protocol"),
                        Severity::Warning,
                        format!(
                            "protocol {} is not served by weir's gateways (HTTP and TCP are); port {} is not configured",
                            server.port.protocol, server.port.number
                        ),
                        Some("use `protocol: HTTP` or `protocol: TCP`".into()),
                    ));
                }
                if server.extra.contains_key("tls") {
                    out.push(diagnostic(
                        doc,
                        &format!("spec.servers[{i}].tls"),
                        Severity::Warning,
                        "TLS settings of gateway servers are not supported; the server is served in plaintext".into(),
                        Some("terminate TLS in front of the gateway, or remove `tls`".into()),
                    ));
                }
            }
        }
        Spec::DestinationRule(dr) => {
            if let Some(tp) = &dr.traffic_policy {
                policy_checks(doc, "spec.trafficPolicy", tp, false, &mut out);
            }
            for (i, s) in dr.subsets.iter().enumerate() {
                if let Some(tp) = &s.traffic_policy {
                    policy_checks(
                        doc,
                        &format!("spec.subsets[{i}].trafficPolicy"),
                        tp,
                        true,
                        &mut out,
                    );
                }
            }
        }
        Spec::PeerAuthentication(pa) if !pa.port_level_mtls.is_empty() => {
            out.push(diagnostic(
                doc,
                "spec.portLevelMtls",
                Severity::Warning,
                "per-port mTLS modes are not supported; the workload's `mtls.mode` applies to all its ports".into(),
                Some("set one mode for the workload, or move the port to its own workload".into()),
            ));
        }
        Spec::Telemetry(t) => {
            for (i, m) in t.metrics.iter().enumerate() {
                if !m.providers.is_empty() && !m.providers.iter().any(|p| p.name == "prometheus") {
                    out.push(diagnostic(
                        doc,
                        &format!("spec.metrics[{i}].providers"),
                        Severity::Info,
                        "no `prometheus` provider is named, so this entry does not change weir's metrics".into(),
                        None,
                    ));
                }
                for (j, o) in m.overrides.iter().enumerate() {
                    let Some(sel) = &o.selector else { continue };
                    let path = format!("spec.metrics[{i}].overrides[{j}].match");
                    if sel.custom_metric.is_some() {
                        out.push(diagnostic(
                            doc,
                            &format!("{path}.customMetric"),
                            Severity::Info,
                            "custom metrics are not produced by weir; this override is ignored"
                                .into(),
                            None,
                        ));
                    }
                    if sel.mode.is_some_and(|m| m != WorkloadMode::ClientAndServer) {
                        out.push(diagnostic(
                            doc,
                            &format!("{path}.mode"),
                            Severity::Warning,
                            "overrides for one reporter only (CLIENT or SERVER) are not supported; this override is ignored".into(),
                            Some("use `mode: CLIENT_AND_SERVER` (the default)".into()),
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    out
}

/// What a gateway cannot evaluate in the matches of HTTP rule `i`.
fn gateway_match_checks(doc: &Document, i: usize, r: &HttpRoute, out: &mut Vec<Diagnostic>) {
    for (j, m) in r.matches.iter().enumerate() {
        let path = format!("spec.http[{i}].match[{j}]");
        if m.uri.as_ref().is_some_and(|u| u.regex.is_some()) {
            out.push(diagnostic(
                doc,
                &format!("{path}.uri.regex"),
                Severity::Warning,
                "regex URI matches are not supported by weir's gateways; this match never selects a request".into(),
                Some("use `exact` or `prefix`".into()),
            ));
        }
        let other = m
            .headers
            .keys()
            .next()
            .map(|_| "headers")
            .or_else(|| m.extra.keys().next().map(String::as_str));
        if let Some(key) = other {
            out.push(diagnostic(
                doc,
                &format!("{path}.{key}"),
                Severity::Warning,
                format!("weir's gateways match on the request path only; a match on `{key}` never selects a request"),
                Some("match on `uri` (`exact` or `prefix`) only".into()),
            ));
        }
    }
}

fn policy_checks(
    doc: &Document,
    path: &str,
    tp: &TrafficPolicy,
    subset: bool,
    out: &mut Vec<Diagnostic>,
) {
    if let Some(tls) = &tp.tls {
        if matches!(tls.mode, TlsMode::Simple | TlsMode::Mutual) {
            out.push(diagnostic(
                doc,
                &format!("{path}.tls.mode"),
                Severity::Warning,
                format!("TLS mode {} (origination with your own certificates) is not supported; auto mTLS applies instead", tls.mode),
                Some("use `ISTIO_MUTUAL` or `DISABLE`, or remove `tls`".into()),
            ));
        }
    }
    if let Some(lb) = &tp.load_balancer {
        if let Some(key) = lb.extra.keys().next() {
            out.push(diagnostic(
                doc,
                &format!("{path}.loadBalancer.{key}"),
                Severity::Warning,
                format!("`{key}` is not supported; ROUND_ROBIN is used unless `simple` is set"),
                Some("use `loadBalancer.simple`".into()),
            ));
        }
    }
    for key in tp.extra.keys() {
        out.push(diagnostic(
            doc,
            &format!("{path}.{key}"),
            Severity::Info,
            format!("`{key}` is accepted but not enforced by weir's sidecars"),
            None,
        ));
    }
    if subset && tp.connection_pool.is_some() {
        out.push(diagnostic(
            doc,
            &format!("{path}.connectionPool"),
            Severity::Warning,
            "connection-pool limits per subset are not supported; the rule's top-level `connectionPool` applies to the whole service port".into(),
            Some("move `connectionPool` to `spec.trafficPolicy`".into()),
        ));
    }
}
