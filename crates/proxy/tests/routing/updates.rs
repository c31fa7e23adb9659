//! Live configuration updates.

use std::collections::BTreeMap;

use proxy::config::{LoadBalancer, MetricOverride, TagOperationKind, TagOverride};
use proxy::UpdateError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_keep_their_route_while_new_ones_follow_the_update() {
    let up = Upstreams::start(&["v1", "v2"]).await;
    let before = routed(
        vec![route(1, "reviews", up.endpoints(&["v1"]))],
        Vec::new(),
        LoadBalancer::RoundRobin,
    );
    let (p, addr) = start(before.clone()).await;
    let mut old = open(addr).await.unwrap();
    assert_eq!(old.name, "v1");

    let mut after = before.clone();
    Arc::make_mut(&mut after.outbound.services[0]).ports[0].routes =
        vec![route(1, "reviews-v2", up.endpoints(&["v2"]))];
    let summary = p.update_versioned(after, "v2-rollout".into()).unwrap();
    assert_eq!(summary.version, "v2-rollout");
    assert_eq!(summary.changed, ["outbound"]);
    assert_eq!(
        tally(addr, 20).await,
        BTreeMap::from([("v2".to_owned(), 20)])
    );

    // The old connection still moves bytes both ways, intact, to v1.
    let request = pattern(256 * 1024);
    let (mut r, mut w) = old.stream.get_mut().split();
    let write = async {
        w.write_all(&request).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    };
    let ((), echoed) =
        with_deadline(Duration::from_secs(30), async { tokio::join!(write, read) }).await;
    assert_eq!(echoed.len(), request.len());
    assert!(echoed == request, "echo differs");
    assert!(old.stream.buffer().is_empty());

    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == 21.0).await;
    assert_eq!(
        total(&samples, OPENED, &[("destination_service_name", "reviews")]),
        1.0
    );
    assert_eq!(
        total(
            &samples,
            OPENED,
            &[("destination_service_name", "reviews-v2")]
        ),
        20.0
    );
    let sent = total(
        &samples,
        "istio_tcp_sent_bytes_total",
        &[("destination_service_name", "reviews")],
    );
    // The name line, then the echo.
    assert_eq!(sent, (3 + request.len()) as f64);

    // /config_dump shows the new configuration and its version.
    let (status, body) = http_get(p.addrs().admin, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["version"], "v2-rollout");
    assert_eq!(
        dump["config"]["outbound"]["services"][0]["ports"][0]["routes"][0]["destination"]["name"],
        "reviews-v2"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_keeps_the_old_configuration_serving() {
    let up = Upstreams::start(&["v1", "v2"]).await;
    let before = routed(
        vec![route(1, "reviews", up.endpoints(&["v1"]))],
        Vec::new(),
        LoadBalancer::RoundRobin,
    );
    let (p, addr) = start(before.clone()).await;
    let mut bad = before.clone();
    bad.node.namespace = "other".into();
    Arc::make_mut(&mut bad.outbound.services[0]).ports[0].routes =
        vec![route(1, "reviews", up.endpoints(&["v2"]))];
    let err = p.update(bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `node.namespace` changed from \"default\" to \"other\": the node identity is sent to every peer and labels every metric; fix: restart the proxy with the new configuration, or keep the current value"
    );
    let mut invalid = before.clone();
    Arc::make_mut(&mut invalid.outbound.services[0]).ports[0].routes[0].weight = 0;
    let err = p.update(invalid).unwrap_err();
    assert!(matches!(err, UpdateError::Invalid(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "update: field `outbound.services[0].ports[0].routes[*].weight` = \"[0]\": are all 0, so no connection has a destination; fix: give at least one route a weight above 0"
    );

    assert_eq!(tally(addr, 5).await, BTreeMap::from([("v1".to_owned(), 5)]));
    let (_, body) = http_get(p.addrs().admin, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["version"], "static");
    assert_eq!(dump["config"]["node"]["namespace"], "default");

    // An unversioned update is numbered.
    let summary = p.update(before).unwrap();
    assert_eq!(summary.version, "1");
    assert!(summary.changed.is_empty());
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_overrides_apply_to_connections_after_the_update() {
    let up = Upstreams::start(&["v1"]).await;
    let before = routed(
        vec![route(1, "reviews", up.endpoints(&["v1"]))],
        Vec::new(),
        LoadBalancer::RoundRobin,
    );
    let (p, addr) = start(before.clone()).await;
    assert_eq!(who(addr).await, "v1");
    eventually(&p, |s| total(s, CLOSED, &[]) == 1.0).await;

    let mut after = before.clone();
    after.telemetry.overrides = vec![MetricOverride {
        metric: "ALL_METRICS".into(),
        disabled: None,
        tag_overrides: BTreeMap::from([
            (
                "request_protocol".to_owned(),
                TagOverride {
                    operation: TagOperationKind::Remove,
                    value: None,
                },
            ),
            (
                "team".to_owned(),
                TagOverride {
                    operation: TagOperationKind::Upsert,
                    value: Some("'db'".into()),
                },
            ),
        ]),
    }];
    let summary = p.update(after).unwrap();
    assert_eq!(summary.changed, ["telemetry"]);
    assert_eq!(who(addr).await, "v1");
    let samples = eventually(&p, |s| total(s, CLOSED, &[]) == 2.0).await;
    let closed = series(&samples, CLOSED);
    assert_eq!(closed.len(), 2, "{closed:#?}");
    let old = closed
        .iter()
        .find(|s| !s.labels.contains_key("team"))
        .unwrap();
    assert_eq!(old.labels["request_protocol"], "tcp");
    assert_eq!(old.value, 1.0);
    let new = closed
        .iter()
        .find(|s| s.labels.contains_key("team"))
        .unwrap();
    assert_eq!(new.labels["team"], "db");
    assert_eq!(new.labels.get("request_protocol"), None);
    assert_eq!(new.labels["destination_service_name"], "reviews");
    assert_eq!(new.labels.len(), old.labels.len());
    assert_eq!(new.value, 1.0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_listeners_cannot_be_added_live() {
    let up = Upstreams::start(&["v1"]).await;
    let before = routed(
        vec![route(1, "reviews", up.endpoints(&["v1"]))],
        Vec::new(),
        LoadBalancer::RoundRobin,
    );
    let (p, addr) = start(before.clone()).await;
    let after = with_service(before, "ratings", 9080, up.endpoints(&["v1"]));
    let err = p.update(after).unwrap_err();
    assert_eq!(
        err.to_string(),
        "field `outbound.services[1].ports[0].listen` changed from (none) to \"127.0.0.1:0\" for ratings.default:9080: explicit listeners are bound at start-up and cannot be added, removed or moved live; fix: restart the proxy with the new configuration, or keep the current value"
    );
    assert_eq!(who(addr).await, "v1");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_port_targets_change_live() {
    let up = Upstreams::start(&["app-a", "app-b"]).await;
    let cfg = node_config("ratings-v1", "ratings", "v1", "bookinfo-ratings");
    let before = with_inbound(
        cfg,
        proxy::config::InboundMode::Disable,
        9080,
        up.addrs["app-a"],
        "ratings",
    );
    let p = Proxy::start(before.clone(), ProxyOptions::default())
        .await
        .unwrap();
    let listen = p.addrs().inbound_ports[&9080];
    let held = open(listen).await.unwrap();
    assert_eq!(held.name, "app-a");
    let mut after = before;
    after.inbound.ports[0].target = Some(up.addrs["app-b"]);
    after.reporting.interval = Duration::from_millis(100);
    let summary = p.update(after).unwrap();
    assert_eq!(summary.changed, ["inbound", "reporting"]);
    assert_eq!(who(listen).await, "app-b");
    drop(held);
    p.shutdown().await;
}
