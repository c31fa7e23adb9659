//! Control plane at scale: how long one service change takes to reach every connected
//! proxy, and what the control plane holds in memory.
//!
//! A real `ConfigServer` serves `Mesh` views over mutual TLS on loopback to simulated
//! proxies (real `ConfigClient`s with real gRPC streams, whose sink only records when the
//! changed service arrived). Everything runs in one process, so memory is reported before
//! and after the proxies connect.
//!
//! Run: `cargo bench -p control --bench push_scale`. Knobs (environment): `PROXIES`
//! (default 1000), `SERVICES` (1000; 10 pods each; the first tenth have subsets and an
//! 80/20 VirtualService), `REPEATS` (5). Each proxy holds two file descriptors.

use std::collections::BTreeMap;
use std::error::Error;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use config::ResourceSet;
use control::mesh::{Mesh, MeshOptions, Pod};
use prometheus_client::registry::Registry;
use proxy::config::ProxyConfig;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use xds::client::{Backoff, ConfigClient, ConfigClientOptions, ConfigSink};
use xds::server::ConfigServer;
use xds::tls::TlsMaterial;
use xds::NodeInfo;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const SERVER_NAME: &str = "weir-control.weir-system.svc";
const NAMESPACES: usize = 10;
const PODS_PER_SERVICE: usize = 10;
/// The service whose VirtualService weights flip on every repeat.
const TARGET: &str = "svc0";
const INITIAL_SYNC: Duration = Duration::from_secs(300);
const CHANGE_DEADLINE: Duration = Duration::from_secs(60);

fn knob(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|e| format!("{name}={v:?}: {e}; fix: a positive integer").into()),
        Err(_) => Ok(default),
    }
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".into())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn vs_yaml(i: usize, first: u32) -> String {
    let ns = format!("ns{}", i % NAMESPACES);
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  hosts: [svc{i}]\n  tcp:\n  - route:\n    - {{destination: {{host: svc{i}, subset: v1}}, weight: {first}}}\n    - {{destination: {{host: svc{i}, subset: v2}}, weight: {}}}\n",
        100 - first
    )
}

fn resources(services: usize) -> Result<ResourceSet> {
    let mut yaml = String::new();
    for i in 0..services {
        let ns = format!("ns{}", i % NAMESPACES);
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  selector: {{app: app{i}}}\n  ports: [{{name: tcp, port: 9000}}]\n---\n"
        ));
        if i % 10 == 0 {
            yaml.push_str(&format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc{i}, namespace: {ns}}}\nspec:\n  host: svc{i}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n"
            ));
            yaml.push_str(&vs_yaml(i, 80));
            yaml.push_str("---\n");
        }
    }
    let mut set = ResourceSet::new();
    for doc in config::parse_str(&yaml, "bench.yaml")? {
        set.upsert(doc);
    }
    Ok(set)
}

fn pods(services: usize) -> Vec<Pod> {
    let mut pods = Vec::with_capacity(services * PODS_PER_SERVICE);
    for i in 0..services {
        for j in 0..PODS_PER_SERVICE {
            let n = u32::try_from(i * PODS_PER_SERVICE + j + 1).unwrap_or(u32::MAX);
            pods.push(Pod {
                name: format!("app{i}-{j}"),
                namespace: format!("ns{}", i % NAMESPACES),
                ip: Some(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + n))),
                labels: [
                    ("app".to_owned(), format!("app{i}")),
                    ("version".to_owned(), format!("v{}", j % 2 + 1)),
                ]
                .into_iter()
                .collect(),
                service_account: "default".to_owned(),
                sidecar: true,
                workload: format!("app{i}"),
            });
        }
    }
    pods
}

fn write_dir(dir: &Path, chain: &str, key: &str, root: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cert-chain.pem"), chain)?;
    std::fs::write(dir.join("key.pem"), key)?;
    std::fs::write(dir.join("root-cert.pem"), root)?;
    Ok(())
}

