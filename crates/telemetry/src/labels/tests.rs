//! Label names, values, identity and digests.

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

fn hash_of(l: &TcpLabels) -> u64 {
    use std::hash::BuildHasher;
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    STATE.get_or_init(Default::default).hash_one(l)
}

/// Label sets that print alike are equal and hash alike, whether built directly
/// or reached through overrides.
#[test]
fn printed_labels_decide_identity() {
    let named = |name: &str| {
        TcpLabels::builder(Reporter::Destination)
            .source(&Workload {
                name: name.into(),
                ..Workload::default()
            })
            .build()
    };
    let (x, y) = (named("x"), named("y"));
    let x_as_y = x.clone().customized(
        [],
        [
            (Arc::from("source_workload"), LabelValue::from("y")),
            (Arc::from("source_canonical_service"), LabelValue::from("y")),
        ],
    );
    assert!(x_as_y.custom.is_some());
    assert_eq!(x_as_y, y);
    assert_eq!(x_as_y.digest, y.digest);
    let same = x.clone().customized(
        [],
        [(Arc::from("reporter"), LabelValue::from("destination"))],
    );
    assert_eq!((same == x, same.digest == x.digest), (true, true));
    assert_eq!(hash_of(&same), hash_of(&x));
    // An explicit "unknown" prints like an absent value.
    let unknown = x.clone().customized(
        [],
        [(Arc::from("source_cluster"), LabelValue::from(UNKNOWN))],
    );
    assert_eq!((unknown == x, unknown.digest == x.digest), (true, true));
    assert_ne!(x, y);
    assert_ne!(x.digest, y.digest);
    for l in TcpLabel::ALL {
        assert_eq!(x.standard_values()[l as usize], x.standard(l), "{l}");
    }
    let printed: Vec<_> = x.iter().map(|(_, v)| v).collect();
    assert_eq!(printed[..3], ["destination", "x", "x"]);
}

#[test]
fn every_value_in_its_place() {
    let w = |p: &str| Workload {
        name: format!("{p}-name"),
        namespace: format!("{p}-ns"),
        cluster: format!("{p}-cluster"),
        labels: [
            ("app", "app"),
            ("version", "ver"),
            (crate::CANONICAL_NAME_LABEL, "csvc"),
            (crate::CANONICAL_REVISION_LABEL, "crev"),
        ]
        .map(|(k, v)| (k.to_string(), format!("{p}-{v}")))
        .into(),
        principal: Some(format!("{p}-principal")),
    };
    let svc = DestinationService::from_fqdn("svc.svc-ns.svc.cluster.local");
    let l = TcpLabels::builder(Reporter::Source)
        .source(&w("s"))
        .destination(&w("d"))
        .destination_service(&svc)
        .response_flags(ResponseFlags::UpstreamOverflow)
        .build();
    let printed: Vec<_> = l.iter().map(|(_, v)| v).collect();
    assert_eq!(
        printed,
        [
            "source",
            "s-name",
            "s-csvc",
            "s-crev",
            "s-ns",
            "s-principal",
            "s-app",
            "s-ver",
            "s-cluster",
            "d-name",
            "d-ns",
            "d-principal",
            "d-app",
            "d-ver",
            "svc.svc-ns.svc.cluster.local",
            "d-csvc",
            "d-crev",
            "svc",
            "svc-ns",
            "d-cluster",
            "tcp",
            "UO",
            "unknown",
        ]
    );
    for t in TcpLabel::ALL {
        assert_eq!(l.standard(t), printed[t as usize], "{t}");
    }
    // The precomputed digest is the one of the printed labels.
    let mut general = l.clone();
    general.custom = Some(Arc::from([]));
    general.rehash();
    assert_eq!(general.digest, l.digest);
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
