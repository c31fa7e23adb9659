//! What the metrics know about one side of a connection: the workload and the
//! service it was addressed to, and Istio's rules for deriving label values from them.

use std::collections::BTreeMap;

/// Pod label holding the canonical service name (set by Istio's injector).
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// Pod label holding the canonical revision (set by Istio's injector).
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";
/// Kubernetes recommended label for the application name.
pub const K8S_NAME_LABEL: &str = "app.kubernetes.io/name";
/// Kubernetes recommended label for the application version.
pub const K8S_VERSION_LABEL: &str = "app.kubernetes.io/version";
/// The conventional `app` label.
pub const APP_LABEL: &str = "app";
/// The conventional `version` label.
pub const VERSION_LABEL: &str = "version";

/// The canonical revision used when no label names one.
pub const DEFAULT_REVISION: &str = "latest";

/// One end of a connection as the metrics see it.
///
/// This is either the proxy's own workload or the peer learnt through metadata
/// exchange. A default (empty) value is an unknown peer: every label derived from it
/// prints `unknown` (and the canonical revision `latest`). Empty strings count as
/// absent everywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Workload name, e.g. the Deployment name `ratings-v1` (MX `WORKLOAD_NAME`).
    pub name: String,
    /// Kubernetes namespace (MX `NAMESPACE`).
    pub namespace: String,
    /// Cluster id (MX `CLUSTER_ID`, Istio's default is `Kubernetes`).
    pub cluster: String,
    /// Pod labels (MX `LABELS`).
    pub labels: BTreeMap<String, String>,
    /// SPIFFE id of the workload's certificate on this connection. Set only when the
    /// connection is mutual TLS, because only then is the identity verified.
    pub principal: Option<String>,
}

impl Workload {
    /// An unknown workload (no metadata exchange, no identity).
    pub fn unknown() -> Self {
        Self::default()
    }

    /// True when nothing at all is known about this workload.
    pub fn is_unknown(&self) -> bool {
        self.name.is_empty()
            && self.namespace.is_empty()
            && self.cluster.is_empty()
            && self.labels.is_empty()
            && self.principal.as_deref().is_none_or(str::is_empty)
    }

    /// A label value, treating an empty value as absent.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Istio's canonical service: label `service.istio.io/canonical-name`, else
    /// `app.kubernetes.io/name`, else `app`, else the workload name; `None` if none is known.
    pub fn canonical_service(&self) -> Option<&str> {
        self.label(CANONICAL_NAME_LABEL)
            .or_else(|| self.label(K8S_NAME_LABEL))
            .or_else(|| self.label(APP_LABEL))
            .or_else(|| non_empty(&self.name))
    }

    /// Istio's canonical revision: label `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub fn canonical_revision(&self) -> &str {
        self.label(CANONICAL_REVISION_LABEL)
            .or_else(|| self.label(K8S_VERSION_LABEL))
            .or_else(|| self.label(VERSION_LABEL))
            .unwrap_or(DEFAULT_REVISION)
    }

    /// The `*_app` label: `app`, else `app.kubernetes.io/name`.
    pub fn app(&self) -> Option<&str> {
        self.label(APP_LABEL).or_else(|| self.label(K8S_NAME_LABEL))
    }

    /// The `*_version` label: `version`, else `app.kubernetes.io/version`.
    pub fn version(&self) -> Option<&str> {
        self.label(VERSION_LABEL)
            .or_else(|| self.label(K8S_VERSION_LABEL))
    }

    /// The verified principal, if any.
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref().filter(|p| !p.is_empty())
    }

    /// The namespace: the metadata's, else the one named by the verified principal
    /// (as Istio does for a peer that sent no metadata but presented a certificate).
    pub fn namespace(&self) -> Option<&str> {
        non_empty(&self.namespace).or_else(|| {
            self.principal()
                .and_then(SpiffeId::parse)
                .map(|id| id.namespace)
        })
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The service a connection was addressed to.
///
/// `fqdn` is `destination_service` (`ratings.default.svc.cluster.local`), `name` and
/// `namespace` are `destination_service_name` / `destination_service_namespace`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationService {
    /// Fully qualified host name.
    pub fqdn: String,
    /// Short service name.
    pub name: String,
    /// Namespace of the service.
    pub namespace: String,
}

impl DestinationService {
    /// An unknown service: all three labels print `unknown`.
    pub fn unknown() -> Self {
        Self::default()
    }

    /// Builds the service from a Kubernetes FQDN `<name>.<namespace>.svc.<domain>`.
    /// A host that is not of that form keeps its FQDN and uses it as the name, with an
    /// unknown namespace.
    pub fn from_fqdn(fqdn: &str) -> Self {
        let mut parts = fqdn.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(ns), Some("svc")) if !name.is_empty() && !ns.is_empty() => Self {
                fqdn: fqdn.to_owned(),
                name: name.to_owned(),
                namespace: ns.to_owned(),
            },
            _ => Self {
                fqdn: fqdn.to_owned(),
                name: fqdn.to_owned(),
                namespace: String::new(),
            },
        }
    }

    /// Builds the service from its name, namespace and cluster domain
    /// (`cluster.local` by default in Kubernetes).
    pub fn new(name: &str, namespace: &str, domain: &str) -> Self {
        Self {
            fqdn: format!("{name}.{namespace}.svc.{domain}"),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }
}

