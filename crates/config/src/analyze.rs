//! Cross-resource checks over a whole [`ResourceSet`]: routes to subsets and services that do
//! not exist, workloads without their service account or secret, services without pods,
//! conflicting policies, and HTTP features an L4 proxy accepts but cannot enforce.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{closest, Diagnostic, Severity};
use crate::kind::Kind;
use crate::model::{Document, RouteDestination, Spec, HTTP_ONLY_ROUTE_FIELDS};
use crate::store::ResourceSet;

/// The cluster DNS suffix of Service host names.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Namespaces that exist without a Namespace object.
const BUILTIN_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "istio-system"];

/// Resolves a host as written in a resource in `namespace` to a fully qualified name, as
/// Istio does for short names: `reviews` in `default` is `reviews.default.svc.cluster.local`.
/// `reviews.default` and `reviews.default.svc` are completed too; other names (and
/// wildcards) are taken as written.
pub fn resolve_host(host: &str, namespace: &str) -> String {
    if host.contains('*') {
        return host.to_string();
    }
    let host = host.trim_end_matches('.');
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.{CLUSTER_DOMAIN}"),
        1 => format!("{host}.{CLUSTER_DOMAIN}"),
        2 if host.ends_with(".svc") => format!("{host}.cluster.local"),
        _ => host.to_string(),
    }
}

/// Splits `name.ns.svc.cluster.local` into (namespace, name).
pub fn service_of(fqdn: &str) -> Option<(&str, &str)> {
    let rest = fqdn.strip_suffix(CLUSTER_DOMAIN)?.strip_suffix('.')?;
    let (name, ns) = rest.split_once('.')?;
    (!ns.contains('.')).then_some((ns, name))
}

fn host_matches(pattern: &str, fqdn: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => fqdn.ends_with(suffix),
        None => pattern == fqdn,
    }
}

