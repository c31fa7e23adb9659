//! A real Prometheus (the OS package) in its own pod, scraping sidecars' `:15090`.

use std::net::SocketAddr;
use std::time::Duration;

use super::http::{encode, eventually, get};
use super::process::ChildGuard;
use super::sidecar::Env;

/// Scrape job name (Istio's sidecar job).
pub const JOB: &str = "envoy-stats";

/// A running Prometheus.
pub struct Prometheus {
    /// The process.
    pub child: ChildGuard,
    addr: SocketAddr,
    pod: String,
}

/// One series of an instant-query result.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Its labels (with `__name__`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus in pod `pod`, scraping every `targets` address at
    /// `/stats/prometheus` each second, TSDB in the temp dir.
    pub fn start(env: &Env, pod: &str, targets: &[SocketAddr]) -> Self {
        let dir = env.path("prometheus");
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {JOB}\n    metrics_path: /stats/prometheus\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let p = env.pod(pod);
        let addr = SocketAddr::from((p.ip, 9090));
        let args = [
            "prometheus".to_owned(),
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--storage.tsdb.retention.time=1h".to_owned(),
            "--log.level=warn".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = env.spawn("prometheus", Some(pod), &args);
        let netns = &p.netns;
        eventually("prometheus ready", Duration::from_secs(30), || {
            child.assert_running();
            match netns.run(move || get(addr, "/-/ready")) {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        Self {
            child,
            addr,
            pod: pod.to_owned(),
        }
    }

    /// Runs an instant query.
    pub fn query(&self, env: &Env, promql: &str) -> Result<Vec<Series>, String> {
        let addr = self.addr;
        let path = format!("/api/v1/query?query={}", encode(promql));
        let (status, body) = env.pod(&self.pod).netns.run(move || get(addr, &path))?;
        if status != 200 {
            return Err(format!("HTTP {status}: {body}"));
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        let result = v["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("no result in {body}"))?;
        result
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .ok_or("no metric")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("bad value in {r}"))?;
                Ok(Series { labels, value })
            })
            .collect()
    }

    /// Polls `promql` until `check` accepts the result.
    pub fn query_until(
        &self,
        env: &Env,
        promql: &str,
        limit: Duration,
        check: impl Fn(&[Series]) -> Result<(), String>,
    ) -> Vec<Series> {
        eventually(&format!("prometheus query {promql}"), limit, || {
            let r = self.query(env, promql)?;
            check(&r).map_err(|e| format!("{e}; result {r:?}"))?;
            Ok(r)
        })
    }
}