/// A parsed SPIFFE id of Istio's form `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpiffeId<'a> {
    /// Trust domain, e.g. `cluster.local`.
    pub trust_domain: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Service account.
    pub service_account: &'a str,
}

impl<'a> SpiffeId<'a> {
    /// Parses Istio's SPIFFE id form; `None` for anything else.
    pub fn parse(id: &'a str) -> Option<Self> {
        let rest = id.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (td, ns_kw, ns, sa_kw, sa) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || ns_kw != "ns" || sa_kw != "sa" {
            return None;
        }
        if td.is_empty() || ns.is_empty() || sa.is_empty() {
            return None;
        }
        Some(Self {
            trust_domain: td,
            namespace: ns,
            service_account: sa,
        })
    }
}

impl std::fmt::Display for SpiffeId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Formats Istio's SPIFFE id for a service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    SpiffeId {
        trust_domain,
        namespace,
        service_account,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_labels(name: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Workload::default()
        }
    }

    #[test]
    fn canonical_service_precedence() {
        let all = [
            (CANONICAL_NAME_LABEL, "canon"),
            (K8S_NAME_LABEL, "k8s"),
            (APP_LABEL, "app"),
        ];
        assert_eq!(with_labels("wl", &all).canonical_service(), Some("canon"));
        assert_eq!(
            with_labels("wl", &all[1..]).canonical_service(),
            Some("k8s")
        );
        assert_eq!(
            with_labels("wl", &all[2..]).canonical_service(),
            Some("app")
        );
        assert_eq!(with_labels("wl", &[]).canonical_service(), Some("wl"));
        assert_eq!(with_labels("", &[]).canonical_service(), None);
        // Empty values are absent, not a canonical name.
        assert_eq!(
            with_labels("wl", &[(CANONICAL_NAME_LABEL, ""), (APP_LABEL, "a")]).canonical_service(),
            Some("a")
        );
    }

    #[test]
    fn canonical_revision_precedence() {
        let all = [
            (CANONICAL_REVISION_LABEL, "rev"),
            (K8S_VERSION_LABEL, "k8s"),
            (VERSION_LABEL, "v1"),
        ];
        assert_eq!(with_labels("wl", &all).canonical_revision(), "rev");
        assert_eq!(with_labels("wl", &all[1..]).canonical_revision(), "k8s");
        assert_eq!(with_labels("wl", &all[2..]).canonical_revision(), "v1");
        assert_eq!(with_labels("wl", &[]).canonical_revision(), "latest");
        assert_eq!(
            with_labels("wl", &[(VERSION_LABEL, "v2-mysql")]).canonical_revision(),
            "v2-mysql"
        );
    }

    #[test]
    fn app_and_version() {
        let w = with_labels("wl", &[(K8S_NAME_LABEL, "n"), (K8S_VERSION_LABEL, "1")]);
        assert_eq!((w.app(), w.version()), (Some("n"), Some("1")));
        let w = with_labels("wl", &[(APP_LABEL, "a"), (K8S_NAME_LABEL, "n")]);
        assert_eq!((w.app(), w.version()), (Some("a"), None));
    }

    #[test]
    fn namespace_falls_back_to_principal() {
        let w = Workload {
            principal: Some("spiffe://cluster.local/ns/default/sa/client".into()),
            ..Workload::default()
        };
        assert_eq!(w.namespace(), Some("default"));
        assert!(!w.is_unknown());
        assert!(Workload::unknown().is_unknown());
        assert_eq!(Workload::unknown().namespace(), None);
    }

    #[test]
    fn spiffe_round_trip_and_rejects() {
        let s = spiffe_id("cluster.local", "default", "bookinfo-ratings");
        assert_eq!(s, "spiffe://cluster.local/ns/default/sa/bookinfo-ratings");
        let id = SpiffeId::parse(&s).unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "bookinfo-ratings");
        for bad in [
            "",
            "spiffe://",
            "spiffe://td/ns/x",
            "spiffe://td/ns//sa/y",
            "spiffe://td/ns/x/sa/y/z",
            "spiffe://td/nx/x/sa/y",
            "http://td/ns/x/sa/y",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn service_from_fqdn() {
        let s = DestinationService::from_fqdn("ratings.default.svc.cluster.local");
        assert_eq!(
            (s.name.as_str(), s.namespace.as_str()),
            ("ratings", "default")
        );
        assert_eq!(
            DestinationService::new("ratings", "default", "cluster.local"),
            s
        );
        let s = DestinationService::from_fqdn("example.com");
        assert_eq!(
            (s.fqdn.as_str(), s.name.as_str(), s.namespace.as_str()),
            ("example.com", "example.com", "")
        );
    }
}