/// Runs every cross-resource check; errors first would reorder input, so diagnostics come
/// in resource order.
pub fn analyze(set: &ResourceSet) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for doc in set.iter() {
        let ns = doc.resource.namespace();
        match &doc.resource.spec {
            Spec::VirtualService(vs) => {
                // Sidecars route at L4; gateways match the first request's path (the mesh
                // reports what they cannot match), so match notes are for sidecars only.
                let for_sidecars =
                    vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
                for (i, r) in vs.http.iter().enumerate() {
                    check_routes(set, doc, &format!("spec.http[{i}]"), &r.route, &mut out);
                    for key in r
                        .extra
                        .keys()
                        .filter(|k| HTTP_ONLY_ROUTE_FIELDS.contains(&k.as_str()))
                    {
                        out.push(info(doc, &format!("spec.http[{i}].{key}"), format!("`{key}` is accepted but not enforced: weir routes whole TCP connections (L4)")));
                    }
                    if !for_sidecars {
                        continue;
                    }
                    for (j, m) in r.matches.iter().enumerate() {
                        let mut http_only: Vec<&str> = Vec::new();
                        if m.uri.is_some() {
                            http_only.push("uri");
                        }
                        if !m.headers.is_empty() {
                            http_only.push("headers");
                        }
                        http_only.extend(m.extra.keys().map(String::as_str));
                        for key in http_only {
                            out.push(info(
                                doc,
                                &format!("spec.http[{i}].match[{j}].{key}"),
                                format!("HTTP match on `{key}` is accepted but not enforced: at L4 the request is not visible, so this condition cannot select connections"),
                            ));
                        }
                    }
                }
                for (i, r) in vs.tcp.iter().enumerate() {
                    check_routes(set, doc, &format!("spec.tcp[{i}]"), &r.route, &mut out);
                }
                for (i, r) in vs.tls.iter().enumerate() {
                    check_routes(set, doc, &format!("spec.tls[{i}]"), &r.route, &mut out);
                }
                for (i, gw) in vs.gateways.iter().enumerate() {
                    check_gateway(set, doc, &format!("spec.gateways[{i}]"), gw, &mut out);
                }
            }
            Spec::Deployment(dep) => {
                let pod = &dep.template.spec;
                if let Some(sa) = pod
                    .service_account_name
                    .as_deref()
                    .filter(|sa| *sa != "default")
                {
                    if set.get(Kind::ServiceAccount, ns, sa).is_none() {
                        out.push(warning(
                            doc,
                            "spec.template.spec.serviceAccountName",
                            format!("ServiceAccount `{sa}` does not exist in namespace `{ns}`"),
                            format!("apply a ServiceAccount named `{sa}` (Kubernetes would not start these pods without it)"),
                        ));
                    }
                }
                for (c, container) in pod.containers.iter().enumerate() {
                    for (e, env) in container.env.iter().enumerate() {
                        let Some(r) = env
                            .value_from
                            .as_ref()
                            .and_then(|v| v.secret_key_ref.as_ref())
                        else {
                            continue;
                        };
                        let path = format!(
                            "spec.template.spec.containers[{c}].env[{e}].valueFrom.secretKeyRef"
                        );
                        match set.get(Kind::Secret, ns, &r.name).map(|d| &d.resource.spec) {
                            Some(Spec::Secret(secret))
                                if secret.value(&r.key).is_none() && !r.optional =>
                            {
                                let keys: Vec<&str> = secret
                                    .data
                                    .keys()
                                    .chain(secret.string_data.keys())
                                    .map(String::as_str)
                                    .collect();
                                out.push(warning(
                                    doc,
                                    &format!("{path}.key"),
                                    format!(
                                        "Secret `{}` has no key `{}`; keys: {}",
                                        r.name,
                                        r.key,
                                        list_or_none(&keys)
                                    ),
                                    "use one of the Secret's keys, or add the key to the Secret"
                                        .into(),
                                ));
                            }
                            Some(Spec::Secret(_)) => {}
                            _ if !r.optional => out.push(warning(
                                doc,
                                &format!("{path}.name"),
                                format!("Secret `{}` does not exist in namespace `{ns}`", r.name),
                                format!("apply a Secret named `{}` with key `{}`", r.name, r.key),
                            )),
                            _ => {}
                        }
                    }
                }
            }
            Spec::Service(svc) => {
                let Some(selector) = svc.selector.as_ref().filter(|s| !s.0.is_empty()) else {
                    continue;
                };
                let backed = set.iter_kind(Kind::Deployment).any(|d| {
                    d.resource.namespace() == ns
                        && matches!(&d.resource.spec, Spec::Deployment(dep)
                            if selector.0.iter().all(|(k, v)| dep.template.metadata.labels.0.get(k) == Some(v)))
                });
                if !backed {
                    let pairs: Vec<String> =
                        selector.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    out.push(warning(
                        doc,
                        "spec.selector",
                        format!("no Deployment in namespace `{ns}` has pods labelled {}; the Service has no endpoints", pairs.join(",")),
                        "apply the Deployment for this Service, or correct the selector".into(),
                    ));
                }
            }
            _ => {}
        }
        if doc.resource.kind().namespaced()
            && !BUILTIN_NAMESPACES.contains(&ns)
            && set.get(Kind::Namespace, "", ns).is_none()
        {
            out.push(warning(
                doc,
                "metadata.namespace",
                format!("namespace `{ns}` does not exist"),
                format!(
                    "apply a Namespace named `{ns}` first (Kubernetes would reject this object)"
                ),
            ));
        }
    }
    check_unselected_conflicts(set, Kind::PeerAuthentication, &mut out);
    check_unselected_conflicts(set, Kind::Telemetry, &mut out);
    out
}

