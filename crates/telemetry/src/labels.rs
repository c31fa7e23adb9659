//! The 23 labels of Istio's TCP metrics, in Istio's order, and their typed values.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};

use crate::workload::{DestinationService, Workload};

mod parts;

use parts::{pair_hash, Digest, EnumHashes, Name, Service, Side, SERVICE_LABELS, SIDE_LABELS};

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
#[derive(Clone)]
pub struct TcpLabels {
    reporter: Reporter,
    // The workload and service values are shared by every label set built from equal
    // inputs, so building and dropping one allocates nothing on a busy route.
    source: Arc<Side>,
    destination: Arc<Side>,
    service: Arc<Service>,
    request_protocol: RequestProtocol,
    response_flags: ResponseFlags,
    connection_security_policy: SecurityPolicy,
    /// Standard labels removed by tag overrides (bit per [`TcpLabel`]).
    removed: u32,
    /// Overridden standard values and extra labels, sorted by name, unique.
    custom: Option<Arc<[CustomLabel]>>,
    /// Hash of the printed labels, computed whenever they change: a family lookup
    /// per metric then hashes one word instead of 46 strings.
    digest: u64,
}

/// A label set by tag overrides: name and value.
type CustomLabel = (Arc<str>, LabelValue);

/// Where the standard value of a label lives.
#[derive(Clone, Copy)]
enum Slot {
    Reporter,
    Source(usize),
    Destination(usize),
    Service(usize),
    RequestProtocol,
    ResponseFlags,
    SecurityPolicy,
}

