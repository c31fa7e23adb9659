//! Runs pods: keeps the pods Deployments ask for running (replicas, rollouts on template
//! changes), each in its own network namespace with its IP, its `/etc/resolv.conf` and
//! `/etc/hosts`, its capture rules and weir's sidecar when injected, its containers
//! restarted with backoff; registers ready pods with the mesh and records every pod's
//! state in `pods/<ns>/<pod>/pod.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use control::ca::{CertificateAuthority, SpiffeId, DEFAULT_WORKLOAD_TTL};
use control::mesh::{Mesh, Pod};
use proxy::config::{PodIdentity, ProxyConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::netns::{self, DNS_IP, NODE_IP};
use crate::process::{Backoff, Launch};
use crate::state::{self, ContainerRecord, Paths, PodRecord};
use crate::workload::{self, EnvValue, PodPlan, Program, SIDECAR};
use crate::ClusterError;

mod container;
use container::{keep_running, Probe};

/// The sidecar's readiness port (Istio's).
const READINESS_PORT: u16 = 15021;
/// Most pods per Deployment: each is a namespace and a few processes on one machine.
pub const MAX_REPLICAS: u32 = 64;
/// How long a container gets to stop after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);

/// The pods as last recorded, shared with the service discovery and status routes.
pub type PodTable = Arc<Mutex<BTreeMap<(String, String), PodRecord>>>;

/// What every pod needs from the cluster.
#[derive(Clone)]
pub struct Context {
    /// The cluster's paths.
    pub paths: Paths,
    /// The weir binary (sidecars and built-in apps).
    pub weir: PathBuf,
    /// The mesh pods are registered with.
    pub mesh: Arc<Mesh>,
    /// Signs each sidecar's first certificate.
    pub authority: Arc<CertificateAuthority>,
    /// Trust domain of workload identities.
    pub trust_domain: String,
    /// The sidecars' reporting interval.
    pub reporting_interval: Duration,
    /// The pods' records.
    pub table: PodTable,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

struct Running {
    plan: PodPlan,
    ip: Ipv4Addr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Owns the running pods.
pub struct Kubelet {
    cx: Context,
    pods: BTreeMap<(String, String), Running>,
    stopping: Vec<JoinHandle<()>>,
    used_ips: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
    seed: u64,
    seq: u64,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("pods", &self.pods.len())
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    /// A kubelet with no pods.
    pub fn new(cx: Context) -> Kubelet {
        Kubelet {
            cx,
            pods: BTreeMap::new(),
            stopping: Vec::new(),
            used_ips: Arc::new(Mutex::new(BTreeSet::new())),
            // Pod names differ between clusters and restarts, as Kubernetes' random ones.
            seed: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            seq: 0,
        }
    }

    /// Makes the running pods match what `resources` ask for: new Deployments and
    /// missing replicas start, pods of a changed template or removed Deployment stop.
    pub fn reconcile(&mut self, resources: &config::ResourceSet) {
        self.stopping.retain(|t| !t.is_finished());
        let mut keep = BTreeSet::new();
        for (plan, replicas) in workload::plans(resources) {
            let mut have: Vec<(String, String)> = self
                .pods
                .iter()
                .filter(|(_, r)| r.plan == plan)
                .map(|(k, _)| k.clone())
                .collect();
            let replicas = if replicas > MAX_REPLICAS {
                tracing::error!(deployment = %plan.deployment, replicas, "more replicas than the local cluster runs per Deployment; running {MAX_REPLICAS} (lower spec.replicas)");
                MAX_REPLICAS
            } else {
                replicas
            };
            have.truncate(replicas as usize);
            let missing = (replicas as usize).saturating_sub(have.len());
            keep.extend(have);
            for _ in 0..missing {
                match self.start(plan.clone()) {
                    Ok(key) => {
                        keep.insert(key);
                    }
                    Err(e) => {
                        tracing::error!(deployment = %plan.deployment, "cannot start a pod: {e}");
                        break;
                    }
                }
            }
        }
        let gone: Vec<(String, String)> = self
            .pods
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(r) = self.pods.remove(&key) {
                tracing::info!(namespace = %key.0, pod = %key.1, "stopping pod");
                r.stop.cancel();
                self.stopping.push(r.task);
            }
        }
    }

    fn start(&mut self, plan: PodPlan) -> Result<(String, String), ClusterError> {
        let name = loop {
            let n = workload::pod_name(&plan, self.seed, self.seq);
            self.seq += 1;
            if !self.pods.contains_key(&(plan.namespace.clone(), n.clone())) {
                break n;
            }
        };
        let ip = allocate(&self.used_ips)?;
        let key = (plan.namespace.clone(), name.clone());
        let stop = CancellationToken::new();
        let pod = PodRun {
            cx: self.cx.clone(),
            plan: plan.clone(),
            name,
            ip,
            used_ips: self.used_ips.clone(),
        };
        tracing::info!(namespace = %key.0, pod = %key.1, %ip, sidecar = plan.sidecar, "starting pod");
        let task = tokio::spawn(pod.run(stop.clone()));
        self.pods.insert(
            key.clone(),
            Running {
                plan,
                ip,
                stop,
                task,
            },
        );
        Ok(key)
    }

    /// IPs of running pods, by (namespace, name).
    pub fn ips(&self) -> BTreeMap<(String, String), Ipv4Addr> {
        self.pods.iter().map(|(k, r)| (k.clone(), r.ip)).collect()
    }

    /// Stops every pod (apps first, then sidecars, so the last metrics are flushed)
    /// and waits until their namespaces are gone.
    pub async fn shutdown(mut self) {
        for r in self.pods.values() {
            r.stop.cancel();
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut self.pods)
            .into_values()
            .map(|r| r.task)
            .chain(self.stopping.drain(..))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The lowest free pod IP in 10.244.0.2 – 10.244.255.254.
fn allocate(used: &Mutex<BTreeSet<Ipv4Addr>>) -> Result<Ipv4Addr, ClusterError> {
    let mut used = used.lock().unwrap_or_else(|p| p.into_inner());
    let base = u32::from(NODE_IP);
    for offset in 1..0xfffe {
        let ip = Ipv4Addr::from(base + offset);
        if used.insert(ip) {
            return Ok(ip);
        }
    }
    Err(ClusterError::Invalid(
        "the pod network 10.244.0.0/16 is full; delete some Deployments".into(),
    ))
}

/// One pod's life.
struct PodRun {
    cx: Context,
    plan: PodPlan,
    name: String,
    ip: Ipv4Addr,
    used_ips: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
}

/// The pod's record, written to disk and the shared table on every change, and the
/// mesh told when readiness changes.
#[derive(Clone)]
struct Recorder {
    cx: Context,
    record: Arc<Mutex<PodRecord>>,
    file: PathBuf,
    service_account: String,
}

impl Recorder {
    fn update(&self, f: impl FnOnce(&mut PodRecord)) {
        // The record's lock is held until the file, the mesh and the table are updated,
        // so concurrent updates (sidecar, apps, termination) land in order.
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        let (snapshot, readiness_changed) = {
            let was_ready = r.ready;
            f(&mut r);
            r.ready = !r.containers.is_empty() && r.containers.iter().all(|c| c.ready);
            if r.phase != "Terminating" && r.message.is_none() {
                r.phase = if r.containers.is_empty() {
                    "Pending".to_owned()
                } else if r.containers.iter().all(|c| c.running) {
                    "Running".to_owned()
                } else if r.containers.iter().any(|c| c.restarts > 0 && !c.running) {
                    "CrashLoopBackOff".to_owned()
                } else {
                    "Pending".to_owned()
                };
            }
            (r.clone(), was_ready != r.ready)
        };
        if let Err(e) = state::write_json(&self.file, &snapshot) {
            tracing::warn!("{e}");
        }
        if readiness_changed && snapshot.phase != "Terminating" {
            // A pod that is not Ready receives no traffic, as kube-proxy's endpoints.
            self.cx.mesh.upsert_pod(Pod {
                name: snapshot.name.clone(),
                namespace: snapshot.namespace.clone(),
                ip: snapshot.ready.then_some(std::net::IpAddr::V4(snapshot.ip)),
                labels: snapshot.labels.clone(),
                service_account: self.service_account.clone(),
                sidecar: snapshot.sidecar,
                workload: snapshot.deployment.clone(),
            });
        }
        let key = (snapshot.namespace.clone(), snapshot.name.clone());
        self.cx
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, snapshot);
        drop(r);
    }

    fn container(&self, index: usize, f: impl FnOnce(&mut ContainerRecord)) {
        self.update(|r| {
            if let Some(c) = r.containers.get_mut(index) {
                f(c);
            }
        });
    }
}

impl PodRun {
    async fn run(self, stop: CancellationToken) {
        let paths = self.cx.paths.clone();
        let netns_name = paths.pod_netns(&self.plan.namespace, &self.name);
        let dir = paths.pod_dir(&self.plan.namespace, &self.name);
        let recorder = Recorder {
            cx: self.cx.clone(),
            record: Arc::new(Mutex::new(PodRecord {
                name: self.name.clone(),
                namespace: self.plan.namespace.clone(),
                deployment: self.plan.deployment.clone(),
                netns: netns_name.clone(),
                ip: self.ip,
                phase: "Pending".into(),
                ready: false,
                message: None,
                sidecar: self.plan.sidecar,
                labels: self.plan.labels.clone(),
                containers: Vec::new(),
                created: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })),
            file: dir.join("pod.json"),
            service_account: self.plan.service_account.clone(),
        };
        // A failed setup (an `ip` or iptables error) is undone and tried again with
        // backoff, as a kubelet retries a pod sandbox.
        let mut backoff = Backoff::default();
        let launches = loop {
            let prepared = {
                let this = self.clone_parts();
                let dir = dir.clone();
                let netns_name = netns_name.clone();
                tokio::task::spawn_blocking(move || this.prepare(&dir, &netns_name)).await
            };
            let error = match prepared {
                // Deleted while it was being set up: start nothing.
                Ok(Ok(_)) if stop.is_cancelled() => break None,
                Ok(Ok(l)) => {
                    recorder.update(|r| r.message = None);
                    break Some(l);
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("pod setup failed: {e}"),
            };
            let delay = backoff.next(Duration::ZERO);
            tracing::error!(pod = %self.name, ?delay, "cannot create the pod: {error}");
            recorder.update(|r| {
                r.phase = "Error".into();
                r.message = Some(error);
            });
            let name = netns_name.clone();
            let _ = tokio::task::spawn_blocking(move || netns::delete(&name)).await;
            tokio::select! {
                _ = stop.cancelled() => break None,
                _ = tokio::time::sleep(delay) => {}
            }
        };
        let mut sidecar_task = None;
        let mut app_tasks = Vec::new();
        let apps_stop = CancellationToken::new();
        let sidecar_stop = CancellationToken::new();
        if let Some((sidecar, apps)) = launches {
            recorder.update(|r| {
                r.containers = sidecar
                    .iter()
                    .map(|l| container_record(SIDECAR, l))
                    .chain(apps.iter().map(|(name, l)| match l {
                        Ok((l, _)) => container_record(name, l),
                        Err(_) => container_record(name, &Launch::default_for(name)),
                    }))
                    .collect();
                let errors: Vec<String> = apps
                    .iter()
                    .filter_map(|(_, l)| l.as_ref().err().cloned())
                    .collect();
                if !errors.is_empty() {
                    r.phase = "CreateContainerConfigError".into();
                    r.message = Some(errors.join("; "));
                }
            });
            let offset = usize::from(sidecar.is_some());
            if let Some(launch) = sidecar {
                let probe = Probe::Http(SocketAddr::from((self.ip, READINESS_PORT)));
                sidecar_task = Some(tokio::spawn(keep_running(
                    launch,
                    probe,
                    0,
                    recorder.clone(),
                    sidecar_stop.clone(),
                )));
                // Apps start once the sidecar is ready, as Istio's holdApplicationUntilProxyStarts.
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline && !stop.is_cancelled() {
                    let ready = recorder
                        .record
                        .lock()
                        .map(|r| r.containers.first().is_some_and(|c| c.ready))
                        .unwrap_or(false);
                    if ready {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            for (i, (_, launch)) in apps.into_iter().enumerate() {
                let Ok((launch, ports)) = launch else {
                    continue;
                };
                let probe = Probe::Tcp(launch.netns.clone(), ports);
                app_tasks.push(tokio::spawn(keep_running(
                    launch,
                    probe,
                    i + offset,
                    recorder.clone(),
                    apps_stop.clone(),
                )));
            }
        }
        stop.cancelled().await;
        recorder.update(|r| r.phase = "Terminating".into());
        self.cx.mesh.remove_pod(&self.plan.namespace, &self.name);
        apps_stop.cancel();
        for t in app_tasks {
            let _ = t.await;
        }
        sidecar_stop.cancel();
        if let Some(t) = sidecar_task {
            let _ = t.await;
        }
        let cleanup = tokio::task::spawn_blocking(move || {
            if let Err(e) = netns::delete(&netns_name) {
                tracing::warn!("{e}");
            }
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
        if cleanup.is_err() {
            tracing::warn!(pod = %self.name, "pod cleanup failed");
        }
        self.used_ips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.ip);
        self.cx
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.plan.namespace.clone(), self.name.clone()));
    }

    fn clone_parts(&self) -> PodRun {
        PodRun {
            cx: self.cx.clone(),
            plan: self.plan.clone(),
            name: self.name.clone(),
            ip: self.ip,
            used_ips: self.used_ips.clone(),
        }
    }

    /// Network, files, capture rules, certificates; the containers' launches.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        dir: &std::path::Path,
        netns_name: &str,
    ) -> Result<
        (
            Option<Launch>,
            Vec<(String, Result<(Launch, Vec<u16>), String>)>,
        ),
        ClusterError,
    > {
        let plan = &self.plan;
        for sub in ["logs", "volumes"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| ClusterError::io(&d, "create", e))?;
        }
        for v in &plan.volumes {
            let d = dir.join("volumes").join(v);
            std::fs::create_dir_all(&d).map_err(|e| ClusterError::io(&d, "create", e))?;
        }
        // Pod netns names must fit the kernel's 15-byte interface names on the node side.
        let offset = u32::from(self.ip) - u32::from(NODE_IP);
        let veth = format!("vp{offset:05x}");
        netns::setup_pod(
            &self.cx.paths.node_netns(),
            netns_name,
            &veth,
            self.ip,
            &crate::dns::hosts_file(self.ip, &self.name),
            &crate::dns::resolv_conf(&plan.namespace, DNS_IP),
        )?;
        let base_env = vec![
            (
                "PATH".to_owned(),
                std::env::var("PATH").unwrap_or_else(|_| {
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
                }),
            ),
            ("HOME".to_owned(), dir.display().to_string()),
            ("HOSTNAME".to_owned(), self.name.clone()),
        ];
        // After the capture rules (below), so a sidecar's captured traffic never meets it.
        let install_services = |netns_name: &str| crate::services::install(netns_name);
        let sidecar = if plan.sidecar {
            let capture = proxy::capture::CaptureConfig::default();
            proxy::capture::apply_in(&proxy::capture::Target::netns(netns_name), &capture)
                .map_err(|e| ClusterError::Command {
                    command: format!("capture rules in {netns_name}"),
                    message: e.to_string(),
                })?;
            let certs = dir.join("certs");
            let id = SpiffeId::new(
                &self.cx.trust_domain,
                &plan.namespace,
                &plan.service_account,
            )
            .map_err(|e| ClusterError::Invalid(format!("pod {}: {e}", self.name)))?;
            self.cx
                .authority
                .issue(&id, DEFAULT_WORKLOAD_TTL)
                .and_then(|c| c.write_dir(&certs))
                .map_err(|e| {
                    ClusterError::Invalid(format!(
                        "pod {}: cannot issue its certificate: {e}",
                        self.name
                    ))
                })?;
            let config = self.sidecar_config(certs);
            let file = dir.join("sidecar.json");
            std::fs::write(&file, config.to_json())
                .map_err(|e| ClusterError::io(&file, "write", e))?;
            let mut env = base_env.clone();
            env.push(("WEIR_LOG".into(), "info,hickory_server=warn".into()));
            Some(Launch {
                netns: netns_name.to_owned(),
                command: proxy_command(&self.cx.weir)
                    .into_iter()
                    .chain([
                        "--config".into(),
                        file.display().to_string(),
                        "--control-plane".into(),
                        format!("{NODE_IP}:15012"),
                    ])
                    .collect(),
                env,
                dir: dir.to_path_buf(),
                log: dir.join("logs").join(format!("{SIDECAR}.log")),
            })
        } else {
            None
        };
        install_services(netns_name)?;
        let apps = plan
            .containers
            .iter()
            .map(|c| {
                let launch = self.app_launch(c, dir, netns_name, &base_env);
                (c.name.clone(), launch.map(|l| (l, c.ports.clone())))
            })
            .collect();
        Ok((sidecar, apps))
    }

    fn sidecar_config(&self, cert_dir: PathBuf) -> ProxyConfig {
        let plan = &self.plan;
        let pod = PodIdentity {
            pod_name: self.name.clone(),
            namespace: plan.namespace.clone(),
            workload: plan.deployment.clone(),
            service_account: plan.service_account.clone(),
            trust_domain: self.cx.trust_domain.clone(),
            cluster_id: None,
            ip: Some(std::net::IpAddr::V4(self.ip)),
            labels: plan.labels.clone(),
            owner: Some(format!(
                "kubernetes://apis/apps/v1/namespaces/{}/deployments/{}",
                plan.namespace, plan.deployment
            )),
        };
        // Everything in a local pod runs as root: the mark tells the proxy's sockets apart.
        let mut c = ProxyConfig::sidecar(pod, cert_dir, Some(proxy::capture::DEFAULT_PROXY_MARK));
        c.reporting.interval = self.cx.reporting_interval;
        c
    }

    fn app_launch(
        &self,
        c: &workload::ContainerPlan,
        dir: &std::path::Path,
        netns_name: &str,
        base_env: &[(String, String)],
    ) -> Result<Launch, String> {
        let mut env = base_env.to_vec();
        for (name, value) in &c.env {
            let v = match value {
                EnvValue::Value(v) => v.clone(),
                EnvValue::Field(path) => match path.as_str() {
                    "metadata.name" => self.name.clone(),
                    "metadata.namespace" => self.plan.namespace.clone(),
                    "status.podIP" | "status.podIPs" => self.ip.to_string(),
                    "status.hostIP" | "status.hostIPs" => NODE_IP.to_string(),
                    "spec.serviceAccountName" => self.plan.service_account.clone(),
                    "spec.nodeName" => self.cx.paths.name.clone(),
                    other => {
                        return Err(format!(
                            "env {name}: fieldRef {other} is not supported by the local cluster"
                        ))
                    }
                },
                EnvValue::Error(e) => return Err(e.clone()),
            };
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), v));
        }
        let volume = |mount: &str| {
            c.mounts
                .iter()
                .find(|(_, path)| path == mount)
                .map(|(v, _)| dir.join("volumes").join(v))
        };
        let command = match &c.program {
            Program::Bookinfo(args) => {
                let mut cmd = vec![self.cx.weir.display().to_string(), "bookinfo".into()];
                cmd.extend(args.iter().cloned());
                if args.first().map(String::as_str) == Some("mysqldb") {
                    // The image keeps its data in /var/lib/mysql: the pod's volume there.
                    let data = volume("/var/lib/mysql").unwrap_or_else(|| dir.join("mysql"));
                    cmd.extend(["--data-dir".into(), data.display().to_string()]);
                }
                cmd
            }
            Program::Shell(script) => {
                env.extend([
                    ("POD_NAME".into(), self.name.clone()),
                    ("POD_NAMESPACE".into(), self.plan.namespace.clone()),
                    ("POD_IP".into(), self.ip.to_string()),
                    ("POD_DIR".into(), dir.display().to_string()),
                    (
                        "CLUSTER_DIR".into(),
                        self.cx.paths.dir.display().to_string(),
                    ),
                ]);
                vec!["/bin/sh".into(), "-c".into(), script.clone()]
            }
            Program::Unavailable(why) => return Err(why.clone()),
        };
        Ok(Launch {
            netns: netns_name.to_owned(),
            command,
            env,
            dir: dir.to_path_buf(),
            log: dir.join("logs").join(format!("{}.log", c.name)),
        })
    }
}

impl Launch {
    fn default_for(name: &str) -> Launch {
        Launch {
            netns: String::new(),
            command: vec![format!("({name} cannot start)")],
            env: Vec::new(),
            dir: PathBuf::new(),
            log: PathBuf::new(),
        }
    }
}

fn container_record(name: &str, l: &Launch) -> ContainerRecord {
    ContainerRecord {
        name: name.to_owned(),
        command: l.command.clone(),
        env: l.env.clone(),
        running: false,
        ready: false,
        restarts: 0,
        last_exit: None,
    }
}

/// How a sidecar is started: `weir-proxy` when it sits beside `weir` (the data plane
/// alone, a smaller resident footprint per pod), else `weir proxy`.
pub(crate) fn proxy_command(weir: &std::path::Path) -> Vec<String> {
    let lean = weir.with_file_name("weir-proxy");
    if lean.is_file() {
        vec![lean.display().to_string()]
    } else {
        vec![weir.display().to_string(), "proxy".into()]
    }
}

#[cfg(test)]
mod proxy_command_tests {
    use super::proxy_command;

    #[test]
    fn sidecars_use_weir_proxy_when_it_sits_beside_weir() {
        let dir = tempfile::tempdir().unwrap();
        let weir = dir.path().join("weir");
        std::fs::write(&weir, "").unwrap();
        assert_eq!(
            proxy_command(&weir),
            [weir.display().to_string(), "proxy".to_owned()]
        );
        let lean = dir.path().join("weir-proxy");
        std::fs::write(&lean, "").unwrap();
        assert_eq!(proxy_command(&weir), [lean.display().to_string()]);
    }
}
