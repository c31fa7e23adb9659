//! Resource kinds: their API groups and versions, and the names kubectl users type.

use std::fmt;

use crate::error::closest;

/// A kind of resource weir understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Namespace (cluster-scoped).
    Namespace,
    /// `v1` ServiceAccount.
    ServiceAccount,
    /// `v1` Secret.
    Secret,
    /// `v1` Service.
    Service,
    /// `apps/v1` Deployment.
    Deployment,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` Gateway.
    Gateway,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `telemetry.istio.io` Telemetry.
    Telemetry,
    /// `gateway.networking.k8s.io` Gateway (Kubernetes Gateway API).
    KubernetesGateway,
    /// `gateway.networking.k8s.io` TCPRoute (Kubernetes Gateway API).
    TcpRoute,
}

/// An unknown kind name or an apiVersion that does not serve the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    /// The name matches no kind.
    #[error("unknown resource type `{name}`{}; valid types: {}", did_you_mean(.suggestion), Kind::valid_names())]
    Unknown {
        /// What was asked for.
        name: String,
        /// The closest valid name.
        suggestion: Option<String>,
    },
    /// A manifest `kind` weir does not know.
    #[error("unsupported kind `{kind}` (apiVersion `{api_version}`){}; supported kinds: {}", did_you_mean(.suggestion), Kind::manifest_kinds())]
    UnknownManifestKind {
        /// The `kind` field.
        kind: String,
        /// The `apiVersion` field.
        api_version: String,
        /// The closest supported kind.
        suggestion: Option<String>,
    },
    /// The kind exists but not under this apiVersion.
    #[error("apiVersion `{api_version}` does not serve kind `{kind}`; use one of: {expected}")]
    WrongApiVersion {
        /// The `kind` field.
        kind: String,
        /// The `apiVersion` field.
        api_version: String,
        /// The valid apiVersions, comma separated.
        expected: String,
    },
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

impl Kind {
    /// Every kind, in the order `get all` lists them.
    pub const ALL: [Kind; 12] = [
        Kind::Namespace,
        Kind::ServiceAccount,
        Kind::Secret,
        Kind::Service,
        Kind::Deployment,
        Kind::DestinationRule,
        Kind::VirtualService,
        Kind::Gateway,
        Kind::PeerAuthentication,
        Kind::Telemetry,
        Kind::KubernetesGateway,
        Kind::TcpRoute,
    ];

    /// The `kind` field as written in manifests.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Secret => "Secret",
            Kind::Service => "Service",
            Kind::Deployment => "Deployment",
            Kind::DestinationRule => "DestinationRule",
            Kind::VirtualService => "VirtualService",
            Kind::Gateway | Kind::KubernetesGateway => "Gateway",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::TcpRoute => "TCPRoute",
        }
    }

    /// The API group (empty for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::ServiceAccount | Kind::Secret | Kind::Service => "",
            Kind::Deployment => "apps",
            Kind::DestinationRule | Kind::VirtualService | Kind::Gateway => "networking.istio.io",
            Kind::PeerAuthentication => "security.istio.io",
            Kind::Telemetry => "telemetry.istio.io",
            Kind::KubernetesGateway | Kind::TcpRoute => "gateway.networking.k8s.io",
        }
    }

    /// The versions of [`Kind::group`] that serve this kind, preferred first.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace
            | Kind::ServiceAccount
            | Kind::Secret
            | Kind::Service
            | Kind::Deployment => &["v1"],
            Kind::DestinationRule | Kind::VirtualService | Kind::Gateway => {
                &["v1", "v1beta1", "v1alpha3"]
            }
            Kind::PeerAuthentication => &["v1", "v1beta1"],
            Kind::Telemetry => &["v1", "v1alpha1"],
            Kind::KubernetesGateway => &["v1", "v1beta1"],
            Kind::TcpRoute => &["v1alpha2", "v1"],
        }
    }

    /// The preferred `apiVersion`, e.g. `networking.istio.io/v1`.
    pub fn api_version(self) -> String {
        api_version(self.group(), self.versions()[0])
    }

    /// The lower-case plural, e.g. `destinationrules`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::ServiceAccount => "serviceaccounts",
            Kind::Secret => "secrets",
            Kind::Service => "services",
            Kind::Deployment => "deployments",
            Kind::DestinationRule => "destinationrules",
            Kind::VirtualService => "virtualservices",
            Kind::Gateway | Kind::KubernetesGateway => "gateways",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::Telemetry => "telemetries",
            Kind::TcpRoute => "tcproutes",
        }
    }

    /// kubectl short names.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Namespace => &["ns"],
            Kind::ServiceAccount => &["sa"],
            Kind::Secret => &[],
            Kind::Service => &["svc"],
            Kind::Deployment => &["deploy"],
            Kind::DestinationRule => &["dr"],
            Kind::VirtualService => &["vs"],
            Kind::Gateway => &["gw"],
            Kind::PeerAuthentication => &["pa"],
            Kind::Telemetry => &["telemetry"],
            Kind::KubernetesGateway => &["gtw"],
            Kind::TcpRoute => &[],
        }
    }

    /// Namespaced kinds live in a namespace; a Namespace does not.
    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    /// The name kubectl prints in outcome lines: `destinationrule.networking.istio.io`,
    /// `deployment.apps`, `service`.
    pub fn resource_name(self) -> String {
        let singular = self.name().to_ascii_lowercase();
        if self.group().is_empty() {
            singular
        } else {
            format!("{singular}.{}", self.group())
        }
    }

    /// Resolves what a user typed (`dr`, `destinationrule`, `DestinationRules`,
    /// `destinationrules.networking.istio.io`, `deploy.apps`, `gtw`...) to a kind.
    /// A bare `gateway` means Istio's Gateway, as in a cluster with Istio installed.
    pub fn lookup(name: &str) -> Result<Kind, KindError> {
        let lower = name.trim().to_ascii_lowercase();
        let (base, group) = match lower.split_once('.') {
            Some((b, g)) => (b, Some(g)),
            None => (lower.as_str(), None),
        };
        for kind in Kind::ALL {
            if group.is_some_and(|g| g != kind.group()) {
                continue;
            }
            if kind == Kind::KubernetesGateway && group.is_none() && base != "gtw" {
                continue;
            }
            let singular = kind.name().to_ascii_lowercase();
            if base == singular || base == kind.plural() || kind.short_names().contains(&base) {
                return Ok(kind);
            }
        }
        let candidates = Kind::lookup_names();
        Err(KindError::Unknown {
            name: name.to_string(),
            suggestion: closest(&lower, candidates.iter().map(String::as_str)).map(str::to_string),
        })
    }

    fn lookup_names() -> Vec<String> {
        let mut names = Vec::new();
        for kind in Kind::ALL {
            names.push(kind.name().to_ascii_lowercase());
            names.push(kind.plural().to_string());
            names.extend(kind.short_names().iter().map(|s| s.to_string()));
        }
        names
    }

    /// `service (svc), serviceaccount (sa), ...` for error messages.
    pub fn valid_names() -> String {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            if kind == Kind::KubernetesGateway {
                out.push("gateway.gateway.networking.k8s.io (gtw)".to_string());
                continue;
            }
            let singular = kind.name().to_ascii_lowercase();
            let shorts: Vec<&str> = kind
                .short_names()
                .iter()
                .copied()
                .filter(|s| *s != singular)
                .collect();
            if shorts.is_empty() {
                out.push(singular);
            } else {
                out.push(format!("{singular} ({})", shorts.join(", ")));
            }
        }
        out.join(", ")
    }

    pub(crate) fn manifest_kinds() -> String {
        let mut names: Vec<&str> = Vec::new();
        for kind in Kind::ALL {
            if !names.contains(&kind.name()) {
                names.push(kind.name());
            }
        }
        names.join(", ")
    }

    /// The kind of a manifest from its `apiVersion` and `kind` fields.
    pub fn from_manifest(api_version: &str, kind: &str) -> Result<Kind, KindError> {
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let matching: Vec<Kind> = Kind::ALL.into_iter().filter(|k| k.name() == kind).collect();
        if matching.is_empty() {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
            return Err(KindError::UnknownManifestKind {
                kind: kind.to_string(),
                api_version: api_version.to_string(),
                suggestion: closest(kind, names).map(str::to_string),
            });
        }
        for k in &matching {
            if k.group() == group && k.versions().contains(&version) {
                return Ok(*k);
            }
        }
        let expected: Vec<String> = matching
            .iter()
            .flat_map(|k| k.versions().iter().map(|v| api_version_of(*k, v)))
            .collect();
        Err(KindError::WrongApiVersion {
            kind: kind.to_string(),
            api_version: api_version.to_string(),
            expected: expected.join(", "),
        })
    }
}

fn api_version_of(kind: Kind, version: &str) -> String {
    api_version(kind.group(), version)
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_plurals() {
        let cases = [
            ("dr", Kind::DestinationRule),
            ("destinationrule", Kind::DestinationRule),
            ("DestinationRules", Kind::DestinationRule),
            (
                "destinationrules.networking.istio.io",
                Kind::DestinationRule,
            ),
            ("vs", Kind::VirtualService),
            ("svc", Kind::Service),
            ("deploy", Kind::Deployment),
            ("deployments.apps", Kind::Deployment),
            ("sa", Kind::ServiceAccount),
            ("pa", Kind::PeerAuthentication),
            ("peerauthentication", Kind::PeerAuthentication),
            ("telemetry", Kind::Telemetry),
            ("telemetries", Kind::Telemetry),
            ("gw", Kind::Gateway),
            ("gateway", Kind::Gateway),
            ("gtw", Kind::KubernetesGateway),
            (
                "gateways.gateway.networking.k8s.io",
                Kind::KubernetesGateway,
            ),
            ("ns", Kind::Namespace),
            ("secret", Kind::Secret),
            ("tcproute", Kind::TcpRoute),
        ];
        for (name, kind) in cases {
            assert_eq!(Kind::lookup(name), Ok(kind), "{name}");
        }
    }

    #[test]
    fn unknown_kind_lists_valid_ones() {
        let err = Kind::lookup("destinatonrule").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown resource type `destinatonrule` (did you mean `destinationrule`?); valid types: \
             namespace (ns), serviceaccount (sa), secret, service (svc), deployment (deploy), \
             destinationrule (dr), virtualservice (vs), gateway (gw), peerauthentication (pa), \
             telemetry, gateway.gateway.networking.k8s.io (gtw), tcproute"
        );
    }

    #[test]
    fn manifest_kinds_and_versions() {
        assert_eq!(
            Kind::from_manifest("networking.istio.io/v1alpha3", "VirtualService"),
            Ok(Kind::VirtualService)
        );
        assert_eq!(
            Kind::from_manifest("gateway.networking.k8s.io/v1", "Gateway"),
            Ok(Kind::KubernetesGateway)
        );
        assert_eq!(
            Kind::from_manifest("v1", "DestinationRule")
                .unwrap_err()
                .to_string(),
            "apiVersion `v1` does not serve kind `DestinationRule`; use one of: \
             networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3"
        );
        assert_eq!(Kind::Deployment.resource_name(), "deployment.apps");
        assert_eq!(Kind::Service.resource_name(), "service");
        assert_eq!(
            Kind::DestinationRule.resource_name(),
            "destinationrule.networking.istio.io"
        );
    }
}