/// A mesh root, the control plane's certificate, and one client certificate per
/// namespace (service account `default`). Returns the server directory and the client
/// directories by namespace.
fn pki(dir: &Path) -> Result<(PathBuf, BTreeMap<String, PathBuf>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let server_cert =
        CertificateParams::new(vec![SERVER_NAME.to_owned()])?.signed_by(&server_key, &issuer)?;
    let server = dir.join("server");
    write_dir(
        &server,
        &server_cert.pem(),
        &server_key.serialize_pem(),
        &root,
    )?;

    let mut clients = BTreeMap::new();
    for n in 0..NAMESPACES {
        let ns = format!("ns{n}");
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let uri = format!("spiffe://cluster.local/ns/{ns}/sa/default");
        params
            .subject_alt_names
            .push(SanType::URI(uri.as_str().try_into()?));
        let cert = params.signed_by(&key, &issuer)?;
        let path = dir.join(&ns);
        write_dir(&path, &cert.pem(), &key.serialize_pem(), &root)?;
        clients.insert(ns, path);
    }
    Ok((server, clients))
}

/// A simulated proxy: records how many configurations it applied and when the target
/// service's first route weight last changed.
#[derive(Default)]
struct Sink {
    applied: AtomicU64,
    weight: AtomicU32,
    changed_at: Mutex<Option<Instant>>,
}

