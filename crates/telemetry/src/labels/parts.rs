//! The shared parts of a label set: the values derived from a workload and from a
//! destination service, computed once and reused by every label set built from the
//! same inputs, with their share of the label set's digest.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use super::{LabelValue, TcpLabel};
use crate::workload::{DestinationService, Workload};

/// The labels one workload contributes, on either side of a connection.
#[derive(Debug)]
pub(crate) struct Side {
    /// Name, canonical service, canonical revision, namespace, principal, app,
    /// version, cluster: the order of the `source_*` labels.
    pub(crate) values: [LabelValue; 8],
    /// What the values were derived from; its pod labels feed tag overrides.
    pub(crate) workload: Workload,
    /// [`pair_hash`] of each value under its `source_*` and `destination_*` name.
    hashes: [[u64; 8]; 2],
}

/// The labels named by each [`Side::values`] slot, as source and as destination.
pub(crate) const SIDE_LABELS: [[TcpLabel; 8]; 2] = {
    use TcpLabel as L;
    [
        [
            L::SourceWorkload,
            L::SourceCanonicalService,
            L::SourceCanonicalRevision,
            L::SourceWorkloadNamespace,
            L::SourcePrincipal,
            L::SourceApp,
            L::SourceVersion,
            L::SourceCluster,
        ],
        [
            L::DestinationWorkload,
            L::DestinationCanonicalService,
            L::DestinationCanonicalRevision,
            L::DestinationWorkloadNamespace,
            L::DestinationPrincipal,
            L::DestinationApp,
            L::DestinationVersion,
            L::DestinationCluster,
        ],
    ]
};

impl Side {
    fn new(w: &Workload) -> Self {
        let values = [
            LabelValue::from(w.name.as_str()),
            w.canonical_service().into(),
            w.canonical_revision().into(),
            w.namespace().into(),
            w.principal().into(),
            w.app().into(),
            w.version().into(),
            LabelValue::from(w.cluster.as_str()),
        ];
        let hashes = SIDE_LABELS.map(|names| {
            let mut i = 0;
            names.map(|l| {
                let h = pair_hash(l, values[i].as_str());
                i += 1;
                h
            })
        });
        Self {
            workload: w.clone(),
            values,
            hashes,
        }
    }

    /// The shared part for `w`: a recent one of this thread if equal, else a new one.
    pub(crate) fn of(w: &Workload) -> Arc<Self> {
        thread_local! {
            static RECENT: RefCell<Recent<Side>> = const { RefCell::new(Recent::new()) };
        }
        // Unavailable only while the thread exits: build without sharing.
        RECENT
            .try_with(|r| r.borrow_mut().get(|s| s.workload == *w, || Self::new(w)))
            .unwrap_or_else(|_| Arc::new(Self::new(w)))
    }

    /// The unknown workload (every value `unknown`, revision `latest`).
    pub(crate) fn unknown() -> Arc<Self> {
        static UNKNOWN: OnceLock<Arc<Side>> = OnceLock::new();
        UNKNOWN
            .get_or_init(|| Arc::new(Self::new(&Workload::unknown())))
            .clone()
    }

    /// The digest share of slot `i` as source (`destination == false`) or destination.
    pub(crate) fn hash(&self, destination: bool, i: usize) -> u64 {
        self.hashes[usize::from(destination)][i]
    }
}

/// The labels a destination service contributes.
#[derive(Debug)]
pub(crate) struct Service {
    /// FQDN, name, namespace.
    pub(crate) values: [LabelValue; 3],
    service: DestinationService,
    hashes: [u64; 3],
}

/// The labels named by each [`Service::values`] slot.
pub(crate) const SERVICE_LABELS: [TcpLabel; 3] = [
    TcpLabel::DestinationService,
    TcpLabel::DestinationServiceName,
    TcpLabel::DestinationServiceNamespace,
];

impl Service {
    fn new(s: &DestinationService) -> Self {
        let values = [
            LabelValue::from(s.fqdn.as_str()),
            LabelValue::from(s.name.as_str()),
            LabelValue::from(s.namespace.as_str()),
        ];
        let mut i = 0;
        let hashes = SERVICE_LABELS.map(|l| {
            let h = pair_hash(l, values[i].as_str());
            i += 1;
            h
        });
        Self {
            service: s.clone(),
            values,
            hashes,
        }
    }

    /// The shared part for `s`: a recent one of this thread if equal, else a new one.
    pub(crate) fn of(s: &DestinationService) -> Arc<Self> {
        thread_local! {
            static RECENT: RefCell<Recent<Service>> = const { RefCell::new(Recent::new()) };
        }
        RECENT
            .try_with(|r| r.borrow_mut().get(|x| x.service == *s, || Self::new(s)))
            .unwrap_or_else(|_| Arc::new(Self::new(s)))
    }

    /// The unknown service.
    pub(crate) fn unknown() -> Arc<Self> {
        static UNKNOWN: OnceLock<Arc<Service>> = OnceLock::new();
        UNKNOWN
            .get_or_init(|| Arc::new(Self::new(&DestinationService::unknown())))
            .clone()
    }

