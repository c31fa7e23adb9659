//! Configuration delivery end to end: a real tonic server and client over loopback,
//! mutual TLS with certificates made here, and a view source driven by the test.

#[allow(dead_code)]
#[path = "common/harness.rs"]
mod harness;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use harness::*;
use proxy::config::{InboundMode, OutboundTrafficPolicy};
use xds::proto::{self, ResourceType};
use xds::tls::TlsMaterial;

// ---- scenarios ----

#[tokio::test]
async fn initial_push_delivers_full_config_and_metrics_follow() {
    let pki = Pki::new(&[("default", "productpage")]);
    let source = TestSource::new(view(&[
        ("reviews", "10.0.0.5:9080"),
        ("ratings", "10.0.0.6:9080"),
    ]));
    let server = RunningServer::start(source.clone(), &pki, "127.0.0.1:0".parse().unwrap()).await;
    let sink = Arc::new(RecordingSink::default());
    let mut client = RunningClient::start(
        server.addr,
        pki.client("default", "productpage"),
        sink.clone(),
    );

    let status = client
        .wait_for("first configuration applied", |s| s.applied == 1)
        .await;
    assert!(status.connected);
    assert_eq!(status.rejected, 0);
    assert_eq!(
        status.last_update,
        ["workload".to_owned(), fqdn("ratings"), fqdn("reviews")]
    );
    assert_eq!(status.resource_versions.len(), 3);

    let config = sink.last();
    let expected = xds::convert::assemble(
        &base_config(),
        Some(&workload()),
        [
            &service("ratings", "10.0.0.6:9080"),
            &service("reviews", "10.0.0.5:9080"),
        ],
    );
    assert_eq!(config, expected);
    assert_eq!(config.inbound.mode, InboundMode::Strict);
    assert_eq!(
        config.outbound.traffic_policy,
        OutboundTrafficPolicy::RegistryOnly
    );
    assert_eq!(config.reporting.interval, Duration::from_secs(5));
    assert_eq!(config.admin, base_config().admin);
    assert_eq!(
        sink.applied.lock().unwrap()[0].1,
        status.applied_version.clone().unwrap()
    );

    // The node the source saw is the one announced, identity-checked.
    let subscribed = source.subscribed.lock().unwrap().clone();
    assert_eq!(subscribed.len(), 1);
    assert_eq!(subscribed[0].namespace, "default");
    assert_eq!(subscribed[0].service_account, "productpage");
    assert_eq!(subscribed[0].pod_name, "productpage-v1-0");

    assert_eq!(server.scrape("weir_control_pushes_total"), "1");
    assert_eq!(server.scrape("weir_control_push_rejections_total"), "0");
    assert_eq!(server.scrape("weir_control_connected_proxies"), "1");
    eventually("the ACK is timed", || {
        server.scrape("weir_control_push_latency_seconds_count") == "1"
    })
    .await;

    client.stop().await;
    eventually("the proxy is counted as gone", || {
        server.metrics.connected() == 0
    })
    .await;
    assert_eq!(server.scrape("weir_control_connected_proxies"), "0");
    assert_eq!(source.unsubscribed.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_change_sends_exactly_the_changed_resource_and_removals() {
    let pki = Pki::new(&[("default", "productpage")]);
    let source = TestSource::new(view(&[
        ("reviews", "10.0.0.5:9080"),
        ("ratings", "10.0.0.6:9080"),
    ]));
    let server = RunningServer::start(source.clone(), &pki, "127.0.0.1:0".parse().unwrap()).await;
    let first = proto::DeltaRequest {
        node: Some(node("default", "productpage")),
        ..Default::default()
    };
    let mut stream = RawStream::open(server.addr, pki.client("default", "productpage"), first)
        .await
        .unwrap();

    let initial = stream.recv().await;
    assert_eq!(
        names(&initial),
        [
            "workload",
            fqdn("ratings").as_str(),
            fqdn("reviews").as_str()
        ]
    );
    assert!(initial.removed.is_empty());
    stream.ack(&initial).await;

    // One service changes: exactly that resource comes, with the new content.
    let moved = service("reviews", "10.0.0.50:9080");
    source.update(|v| {
        Arc::make_mut(&mut v.services).insert(fqdn("reviews"), moved.clone());
    });
    let delta = stream.recv().await;
    assert_eq!(names(&delta), [fqdn("reviews").as_str()]);
    assert!(delta.removed.is_empty());
    let resource = &delta.resources[0];
    assert_eq!(resource.r#type, ResourceType::Service as i32);
    let Some(proto::resource::Kind::Service(sent)) = &resource.kind else {
        panic!("a Service resource, got {resource:?}");
    };
    assert_eq!(
        xds::convert::service_from_proto(sent, "reviews").unwrap(),
        *moved
    );
    assert_ne!(resource.version, initial.resources[2].version);
    assert_ne!(delta.nonce, initial.nonce);
    stream.ack(&delta).await;

    // Republishing identical content sends nothing; a removal sends just the name.
    source.update(|v| {
        Arc::make_mut(&mut v.services).insert(fqdn("ratings"), service("ratings", "10.0.0.6:9080"));
    });
    source.update(|v| {
        Arc::make_mut(&mut v.services).remove(&fqdn("ratings"));
    });
    let removal = stream.recv().await;
    assert!(removal.resources.is_empty());
    assert_eq!(
        removal.removed,
        [proto::ResourceKey {
            r#type: ResourceType::Service as i32,
            name: fqdn("ratings"),
        }]
    );
    stream.ack(&removal).await;
    eventually("three ACKs timed", || {
        server.scrape("weir_control_push_latency_seconds_count") == "3"
    })
    .await;
    assert_eq!(server.scrape("weir_control_pushes_total"), "3");
    server.stop().await;
}

#[tokio::test]
async fn a_rejected_update_keeps_the_last_good_configuration() {
    let pki = Pki::new(&[("default", "productpage")]);
    let source = TestSource::new(view(&[
        ("reviews", "10.0.0.5:9080"),
        ("ratings", "10.0.0.6:9080"),
    ]));
    let server = RunningServer::start(source.clone(), &pki, "127.0.0.1:0".parse().unwrap()).await;
    let sink = Arc::new(RecordingSink::default());
    *sink.refuse.lock().unwrap() = Some("details".to_owned());
    let mut client = RunningClient::start(
        server.addr,
        pki.client("default", "productpage"),
        sink.clone(),
    );
    client
        .wait_for("first configuration applied", |s| s.applied == 1)
        .await;
    let good = sink.last();

    source.update(|v| {
        Arc::make_mut(&mut v.services).insert(fqdn("details"), service("details", "10.0.0.7:9080"));
    });
    let status = client
        .wait_for("the update rejected", |s| s.rejected == 1)
        .await;
    let error = status.last_error.clone().unwrap();
    assert!(
        error.starts_with("configuration ")
            && error.ends_with(" rejected: service details: refused by the test sink"),
        "{error}"
    );
    assert_eq!(status.applied, 1);
    assert_eq!(sink.count(), 1);
    assert_eq!(sink.last(), good);
    assert!(!status.resource_versions.contains_key(&fqdn("details")));
    eventually("the rejection is counted", || {
        server.metrics.rejections() == 1
    })
    .await;
    assert_eq!(server.scrape("weir_control_push_rejections_total"), "1");

    // The next good change merges onto the last good state, without the rejected one.
    sink.refuse.lock().unwrap().take();
    source.update(|v| {
        Arc::make_mut(&mut v.services)
            .insert(fqdn("reviews"), service("reviews", "10.0.0.51:9080"));
    });
    let status = client
        .wait_for("the next change applied", |s| s.applied == 2)
        .await;
    assert_eq!(status.last_update, [fqdn("reviews")]);
    let config = sink.last();
    let hosts: Vec<_> = config
        .outbound
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(hosts, ["ratings", "reviews"]);
    assert_eq!(
        config.outbound.services[1],
        service("reviews", "10.0.0.51:9080")
    );
    // The rejected version was not sent again: initial, rejected, next.
    assert_eq!(server.scrape("weir_control_pushes_total"), "3");
    assert_eq!(server.scrape("weir_control_push_rejections_total"), "1");
    client.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn reconnects_after_a_restart_and_receives_only_what_changed() {
    let pki = Pki::new(&[("default", "productpage")]);
    let source = TestSource::new(view(&[
        ("reviews", "10.0.0.5:9080"),
        ("ratings", "10.0.0.6:9080"),
    ]));
    let server = RunningServer::start(source.clone(), &pki, "127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let sink = Arc::new(RecordingSink::default());
    let mut client = RunningClient::start(addr, pki.client("default", "productpage"), sink.clone());
    client
        .wait_for("first configuration applied", |s| s.applied == 1)
        .await;
    let before = sink.last();

    server.stop().await;
    let status = client
        .wait_for("the loss noticed", |s| !s.connected && s.disconnects >= 1)
        .await;
    assert!(status.last_error.is_some());
    // Nothing is torn down while the control plane is away.
    assert_eq!(sink.count(), 1);
    assert_eq!(sink.last(), before);

    source.update(|v| {
        Arc::make_mut(&mut v.services)
            .insert(fqdn("ratings"), service("ratings", "10.0.0.60:9080"));
    });
    let restarted = RunningServer::start(source.clone(), &pki, addr).await;
    let status = client
        .wait_for("converged after restart", |s| s.applied == 2)
        .await;
    assert!(status.connected);
    // Only the service that changed while away was sent.
    assert_eq!(status.last_update, [fqdn("ratings")]);
    assert!(status.last_removed.is_empty());
    let config = sink.last();
    assert_eq!(
        config.outbound.services[0],
        service("ratings", "10.0.0.60:9080")
    );
    assert_eq!(
        config.outbound.services[1],
        service("reviews", "10.0.0.5:9080")
    );
    assert_eq!(restarted.scrape("weir_control_connected_proxies"), "1");
    client.stop().await;
    restarted.stop().await;
}

#[tokio::test]
async fn a_node_announcing_another_namespace_is_refused() {
    let pki = Pki::new(&[("default", "productpage")]);
    let source = TestSource::new(view(&[]));
    let server = RunningServer::start(source.clone(), &pki, "127.0.0.1:0".parse().unwrap()).await;
    let first = proto::DeltaRequest {
        node: Some(node("kube-system", "productpage")),
        ..Default::default()
    };
    let Err(status) =
        RawStream::open(server.addr, pki.client("default", "productpage"), first).await
    else {
        panic!("stream accepted");
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "proxy productpage-v1-0.kube-system announces namespace \"kube-system\" and service \
         account \"productpage\" but its certificate identity is \
         spiffe://cluster.local/ns/default/sa/productpage; fix: run the proxy with its own \
         workload certificate or correct its node settings"
    );
    assert!(source.subscribed.lock().unwrap().is_empty());
    assert_eq!(server.metrics.connected(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new(&[]);
    let source = TestSource::new(view(&[]));
    let server = RunningServer::start(source.clone(), &pki, "127.0.0.1:0".parse().unwrap()).await;

    let roots = TlsMaterial::from_dir(&pki.server).unwrap().roots;
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let outcome = tokio::time::timeout(WAIT, async {
        // TLS 1.3: the server's refusal arrives after the client's side of the handshake.
        let mut tls = connector
            .connect(SERVER_NAME.try_into().unwrap(), tcp)
            .await?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    })
    .await
    .expect("the server answers within the deadline");
    let error = outcome.expect_err("the server must refuse a client without a certificate");
    assert!(
        error.to_string().contains("CertificateRequired"),
        "unexpected error: {error}"
    );
    assert!(source.subscribed.lock().unwrap().is_empty());
    assert_eq!(server.scrape("weir_control_connected_proxies"), "0");
    server.stop().await;
}

#[tokio::test]
async fn a_gateway_arrives_in_the_workload_resource_alone() {
    use proxy::config::{
        GatewayConfig, GatewayHttpRoute, GatewayProtocol, GatewayServer, PathMatch,
    };

    let pki = Pki::new(&[("default", "productpage")]);
    let source = TestSource::new(view(&[("reviews", "10.0.0.5:9080")]));
    let server = RunningServer::start(source.clone(), &pki, "127.0.0.1:0".parse().unwrap()).await;
    let sink = Arc::new(RecordingSink::default());
    let mut client = RunningClient::start(
        server.addr,
        pki.client("default", "productpage"),
        sink.clone(),
    );
    client
        .wait_for("first configuration applied", |s| s.applied == 1)
        .await;
    assert_eq!(sink.last().gateway, None);

    let gateway = GatewayConfig {
        servers: vec![GatewayServer {
            port: 8080,
            protocol: GatewayProtocol::Http,
            listen: None,
            tcp: vec![],
            http: vec![GatewayHttpRoute {
                hosts: vec![],
                matches: vec![PathMatch::Prefix("/static".into())],
                routes: vec![proxy::config::Route {
                    weight: 100,
                    destination: proxy::config::ServiceRef {
                        name: "reviews".into(),
                        namespace: "default".into(),
                        hostname: None,
                    },
                    subset: None,
                    load_balancer: None,
                    endpoints: vec![],
                    unresolved: Some("no endpoints in this test".into()),
                }],
            }],
        }],
    };
    source.update(|v| {
        let mut w = (*v.workload).clone();
        w.gateway = Some(gateway.clone());
        v.workload = Arc::new(w);
    });
    let status = client
        .wait_for("the gateway applied", |s| s.applied == 2)
        .await;
    // Only the workload resource changed.
    assert_eq!(status.last_update, ["workload".to_owned()]);
    assert_eq!(sink.last().gateway, Some(gateway));
    client.stop().await;
    server.stop().await;
}