impl ConfigSink for Sink {
    fn apply(&self, config: ProxyConfig, _version: &str) -> std::result::Result<(), String> {
        let now = Instant::now();
        let weight = config
            .outbound
            .services
            .iter()
            .find(|s| s.name == TARGET && s.namespace == "ns0")
            .and_then(|s| s.ports.first())
            .and_then(|p| p.routes.first())
            .map_or(0, |r| r.weight);
        if self.weight.swap(weight, Ordering::SeqCst) != weight {
            *self.changed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn node_of(pod: &Pod) -> NodeInfo {
    NodeInfo {
        pod_name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        workload_name: pod.workload.clone(),
        service_account: pod.service_account.clone(),
        ip: pod.ip,
        labels: pod.labels.clone(),
        container_ports: Default::default(),
    }
}

/// Polls until `done` holds, or fails naming `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("{what}: not reached within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

fn summary(mut xs: Vec<Duration>) -> [Duration; 3] {
    xs.sort();
    match (xs.first(), xs.get(xs.len() / 2), xs.last()) {
        (Some(a), Some(b), Some(c)) => [*a, *b, *c],
        _ => [Duration::ZERO; 3],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn run(proxies: usize, services: usize, repeats: usize) -> Result<()> {
    let rss_start = rss_kib()?;
    let tmp = tempfile::tempdir()?;
    let (server_dir, client_dirs) = pki(tmp.path())?;

    let mut set = resources(services)?;
    let all_pods = pods(services);
    let mesh = Arc::new(Mesh::new(MeshOptions::default()));
    let t = Instant::now();
    mesh.set_resources(&set);
    mesh.upsert_pods(all_pods.iter().cloned());
    let build = t.elapsed();

    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let mut registry = Registry::default();
    let server = ConfigServer::new(mesh.clone(), &mut registry);
    let metrics = server.metrics().clone();
    let tls = TlsMaterial::from_dir(&server_dir)?.server_config()?;
    let stop = CancellationToken::new();
    let server_task = tokio::spawn(server.serve(listener, tls, stop.clone()));
    let rss_server = rss_kib()?;

    // Spread the proxies over the services: the first pod of each service first.
    let step = (all_pods.len() / proxies.max(1)).max(1);
    let chosen: Vec<&Pod> = all_pods.iter().step_by(step).take(proxies).collect();
    if chosen.len() < proxies {
        return Err(format!(
            "{proxies} proxies need as many pods; fix: SERVICES >= PROXIES / {PODS_PER_SERVICE}"
        )
        .into());
    }
    let sinks: Vec<Arc<Sink>> = (0..proxies).map(|_| Arc::new(Sink::default())).collect();
    let t = Instant::now();
    for (pod, sink) in chosen.iter().zip(&sinks) {
        let dir = client_dirs
            .get(&pod.namespace)
            .ok_or("no client certificate for the pod's namespace")?;
        let mut options = ConfigClientOptions::new(
            addr,
            SERVER_NAME,
            dir,
            ProxyConfig::minimal(&pod.namespace, &pod.workload),
            sink.clone() as Arc<dyn ConfigSink>,
        );
        options.node = node_of(pod);
        options.backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        tokio::spawn(ConfigClient::new(options).run(stop.clone()));
    }
    wait_until(
        "every proxy applied its first configuration",
        INITIAL_SYNC,
        || sinks.iter().all(|s| s.applied.load(Ordering::SeqCst) >= 1),
    )
    .await?;
    let connect = t.elapsed();
    // Let the last acknowledgements land before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss_kib()?;
    let target_index = 0;

    let mut all = Vec::new();
    let mut p50 = Vec::new();
    let mut recompute = Vec::new();
    let mut call = Vec::new();
    let mut pushes = Vec::new();
    let mut produced = Vec::new();
    for r in 0..repeats {
        let first: u32 = if r % 2 == 0 { 20 } else { 80 };
        for doc in config::parse_str(&vs_yaml(target_index, first), "change.yaml")? {
            set.upsert(doc);
        }
        let pushes_before = metrics.pushes();
        let t0 = Instant::now();
        let stats = mesh.set_resources(&set);
        call.push(t0.elapsed());
        recompute.push(stats.elapsed);
        // A proxy whose stream is being re-established is not notified; it gets the change
        // on reconnecting, and the wait below still covers it.
        if stats.services_changed != 1 {
            return Err(format!("unexpected update: {stats:?}").into());
        }
        let mut produced_at = None;
        wait_until("every proxy applied the change", CHANGE_DEADLINE, || {
            if produced_at.is_none() && metrics.pushes() - pushes_before >= proxies as u64 {
                produced_at = Some(t0.elapsed());
            }
            sinks
                .iter()
                .all(|s| s.weight.load(Ordering::SeqCst) == first)
        })
        .await?;
        produced.push(produced_at.unwrap_or_else(|| t0.elapsed()));
        let mut times: Vec<Duration> = sinks
            .iter()
            .map(|s| {
                s.changed_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map_or(Duration::ZERO, |at| at.saturating_duration_since(t0))
            })
            .collect();
        times.sort();
        all.push(times.last().copied().unwrap_or_default());
        p50.push(times.get(times.len() / 2).copied().unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
        pushes.push(metrics.pushes() - pushes_before);
        println!(
            "repeat {r}: all {} p50 {} responses produced {} recompute {} ({stats:?})",
            ms(all[r]),
            ms(p50[r]),
            ms(produced[r]),
            ms(stats.elapsed)
        );
    }

    let cmd = format!(
        "PROXIES={proxies} SERVICES={services} REPEATS={repeats} cargo bench -p control --bench push_scale"
    );
    println!();
    println!("Command: `{cmd}`");
    println!();
    println!(
        "{services} services ({} with 2-subset DestinationRule + 80/20 VirtualService), {} pods, {proxies} proxies (mTLS gRPC streams on loopback), {repeats} repeats; change: flip one VirtualService's weights.",
        services.div_ceil(10),
        all_pods.len()
    );
    println!();
    println!("| Measure | min | median | max |");
    println!("|---|---|---|---|");
    for (name, xs) in [
        ("Change → all proxies applied (max over proxies)", all),
        ("Change → half the proxies applied (p50)", p50),
        (
            "Change → the server produced every proxy's response (diffed, encoded, queued)",
            produced,
        ),
        ("Mesh recompute + notify (`UpdateStats.elapsed`)", recompute),
        (
            "`Mesh::set_resources` call (diff + recompute + notify)",
            call,
        ),
    ] {
        let [a, b, c] = summary(xs);
        println!("| {name} | {} | {} | {} |", ms(a), ms(b), ms(c));
    }
    pushes.sort();
    println!(
        "| Pushes per change (server `weir_control_pushes_total` delta) | {} | {} | {} |",
        pushes.first().unwrap_or(&0),
        pushes.get(pushes.len() / 2).unwrap_or(&0),
        pushes.last().unwrap_or(&0)
    );
    println!();
    println!("| Memory (VmRSS of the one process) | |");
    println!("|---|---|");
    println!("| At start | {} |", mib(rss_start));
    println!(
        "| Mesh computed + server listening, no proxies (control plane alone) | {} |",
        mib(rss_server)
    );
    println!(
        "| With {proxies} proxies connected (control plane + simulated proxies) | {} |",
        mib(rss_connected)
    );
    println!();
    println!(
        "Initial compute (set_resources + {} pods): {}; connecting {proxies} proxies until each applied its first configuration: {}; server pushes total: {}",
        all_pods.len(),
        ms(build),
        ms(connect),
        metrics.pushes()
    );

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server_task).await;
    Ok(())
}

fn main() -> Result<()> {
    let proxies = knob("PROXIES", 1000)?;
    let services = knob("SERVICES", 1000)?;
    let repeats = knob("REPEATS", 5)?.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(proxies, services, repeats));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}
