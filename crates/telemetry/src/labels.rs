//! The 23 labels of Istio's TCP metrics, in Istio's order, and their typed values.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};

use crate::workload::{DestinationService, Workload, DEFAULT_REVISION};

/// The value printed for anything not known.
pub const UNKNOWN: &str = "unknown";

/// Which sidecar reports: the client's (`source`) or the server's (`destination`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The sidecar of the connecting client (outbound); prints `source`.
    Source,
    /// The sidecar of the server (inbound); prints `destination`.
    Destination,
}

impl Reporter {
    /// Istio's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// `connection_security_policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// The connection was mutual TLS; prints `mutual_tls`.
    MutualTls,
    /// The connection was plain text; prints `none`.
    None,
    /// Not known; always the value on the source reporter. Prints `unknown`.
    Unknown,
}

impl SecurityPolicy {
    /// Istio's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "none",
            SecurityPolicy::Unknown => UNKNOWN,
        }
    }
}

/// `response_flags`: Envoy's short codes for how a TCP connection ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// A normal connection; prints `-`.
    #[default]
    None,
    /// Upstream connection failure: connecting to the chosen endpoint failed
    /// (refused, reset, timed out); prints `UF`.
    UpstreamConnectionFailure,
    /// No healthy upstream: the destination has no endpoint to connect to; prints `UH`.
    NoHealthyUpstream,
    /// Upstream overflow: a connection-pool limit (e.g. DestinationRule
    /// `connectionPool.tcp.maxConnections`) rejected the connection; prints `UO`.
    UpstreamOverflow,
    /// Upstream retry limit exceeded: every connect attempt failed; prints `URX`.
    UpstreamRetryLimitExceeded,
    /// No route or no cluster matched the connection's destination; prints `NC`.
    NoClusterFound,
    /// Duration timeout: the connection reached its maximum duration and was
    /// closed by the proxy; prints `DT`.
    DurationTimeout,
}

impl ResponseFlags {
    /// Envoy's short code.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::UpstreamConnectionFailure => "UF",
            ResponseFlags::NoHealthyUpstream => "UH",
            ResponseFlags::UpstreamOverflow => "UO",
            ResponseFlags::UpstreamRetryLimitExceeded => "URX",
            ResponseFlags::NoClusterFound => "NC",
            ResponseFlags::DurationTimeout => "DT",
        }
    }
}

/// `request_protocol`. Only TCP is reported by this crate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// Prints `tcp`.
    #[default]
    Tcp,
}

impl RequestProtocol {
    /// Istio's label value.
    pub fn as_str(self) -> &'static str {
        "tcp"
    }
}

macro_rules! impl_display {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
impl_display!(
    Reporter,
    SecurityPolicy,
    ResponseFlags,
    RequestProtocol,
    TcpLabel
);

/// A string label value; absent or empty prints `unknown`.
///
/// Shared (`Arc<str>`) so that cloning a label set per metric family is cheap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelValue(Option<Arc<str>>);

impl LabelValue {
    /// The unknown value.
    pub fn unknown() -> Self {
        Self(None)
    }

    /// The value as printed.
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or(UNKNOWN)
    }
}

impl From<&str> for LabelValue {
    fn from(s: &str) -> Self {
        Self((!s.is_empty()).then(|| Arc::from(s)))
    }
}

impl From<String> for LabelValue {
    fn from(s: String) -> Self {
        Self((!s.is_empty()).then(|| Arc::from(s)))
    }
}

impl From<Option<&str>> for LabelValue {
    fn from(s: Option<&str>) -> Self {
        s.map(Self::from).unwrap_or_default()
    }
}

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! tcp_labels {
    ($($variant:ident => $name:literal,)*) => {
        /// The names of the standard labels, in Istio's order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum TcpLabel {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
        }

        impl TcpLabel {
            /// Every standard label, in Istio's order.
            pub const ALL: [TcpLabel; 23] = [$(TcpLabel::$variant,)*];

            /// The label name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(TcpLabel::$variant => $name,)*
                }
            }

            /// Looks a standard label up by name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(TcpLabel::$variant),)*
                    _ => None,
                }
            }

            fn bit(self) -> u32 {
                1 << (self as u32)
            }
        }
    };
}

