//! One Service's outbound configuration: VIPs, ports, endpoints with their transport
//! security, DestinationRule policy, and VirtualService routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use config::analyze::service_of;
use config::model::{
    Document, LbPolicy, Protocol, RouteDestination, ServicePort, ServiceSpec, Spec, Subset,
    TlsMode, TrafficPolicy,
};
use config::{resolve_host, Diagnostic, IntOrString, Severity};
use proxy::config::{
    Endpoint, EndpointTls, LoadBalancer, OutboundPort, OutboundService, Route, ServiceRef,
};

use super::diagnostic;
use super::index::{Key, Snapshot};
use super::{MeshOptions, Pod};

/// The result of computing one service.
#[derive(Debug)]
pub(crate) struct Computed {
    pub service: OutboundService,
    /// Hosts whose changes can change this result: the service itself and every route
    /// destination.
    pub deps: BTreeSet<String>,
    pub diagnostics: Vec<Diagnostic>,
}

/// The DestinationRules that apply to a host, merged as Istio merges them: subsets from
/// all (first definition of a name wins), traffic policy from the first.
struct RuleSet<'a> {
    policy: Option<&'a TrafficPolicy>,
    subsets: Vec<&'a Subset>,
}

impl<'a> RuleSet<'a> {
    fn for_host(snap: &'a Snapshot, host: &str) -> Self {
        let svc_ns = service_of(host).map(|(ns, _)| ns.to_owned());
        let mut docs = snap.destination_rules.for_host(host);
        // Istio prefers the rule in the service's own namespace.
        docs.sort_by_key(|d| Some(d.resource.namespace()) != svc_ns.as_deref());
        let mut policy = None;
        let mut subsets: Vec<&Subset> = Vec::new();
        for (i, doc) in docs.iter().enumerate() {
            let Spec::DestinationRule(dr) = &doc.resource.spec else {
                continue;
            };
            if i == 0 {
                policy = dr.traffic_policy.as_ref();
            }
            for s in &dr.subsets {
                if !subsets.iter().any(|x| x.name == s.name) {
                    subsets.push(s);
                }
            }
        }
        Self { policy, subsets }
    }

    fn subset(&self, name: &str) -> Option<&'a Subset> {
        self.subsets.iter().copied().find(|s| s.name == name)
    }
}

/// How endpoints are secured, after DestinationRule and auto mTLS.
#[derive(Clone, Copy)]
enum TlsChoice {
    Auto,
    IstioMutual,
    Disable,
}

fn tls_choice(policies: &[Option<&TrafficPolicy>]) -> TlsChoice {
    // The most specific policy that sets a supported mode wins; SIMPLE and MUTUAL
    // (reported as unsupported) fall through to auto mTLS.
    for p in policies.iter().flatten() {
        match p.tls.as_ref().map(|t| t.mode) {
            Some(TlsMode::IstioMutual) => return TlsChoice::IstioMutual,
            Some(TlsMode::Disable) => return TlsChoice::Disable,
            _ => {}
        }
    }
    TlsChoice::Auto
}

fn load_balancer(policies: &[Option<&TrafficPolicy>]) -> LoadBalancer {
    for p in policies.iter().flatten() {
        let simple = p.load_balancer.as_ref().and_then(|lb| lb.simple);
        match simple {
            Some(LbPolicy::RoundRobin) => return LoadBalancer::RoundRobin,
            Some(LbPolicy::LeastRequest | LbPolicy::LeastConn) => {
                return LoadBalancer::LeastRequest
            }
            Some(LbPolicy::Random) => return LoadBalancer::Random,
            Some(LbPolicy::Passthrough) => return LoadBalancer::Passthrough,
            Some(LbPolicy::Unspecified) | None => {}
        }
    }
    LoadBalancer::RoundRobin
}

fn is_tcp(port: &ServicePort) -> bool {
    matches!(port.protocol, None | Some(Protocol::Tcp))
}

