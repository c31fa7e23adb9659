//! A real Prometheus (the Debian package's 2.42) scrapes the exposition, once with
//! content negotiation (it asks for OpenMetrics) and once served Prometheus text,
//! and stores the series under Istio's names with exact values. Loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use telemetry::{
    encode, DestinationService, Format, Registry, ResponseFlags, SecurityPolicy, TcpLabels,
    TcpMetrics, Workload,
};

const PROMETHEUS: &str = "prometheus";
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills and reaps the Prometheus process however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal `/stats/prometheus` endpoint on loopback.
struct StatsServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<Format>>>,
    thread: Option<JoinHandle<()>>,
}

impl StatsServer {
    /// `forced`: always serve this format instead of negotiating.
    fn start(registry: Arc<Registry>, forced: Option<Format>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if let Some(f) = serve(conn, &registry, forced) {
                        served.lock().unwrap().push(f);
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            served,
            thread: Some(thread),
        }
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, registry: &Registry, forced: Option<Format>) -> Option<Format> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?).take(16 * 1024);
    let mut accept = None;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if first {
            first = false;
            if !line.starts_with("GET /stats/prometheus ") {
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                return None;
            }
        }
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("accept") {
                accept = Some(v.trim().to_owned());
            }
        }
    }
    let format = forced.unwrap_or_else(|| Format::negotiate(accept.as_deref()));
    let body = encode(registry, format).ok()?;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        format.content_type(),
        body.len()
    );
    conn.write_all(head.as_bytes()).ok()?;
    conn.write_all(body.as_bytes()).ok()?;
    let _ = conn.shutdown(Shutdown::Both);
    Some(format)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// GETs `path` from Prometheus's HTTP API and returns the JSON body.
fn api_get(port: u16, path: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.take(4 * 1024 * 1024).read_to_string(&mut resp).ok()?;
    let (_, body) = resp.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Runs an instant query; `None` while Prometheus is not answering yet.
fn try_query(port: u16, promql: &str) -> Option<Vec<serde_json::Value>> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let v = api_get(port, &format!("/api/v1/query?query={encoded}"))?;
    assert_eq!(v["status"], "success", "query {promql}: {v}");
    v["data"]["result"].as_array().cloned()
}

fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    try_query(port, promql).unwrap_or_else(|| panic!("Prometheus did not answer {promql}"))
}

fn registry_with_traffic() -> Registry {
    let mut registry = Registry::default();
    let metrics = TcpMetrics::new(&mut registry);
    let local = Workload {
        name: "ratings-v1".into(),
        namespace: "default".into(),
        cluster: "Kubernetes".into(),
        labels: [
            ("app".to_string(), "ratings".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]
        .into(),
        principal: Some("spiffe://cluster.local/ns/default/sa/bookinfo-ratings".into()),
    };
    let labels = TcpLabels::inbound(
        &local,
        &Workload::unknown(),
        &DestinationService::from_fqdn("ratings.default.svc.cluster.local"),
        SecurityPolicy::MutualTls,
        ResponseFlags::None,
    );
    for _ in 0..3 {
        let mut r = metrics.recorder(labels.clone());
        r.resolve(labels.clone());
        r.byte_counters().add_received(100);
        r.byte_counters().add_sent(250);
        r.close(None);
    }
    registry
}

#[test]
fn prometheus_scrapes_istio_series() {
    let registry = Arc::new(registry_with_traffic());
    let negotiated = StatsServer::start(registry.clone(), None);
    let text = StatsServer::start(registry, Some(Format::PrometheusText));

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n\
             - job_name: negotiated\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: ['{}']\n\
             - job_name: text\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: ['{}']\n",
            negotiated.addr, text.addr
        ),
    )
    .expect("write config");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `{PROMETHEUS}` ({e}): install it with `apt-get install prometheus`")
        });
    let _guard = ChildGuard(child);

    let start = Instant::now();
    let opened = loop {
        let r = try_query(port, "istio_tcp_connections_opened_total").unwrap_or_default();
        if r.len() == 2 {
            break r;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "Prometheus did not store both targets' series within {DEADLINE:?}; got {r:?}; log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    let mut jobs = Vec::new();
    for series in &opened {
        let m = &series["metric"];
        jobs.push(m["job"].as_str().unwrap_or_default().to_owned());
        assert_eq!(series["value"][1], "3", "{series}");
        assert_eq!(m["__name__"], "istio_tcp_connections_opened_total");
        assert_eq!(m["reporter"], "destination");
        assert_eq!(m["destination_workload"], "ratings-v1");
        assert_eq!(
            m["destination_principal"],
            "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"
        );
        assert_eq!(m["source_workload"], "unknown");
        assert_eq!(m["source_canonical_revision"], "latest");
        assert_eq!(m["response_flags"], "-");
        assert_eq!(m["connection_security_policy"], "mutual_tls");
        // 23 labels plus __name__, job, instance.
        assert_eq!(m.as_object().map(|o| o.len()), Some(26), "{m}");
    }
    jobs.sort();
    assert_eq!(jobs, ["negotiated", "text"]);

    for (name, want) in [
        ("istio_tcp_connections_closed_total", "3"),
        ("istio_tcp_received_bytes_total", "300"),
        ("istio_tcp_sent_bytes_total", "750"),
    ] {
        let r = query(port, name);
        assert_eq!(r.len(), 2, "{name}: {r:?}");
        for s in r {
            assert_eq!(s["value"][1], want, "{name}: {s}");
        }
    }
    // No series under the family names without `_total`.
    assert!(query(port, "istio_tcp_connections_opened").is_empty());
    assert!(query(port, "{__name__=~\"istio_tcp_.*_created\"}").is_empty());
    assert_eq!(query(port, "{__name__=~\"istio_tcp_.*\"}").len(), 8);

    // Prometheus asked for OpenMetrics on the negotiated target and got it.
    let served = negotiated.served.lock().unwrap().clone();
    assert!(served.contains(&Format::OpenMetrics), "{served:?}");
    assert!(text
        .served
        .lock()
        .unwrap()
        .iter()
        .all(|f| *f == Format::PrometheusText));
}