tcp_labels! {
    Reporter => "reporter",
    SourceWorkload => "source_workload",
    SourceCanonicalService => "source_canonical_service",
    SourceCanonicalRevision => "source_canonical_revision",
    SourceWorkloadNamespace => "source_workload_namespace",
    SourcePrincipal => "source_principal",
    SourceApp => "source_app",
    SourceVersion => "source_version",
    SourceCluster => "source_cluster",
    DestinationWorkload => "destination_workload",
    DestinationWorkloadNamespace => "destination_workload_namespace",
    DestinationPrincipal => "destination_principal",
    DestinationApp => "destination_app",
    DestinationVersion => "destination_version",
    DestinationService => "destination_service",
    DestinationCanonicalService => "destination_canonical_service",
    DestinationCanonicalRevision => "destination_canonical_revision",
    DestinationServiceName => "destination_service_name",
    DestinationServiceNamespace => "destination_service_namespace",
    DestinationCluster => "destination_cluster",
    RequestProtocol => "request_protocol",
    ResponseFlags => "response_flags",
    ConnectionSecurityPolicy => "connection_security_policy",
}

/// The label set of one connection's TCP series.
///
/// Built once per connection with [`TcpLabelsBuilder`]; prints the 23 standard labels
/// in Istio's order. Telemetry API tag overrides (see [`crate::TagOverrides`]) can
/// remove standard labels, replace their values and append extra labels; equality and
/// hashing follow what is printed, so connections that differ only in a removed label
/// share one series.
#[derive(Clone, Debug)]
pub struct TcpLabels {
    reporter: Reporter,
    source_workload: LabelValue,
    source_canonical_service: LabelValue,
    source_canonical_revision: LabelValue,
    source_workload_namespace: LabelValue,
    source_principal: LabelValue,
    source_app: LabelValue,
    source_version: LabelValue,
    source_cluster: LabelValue,
    destination_workload: LabelValue,
    destination_workload_namespace: LabelValue,
    destination_principal: LabelValue,
    destination_app: LabelValue,
    destination_version: LabelValue,
    destination_service: LabelValue,
    destination_canonical_service: LabelValue,
    destination_canonical_revision: LabelValue,
    destination_service_name: LabelValue,
    destination_service_namespace: LabelValue,
    destination_cluster: LabelValue,
    request_protocol: RequestProtocol,
    response_flags: ResponseFlags,
    connection_security_policy: SecurityPolicy,
    /// Standard labels removed by tag overrides (bit per [`TcpLabel`]).
    removed: u32,
    /// Overridden standard values and extra labels, sorted by name, unique.
    custom: Option<Arc<[CustomLabel]>>,
    /// Pod labels of both workloads, for overrides that read them. Not part of the
    /// series identity, and dropped from the keys stored in a metric family.
    workload_labels: Option<Arc<WorkloadLabels>>,
    /// Hash of the printed labels, computed whenever they change: a family lookup
    /// per metric then hashes one word instead of 46 strings.
    digest: u64,
}

/// Pod labels of the two ends of a connection.
#[derive(Debug, Default)]
pub(crate) struct WorkloadLabels {
    pub(crate) source: BTreeMap<String, String>,
    pub(crate) destination: BTreeMap<String, String>,
}

/// A label set by tag overrides: name and value.
type CustomLabel = (Arc<str>, LabelValue);

impl TcpLabels {
    /// Starts a label set for the given reporter.
    pub fn builder(reporter: Reporter) -> TcpLabelsBuilder {
        TcpLabelsBuilder::new(reporter)
    }

    /// Labels as the client's sidecar reports them: the local workload is the source,
    /// the peer learnt through metadata exchange is the destination, and
    /// `connection_security_policy` is `unknown`.
    pub fn outbound(
        local: &Workload,
        peer: &Workload,
        service: &DestinationService,
        flags: ResponseFlags,
    ) -> Self {
        Self::builder(Reporter::Source)
            .source(local)
            .destination(peer)
            .destination_service(service)
            .response_flags(flags)
            .build()
    }

    /// Labels as the server's sidecar reports them: the peer is the source, the local
    /// workload is the destination.
    pub fn inbound(
        local: &Workload,
        peer: &Workload,
        service: &DestinationService,
        policy: SecurityPolicy,
        flags: ResponseFlags,
    ) -> Self {
        Self::builder(Reporter::Destination)
            .source(peer)
            .destination(local)
            .destination_service(service)
            .security_policy(policy)
            .response_flags(flags)
            .build()
    }

    /// The reporter.
    pub fn reporter(&self) -> Reporter {
        self.reporter
    }

    /// The response flags.
    pub fn response_flags(&self) -> ResponseFlags {
        self.response_flags
    }

    /// The same labels with other response flags.
    pub fn with_response_flags(mut self, flags: ResponseFlags) -> Self {
        self.response_flags = flags;
        self.rehash();
        self
    }