fn check_routes(
    set: &ResourceSet,
    doc: &Document,
    base: &str,
    routes: &[RouteDestination],
    out: &mut Vec<Diagnostic>,
) {
    let ns = doc.resource.namespace();
    for (j, r) in routes.iter().enumerate() {
        let path = format!("{base}.route[{j}].destination");
        let dest = &r.destination;
        let fqdn = resolve_host(&dest.host, ns);
        let service = service_of(&fqdn).and_then(|(svc_ns, name)| {
            set.get(Kind::Service, svc_ns, name)
                .map(|d| (svc_ns, name, d))
        });
        match (service_of(&fqdn), &service) {
            (Some((svc_ns, name)), None) => {
                let names: Vec<&str> = set
                    .iter_kind(Kind::Service)
                    .filter(|d| d.resource.namespace() == svc_ns)
                    .map(|d| d.resource.name())
                    .collect();
                let fix = match closest(name, names.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? Otherwise apply the Service `{name}` first"),
                    None => format!("apply the Service `{name}` first; services in `{svc_ns}`: {}", list_or_none(&names)),
                };
                out.push(error(doc, &format!("{path}.host"), format!("host `{}` does not match any Service in namespace `{svc_ns}`", dest.host), fix));
            }
            (None, _) => out.push(warning(
                doc,
                &format!("{path}.host"),
                format!("host `{}` is not a Kubernetes Service name; weir routes only to Services in the mesh", dest.host),
                "use a Service name such as `reviews` or `reviews.default.svc.cluster.local`".into(),
            )),
            _ => {}
        }
        if let (Some(port), Some((_, name, svc_doc))) = (dest.port, &service) {
            if let Spec::Service(svc) = &svc_doc.resource.spec {
                if !svc.ports.iter().any(|p| p.port == port.number) {
                    let ports: Vec<String> = svc.ports.iter().map(|p| p.port.to_string()).collect();
                    out.push(error(
                        doc,
                        &format!("{path}.port.number"),
                        format!(
                            "port {} is not a port of Service `{name}`; ports: {}",
                            port.number,
                            ports.join(", ")
                        ),
                        "route to one of the Service's ports".into(),
                    ));
                }
            }
        }
        if let Some(subset) = &dest.subset {
            check_subset(set, doc, &path, &dest.host, &fqdn, subset, out);
        }
    }
}

fn check_subset(
    set: &ResourceSet,
    doc: &Document,
    path: &str,
    host: &str,
    fqdn: &str,
    subset: &str,
    out: &mut Vec<Diagnostic>,
) {
    let mut defined: Vec<&str> = Vec::new();
    let mut rules: Vec<&str> = Vec::new();
    for dr_doc in set.iter_kind(Kind::DestinationRule) {
        let Spec::DestinationRule(dr) = &dr_doc.resource.spec else {
            continue;
        };
        if !host_matches(&resolve_host(&dr.host, dr_doc.resource.namespace()), fqdn) {
            continue;
        }
        rules.push(dr_doc.resource.name());
        for s in &dr.subsets {
            if !defined.contains(&s.name.as_str()) {
                defined.push(&s.name);
            }
        }
    }
    if defined.contains(&subset) {
        return;
    }
    let message = format!(
        "subset `{subset}` is not defined by any DestinationRule for host `{host}`; defined: {}",
        list_or_none(&defined)
    );
    let fix = if rules.is_empty() {
        format!("apply a DestinationRule with `host: {host}` and a subset named `{subset}`")
    } else {
        format!("route to one of the defined subsets, or add a subset named `{subset}` to DestinationRule `{}`", rules[0])
    };
    out.push(error(doc, &format!("{path}.subset"), message, fix));
}

fn check_gateway(
    set: &ResourceSet,
    doc: &Document,
    path: &str,
    gateway: &str,
    out: &mut Vec<Diagnostic>,
) {
    if gateway == "mesh" {
        return;
    }
    let (ns, name) = match gateway.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (doc.resource.namespace(), gateway),
    };
    if set.get(Kind::Gateway, ns, name).is_none() {
        out.push(warning(
            doc,
            path,
            format!("Gateway `{gateway}` does not exist in namespace `{ns}`"),
            "apply the Gateway, or remove it from `gateways` (use `mesh` for sidecars)".into(),
        ));
    }
}