/// The container port a Service port targets on `pod`: the number, or the named port of
/// the pod's Deployment.
pub(crate) fn target_port_of(snap: &Snapshot, port: &ServicePort, pod: &Pod) -> Option<u16> {
    match port.target() {
        IntOrString::Int(0) => Some(port.port.0),
        IntOrString::Int(n) => Some(n),
        IntOrString::String(name) => {
            let dep = snap
                .deployments
                .get(&(pod.namespace.clone(), pod.workload.clone()))?;
            let Spec::Deployment(dep) = &dep.resource.spec else {
                return None;
            };
            dep.template
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port.0)
        }
    }
}

/// Pods of a Service (optionally narrowed to a subset) as endpoints of one port.
/// `unresolved` collects pods whose named target port does not exist.
fn endpoints(
    snap: &Snapshot,
    opts: &MeshOptions,
    svc_doc: &Document,
    port: &ServicePort,
    subset: Option<&BTreeMap<String, String>>,
    tls: TlsChoice,
    unresolved: &mut Vec<String>,
) -> Vec<Endpoint> {
    let Some(selector) = super::index::service_selector(svc_doc) else {
        return Vec::new();
    };
    let ns = svc_doc.resource.namespace();
    let mut out: Vec<Endpoint> = snap
        .pods_selected(ns, selector)
        .filter(|pod| subset.is_none_or(|s| s.iter().all(|(k, v)| pod.labels.get(k) == Some(v))))
        .filter_map(|pod| {
            let ip = pod.ip?;
            let Some(target) = target_port_of(snap, port, pod) else {
                unresolved.push(pod.name.clone());
                return None;
            };
            let mutual = match tls {
                // A gateway's server ports are plaintext (its proxy does not terminate
                // mesh mTLS there), as Istio's auto mTLS leaves gateway pods out.
                TlsChoice::Auto => pod.sidecar && !super::gateway::is_gateway_pod(snap, pod),
                TlsChoice::IstioMutual => true,
                TlsChoice::Disable => false,
            };
            Some(Endpoint {
                address: SocketAddr::new(ip, target),
                tls: if mutual {
                    EndpointTls::IstioMutual
                } else {
                    EndpointTls::Disable
                },
                identity: mutual.then(|| {
                    format!(
                        "spiffe://{}/ns/{}/sa/{}",
                        opts.trust_domain, pod.namespace, pod.service_account
                    )
                }),
            })
        })
        .collect();
    out.sort_by_key(|e| e.address);
    out
}