    fn rehash(&mut self) {
        // Keyed per process, so peers cannot pick colliding label values.
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
        for (k, v) in self.iter() {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        self.digest = h.finish();
    }

    /// The standard value of a label, ignoring overrides.
    pub fn standard(&self, label: TcpLabel) -> &str {
        use TcpLabel as L;
        match label {
            L::Reporter => self.reporter.as_str(),
            L::SourceWorkload => self.source_workload.as_str(),
            L::SourceCanonicalService => self.source_canonical_service.as_str(),
            L::SourceCanonicalRevision => self.source_canonical_revision.as_str(),
            L::SourceWorkloadNamespace => self.source_workload_namespace.as_str(),
            L::SourcePrincipal => self.source_principal.as_str(),
            L::SourceApp => self.source_app.as_str(),
            L::SourceVersion => self.source_version.as_str(),
            L::SourceCluster => self.source_cluster.as_str(),
            L::DestinationWorkload => self.destination_workload.as_str(),
            L::DestinationWorkloadNamespace => self.destination_workload_namespace.as_str(),
            L::DestinationPrincipal => self.destination_principal.as_str(),
            L::DestinationApp => self.destination_app.as_str(),
            L::DestinationVersion => self.destination_version.as_str(),
            L::DestinationService => self.destination_service.as_str(),
            L::DestinationCanonicalService => self.destination_canonical_service.as_str(),
            L::DestinationCanonicalRevision => self.destination_canonical_revision.as_str(),
            L::DestinationServiceName => self.destination_service_name.as_str(),
            L::DestinationServiceNamespace => self.destination_service_namespace.as_str(),
            L::DestinationCluster => self.destination_cluster.as_str(),
            L::RequestProtocol => self.request_protocol.as_str(),
            L::ResponseFlags => self.response_flags.as_str(),
            L::ConnectionSecurityPolicy => self.connection_security_policy.as_str(),
        }
    }

    /// The printed value of a label (standard or extra); `None` if absent or removed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The labels as printed, in order: the standard labels not removed (with
    /// overridden values in place), then the extra labels sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let custom: &[CustomLabel] = self.custom.as_deref().unwrap_or(&[]);
        let standard = TcpLabel::ALL
            .into_iter()
            .filter(move |l| self.removed & l.bit() == 0)
            .map(move |l| {
                let name = l.as_str();
                let value = custom
                    .iter()
                    .find(|(k, _)| &**k == name)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_else(|| self.standard(l));
                (name, value)
            });
        let extra = custom
            .iter()
            .filter(|(k, _)| TcpLabel::from_name(k).is_none())
            .map(|(k, v)| (&**k, v.as_str()));
        standard.chain(extra)
    }

    /// A pod label of the source (`source == true`) or destination workload, as given
    /// to the builder.
    pub(crate) fn workload_label(&self, source: bool, key: &str) -> Option<&str> {
        let w = self.workload_labels.as_deref()?;
        let map = if source { &w.source } else { &w.destination };
        map.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The same series identity without the captured workload labels, to keep the
    /// keys a metric family stores small.
    pub(crate) fn series_key(&self) -> Self {
        Self {
            workload_labels: None,
            ..self.clone()
        }
    }

    /// Applies overrides: removes the given standard labels and sets the given values
    /// (replacing a standard label's value, or adding an extra label). A later value for
    /// the same name wins; setting a removed standard label brings it back.
    pub(crate) fn customized(
        mut self,
        remove: impl IntoIterator<Item = TcpLabel>,
        set: impl IntoIterator<Item = (Arc<str>, LabelValue)>,
    ) -> Self {
        for l in remove {
            self.removed |= l.bit();
        }
        let mut custom: Vec<CustomLabel> = self
            .custom
            .as_deref()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        for (k, v) in set {
            if let Some(l) = TcpLabel::from_name(&k) {
                self.removed &= !l.bit();
            }
            match custom.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => custom.push((k, v)),
            }
        }
        custom.sort_by(|a, b| a.0.cmp(&b.0));
        self.custom = (!custom.is_empty()).then(|| custom.into());
        self.rehash();
        self
    }
}

impl PartialEq for TcpLabels {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.iter().eq(other.iter())
    }
}

impl Eq for TcpLabels {}

impl Hash for TcpLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        for (name, value) in self.iter() {
            let mut label = encoder.encode_label();
            let mut key = label.encode_label_key()?;
            prometheus_client::encoding::EncodeLabelKey::encode(&name, &mut key)?;
            let mut val = key.encode_label_value()?;
            EncodeLabelValue::encode(&value, &mut val)?;
            val.finish()?;
        }
        Ok(())
    }
}