/// Two PeerAuthentications (or Telemetries) without a selector in one namespace conflict:
/// Istio uses only the oldest.
fn check_unselected_conflicts(set: &ResourceSet, kind: Kind, out: &mut Vec<Diagnostic>) {
    let mut by_ns: BTreeMap<&str, Vec<&Document>> = BTreeMap::new();
    for doc in set.iter_kind(kind) {
        let selector = match &doc.resource.spec {
            Spec::PeerAuthentication(pa) => pa.selector.as_ref(),
            Spec::Telemetry(t) => t.selector.as_ref(),
            _ => None,
        };
        if selector.is_none_or(|s| s.match_labels.0.is_empty()) {
            by_ns.entry(doc.resource.namespace()).or_default().push(doc);
        }
    }
    for (ns, docs) in by_ns.into_iter().filter(|(_, d)| d.len() > 1) {
        let names: Vec<&str> = docs.iter().map(|d| d.resource.name()).collect();
        for doc in &docs {
            out.push(warning(
                doc,
                "spec",
                format!("{kind} objects {} in namespace `{ns}` all have no workload selector; only one of them takes effect", names.join(", ")),
                "keep one namespace-wide object and give the others a `selector`".into(),
            ));
        }
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        let unique: BTreeSet<&str> = items.iter().copied().collect();
        if unique.len() == items.len() {
            items.join(", ")
        } else {
            unique.into_iter().collect::<Vec<_>>().join(", ")
        }
    }
}

fn diagnostic(doc: &Document, path: &str, severity: Severity, message: String) -> Diagnostic {
    Diagnostic::error(doc.position(path), message)
        .with_severity(severity)
        .with_object(Some(doc.resource.object_ref()))
        .with_path(path)
}

fn error(doc: &Document, path: &str, message: String, fix: String) -> Diagnostic {
    diagnostic(doc, path, Severity::Error, message).with_fix(fix)
}

fn warning(doc: &Document, path: &str, message: String, fix: String) -> Diagnostic {
    diagnostic(doc, path, Severity::Warning, message).with_fix(fix)
}

fn info(doc: &Document, path: &str, message: String) -> Diagnostic {
    diagnostic(doc, path, Severity::Info, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_matches_are_noted_for_sidecars_but_not_for_gateways() {
        let vs = |gateways: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: web\nspec:\n  hosts: [\"*\"]\n{gateways}  http:\n  - match:\n    - uri:\n        prefix: /static\n    route:\n    - destination:\n        host: web\n"
            )
        };
        let notes = |text: &str| {
            let mut set = ResourceSet::new();
            let base = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n    name: http\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: web-gateway\nspec:\n  selector:\n    istio: ingressgateway\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\n";
            set.apply(crate::parse_str(&format!("{base}{text}"), "vs.yaml").unwrap())
                .unwrap();
            analyze(&set)
                .iter()
                .filter(|d| d.to_string().contains("HTTP match on `uri`"))
                .count()
        };
        assert_eq!(notes(&vs("")), 1);
        assert_eq!(notes(&vs("  gateways: [mesh, web-gateway]\n")), 1);
        assert_eq!(notes(&vs("  gateways: [web-gateway]\n")), 0);
    }

    #[test]
    fn hosts_resolve_like_istio() {
        assert_eq!(
            resolve_host("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.prod", "default"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.prod.svc", "default"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("reviews.prod.svc.cluster.local", "default"),
            "reviews.prod.svc.cluster.local"
        );
        assert_eq!(resolve_host("*", "default"), "*");
        assert_eq!(
            service_of("reviews.prod.svc.cluster.local"),
            Some(("prod", "reviews"))
        );
        assert_eq!(service_of("example.com"), None);
        assert!(host_matches(
            "*.prod.svc.cluster.local",
            "reviews.prod.svc.cluster.local"
        ));
    }
}
