//! Conversions between the proxy's configuration types and their protobuf form.
//!
//! Encoding cannot fail. Decoding checks everything the protobuf types cannot express
//! (enum values this build does not know, addresses, port ranges, durations) and names
//! the field path of the first bad value.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proxy::config::{
    Endpoint, EndpointTls, InboundMode, InboundPort, LoadBalancer, MetricOverride, OutboundPort,
    OutboundService, OutboundTrafficPolicy, ProxyConfig, Route, ServiceRef, TagOperationKind,
    TagOverride, TelemetryConfig,
};

use crate::proto;
use crate::{NodeInfo, WorkloadConfig};

mod gateway;

pub use gateway::{gateway_from_proto, gateway_to_proto};

/// A protobuf value that has no meaning as proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An enum number this build does not know (a newer control plane?).
    #[error("{field}: unknown {kind} value {value}; fix: send one of {expected}")]
    UnknownEnum {
        /// Field path.
        field: String,
        /// The enum type.
        kind: &'static str,
        /// The number received.
        value: i32,
        /// The accepted names.
        expected: &'static str,
    },
    /// A text that should be an address is not one.
    #[error("{field}: {value:?} is not {what}; fix: send {what}")]
    BadAddress {
        /// Field path.
        field: String,
        /// The text received.
        value: String,
        /// What was expected, e.g. `an ip:port socket address`.
        what: &'static str,
    },
    /// A port number above 65535.
    #[error("{field}: port {value} is out of range; fix: send a port in 1-65535")]
    PortRange {
        /// Field path.
        field: String,
        /// The number received.
        value: u32,
    },
    /// A required field is missing or a value is unusable.
    #[error("{field}: {problem}; fix: {fix}")]
    Invalid {
        /// Field path.
        field: String,
        /// What is wrong.
        problem: String,
        /// What to do.
        fix: String,
    },
}

// ---- enums ----

fn lb_to_proto(lb: LoadBalancer) -> proto::LoadBalancer {
    match lb {
        LoadBalancer::RoundRobin => proto::LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest => proto::LoadBalancer::LeastRequest,
        LoadBalancer::Random => proto::LoadBalancer::Random,
        LoadBalancer::Passthrough => proto::LoadBalancer::Passthrough,
    }
}

/// `None` for UNSPECIFIED (the field is unset).
fn lb_from_proto(value: i32, field: &str) -> Result<Option<LoadBalancer>, ConvertError> {
    match proto::LoadBalancer::try_from(value) {
        Ok(proto::LoadBalancer::Unspecified) => Ok(None),
        Ok(proto::LoadBalancer::RoundRobin) => Ok(Some(LoadBalancer::RoundRobin)),
        Ok(proto::LoadBalancer::LeastRequest) => Ok(Some(LoadBalancer::LeastRequest)),
        Ok(proto::LoadBalancer::Random) => Ok(Some(LoadBalancer::Random)),
        Ok(proto::LoadBalancer::Passthrough) => Ok(Some(LoadBalancer::Passthrough)),
        Err(_) => Err(ConvertError::UnknownEnum {
            field: field.to_owned(),
            kind: "LoadBalancer",
            value,
            expected: "ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH",
        }),
    }
}

fn tls_from_proto(value: i32, field: &str) -> Result<EndpointTls, ConvertError> {
    match proto::EndpointTls::try_from(value) {
        Ok(proto::EndpointTls::Unspecified | proto::EndpointTls::IstioMutual) => {
            Ok(EndpointTls::IstioMutual)
        }
        Ok(proto::EndpointTls::Disable) => Ok(EndpointTls::Disable),
        Err(_) => Err(ConvertError::UnknownEnum {
            field: field.to_owned(),
            kind: "EndpointTls",
            value,
            expected: "ISTIO_MUTUAL, DISABLE",
        }),
    }
}

fn tls_to_proto(tls: EndpointTls) -> proto::EndpointTls {
    match tls {
        EndpointTls::IstioMutual => proto::EndpointTls::IstioMutual,
        EndpointTls::Disable => proto::EndpointTls::Disable,
    }
}

fn mode_to_proto(mode: InboundMode) -> proto::InboundMode {
    match mode {
        InboundMode::Strict => proto::InboundMode::Strict,
        InboundMode::Permissive => proto::InboundMode::Permissive,
        InboundMode::Disable => proto::InboundMode::Plaintext,
    }
}