/// Computes the outbound configuration of the Service `key`; `vip` is its address when it
/// sets no `clusterIP`.
pub(crate) fn compute(
    snap: &Snapshot,
    opts: &MeshOptions,
    key: &Key,
    doc: &Document,
    vip: Option<IpAddr>,
) -> Computed {
    let (ns, name) = (key.0.as_str(), key.1.as_str());
    let host = super::index::fqdn(ns, name);
    let mut deps = BTreeSet::from([host.clone()]);
    let mut diags = Vec::new();
    let default_spec = ServiceSpec::default();
    let spec = match &doc.resource.spec {
        Spec::Service(s) => s,
        _ => &default_spec,
    };
    let rules = RuleSet::for_host(snap, &host);
    let lb = load_balancer(&[rules.policy]);
    let tls = tls_choice(&[rules.policy]);
    let tcp_pool = rules
        .policy
        .and_then(|p| p.connection_pool.as_ref())
        .and_then(|c| c.tcp.as_ref());
    let vs = snap
        .virtual_services
        .for_host(&host)
        .into_iter()
        .find(|d| applies_to_sidecars(d));

    let headless = spec.cluster_ip.as_deref() == Some("None");
    let mut addresses = Vec::new();
    match spec.cluster_ip.as_deref() {
        Some("None") => {}
        Some(ip) if !ip.is_empty() => match ip.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => {
                diags.push(diagnostic(
                    doc,
                    "spec.clusterIP",
                    Severity::Warning,
                    format!("`{ip}` is not an IP address; a VIP is allocated instead"),
                    Some("write an IPv4 or IPv6 address, or remove `clusterIP`".into()),
                ));
                addresses.extend(vip);
            }
        },
        _ => addresses.extend(vip),
    }
    if addresses.is_empty() && !headless {
        diags.push(diagnostic(
            doc,
            "spec.clusterIP",
            Severity::Error,
            format!("no VIP is left in the service range {}", opts.vip_range),
            Some("set `clusterIP` explicitly, or configure a larger service VIP range".into()),
        ));
    }

    let mut ports = Vec::new();
    let mut unresolved_pods: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        if !is_tcp(port) {
            diags.push(diagnostic(
                doc,
                &format!("spec.ports[{i}].protocol"),
                Severity::Info,
                format!(
                    "port {} is {}; weir proxies TCP only, so it is not configured",
                    port.port,
                    port.protocol.map_or("TCP", |p| p.as_str())
                ),
                None,
            ));
            continue;
        }
        let mut bad = Vec::new();
        let eps = endpoints(snap, opts, doc, port, None, tls, &mut bad);
        if !bad.is_empty() {
            unresolved_pods.insert(i, bad);
        }
        let routes = match vs {
            Some(vs_doc) => routes_for_port(snap, opts, vs_doc, port.port.0, &mut deps),
            None => Vec::new(),
        };
        ports.push(OutboundPort {
            port: port.port.0,
            listen: None,
            endpoints: eps,
            routes,
            max_connections: tcp_pool.and_then(|t| t.max_connections),
            connect_timeout: tcp_pool.and_then(|t| t.connect_timeout).map(|d| d.0),
        });
    }
    for (i, pods) in unresolved_pods {
        let target = match spec.ports[i].target() {
            IntOrString::String(s) => s,
            IntOrString::Int(n) => n.to_string(),
        };
        diags.push(diagnostic(
            doc,
            &format!("spec.ports[{i}].targetPort"),
            Severity::Warning,
            format!(
                "no container port named `{target}` in the Deployment of pods {}; they are not endpoints of port {}",
                pods.join(", "),
                spec.ports[i].port
            ),
            Some(format!("name a container port `{target}` in the Deployment, or use a port number")),
        ));
    }
    if super::index::service_selector(doc).is_none() {
        diags.push(diagnostic(
            doc,
            "spec.selector",
            Severity::Info,
            "the Service has no selector, so it has no endpoints (weir does not read Endpoints objects); connections to it get `UH`".into(),
            Some("add a `selector` matching the pods that serve it".into()),
        ));
    } else if ports.iter().all(|p| p.endpoints.is_empty()) && !ports.is_empty() {
        diags.push(diagnostic(
            doc,
            "spec.selector",
            Severity::Warning,
            "no registered pod matches the selector; connections to the Service get `UH` (no healthy upstream)".into(),
            Some("start the Deployment that backs the Service, or correct the selector".into()),
        ));
    }
    if headless {
        // Clients of a headless Service address pods directly.
        addresses = ports
            .iter()
            .flat_map(|p| p.endpoints.iter().map(|e| e.address.ip()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
    }
    Computed {
        service: OutboundService {
            name: name.to_owned(),
            namespace: ns.to_owned(),
            hostname: None,
            addresses,
            load_balancer: if headless {
                LoadBalancer::Passthrough
            } else {
                lb
            },
            ports,
        },
        deps,
        diagnostics: diags,
    }
}

/// True when a VirtualService applies to sidecars (`gateways` empty or naming `mesh`).
pub(crate) fn applies_to_sidecars(doc: &Document) -> bool {
    match &doc.resource.spec {
        Spec::VirtualService(vs) => {
            vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")
        }
        _ => false,
    }
}

fn gateways_ok(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// The routes a VirtualService gives one service port: the first `tcp` rule whose match
/// selects the port, else the first `http` rule without a match (or matching only on the
/// port). Rules with conditions an L4 proxy cannot see are skipped (reported per resource).
fn routes_for_port(
    snap: &Snapshot,
    opts: &MeshOptions,
    vs_doc: &Document,
    port: u16,
    deps: &mut BTreeSet<String>,
) -> Vec<Route> {
    let Spec::VirtualService(vs) = &vs_doc.resource.spec else {
        return Vec::new();
    };
    let tcp = vs.tcp.iter().find(|r| {
        r.matches.is_empty()
            || r.matches.iter().any(|m| {
                m.extra.is_empty() && gateways_ok(&m.gateways) && m.port.is_none_or(|p| p.0 == port)
            })
    });
    let chosen = match tcp {
        Some(r) => Some(&r.route),
        None => vs
            .http
            .iter()
            .filter(|r| !r.route.is_empty())
            .find(|r| {
                r.matches.is_empty()
                    || r.matches.iter().any(|m| {
                        m.uri.is_none()
                            && m.headers.is_empty()
                            && m.extra.is_empty()
                            && gateways_ok(&m.gateways)
                            && m.port.is_none_or(|p| p.0 == port)
                    })
            })
            .map(|r| &r.route),
    };
    let Some(dests) = chosen else {
        return Vec::new();
    };
    dests
        .iter()
        .map(|rd| {
            route(
                snap,
                opts,
                vs_doc.resource.namespace(),
                rd,
                dests.len(),
                port,
                deps,
            )
        })
        .collect()
}

pub(crate) fn route(
    snap: &Snapshot,
    opts: &MeshOptions,
    vs_ns: &str,
    rd: &RouteDestination,
    count: usize,
    incoming_port: u16,
    deps: &mut BTreeSet<String>,
) -> Route {
    let dest = &rd.destination;
    let host = resolve_host(&dest.host, vs_ns);
    deps.insert(host.clone());
    let weight = match rd.weight {
        Some(w) => u32::try_from(w).unwrap_or(0),
        None if count == 1 => 100,
        None => 0,
    };
    let svc_key = service_of(&host).map(|(ns, name)| (ns.to_owned(), name.to_owned()));
    let destination = match &svc_key {
        Some((ns, name)) => ServiceRef {
            name: name.clone(),
            namespace: ns.clone(),
            hostname: None,
        },
        None => ServiceRef {
            name: dest.host.clone(),
            namespace: vs_ns.to_owned(),
            hostname: Some(host.clone()),
        },
    };
    let mut r = Route {
        weight,
        destination,
        subset: dest.subset.clone(),
        load_balancer: None,
        endpoints: Vec::new(),
        unresolved: None,
    };
    let Some(svc_doc) = svc_key.as_ref().and_then(|k| snap.services.get(k)) else {
        r.unresolved = Some(format!(
            "host `{}` does not match any Service (`{host}`)",
            dest.host
        ));
        return r;
    };
    let Spec::Service(svc) = &svc_doc.resource.spec else {
        return r;
    };
    let tcp_ports: Vec<&ServicePort> = svc.ports.iter().filter(|p| is_tcp(p)).collect();
    let svc_port = match dest.port {
        Some(p) => tcp_ports.iter().find(|sp| sp.port == p.number).copied(),
        None if tcp_ports.len() == 1 => Some(tcp_ports[0]),
        None => tcp_ports
            .iter()
            .find(|sp| sp.port.0 == incoming_port)
            .copied(),
    };
    let Some(svc_port) = svc_port else {
        let list: Vec<String> = tcp_ports.iter().map(|p| p.port.to_string()).collect();
        r.unresolved = Some(match dest.port {
            Some(p) => format!(
                "port {} is not a TCP port of Service `{}`; ports: {}",
                p.number,
                dest.host,
                list.join(", ")
            ),
            None => format!(
                "Service `{}` has several ports ({}); name one with `destination.port.number`",
                dest.host,
                list.join(", ")
            ),
        });
        return r;
    };
    let rules = RuleSet::for_host(snap, &host);
    let subset = match &dest.subset {
        Some(name) => match rules.subset(name) {
            Some(s) => Some(s),
            None => {
                let defined: Vec<&str> = rules.subsets.iter().map(|s| s.name.as_str()).collect();
                r.unresolved = Some(format!(
                    "subset `{name}` is not defined by any DestinationRule for host `{}`; defined: {}",
                    dest.host,
                    if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
                ));
                return r;
            }
        },
        None => None,
    };
    let policies = [subset.and_then(|s| s.traffic_policy.as_ref()), rules.policy];
    let mut ignored = Vec::new();
    r.endpoints = endpoints(
        snap,
        opts,
        svc_doc,
        svc_port,
        subset.map(|s| &s.labels.0),
        tls_choice(&policies),
        &mut ignored,
    );
    r.load_balancer = Some(load_balancer(&policies));
    r
}