/// Builds a [`TcpLabels`] from the two workloads and the destination service.
///
/// Anything not given is `unknown` (canonical revisions `latest`), response flags
/// default to `-`. On the source reporter `connection_security_policy` is always
/// `unknown`, as in Istio.
#[derive(Clone, Debug)]
pub struct TcpLabelsBuilder {
    labels: TcpLabels,
}

impl TcpLabelsBuilder {
    fn new(reporter: Reporter) -> Self {
        let latest = LabelValue::from(DEFAULT_REVISION);
        Self {
            labels: TcpLabels {
                reporter,
                source_workload: LabelValue::unknown(),
                source_canonical_service: LabelValue::unknown(),
                source_canonical_revision: latest.clone(),
                source_workload_namespace: LabelValue::unknown(),
                source_principal: LabelValue::unknown(),
                source_app: LabelValue::unknown(),
                source_version: LabelValue::unknown(),
                source_cluster: LabelValue::unknown(),
                destination_workload: LabelValue::unknown(),
                destination_workload_namespace: LabelValue::unknown(),
                destination_principal: LabelValue::unknown(),
                destination_app: LabelValue::unknown(),
                destination_version: LabelValue::unknown(),
                destination_service: LabelValue::unknown(),
                destination_canonical_service: LabelValue::unknown(),
                destination_canonical_revision: latest,
                destination_service_name: LabelValue::unknown(),
                destination_service_namespace: LabelValue::unknown(),
                destination_cluster: LabelValue::unknown(),
                request_protocol: RequestProtocol::Tcp,
                response_flags: ResponseFlags::None,
                connection_security_policy: SecurityPolicy::Unknown,
                removed: 0,
                custom: None,
                workload_labels: None,
                digest: 0,
            },
        }
    }

    /// The connecting (client) workload.
    pub fn source(mut self, w: &Workload) -> Self {
        let l = &mut self.labels;
        l.source_workload = non_empty(&w.name);
        l.source_canonical_service = w.canonical_service().into();
        l.source_canonical_revision = w.canonical_revision().into();
        l.source_workload_namespace = w.namespace().into();
        l.source_principal = w.principal().into();
        l.source_app = w.app().into();
        l.source_version = w.version().into();
        l.source_cluster = non_empty(&w.cluster);
        self.capture(|c| c.source = w.labels.clone());
        self
    }

    /// The server workload.
    pub fn destination(mut self, w: &Workload) -> Self {
        let l = &mut self.labels;
        l.destination_workload = non_empty(&w.name);
        l.destination_canonical_service = w.canonical_service().into();
        l.destination_canonical_revision = w.canonical_revision().into();
        l.destination_workload_namespace = w.namespace().into();
        l.destination_principal = w.principal().into();
        l.destination_app = w.app().into();
        l.destination_version = w.version().into();
        l.destination_cluster = non_empty(&w.cluster);
        self.capture(|c| c.destination = w.labels.clone());
        self
    }

    fn capture(&mut self, f: impl FnOnce(&mut WorkloadLabels)) {
        let slot = &mut self.labels.workload_labels;
        let mut w = slot
            .take()
            .map(|a| {
                Arc::try_unwrap(a).unwrap_or_else(|a| WorkloadLabels {
                    source: a.source.clone(),
                    destination: a.destination.clone(),
                })
            })
            .unwrap_or_default();
        f(&mut w);
        *slot = Some(Arc::new(w));
    }

    /// The service the client addressed.
    pub fn destination_service(mut self, s: &DestinationService) -> Self {
        let l = &mut self.labels;
        l.destination_service = non_empty(&s.fqdn);
        l.destination_service_name = non_empty(&s.name);
        l.destination_service_namespace = non_empty(&s.namespace);
        self
    }

    /// The connection's security policy (ignored on the source reporter).
    pub fn security_policy(mut self, p: SecurityPolicy) -> Self {
        self.labels.connection_security_policy = p;
        self
    }

    /// The response flags.
    pub fn response_flags(mut self, f: ResponseFlags) -> Self {
        self.labels.response_flags = f;
        self
    }

    /// The label set.
    pub fn build(mut self) -> TcpLabels {
        if self.labels.reporter == Reporter::Source {
            self.labels.connection_security_policy = SecurityPolicy::Unknown;
        }
        self.labels.rehash();
        self.labels
    }
}