fn mode_from_proto(value: i32, field: &str) -> Result<InboundMode, ConvertError> {
    match proto::InboundMode::try_from(value) {
        Ok(proto::InboundMode::Strict) => Ok(InboundMode::Strict),
        Ok(proto::InboundMode::Unspecified | proto::InboundMode::Permissive) => {
            Ok(InboundMode::Permissive)
        }
        Ok(proto::InboundMode::Plaintext) => Ok(InboundMode::Disable),
        Err(_) => Err(ConvertError::UnknownEnum {
            field: field.to_owned(),
            kind: "InboundMode",
            value,
            expected: "STRICT, PERMISSIVE, PLAINTEXT",
        }),
    }
}

fn policy_to_proto(policy: OutboundTrafficPolicy) -> proto::TrafficPolicy {
    match policy {
        OutboundTrafficPolicy::AllowAny => proto::TrafficPolicy::AllowAny,
        OutboundTrafficPolicy::RegistryOnly => proto::TrafficPolicy::RegistryOnly,
    }
}

fn policy_from_proto(value: i32, field: &str) -> Result<OutboundTrafficPolicy, ConvertError> {
    match proto::TrafficPolicy::try_from(value) {
        Ok(proto::TrafficPolicy::Unspecified | proto::TrafficPolicy::AllowAny) => {
            Ok(OutboundTrafficPolicy::AllowAny)
        }
        Ok(proto::TrafficPolicy::RegistryOnly) => Ok(OutboundTrafficPolicy::RegistryOnly),
        Err(_) => Err(ConvertError::UnknownEnum {
            field: field.to_owned(),
            kind: "TrafficPolicy",
            value,
            expected: "ALLOW_ANY, REGISTRY_ONLY",
        }),
    }
}

fn tag_op_from_proto(value: i32, field: &str) -> Result<TagOperationKind, ConvertError> {
    match proto::TagOperation::try_from(value) {
        Ok(proto::TagOperation::Unspecified | proto::TagOperation::Upsert) => {
            Ok(TagOperationKind::Upsert)
        }
        Ok(proto::TagOperation::Remove) => Ok(TagOperationKind::Remove),
        Err(_) => Err(ConvertError::UnknownEnum {
            field: field.to_owned(),
            kind: "TagOperation",
            value,
            expected: "UPSERT, REMOVE",
        }),
    }
}

// ---- scalars ----

fn port_from_proto(value: u32, field: &str) -> Result<u16, ConvertError> {
    u16::try_from(value).map_err(|_| ConvertError::PortRange {
        field: field.to_owned(),
        value,
    })
}

fn socket_from_proto(value: &str, field: &str) -> Result<SocketAddr, ConvertError> {
    value.parse().map_err(|_| ConvertError::BadAddress {
        field: field.to_owned(),
        value: value.to_owned(),
        what: "an ip:port socket address",
    })
}

fn opt_socket_from_proto(
    value: Option<&String>,
    field: &str,
) -> Result<Option<SocketAddr>, ConvertError> {
    value.map(|v| socket_from_proto(v, field)).transpose()
}

fn ip_from_proto(value: &str, field: &str) -> Result<IpAddr, ConvertError> {
    value.parse().map_err(|_| ConvertError::BadAddress {
        field: field.to_owned(),
        value: value.to_owned(),
        what: "an IP address",
    })
}

fn duration_to_proto(d: Duration) -> prost_types::Duration {
    // Saturates instead of failing: a duration beyond ~292 billion years is "forever".
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

fn duration_from_proto(d: &prost_types::Duration, field: &str) -> Result<Duration, ConvertError> {
    Duration::try_from(*d).map_err(|e| ConvertError::Invalid {
        field: field.to_owned(),
        problem: format!("duration {}s {}ns is not usable ({e})", d.seconds, d.nanos),
        fix: "send a non-negative, normalized duration".to_owned(),
    })
}

// ---- services ----

fn service_ref_to_proto(r: &ServiceRef) -> proto::ServiceRef {
    proto::ServiceRef {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        hostname: r.hostname.clone(),
    }
}

fn service_ref_from_proto(r: &proto::ServiceRef) -> ServiceRef {
    ServiceRef {
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        hostname: r.hostname.clone(),
    }
}

fn endpoint_to_proto(e: &Endpoint) -> proto::Endpoint {
    proto::Endpoint {
        address: e.address.to_string(),
        tls: tls_to_proto(e.tls) as i32,
        identity: e.identity.clone(),
    }
}

fn endpoints_from_proto(
    list: &[proto::Endpoint],
    field: &str,
) -> Result<Vec<Endpoint>, ConvertError> {
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let at = format!("{field}[{i}]");
            Ok(Endpoint {
                address: socket_from_proto(&e.address, &format!("{at}.address"))?,
                tls: tls_from_proto(e.tls, &format!("{at}.tls"))?,
                identity: e.identity.clone(),
            })
        })
        .collect()
}

