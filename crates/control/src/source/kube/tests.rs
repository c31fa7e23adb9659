//! The source against a stand-in API server that answers list and watch requests with
//! responses in the API server's wire format: list JSON, then watch events as
//! newline-delimited JSON on a response that stays open, as a real watch does.
//! `testdata/recorded/` holds bodies recorded from a live API server (see its README);
//! the rest of `testdata/` is written by hand in that format for Bookinfo and Istio
//! objects.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use config::Kind;
use futures_util::stream;

use super::*;
use crate::api::shared;
use crate::store::Store;

fn recorded(path: &str, watch: bool) -> Option<&'static str> {
    Some(match (path, watch) {
        ("/api/v1/services", false) => include_str!("testdata/services-list.json"),
        ("/api/v1/services", true) => include_str!("testdata/services-watch.jsonl"),
        ("/apis/networking.istio.io/v1/destinationrules", false) => {
            include_str!("testdata/destinationrules-list.json")
        }
        ("/apis/networking.istio.io/v1/destinationrules", true) => {
            include_str!("testdata/destinationrules-watch.jsonl")
        }
        ("/api/v1/pods", false) => include_str!("testdata/pods-list.json"),
        _ => return None,
    })
}

/// Bodies recorded from a live v1.36 API server.
fn live(path: &str, watch: bool) -> Option<&'static str> {
    Some(match (path, watch) {
        ("/api/v1/pods", false) => include_str!("testdata/recorded/pods-list.json"),
        ("/api/v1/pods", true) => include_str!("testdata/recorded/pods-watch.jsonl"),
        ("/apis/apps/v1/deployments", false) => {
            include_str!("testdata/recorded/deployments-list.json")
        }
        _ => return None,
    })
}

async fn serve_from(
    req: Request<Body>,
    bodies: fn(&str, bool) -> Option<&'static str>,
) -> Response {
    let path = req.uri().path().to_owned();
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let body = match bodies(&path, watch) {
        Some(text) => text.to_owned(),
        None if watch => String::new(),
        None => {
            r#"{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"51234"},"items":[]}"#
                .to_owned()
        }
    };
    let body = if watch {
        // A watch stays open after its events, until the server's timeout.
        let events = stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(body))]);
        Body::from_stream(events.chain(stream::pending()))
    } else {
        Body::from(body)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

/// A stand-in API server answering from `bodies`, and the source running against it.
struct Running {
    store: Shared,
    pods: Arc<Pods>,
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
    _state: tempfile::TempDir,
}

impl Running {
    async fn start(bodies: fn(&str, bool) -> Option<&'static str>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let app = axum::Router::new().fallback(move |req| serve_from(req, bodies));
            axum::serve(listener, app).await.unwrap();
        });
        let state = tempfile::tempdir().unwrap();
        let store = shared(Store::open(state.path()).unwrap());
        let pods = Arc::new(Pods::default());
        let client = client_for(&format!("http://{addr}")).unwrap();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run =
            tokio::spawn(
                KubeSource::new().run(client, store.clone(), pods.clone(), async move {
                    let _ = stop_rx.await;
                }),
            );
        Self {
            store,
            pods,
            stop,
            run,
            server,
            _state: state,
        }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.run)
            .await
            .expect("the source stops when asked")
            .unwrap();
        self.server.abort();
    }
}

#[derive(Default)]
struct Pods(Mutex<BTreeMap<(String, String), KubePod>>);

impl PodSink for Pods {
    fn upsert_pod(&self, pod: KubePod) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.0.lock().unwrap().insert(key, pod);
    }
    fn remove_pod(&self, namespace: &str, name: &str) {
        self.0
            .lock()
            .unwrap()
            .remove(&(namespace.to_owned(), name.to_owned()));
    }
    fn replace_pods(&self, pods: Vec<KubePod>) {
        let mut map = self.0.lock().unwrap();
        map.clear();
        for pod in pods {
            map.insert((pod.namespace.clone(), pod.name.clone()), pod);
        }
    }
}

fn names(store: &Shared, kind: Kind) -> Vec<String> {
    lock(store)
        .list(kind, None)
        .iter()
        .map(|d| d.resource.name().to_string())
        .collect()
}