fn non_empty(s: &str) -> LabelValue {
    LabelValue::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_strings() {
        assert_eq!(Reporter::Source.to_string(), "source");
        assert_eq!(Reporter::Destination.to_string(), "destination");
        assert_eq!(SecurityPolicy::MutualTls.to_string(), "mutual_tls");
        assert_eq!(SecurityPolicy::None.to_string(), "none");
        assert_eq!(SecurityPolicy::Unknown.to_string(), "unknown");
        let flags: Vec<_> = [
            ResponseFlags::None,
            ResponseFlags::UpstreamConnectionFailure,
            ResponseFlags::NoHealthyUpstream,
            ResponseFlags::UpstreamOverflow,
            ResponseFlags::UpstreamRetryLimitExceeded,
            ResponseFlags::NoClusterFound,
            ResponseFlags::DurationTimeout,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(flags, ["-", "UF", "UH", "UO", "URX", "NC", "DT"]);
        assert_eq!(RequestProtocol::Tcp.to_string(), "tcp");
    }

    #[test]
    fn label_names_in_istio_order() {
        let names: Vec<_> = TcpLabel::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(
            names,
            [
                "reporter",
                "source_workload",
                "source_canonical_service",
                "source_canonical_revision",
                "source_workload_namespace",
                "source_principal",
                "source_app",
                "source_version",
                "source_cluster",
                "destination_workload",
                "destination_workload_namespace",
                "destination_principal",
                "destination_app",
                "destination_version",
                "destination_service",
                "destination_canonical_service",
                "destination_canonical_revision",
                "destination_service_name",
                "destination_service_namespace",
                "destination_cluster",
                "request_protocol",
                "response_flags",
                "connection_security_policy",
            ]
        );
        for l in TcpLabel::ALL {
            assert_eq!(TcpLabel::from_name(l.as_str()), Some(l));
        }
    }

    #[test]
    fn all_unknown_defaults() {
        let labels = TcpLabels::builder(Reporter::Destination).build();
        let printed: Vec<_> = labels.iter().collect();
        assert_eq!(printed.len(), 23);
        for (k, v) in printed {
            let want = match k {
                "reporter" => "destination",
                "source_canonical_revision" | "destination_canonical_revision" => "latest",
                "request_protocol" => "tcp",
                "response_flags" => "-",
                _ => "unknown",
            };
            assert_eq!(v, want, "{k}");
        }
    }

    #[test]
    fn source_reporter_policy_is_unknown() {
        let l = TcpLabels::builder(Reporter::Source)
            .security_policy(SecurityPolicy::MutualTls)
            .build();
        assert_eq!(l.get("connection_security_policy"), Some("unknown"));
        let l = TcpLabels::builder(Reporter::Destination)
            .security_policy(SecurityPolicy::None)
            .build();
        assert_eq!(l.get("connection_security_policy"), Some("none"));
    }

    #[test]
    fn overrides_change_identity() {
        let a = TcpLabels::builder(Reporter::Source)
            .source(&Workload {
                name: "a".into(),
                ..Workload::default()
            })
            .build();
        let b = TcpLabels::builder(Reporter::Source)
            .source(&Workload {
                name: "b".into(),
                ..Workload::default()
            })
            .build();
        assert_ne!(a, b);
        let strip = |l: TcpLabels| {
            l.customized(
                [TcpLabel::SourceWorkload, TcpLabel::SourceCanonicalService],
                [],
            )
        };
        let (a, b) = (strip(a), strip(b));
        assert_eq!(a, b);
        let set: std::collections::HashSet<_> = [a.clone(), b.clone()].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert_eq!(a.get("source_workload"), None);
        assert_eq!(a.iter().count(), 21);

        let extra = a.clone().customized(
            [],
            [
                (Arc::from("zone"), LabelValue::from("z1")),
                (Arc::from("reporter"), LabelValue::from("custom")),
                (Arc::from("role"), LabelValue::from("client")),
            ],
        );
        let printed: Vec<_> = extra.iter().collect();
        assert_eq!(printed[0], ("reporter", "custom"));
        assert_eq!(
            printed[printed.len() - 2..],
            [("role", "client"), ("zone", "z1")]
        );
        assert_ne!(extra, a);
        let set: std::collections::HashSet<_> = [a.clone(), extra.clone()].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(
            a.clone()
                .with_response_flags(ResponseFlags::DurationTimeout),
            b.clone()
                .with_response_flags(ResponseFlags::DurationTimeout)
        );
        assert_ne!(
            a.clone()
                .with_response_flags(ResponseFlags::DurationTimeout),
            a
        );
        // Bringing a removed label back restores it in its standard position.
        let back = extra.customized([], [(Arc::from("source_workload"), LabelValue::from("x"))]);
        assert_eq!(back.iter().nth(1), Some(("source_workload", "x")));
    }
}