fn route_to_proto(r: &Route) -> proto::Route {
    proto::Route {
        weight: r.weight,
        destination: Some(service_ref_to_proto(&r.destination)),
        subset: r.subset.clone(),
        load_balancer: r
            .load_balancer
            .map_or(proto::LoadBalancer::Unspecified, lb_to_proto) as i32,
        endpoints: r.endpoints.iter().map(endpoint_to_proto).collect(),
        unresolved: r.unresolved.clone(),
    }
}

fn route_from_proto(r: &proto::Route, at: &str) -> Result<Route, ConvertError> {
    let destination = r
        .destination
        .as_ref()
        .ok_or_else(|| ConvertError::Invalid {
            field: format!("{at}.destination"),
            problem: "missing".to_owned(),
            fix: "name the destination service of every route".to_owned(),
        })?;
    Ok(Route {
        weight: r.weight,
        destination: service_ref_from_proto(destination),
        subset: r.subset.clone(),
        load_balancer: lb_from_proto(r.load_balancer, &format!("{at}.load_balancer"))?,
        endpoints: endpoints_from_proto(&r.endpoints, &format!("{at}.endpoints"))?,
        unresolved: r.unresolved.clone(),
    })
}

fn port_to_proto(p: &OutboundPort) -> proto::ServicePort {
    proto::ServicePort {
        port: u32::from(p.port),
        listen: p.listen.map(|a| a.to_string()),
        endpoints: p.endpoints.iter().map(endpoint_to_proto).collect(),
        routes: p.routes.iter().map(route_to_proto).collect(),
        max_connections: p.max_connections,
        connect_timeout: p.connect_timeout.map(duration_to_proto),
    }
}

fn port_from_proto_msg(p: &proto::ServicePort, at: &str) -> Result<OutboundPort, ConvertError> {
    Ok(OutboundPort {
        port: port_from_proto(p.port, &format!("{at}.port"))?,
        listen: opt_socket_from_proto(p.listen.as_ref(), &format!("{at}.listen"))?,
        endpoints: endpoints_from_proto(&p.endpoints, &format!("{at}.endpoints"))?,
        routes: p
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| route_from_proto(r, &format!("{at}.routes[{i}]")))
            .collect::<Result<_, _>>()?,
        max_connections: p.max_connections,
        connect_timeout: p
            .connect_timeout
            .as_ref()
            .map(|d| duration_from_proto(d, &format!("{at}.connect_timeout")))
            .transpose()?,
    })
}

/// Encodes an outbound service.
pub fn service_to_proto(s: &OutboundService) -> proto::Service {
    proto::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses: s.addresses.iter().map(ToString::to_string).collect(),
        load_balancer: lb_to_proto(s.load_balancer) as i32,
        ports: s.ports.iter().map(port_to_proto).collect(),
    }
}

/// Decodes an outbound service; `at` prefixes field paths in errors (e.g. the resource
/// name).
pub fn service_from_proto(s: &proto::Service, at: &str) -> Result<OutboundService, ConvertError> {
    Ok(OutboundService {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses: s
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| ip_from_proto(a, &format!("{at}.addresses[{i}]")))
            .collect::<Result<_, _>>()?,
        load_balancer: lb_from_proto(s.load_balancer, &format!("{at}.load_balancer"))?
            .unwrap_or_default(),
        ports: s
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| port_from_proto_msg(p, &format!("{at}.ports[{i}]")))
            .collect::<Result<_, _>>()?,
    })
}

// ---- workload ----