    /// The digest share of slot `i`.
    pub(crate) fn hash(&self, i: usize) -> u64 {
        self.hashes[i]
    }
}

/// The last few parts a thread built. Connections of one route repeat the same
/// workloads and service, so a short list catches them; a miss costs what building
/// did before, and the list never grows.
struct Recent<T> {
    entries: Vec<Arc<T>>,
    next: usize,
}

const RECENT_CAPACITY: usize = 16;

impl<T> Recent<T> {
    const fn new() -> Self {
        Self {
            entries: Vec::new(),
            next: 0,
        }
    }

    fn get(&mut self, matches: impl Fn(&T) -> bool, make: impl FnOnce() -> T) -> Arc<T> {
        if let Some(e) = self.entries.iter().find(|e| matches(e)) {
            return e.clone();
        }
        let e = Arc::new(make());
        if self.entries.len() < RECENT_CAPACITY {
            self.entries.push(e.clone());
        } else {
            self.entries[self.next] = e.clone();
            self.next = (self.next + 1) % RECENT_CAPACITY;
        }
        e
    }
}

/// A printed label name, for hashing: a standard one by position, an extra one by text.
pub(crate) enum Name<'a> {
    Standard(TcpLabel),
    Extra(&'a str),
}

/// The keyed hash of one printed label. Keyed per process, so peers cannot pick
/// colliding label values.
pub(crate) fn pair_hash<'a>(name: impl Into<Name<'a>>, value: &str) -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
    match name.into() {
        Name::Standard(l) => h.write_u8(l as u8),
        Name::Extra(k) => {
            h.write_u8(u8::MAX);
            k.hash(&mut h);
        }
    }
    value.hash(&mut h);
    h.finish()
}

impl From<TcpLabel> for Name<'_> {
    fn from(l: TcpLabel) -> Self {
        Name::Standard(l)
    }
}

/// Folds the label hashes, in printed order, into a label set's digest. The inputs
/// are keyed hashes, so mixing them in order is enough.
#[derive(Clone, Copy)]
pub(crate) struct Digest(u64);

impl Digest {
    pub(crate) fn new() -> Self {
        Self(0x243f_6a88_85a3_08d3)
    }

    pub(crate) fn add(self, pair: u64) -> Self {
        Self(
            (self.0 ^ pair)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(29),
        )
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// [`pair_hash`] of the enum-valued labels, computed once per process.
pub(crate) struct EnumHashes {
    pub(crate) reporter: [u64; 2],
    pub(crate) request_protocol: u64,
    pub(crate) response_flags: [u64; 7],
    pub(crate) security_policy: [u64; 3],
}

impl EnumHashes {
    pub(crate) fn get() -> &'static Self {
        use super::{Reporter, RequestProtocol, ResponseFlags as F, SecurityPolicy};
        static HASHES: OnceLock<EnumHashes> = OnceLock::new();
        HASHES.get_or_init(|| Self {
            reporter: [Reporter::Source, Reporter::Destination]
                .map(|r| pair_hash(TcpLabel::Reporter, r.as_str())),
            request_protocol: pair_hash(TcpLabel::RequestProtocol, RequestProtocol::Tcp.as_str()),
            response_flags: [
                F::None,
                F::UpstreamConnectionFailure,
                F::NoHealthyUpstream,
                F::UpstreamOverflow,
                F::UpstreamRetryLimitExceeded,
                F::NoClusterFound,
                F::DurationTimeout,
            ]
            .map(|f| pair_hash(TcpLabel::ResponseFlags, f.as_str())),
            security_policy: [
                SecurityPolicy::MutualTls,
                SecurityPolicy::None,
                SecurityPolicy::Unknown,
            ]
            .map(|p| pair_hash(TcpLabel::ConnectionSecurityPolicy, p.as_str())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_inputs_share_parts() {
        let w = Workload {
            name: "ratings-v1".into(),
            labels: [("app".to_string(), "ratings".to_string())].into(),
            ..Workload::default()
        };
        assert!(Arc::ptr_eq(&Side::of(&w), &Side::of(&w.clone())));
        // Same name, other pod labels: its own part (overrides may read them).
        let other = Workload {
            labels: [("app".to_string(), "other".to_string())].into(),
            ..w.clone()
        };
        let (a, b) = (Side::of(&w), Side::of(&other));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(a.values[1].as_str(), "ratings");
        assert_eq!(b.values[1].as_str(), "other");
        let s = DestinationService::from_fqdn("ratings.default.svc.cluster.local");
        assert!(Arc::ptr_eq(&Service::of(&s), &Service::of(&s.clone())));
    }

    #[test]
    fn recent_is_bounded_and_keeps_serving() {
        let mut r: Recent<u32> = Recent::new();
        for i in 0..3 * RECENT_CAPACITY as u32 {
            assert_eq!(*r.get(|v| *v == i, || i), i);
        }
        assert_eq!(r.entries.len(), RECENT_CAPACITY);
        let last = 3 * RECENT_CAPACITY as u32 - 1;
        assert_eq!(*r.get(|v| *v == last, || unreachable!()), last);
    }
}
