//! Kubernetes core kinds: Namespace, ServiceAccount, Secret, Service.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as Json;

use crate::decode::{string_enum, Cx, Decode, StringMap};
use crate::node::Node;
use crate::values::{Base64Bytes, IntOrString, Port};

/// Namespace body: only metadata matters to weir; `spec`/`status` are kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NamespaceBody {
    /// Other top-level fields (`spec`, `status`), kept as written.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

/// ServiceAccount body; its identity is its name. Other fields are kept verbatim.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceAccountBody {
    /// `secrets`, `imagePullSecrets`, `automountServiceAccountToken`, kept as written.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

/// A Secret: `data` (base64 in the manifest) and `stringData` (plain text).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretBody {
    /// `type`, e.g. `Opaque`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
    /// Decoded `data`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Base64Bytes>,
    /// `stringData`, merged over `data` by [`SecretBody::value`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
    /// `immutable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
}

impl SecretBody {
    /// The value of `key`, as Kubernetes computes it (`stringData` wins over `data`).
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        if let Some(s) = self.string_data.get(key) {
            return Some(s.clone().into_bytes());
        }
        self.data.get(key).map(|b| b.0.clone())
    }

    pub(crate) fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        // Top-level fields other than these were checked by the document reader.
        let f = cx.fields(
            node,
            &[
                "apiVersion",
                "kind",
                "metadata",
                "type",
                "data",
                "stringData",
                "immutable",
            ],
            &[],
        );
        SecretBody {
            secret_type: f.opt(cx, "type"),
            data: f.get(cx, "data"),
            string_data: f.get(cx, "stringData"),
            immutable: f.opt(cx, "immutable"),
        }
    }
}

string_enum!(
    /// Service `type`.
    ServiceType, "Service type" {
        /// `ClusterIP`
        ClusterIp = "ClusterIP",
        /// `NodePort`
        NodePort = "NodePort",
        /// `LoadBalancer`
        LoadBalancer = "LoadBalancer",
        /// `ExternalName`
        ExternalName = "ExternalName",
    }
);

string_enum!(
    /// Port `protocol`.
    Protocol, "protocol" {
        /// `TCP`
        Tcp = "TCP",
        /// `UDP`
        Udp = "UDP",
        /// `SCTP`
        Sctp = "SCTP",
    }
);

/// Service `spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ports`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// `selector`: pods with all these labels back the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<StringMap>,
    /// `type`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    /// `clusterIP` (`None` for headless when written so).
    #[serde(rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// Schema fields weir does not act on (ipFamilies, sessionAffinity, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl Decode for ServiceSpec {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["ports", "selector", "type", "clusterIP"],
            &[
                "clusterIPs",
                "externalIPs",
                "externalName",
                "externalTrafficPolicy",
                "internalTrafficPolicy",
                "healthCheckNodePort",
                "ipFamilies",
                "ipFamilyPolicy",
                "loadBalancerClass",
                "loadBalancerIP",
                "loadBalancerSourceRanges",
                "allocateLoadBalancerNodePorts",
                "publishNotReadyAddresses",
                "sessionAffinity",
                "sessionAffinityConfig",
                "trafficDistribution",
            ],
        );
        let ports: Vec<ServicePort> = f.get(cx, "ports");
        if let Some(list) = f.node("ports") {
            check_unique(
                cx,
                list,
                "ports",
                ports.iter().map(|p| p.name.as_deref()),
                "port name",
            );
        }
        ServiceSpec {
            ports,
            selector: f.opt(cx, "selector"),
            service_type: f.opt(cx, "type"),
            cluster_ip: f.opt(cx, "clusterIP"),
            extra: f.rest(),
        }
    }
}

/// Reports the second use of a name in a list (port names, subset names, ...).
pub(crate) fn check_unique<'a>(
    cx: &mut Cx<'_>,
    list: &Node,
    field: &str,
    names: impl Iterator<Item = Option<&'a str>>,
    what: &str,
) {
    let crate::node::Value::Seq(items) = &list.value else {
        return;
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, name) in names.enumerate() {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            continue;
        };
        if let Some(first) = seen.insert(name, i) {
            seen.insert(name, first);
            let item = &items[i];
            cx.at_key(field, |cx| {
                cx.at_index(i, |cx| {
                    cx.error(
                        item,
                        format!("duplicate {what} `{name}` (also used by item {first})"),
                        Some(format!("give each {what} a unique value")),
                    );
                });
            });
        }
    }
}

/// One Service port.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// `name`; Istio derives the protocol from prefixes like `http`, `tcp`, `mongo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `port`.
    pub port: Port,
    /// `targetPort` (defaults to `port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `protocol` (defaults to TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// `appProtocol`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// `nodePort` and other fields weir does not act on.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Json>,
}

impl ServicePort {
    /// The port the pods listen on.
    pub fn target(&self) -> IntOrString {
        self.target_port
            .clone()
            .unwrap_or(IntOrString::Int(self.port.0))
    }
}

impl Decode for ServicePort {
    fn decode(node: &Node, cx: &mut Cx<'_>) -> Self {
        let f = cx.fields(
            node,
            &["name", "port", "targetPort", "protocol", "appProtocol"],
            &["nodePort"],
        );
        ServicePort {
            name: f.opt(cx, "name"),
            port: f.req(
                cx,
                "port",
                "set the port number clients connect to, e.g. `port: 9080`",
            ),
            target_port: f.opt(cx, "targetPort"),
            protocol: f.opt(cx, "protocol"),
            app_protocol: f.opt(cx, "appProtocol"),
            extra: f.rest(),
        }
    }
}