/// [`Slot`] of each [`TcpLabel`], by position.
const SLOTS: [Slot; 23] = {
    let mut slots = [Slot::Reporter; 23];
    let mut i = 0;
    while i < 8 {
        slots[SIDE_LABELS[0][i] as usize] = Slot::Source(i);
        slots[SIDE_LABELS[1][i] as usize] = Slot::Destination(i);
        i += 1;
    }
    let mut i = 0;
    while i < 3 {
        slots[SERVICE_LABELS[i] as usize] = Slot::Service(i);
        i += 1;
    }
    slots[TcpLabel::RequestProtocol as usize] = Slot::RequestProtocol;
    slots[TcpLabel::ResponseFlags as usize] = Slot::ResponseFlags;
    slots[TcpLabel::ConnectionSecurityPolicy as usize] = Slot::SecurityPolicy;
    slots
};

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
        // The same printed labels always hash alike, whatever path built them: the
        // standard case takes the precomputed share of each label.
        let mut d = Digest::new();
        if self.custom.is_none() {
            let enums = EnumHashes::get();
            for l in TcpLabel::ALL {
                if self.removed & l.bit() != 0 {
                    continue;
                }
                d = d.add(match SLOTS[l as usize] {
                    Slot::Reporter => enums.reporter[self.reporter as usize],
                    Slot::Source(i) => self.source.hash(false, i),
                    Slot::Destination(i) => self.destination.hash(true, i),
                    Slot::Service(i) => self.service.hash(i),
                    Slot::RequestProtocol => enums.request_protocol,
                    Slot::ResponseFlags => enums.response_flags[self.response_flags as usize],
                    Slot::SecurityPolicy => {
                        enums.security_policy[self.connection_security_policy as usize]
                    }
                });
            }
        } else {
            for (k, v) in self.iter() {
                let name = TcpLabel::from_name(k).map_or(Name::Extra(k), Name::Standard);
                d = d.add(pair_hash(name, v));
            }
        }
        self.digest = d.finish();
    }

    /// Every standard value, ignoring overrides, indexed by [`TcpLabel`].
    fn standard_values(&self) -> [&str; 23] {
        // Spelled out (the order of `SLOTS`): a scrape calls this once per series.
        let (s, d, v) = (
            &self.source.values,
            &self.destination.values,
            &self.service.values,
        );
        [
            self.reporter.as_str(),
            s[0].as_str(),
            s[1].as_str(),
            s[2].as_str(),
            s[3].as_str(),
            s[4].as_str(),
            s[5].as_str(),
            s[6].as_str(),
            s[7].as_str(),
            d[0].as_str(),
            d[3].as_str(),
            d[4].as_str(),
            d[5].as_str(),
            d[6].as_str(),
            v[0].as_str(),
            d[1].as_str(),
            d[2].as_str(),
            v[1].as_str(),
            v[2].as_str(),
            d[7].as_str(),
            self.request_protocol.as_str(),
            self.response_flags.as_str(),
            self.connection_security_policy.as_str(),
        ]
    }

    /// The standard value of a label, ignoring overrides.
    pub fn standard(&self, label: TcpLabel) -> &str {
        match SLOTS[label as usize] {
            Slot::Reporter => self.reporter.as_str(),
            Slot::Source(i) => self.source.values[i].as_str(),
            Slot::Destination(i) => self.destination.values[i].as_str(),
            Slot::Service(i) => self.service.values[i].as_str(),
            Slot::RequestProtocol => self.request_protocol.as_str(),
            Slot::ResponseFlags => self.response_flags.as_str(),
            Slot::SecurityPolicy => self.connection_security_policy.as_str(),
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
        let side = if source {
            &self.source
        } else {
            &self.destination
        };
        side.workload.label(key)
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

impl fmt::Debug for TcpLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for TcpLabels {
    fn eq(&self, other: &Self) -> bool {
        if self.digest != other.digest {
            return false;
        }
        if self.custom.is_none() && other.custom.is_none() {
            // Without overrides the printed labels are the standard ones not removed:
            // compare the values in place instead of walking the printed pairs.
            if self.removed != other.removed {
                return false;
            }
            if Arc::ptr_eq(&self.source, &other.source)
                && Arc::ptr_eq(&self.destination, &other.destination)
                && Arc::ptr_eq(&self.service, &other.service)
                && self.reporter == other.reporter
                && self.request_protocol == other.request_protocol
                && self.response_flags == other.response_flags
                && self.connection_security_policy == other.connection_security_policy
            {
                return true;
            }
            let (a, b) = (self.standard_values(), other.standard_values());
            return TcpLabel::ALL
                .into_iter()
                .all(|l| self.removed & l.bit() != 0 || a[l as usize] == b[l as usize]);
        }
        self.iter().eq(other.iter())
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
        let mut one = |name: &str, value: &str| -> Result<(), fmt::Error> {
            let mut label = encoder.encode_label();
            let mut key = label.encode_label_key()?;
            prometheus_client::encoding::EncodeLabelKey::encode(&name, &mut key)?;
            let mut val = key.encode_label_value()?;
            EncodeLabelValue::encode(&value, &mut val)?;
            val.finish()
        };
        if self.custom.is_none() {
            // The common case, without the general walk's lookups.
            let values = self.standard_values();
            for l in TcpLabel::ALL {
                if self.removed & l.bit() == 0 {
                    one(l.as_str(), values[l as usize])?;
                }
            }
            return Ok(());
        }
        for (name, value) in self.iter() {
            one(name, value)?;
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
        Self {
            labels: TcpLabels {
                reporter,
                source: Side::unknown(),
                destination: Side::unknown(),
                service: Service::unknown(),
                request_protocol: RequestProtocol::Tcp,
                response_flags: ResponseFlags::None,
                connection_security_policy: SecurityPolicy::Unknown,
                removed: 0,
                custom: None,
                digest: 0,
            },
        }
    }

    /// The connecting (client) workload.
    pub fn source(mut self, w: &Workload) -> Self {
        self.labels.source = Side::of(w);
        self
    }

    /// The server workload.
    pub fn destination(mut self, w: &Workload) -> Self {
        self.labels.destination = Side::of(w);
        self
    }

    /// The service the client addressed.
    pub fn destination_service(mut self, s: &DestinationService) -> Self {
        self.labels.service = Service::of(s);
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

#[cfg(test)]
mod tests;
