//! kube-proxy's part: a connection to a Service's virtual IP reaches one of its ready
//! pods even from a pod without a sidecar (a sidecar resolves VIPs itself; its own
//! connections to a VIP, e.g. passthrough, are translated here too). Each pod's `nat`
//! table gets a `WEIR_SERVICES` chain, jumped to from `OUTPUT` after the capture rules,
//! that DNATs `VIP:port` to an endpoint chosen at random, as kube-proxy's iptables mode.

use std::fmt::Write as _;

use crate::ClusterError;

/// The chain's name.
pub const CHAIN: &str = "WEIR_SERVICES";

/// The `iptables-restore --noflush` script that makes [`CHAIN`] hold exactly the
/// services' translations (declaring the chain flushes it).
pub fn render(services: &xds::ServiceMap) -> String {
    let mut s = format!("*nat\n:{CHAIN} - [0:0]\n");
    for svc in services.values() {
        // A headless Service's addresses are its pods' own: nothing to translate.
        let vips = svc.addresses.iter().filter(|a| match a {
            std::net::IpAddr::V4(v4) => !is_pod_ip(*v4),
            std::net::IpAddr::V6(_) => false,
        });
        for vip in vips {
            for port in &svc.ports {
                let endpoints: Vec<std::net::SocketAddr> = port
                    .endpoints
                    .iter()
                    .map(|e| e.address)
                    .filter(std::net::SocketAddr::is_ipv4)
                    .collect();
                let n = endpoints.len();
                for (i, ep) in endpoints.iter().enumerate() {
                    let pick = if i + 1 < n {
                        // Each rule takes its share of what the ones before it left.
                        format!(
                            " -m statistic --mode random --probability {:.5}",
                            1.0 / (n - i) as f64
                        )
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        s,
                        "-A {CHAIN} -d {vip}/32 -p tcp -m tcp --dport {}{pick} -j DNAT --to-destination {ep}",
                        port.port
                    );
                }
            }
        }
    }
    s.push_str("COMMIT\n");
    s
}

fn is_pod_ip(ip: std::net::Ipv4Addr) -> bool {
    let node = u32::from(crate::netns::NODE_IP);
    let mask = u32::MAX << (32 - u32::from(crate::netns::POD_PREFIX));
    u32::from(ip) & mask == node & mask
}

/// Creates the chain and the `OUTPUT` jump in pod namespace `netns` (once, after the
/// capture rules).
pub fn install(netns: &str) -> Result<(), ClusterError> {
    restore(
        netns,
        &format!("*nat\n:{CHAIN} - [0:0]\n-A OUTPUT -p tcp -j {CHAIN}\nCOMMIT\n"),
    )
}

/// Replaces the chain's rules in pod namespace `netns`.
pub fn restore(netns: &str, script: &str) -> Result<(), ClusterError> {
    crate::netns::run_with_input(
        "ip",
        &["netns", "exec", netns, "iptables-restore", "--noflush"],
        Some(script),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy::config::{Endpoint, OutboundPort, OutboundService};
    use std::sync::Arc;

    fn endpoint(addr: &str) -> Endpoint {
        serde_json::from_value(serde_json::json!({ "address": addr })).unwrap()
    }

    #[test]
    fn headless_services_are_not_translated() {
        let svc: OutboundService = serde_json::from_value(serde_json::json!({
            "name": "db", "namespace": "default",
            "addresses": ["10.244.0.5", "10.244.0.6"],
            "ports": [{"port": 5432, "endpoints": [{"address": "10.244.0.5:5432"}, {"address": "10.244.0.6:5432"}]}],
        }))
        .unwrap();
        let map: xds::ServiceMap =
            [("db.default.svc.cluster.local".to_owned(), Arc::new(svc))].into();
        assert_eq!(render(&map), "*nat\n:WEIR_SERVICES - [0:0]\nCOMMIT\n");
    }

    #[test]
    fn each_endpoint_takes_an_equal_share_of_a_vip_port() {
        let svc = OutboundService {
            name: "ratings".into(),
            namespace: "default".into(),
            hostname: None,
            addresses: vec!["10.96.41.30".parse().unwrap()],
            load_balancer: Default::default(),
            ports: vec![serde_json::from_value::<OutboundPort>(serde_json::json!({
                "port": 9080,
                "endpoints": [],
            }))
            .map(|mut p| {
                p.endpoints = vec![
                    endpoint("10.244.0.5:9080"),
                    endpoint("10.244.0.6:9080"),
                    endpoint("10.244.0.7:9080"),
                ];
                p
            })
            .unwrap()],
        };
        let map: xds::ServiceMap = [(
            "ratings.default.svc.cluster.local".to_owned(),
            Arc::new(svc),
        )]
        .into();
        assert_eq!(
            render(&map),
            "*nat
:WEIR_SERVICES - [0:0]
-A WEIR_SERVICES -d 10.96.41.30/32 -p tcp -m tcp --dport 9080 -m statistic --mode random --probability 0.33333 -j DNAT --to-destination 10.244.0.5:9080
-A WEIR_SERVICES -d 10.96.41.30/32 -p tcp -m tcp --dport 9080 -m statistic --mode random --probability 0.50000 -j DNAT --to-destination 10.244.0.6:9080
-A WEIR_SERVICES -d 10.96.41.30/32 -p tcp -m tcp --dport 9080 -j DNAT --to-destination 10.244.0.7:9080
COMMIT
"
        );
    }
}