fn telemetry_to_proto(t: &TelemetryConfig) -> proto::Telemetry {
    proto::Telemetry {
        enabled: t.enabled,
        overrides: t
            .overrides
            .iter()
            .map(|o| proto::MetricOverride {
                metric: o.metric.clone(),
                disabled: o.disabled,
                tag_overrides: o
                    .tag_overrides
                    .iter()
                    .map(|(k, v)| {
                        let op = match v.operation {
                            TagOperationKind::Upsert => proto::TagOperation::Upsert,
                            TagOperationKind::Remove => proto::TagOperation::Remove,
                        };
                        (
                            k.clone(),
                            proto::TagOverride {
                                operation: op as i32,
                                value: v.value.clone(),
                            },
                        )
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn telemetry_from_proto(t: &proto::Telemetry, at: &str) -> Result<TelemetryConfig, ConvertError> {
    let mut overrides = Vec::with_capacity(t.overrides.len());
    for (i, o) in t.overrides.iter().enumerate() {
        let mut tag_overrides = BTreeMap::new();
        for (tag, v) in &o.tag_overrides {
            let field = format!("{at}.overrides[{i}].tag_overrides[{tag}].operation");
            tag_overrides.insert(
                tag.clone(),
                TagOverride {
                    operation: tag_op_from_proto(v.operation, &field)?,
                    value: v.value.clone(),
                },
            );
        }
        overrides.push(MetricOverride {
            metric: o.metric.clone(),
            disabled: o.disabled,
            tag_overrides,
        });
    }
    Ok(TelemetryConfig {
        enabled: t.enabled,
        overrides,
    })
}

fn inbound_port_to_proto(p: &InboundPort) -> proto::InboundPort {
    proto::InboundPort {
        port: u32::from(p.port),
        target: p.target.map(|a| a.to_string()),
        listen: p.listen.map(|a| a.to_string()),
        service: p.service.as_ref().map(service_ref_to_proto),
    }
}

fn inbound_port_from_proto(p: &proto::InboundPort, at: &str) -> Result<InboundPort, ConvertError> {
    Ok(InboundPort {
        port: port_from_proto(p.port, &format!("{at}.port"))?,
        target: opt_socket_from_proto(p.target.as_ref(), &format!("{at}.target"))?,
        listen: opt_socket_from_proto(p.listen.as_ref(), &format!("{at}.listen"))?,
        service: p.service.as_ref().map(service_ref_from_proto),
    })
}

/// Encodes the workload settings.
pub fn workload_to_proto(w: &WorkloadConfig) -> proto::Workload {
    proto::Workload {
        inbound_mode: mode_to_proto(w.inbound_mode) as i32,
        inbound_ports: w.inbound_ports.iter().map(inbound_port_to_proto).collect(),
        traffic_policy: policy_to_proto(w.traffic_policy) as i32,
        reporting_interval: Some(duration_to_proto(w.reporting_interval)),
        telemetry: Some(telemetry_to_proto(&w.telemetry)),
        gateway: w.gateway.as_ref().map(gateway_to_proto),
    }
}

/// Decodes the workload settings; `at` prefixes field paths in errors.
pub fn workload_from_proto(w: &proto::Workload, at: &str) -> Result<WorkloadConfig, ConvertError> {
    let reporting = w
        .reporting_interval
        .as_ref()
        .ok_or_else(|| ConvertError::Invalid {
            field: format!("{at}.reporting_interval"),
            problem: "missing".to_owned(),
            fix: "send the interval between reports of live connections".to_owned(),
        })?;
    let reporting_interval = duration_from_proto(reporting, &format!("{at}.reporting_interval"))?;
    if reporting_interval.is_zero() {
        return Err(ConvertError::Invalid {
            field: format!("{at}.reporting_interval"),
            problem: "zero".to_owned(),
            fix: "send a positive interval".to_owned(),
        });
    }
    Ok(WorkloadConfig {
        inbound_mode: mode_from_proto(w.inbound_mode, &format!("{at}.inbound_mode"))?,
        inbound_ports: w
            .inbound_ports
            .iter()
            .enumerate()
            .map(|(i, p)| inbound_port_from_proto(p, &format!("{at}.inbound_ports[{i}]")))
            .collect::<Result<_, _>>()?,
        traffic_policy: policy_from_proto(w.traffic_policy, &format!("{at}.traffic_policy"))?,
        reporting_interval,
        // An absent message means the defaults (reporting on), not proto3's all-false.
        telemetry: match &w.telemetry {
            Some(t) => telemetry_from_proto(t, &format!("{at}.telemetry"))?,
            None => TelemetryConfig::default(),
        },
        gateway: w
            .gateway
            .as_ref()
            .map(|g| gateway_from_proto(g, &format!("{at}.gateway")))
            .transpose()?,
    })
}

// ---- node ----

/// Encodes a node description.
pub fn node_to_proto(n: &NodeInfo) -> proto::Node {
    proto::Node {
        pod_name: n.pod_name.clone(),
        namespace: n.namespace.clone(),
        workload_name: n.workload_name.clone(),
        service_account: n.service_account.clone(),
        ip: n.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        labels: n.labels.clone(),
        container_ports: n.container_ports.iter().map(|p| u32::from(*p)).collect(),
    }
}

/// Decodes a node description.
pub fn node_from_proto(n: &proto::Node) -> Result<NodeInfo, ConvertError> {
    let mut container_ports = BTreeSet::new();
    for (i, p) in n.container_ports.iter().enumerate() {
        container_ports.insert(port_from_proto(*p, &format!("node.container_ports[{i}]"))?);
    }
    let required = |value: &str, field: &str| {
        if value.is_empty() {
            Err(ConvertError::Invalid {
                field: format!("node.{field}"),
                problem: "empty".to_owned(),
                fix: format!("set the proxy's {field}"),
            })
        } else {
            Ok(value.to_owned())
        }
    };
    Ok(NodeInfo {
        pod_name: required(&n.pod_name, "pod_name")?,
        namespace: required(&n.namespace, "namespace")?,
        workload_name: required(&n.workload_name, "workload_name")?,
        service_account: required(&n.service_account, "service_account")?,
        ip: if n.ip.is_empty() {
            None
        } else {
            Some(ip_from_proto(&n.ip, "node.ip")?)
        },
        labels: n.labels.clone(),
        container_ports,
    })
}

/// The node description of a proxy configured by `config` (its bootstrap part).
pub fn node_info_of(config: &ProxyConfig) -> NodeInfo {
    NodeInfo {
        pod_name: config.node.pod().to_owned(),
        namespace: config.node.namespace.clone(),
        workload_name: config.node.workload_name.clone(),
        service_account: config.node.service_account.clone(),
        ip: config.node.ip,
        labels: config.node.labels.clone(),
        container_ports: config.inbound.ports.iter().map(|p| p.port).collect(),
    }
}

/// The configuration a proxy runs: its static bootstrap part with the pushed resources
/// merged in. Services are ordered by host name; without a workload resource the
/// bootstrap's own workload settings stay. The workload resource's gateway replaces the
/// bootstrap's (so a proxy started as a plain sidecar becomes a gateway when the control
/// plane says its pod is one).
pub fn assemble<'a>(
    base: &ProxyConfig,
    workload: Option<&WorkloadConfig>,
    services: impl IntoIterator<Item = &'a Arc<OutboundService>>,
) -> ProxyConfig {
    let mut config = base.clone();
    config.outbound.services = services.into_iter().cloned().collect();
    if let Some(w) = workload {
        config.inbound.mode = w.inbound_mode;
        config.inbound.ports = w.inbound_ports.clone();
        config.outbound.traffic_policy = w.traffic_policy;
        config.reporting.interval = w.reporting_interval;
        config.telemetry = w.telemetry.clone();
        config.gateway = w.gateway.clone();
    }
    config
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod tests_support {
    //! Small configurations for unit tests.
    use super::*;

    pub(crate) fn service(name: &str) -> OutboundService {
        OutboundService {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            hostname: None,
            addresses: vec!["10.96.0.1".parse().unwrap()],
            load_balancer: LoadBalancer::RoundRobin,
            ports: vec![OutboundPort {
                port: 80,
                listen: None,
                endpoints: vec![Endpoint {
                    address: "10.0.0.1:8080".parse().unwrap(),
                    tls: EndpointTls::IstioMutual,
                    identity: Some("spiffe://cluster.local/ns/default/sa/default".to_owned()),
                }],
                routes: vec![],
                max_connections: None,
                connect_timeout: None,
            }],
        }
    }

    pub(crate) fn workload() -> WorkloadConfig {
        WorkloadConfig {
            inbound_mode: InboundMode::Permissive,
            inbound_ports: vec![],
            traffic_policy: OutboundTrafficPolicy::AllowAny,
            reporting_interval: Duration::from_secs(15),
            telemetry: TelemetryConfig::default(),
            gateway: None,
        }
    }
}