fn subsets(store: &Shared) -> usize {
    let s = lock(store);
    let Some(doc) = s.get(Kind::DestinationRule, "default", "ratings") else {
        return 0;
    };
    let json = serde_json::to_value(&doc.resource).unwrap();
    json.pointer("/spec/subsets")
        .and_then(|v| v.as_array())
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_follows_watch_events() {
    let running = Running::start(recorded).await;
    let (store, pods) = (running.store.clone(), running.pods.clone());

    // List (ratings, kubernetes), then watch: mysqldb added, kubernetes deleted; the
    // DestinationRule gains a subset; a malformed one is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let services = names(&store, Kind::Service);
        if services == ["mysqldb", "ratings"] && subsets(&store) == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store never converged: services {services:?}, ratings subsets {}",
            subsets(&store)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(names(&store, Kind::DestinationRule), ["ratings"]);
    let svc = lock(&store)
        .get(Kind::Service, "default", "ratings")
        .map(|d| serde_json::to_value(&d.resource).unwrap())
        .unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "10.96.112.40");

    // Pods: the pending one (no IP yet) is no endpoint.
    let pods_now = pods.0.lock().unwrap().clone();
    let listed: Vec<&str> = pods_now.values().map(|p| p.name.as_str()).collect();
    assert_eq!(
        listed,
        ["mysqldb-v1-6c8b7f9d44-p8k2m", "ratings-v1-7dc98c7588-5jq2x"]
    );
    let ratings = &pods_now[&(
        "default".to_owned(),
        "ratings-v1-7dc98c7588-5jq2x".to_owned(),
    )];
    assert_eq!(ratings.ip, "10.244.0.15".parse::<IpAddr>().unwrap());
    assert_eq!(ratings.service_account, "bookinfo-ratings");
    assert!(ratings.sidecar && ratings.ready);
    assert_eq!(ratings.labels["version"], "v1");
    assert_eq!(ratings.workload, "ratings-v1");
    let db = &pods_now[&(
        "default".to_owned(),
        "mysqldb-v1-6c8b7f9d44-p8k2m".to_owned(),
    )];
    assert!(!db.sidecar);
    assert_eq!(db.service_account, "default");

    running.stop().await;
}

/// Responses recorded from a live API server: a kube-system PodList (static pods, a
/// DaemonSet's, a Deployment's), a watch stream that replays them and ends its initial
/// events with a BOOKMARK (an empty Pod with `containers: null`), and a DeploymentList
/// carrying everything a live server adds (managedFields, status, defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_recorded_from_a_live_api_server_are_understood() {
    let running = Running::start(live).await;
    let (store, pods) = (running.store.clone(), running.pods.clone());

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod_count = pods.0.lock().unwrap().len();
        let deployments = names(&store, Kind::Deployment);
        if pod_count == 8 && deployments == ["coredns"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never converged: {pod_count} pods, deployments {deployments:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pods_now = pods.0.lock().unwrap().clone();
    let coredns = &pods_now[&(
        "kube-system".to_owned(),
        "coredns-589f44dc88-4fpns".to_owned(),
    )];
    assert_eq!(coredns.ip, "10.244.0.3".parse::<IpAddr>().unwrap());
    assert_eq!(coredns.workload, "coredns");
    assert_eq!(coredns.service_account, "coredns");
    assert_eq!(coredns.labels["k8s-app"], "kube-dns");
    assert!(coredns.ready && !coredns.sidecar);
    // A static pod has no service account: Kubernetes' default applies.
    let etcd = &pods_now[&(
        "kube-system".to_owned(),
        "etcd-v1.36-control-plane".to_owned(),
    )];
    assert_eq!(etcd.service_account, "default");
    assert_eq!(etcd.ip, "172.18.0.3".parse::<IpAddr>().unwrap());

    let deployment = lock(&store)
        .get(Kind::Deployment, "kube-system", "coredns")
        .map(|d| serde_json::to_value(&d.resource).unwrap())
        .unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);

    running.stop().await;
}

fn dynamic(json: &str) -> DynamicObject {
    serde_json::from_str(json).unwrap()
}

#[test]
fn a_relist_deletes_what_disappeared_and_a_bad_object_is_refused_alone() {
    let state = tempfile::tempdir().unwrap();
    let store = shared(Store::open(state.path()).unwrap());
    let ar = api_resource("", "v1", "Service", "services");
    let svc = |name: &str| {
        dynamic(&format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"default"}},"spec":{{"ports":[{{"port":80}}]}}}}"#
        ))
    };
    let mut source = KubeSource::new();
    source.handle(1, &ar, Event::Init, &store);
    source.handle(1, &ar, Event::InitApply(svc("a")), &store);
    source.handle(1, &ar, Event::InitApply(svc("b")), &store);
    let bad =
        dynamic(r#"{"metadata":{"name":"c","namespace":"default"},"spec":{"ports":"eighty"}}"#);
    let refused = source.handle(1, &ar, Event::InitApply(bad), &store).refused;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("services/default/c"), "{refused:?}");
    let done = source.handle(1, &ar, Event::InitDone, &store);
    assert_eq!(done.lines, ["service/a created", "service/b created"]);
    assert!(done.refused.is_empty(), "{:?}", done.refused);
    assert_eq!(names(&store, Kind::Service), ["a", "b"]);

    // The watch broke; the relist no longer holds `a`.
    source.handle(1, &ar, Event::Init, &store);
    source.handle(1, &ar, Event::InitApply(svc("b")), &store);
    let done = source.handle(1, &ar, Event::InitDone, &store);
    assert!(done.lines.is_empty());
    assert_eq!(done.deleted.len(), 1);
    assert_eq!(done.deleted[0].name, "a");
    assert_eq!(names(&store, Kind::Service), ["b"]);
}

#[test]
fn every_watched_kind_is_one_weir_accepts() {
    for (group, version, kind, _) in WATCHED_KINDS {
        let api_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        assert!(
            Kind::lookup(kind).is_ok() || Kind::lookup(&kind.to_lowercase()).is_ok(),
            "{api_version} {kind}"
        );
    }
}
