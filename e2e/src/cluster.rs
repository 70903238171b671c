//! [`LocalCluster`]: a real Kubernetes control plane on loopback, for tests and the demo.
//!
//! etcd, kube-apiserver (RBAC, the aggregation layer), kube-controller-manager (a short HPA
//! sync period), kube-scheduler and kwok (simulated GPU and CPU nodes whose pods become Ready)
//! run as child processes on free loopback ports. Nothing is faked: the scheduler really
//! schedules, the HPA controller really scales, admission really runs CEL rules.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::bins;
use crate::kwok::{self, NodeKind};
use crate::pki::{CertFiles, FRONT_PROXY_CLIENT_CN, Pki};
use crate::process::Process;
use crate::wait::{self, Poll};

/// The service CIDR; its first address is the `kubernetes` Service's (see [`crate::pki`]).
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The pod CIDR kwok hands pod IPs out of.
const POD_CIDR: &str = "10.244.0.0/16";

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Simulated GPU nodes, each with `gpus_per_node` GPUs and the GPU taint.
    pub gpu_nodes: u32,
    pub gpus_per_node: u32,
    /// Value of the `nvidia.com/gpu.product` label on GPU nodes.
    pub gpu_product: String,
    /// Simulated nodes without GPUs.
    pub cpu_nodes: u32,
    /// kube-controller-manager `--horizontal-pod-autoscaler-sync-period`: short, so tests
    /// see scaling within seconds (the default is 15 s).
    pub hpa_sync_period: Duration,
    /// kube-controller-manager `--horizontal-pod-autoscaler-downscale-stabilization` (the
    /// default is 5 minutes, far too long for a test).
    pub hpa_downscale_stabilization: Duration,
    /// Where certificates, etcd's data, kubeconfigs and logs go. `None`: a fresh directory
    /// under the temp dir, removed when the cluster stops (unless a test failed).
    pub work_dir: Option<PathBuf>,
    /// Upper bound for the whole start (each step also has its own bound).
    pub start_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            gpu_nodes: 2,
            gpus_per_node: 8,
            gpu_product: "NVIDIA-H100-80GB-HBM3".to_string(),
            cpu_nodes: 2,
            hpa_sync_period: Duration::from_secs(5),
            hpa_downscale_stabilization: Duration::from_secs(10),
            work_dir: None,
            start_timeout: Duration::from_secs(180),
        }
    }
}

/// Loopback ports of the cluster's listeners.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
    pub kwok: u16,
}

/// A running control plane. Stops (and cleans up) when dropped.
pub struct LocalCluster {
    work_dir: PathBuf,
    log_dir: PathBuf,
    kubeconfig: PathBuf,
    apiserver_url: String,
    ports: Ports,
    config: kube::Config,
    /// In start order; stopped in reverse.
    processes: Mutex<Vec<Process>>,
    /// Remove `work_dir` on stop (a temporary cluster) or only etcd's data (a named one).
    temporary: bool,
    /// Set when a test failed: logs are kept and their place printed.
    keep_logs: Arc<AtomicBool>,
    stopped: AtomicBool,
    node_names: Vec<String>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("apiserver_url", &self.apiserver_url)
            .field("kubeconfig", &self.kubeconfig)
            .field("log_dir", &self.log_dir)
            .finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// Starts a cluster and waits until it is usable: apiserver ready, controllers and
    /// scheduler healthy, nodes Ready, the `default` ServiceAccount created.
    ///
    /// Ports are picked free just before the components bind them; if another process takes
    /// one in between, the start is retried (twice at most) on new ports.
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        crate::init_crypto();
        let mut attempt = 1;
        loop {
            match Self::start_once(&options).await {
                Err(err)
                    if attempt < 3 && format!("{err:#}").contains("address already in use") =>
                {
                    eprintln!(
                        "lexserve-e2e: a port was taken while the cluster started; retrying ({err:#})"
                    );
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn start_once(options: &ClusterOptions) -> Result<Self> {
        let t0 = Instant::now();
        let (work_dir, temporary) = match &options.work_dir {
            Some(dir) => (dir.clone(), false),
            None => (new_temp_dir()?, true),
        };
        let log_dir = work_dir.join("logs");
        // A named work dir is reused: start from a clean state, but keep nothing stale.
        for sub in ["pki", "etcd", "logs"] {
            let path = work_dir.join(sub);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("clearing {}", path.display()))?;
            }
        }
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let pki = Pki::generate(&work_dir.join("pki"))?;
        let ports = free_ports()?;
        let apiserver_url = format!("https://127.0.0.1:{}", ports.apiserver);
        let kubeconfig = work_dir.join("kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &apiserver_url,
            &pki.ca.cert,
            &pki.admin,
            "lexserve-admin",
        )?;
        let kcm_kubeconfig = work_dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &apiserver_url,
            &pki.ca.cert,
            &pki.controller_manager,
            "system:kube-controller-manager",
        )?;
        let scheduler_kubeconfig = work_dir.join("scheduler.kubeconfig");
        write_kubeconfig(
            &scheduler_kubeconfig,
            &apiserver_url,
            &pki.ca.cert,
            &pki.scheduler,
            "system:kube-scheduler",
        )?;
        let kwok_config = work_dir.join("kwok.yaml");
        std::fs::write(&kwok_config, kwok::STAGES).context("writing kwok's stages")?;

        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).context("reading the kubeconfig just written")?,
            &KubeConfigOptions::default(),
        )
        .await
        .context("building a client config from the kubeconfig")?;

        let cluster = LocalCluster {
            work_dir: work_dir.clone(),
            log_dir: log_dir.clone(),
            kubeconfig,
            apiserver_url: apiserver_url.clone(),
            ports,
            config,
            processes: Mutex::new(Vec::new()),
            temporary,
            keep_logs: Arc::new(AtomicBool::new(false)),
            stopped: AtomicBool::new(false),
            node_names: Vec::new(),
        };
        // From here on, a failure drops `cluster`, which stops what was started.
        let mut cluster = cluster;
        let deadline = t0 + options.start_timeout;
        let result = async {
            let https = https_client(&pki.ca.cert)?;
            let step = Instant::now();
            cluster.spawn("etcd", etcd_args(&work_dir, &ports))?;
            let etcd_health = format!("http://127.0.0.1:{}/health", ports.etcd_client);
            cluster
                .wait_http(
                    "etcd",
                    &https,
                    &etcd_health,
                    "\"health\":\"true\"",
                    remaining(deadline, 30),
                )
                .await?;
            progress(format!("etcd healthy after {:.1?}", step.elapsed()));

            let step = Instant::now();
            cluster.spawn("kube-apiserver", apiserver_args(&pki, &ports, &work_dir))?;
            let readyz = format!("{apiserver_url}/readyz");
            cluster
                .wait_http(
                    "kube-apiserver",
                    &https,
                    &readyz,
                    "ok",
                    remaining(deadline, 90),
                )
                .await?;
            progress(format!("kube-apiserver ready after {:.1?}", step.elapsed()));

            let step = Instant::now();
            cluster.spawn(
                "kube-controller-manager",
                controller_manager_args(&pki, &ports, &kcm_kubeconfig, options),
            )?;
            cluster.spawn(
                "kube-scheduler",
                scheduler_args(&pki, &ports, &scheduler_kubeconfig),
            )?;
            cluster.spawn(
                "kwok",
                kwok_args(&pki, &ports, &cluster.kubeconfig, &kwok_config),
            )?;
            let kcm = format!("https://127.0.0.1:{}/healthz", ports.controller_manager);
            let scheduler = format!("https://127.0.0.1:{}/healthz", ports.scheduler);
            cluster
                .wait_http(
                    "kube-controller-manager",
                    &https,
                    &kcm,
                    "ok",
                    remaining(deadline, 60),
                )
                .await?;
            cluster
                .wait_http(
                    "kube-scheduler",
                    &https,
                    &scheduler,
                    "ok",
                    remaining(deadline, 60),
                )
                .await?;
            progress(format!(
                "kube-controller-manager and kube-scheduler healthy after {:.1?}",
                step.elapsed()
            ));

            let step = Instant::now();
            cluster.node_names = cluster.create_nodes(options).await?;
            cluster.wait_nodes_ready(remaining(deadline, 60)).await?;
            progress(format!(
                "{} simulated nodes Ready after {:.1?}",
                cluster.node_names.len(),
                step.elapsed()
            ));
            let step = Instant::now();
            cluster
                .wait_default_service_account(remaining(deadline, 60))
                .await?;
            progress(format!(
                "kube-controller-manager's controllers running (default ServiceAccount) after {:.1?}",
                step.elapsed()
            ));
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                progress(format!(
                    "local cluster up in {:.1?}: {} (kubeconfig {}, logs {})",
                    t0.elapsed(),
                    cluster.apiserver_url,
                    cluster.kubeconfig.display(),
                    cluster.log_dir.display()
                ));
                Ok(cluster)
            }
            Err(err) => {
                cluster.keep_logs.store(true, Ordering::SeqCst);
                let logs = cluster.log_summary();
                Err(err.context(format!(
                    "starting the local cluster failed; component logs in {}\n{logs}",
                    cluster.log_dir.display()
                )))
            }
        }
    }

    /// The kubeconfig of the cluster's admin (system:masters), for kubectl, helm, the operator.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:PORT`.
    pub fn apiserver_url(&self) -> &str {
        &self.apiserver_url
    }

    /// The directory holding each component's log (`<component>.log`).
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The directory holding everything of this cluster (pki, etcd data, kubeconfigs, logs).
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The loopback ports the components listen on.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The simulated nodes' names.
    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }

    /// Process ids of the running components, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        lock(&self.processes)
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }

    /// A client with the admin's identity. Call it in the runtime that will use the client: a
    /// kube client belongs to the runtime it was made in (each `#[tokio::test]` has its own).
    pub fn client(&self) -> Result<kube::Client> {
        crate::init_crypto();
        kube::Client::try_from(self.config.clone()).context("building a kube client")
    }

    /// The client configuration (for code that builds its own clients).
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// Runs kubectl against this cluster; returns its output whatever its exit status.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<KubectlOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.kubectl_with_stdin(args, None).await
    }

    /// Runs kubectl and fails (with its stderr) unless it exits 0; returns its stdout.
    pub async fn kubectl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.kubectl(args).await?.ok()
    }

    /// Runs kubectl with `stdin` as its standard input (e.g. `apply -f -`).
    pub async fn kubectl_with_stdin<I, S>(
        &self,
        args: I,
        stdin: Option<&str>,
    ) -> Result<KubectlOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        use tokio::io::AsyncWriteExt;
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
        let kubectl = bins::kubectl()?;
        let mut cmd = tokio::process::Command::new(&kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(&args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {}", kubectl.display()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .context("writing kubectl's stdin")?;
        }
        let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .map_err(|_| anyhow!("kubectl {} did not finish within 120s", args.join(" ")))?
            .context("waiting for kubectl")?;
        Ok(KubectlOutput {
            args,
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// The apiserver's Prometheus metrics (`GET /metrics`), as text.
    pub async fn apiserver_metrics(&self) -> Result<String> {
        self.get_raw("/metrics").await
    }

    /// `GET path` on the apiserver with the admin's identity, as text.
    pub async fn get_raw(&self, path: &str) -> Result<String> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .with_context(|| format!("building GET {path}"))?;
        self.client()?
            .request_text(request)
            .await
            .with_context(|| format!("GET {path} on the apiserver"))
    }

    /// Creates a namespace named after `prefix` (plus a unique suffix) for one test; it is
    /// deleted when the returned guard drops. If the test panics, the guard prints where the
    /// component logs are and keeps them.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let mut clean: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        clean.truncate(40);
        let clean = clean.trim_matches('-');
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 10_000)
            .unwrap_or(0);
        let name = format!(
            "{}-{n}-{salt:04}",
            if clean.is_empty() { "test" } else { clean }
        );
        let namespaces: Api<Namespace> = Api::all(self.client()?);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("lexserve.io/e2e".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace {
            name,
            kubeconfig: self.kubeconfig.clone(),
            log_dir: self.log_dir.clone(),
            keep_logs: self.keep_logs.clone(),
        })
    }

    /// Marks the run as failed: logs are kept (and their place printed) when the cluster stops.
    pub fn keep_logs(&self) {
        self.keep_logs.store(true, Ordering::SeqCst);
    }

    /// Stops every component (reverse start order) and cleans up. Idempotent; also run by
    /// `Drop` and, for the shared cluster, at process exit.
    pub fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // This also runs in the exit hook: never block there on a lock that a test thread may
        // hold forever. If it stays taken, the exit hook's process-group kill (and
        // PR_SET_PDEATHSIG) still stop the components.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut processes = loop {
            match self.processes.try_lock() {
                Ok(guard) => break guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => break poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    eprintln!(
                        "lexserve-e2e: cluster busy at shutdown; killing its processes instead"
                    );
                    return;
                }
            }
        };
        while let Some(mut p) = processes.pop() {
            p.stop();
        }
        drop(processes);
        let keep = self.keep_logs.load(Ordering::SeqCst);
        let _ = std::fs::remove_dir_all(self.work_dir.join("etcd"));
        if keep {
            eprintln!(
                "lexserve-e2e: local cluster stopped; component logs kept in {}",
                self.log_dir.display()
            );
        } else if self.temporary {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
    }

    /// The last lines of each component's log, for error messages.
    pub fn log_summary(&self) -> String {
        let mut out = String::new();
        let mut processes = lock(&self.processes);
        for p in processes.iter_mut() {
            let state = match p.exited() {
                Some(status) => format!("exited: {status}"),
                None => "running".to_string(),
            };
            let _ = writeln!(
                out,
                "--- {} ({state}), last lines of {}:",
                p.name(),
                p.log().display()
            );
            out.push_str(&tail(p.log(), 15));
        }
        out
    }

    fn spawn(&self, name: &str, args: Vec<String>) -> Result<()> {
        let program = bins::bin(name)?;
        let log = self.log_dir.join(format!("{name}.log"));
        let process = Process::spawn(name, &program, &args, &log)?;
        lock(&self.processes).push(process);
        Ok(())
    }

    /// Fails at once (with its log) if `name` has exited.
    fn check_alive(&self, name: &str) -> Result<()> {
        let mut processes = lock(&self.processes);
        if let Some(p) = processes.iter_mut().find(|p| p.name() == name)
            && let Some(status) = p.exited()
        {
            bail!(
                "{name} exited ({status}); last lines of {}:\n{}",
                p.log().display(),
                tail(p.log(), 30)
            );
        }
        Ok(())
    }

    async fn wait_http(
        &self,
        name: &str,
        client: &reqwest::Client,
        url: &str,
        expect: &str,
        timeout: Duration,
    ) -> Result<()> {
        wait::until(
            &format!("{name} at {url}"),
            timeout,
            Duration::from_millis(200),
            || async {
                self.check_alive(name)?;
                Ok(match client.get(url).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        if status.is_success() && body.contains(expect) {
                            Poll::Ready(())
                        } else {
                            Poll::pending(format!(
                                "HTTP {status}: {}",
                                body.chars().take(300).collect::<String>()
                            ))
                        }
                    }
                    Err(err) => Poll::pending(err),
                })
            },
        )
        .await
    }

    async fn create_nodes(&self, options: &ClusterOptions) -> Result<Vec<String>> {
        let nodes: Api<Node> = Api::all(self.client()?);
        let mut names = Vec::new();
        let gpu = NodeKind::Gpu {
            count: options.gpus_per_node,
            product: options.gpu_product.clone(),
        };
        let wanted = (0..options.gpu_nodes)
            .map(|i| (format!("kwok-gpu-{i}"), gpu.clone()))
            .chain((0..options.cpu_nodes).map(|i| (format!("kwok-cpu-{i}"), NodeKind::Cpu)));
        for (name, kind) in wanted {
            let node = kwok::node(&name, &kind);
            nodes
                .create(&PostParams::default(), &node)
                .await
                .with_context(|| format!("creating node {name}"))?;
            // Capacity lives in status, which a create may drop: set it through /status too.
            let status = serde_json::json!({ "status": {
                "capacity": node.status.as_ref().and_then(|s| s.capacity.clone()),
                "allocatable": node.status.as_ref().and_then(|s| s.allocatable.clone()),
            }});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .with_context(|| format!("setting the capacity of node {name}"))?;
            names.push(name);
        }
        Ok(names)
    }

    async fn wait_nodes_ready(&self, timeout: Duration) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client()?);
        wait::until(
            "the simulated nodes to be Ready (kwok)",
            timeout,
            Duration::from_millis(300),
            || async {
                self.check_alive("kwok")?;
                let list = nodes
                    .list(&Default::default())
                    .await
                    .context("listing nodes")?;
                let not_ready: Vec<String> = list
                    .items
                    .iter()
                    .filter(|n| !node_ready(n))
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                Ok(
                    if not_ready.is_empty() && list.items.len() >= self.node_names.len() {
                        Poll::Ready(())
                    } else {
                        Poll::pending(format!("not Ready: {not_ready:?}"))
                    },
                )
            },
        )
        .await
    }

    async fn wait_default_service_account(&self, timeout: Duration) -> Result<()> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client()?, "default");
        wait::until(
            "kube-controller-manager to create the default ServiceAccount",
            timeout,
            Duration::from_millis(300),
            || async {
                self.check_alive("kube-controller-manager")?;
                Ok(
                    match accounts
                        .get_opt("default")
                        .await
                        .context("reading serviceaccount default")?
                    {
                        Some(_) => Poll::Ready(()),
                        None => Poll::pending("not created yet"),
                    },
                )
            },
        )
        .await
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a kubectl run printed.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    pub args: Vec<String>,
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    /// stdout if kubectl exited 0, else an error with its stderr.
    pub fn ok(self) -> Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            bail!(
                "kubectl {} failed ({:?}): {}{}",
                self.args.join(" "),
                self.code,
                self.stderr,
                self.stdout
            )
        }
    }
}

/// A namespace for one test; deleted (without waiting) on drop.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubeconfig: PathBuf,
    log_dir: PathBuf,
    keep_logs: Arc<AtomicBool>,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs.store(true, Ordering::SeqCst);
            eprintln!(
                "lexserve-e2e: test in namespace {} failed; control-plane logs: {} (kept after the run)",
                self.name,
                self.log_dir.display()
            );
        }
        // Synchronous and bounded: Drop cannot await, and the test's runtime may be gone.
        if let Ok(kubectl) = bins::kubectl() {
            let _ = std::process::Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args([
                    "delete",
                    "namespace",
                    &self.name,
                    "--wait=false",
                    "--ignore-not-found",
                ])
                .args(["--request-timeout=10s"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Start progress, on stderr: libtest shows it with a failing test's output, and
/// `cluster up`'s supervisor log keeps it. (Tests install no tracing subscriber.)
fn progress(message: String) {
    eprintln!("lexserve-e2e: {message}");
    tracing::info!("{message}");
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn remaining(deadline: Instant, cap_secs: u64) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(cap_secs))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last `n` lines of a file ("" if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

/// Picks free loopback ports, holding all listeners until all are picked so none repeats.
fn free_ports() -> Result<Ports> {
    let listeners = (0..6)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding a free loopback port"))
        .collect::<Result<Vec<_>>>()?;
    let ports = listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .context("reading a bound port")
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Ports {
        etcd_client: ports[0],
        etcd_peer: ports[1],
        apiserver: ports[2],
        controller_manager: ports[3],
        scheduler: ports[4],
        kwok: ports[5],
    })
}

/// A fresh directory under `$TMPDIR/lexserve-e2e/`, after removing those of dead processes.
fn new_temp_dir() -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir().join("lexserve-e2e");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    remove_stale_dirs(&base);
    let pid = std::process::id();
    let dir = base.join(format!("{pid}-{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Directories of runs whose process is gone (killed before it could clean up). Those with
/// logs kept after a failure stay for a day, so they can be read.
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        let has_etcd = entry.path().join("etcd").exists();
        if !alive && (has_etcd || old) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An HTTPS client trusting the cluster CA (no client certificate: health endpoints are open
/// to anonymous users, as on any cluster).
fn https_client(ca: &Path) -> Result<reqwest::Client> {
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let cert = reqwest::Certificate::from_pem(&pem).context("parsing the cluster CA")?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .context("building an HTTPS client")
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &CertFiles,
    user_name: &str,
) -> Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "lexserve-e2e", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{ "name": user_name, "user": {
            "client-certificate": user.cert,
            "client-key": user.key,
        }}],
        "contexts": [{ "name": "lexserve-e2e", "context": {
            "cluster": "lexserve-e2e",
            "user": user_name,
            "namespace": "default",
        }}],
        "current-context": "lexserve-e2e",
    });
    let yaml = serde_yaml::to_string(&config).context("serializing a kubeconfig")?;
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn etcd_args(work_dir: &Path, ports: &Ports) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        "--name=lexserve-e2e".into(),
        format!("--data-dir={}", p(&work_dir.join("etcd"))),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=lexserve-e2e={peer}"),
        // A test cluster's data is thrown away: durability buys nothing and costs latency.
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ]
}

fn apiserver_args(pki: &Pki, ports: &Ports, work_dir: &Path) -> Vec<String> {
    let _ = work_dir;
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.apiserver),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        format!("--client-ca-file={}", p(&pki.ca.cert)),
        "--authorization-mode=Node,RBAC".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p(&pki.service_account_pub)),
        format!(
            "--service-account-signing-key-file={}",
            p(&pki.service_account_key)
        ),
        // The aggregation layer: the apiserver proxies APIServices (external.metrics.k8s.io)
        // to their backends with the front-proxy client certificate.
        format!(
            "--requestheader-client-ca-file={}",
            p(&pki.front_proxy_ca.cert)
        ),
        format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}"),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!(
            "--proxy-client-cert-file={}",
            p(&pki.front_proxy_client.cert)
        ),
        format!("--proxy-client-key-file={}", p(&pki.front_proxy_client.key)),
        // Routing stays off, on purpose. With it on, the aggregator resolves an APIService's
        // Service through its EndpointSlices and rejects ExternalName Services ("unsupported
        // service type \"ExternalName\"", seen on v1.36.3), and endpoint validation forbids
        // loopback addresses. With it off, an ExternalName Service resolves to
        // externalName:port, so `externalName: 127.0.0.1` reaches a process on this machine
        // (there is no kube-proxy here to make a ClusterIP reachable anyway).
        "--enable-aggregator-routing=false".into(),
        "--allow-privileged=true".into(),
        // The endpoint reconciler would publish 127.0.0.1 as the `kubernetes` Service's
        // endpoint, which validation rejects (loopback), logging errors forever.
        "--endpoint-reconciler-type=none".into(),
        "--event-ttl=1h".into(),
        "--profiling=false".into(),
    ]
}

fn controller_manager_args(
    pki: &Pki,
    ports: &Ports,
    kubeconfig: &Path,
    options: &ClusterOptions,
) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", p(kubeconfig)),
        format!("--authentication-kubeconfig={}", p(kubeconfig)),
        format!("--authorization-kubeconfig={}", p(kubeconfig)),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.controller_manager),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        format!("--client-ca-file={}", p(&pki.ca.cert)),
        format!(
            "--requestheader-client-ca-file={}",
            p(&pki.front_proxy_ca.cert)
        ),
        format!("--root-ca-file={}", p(&pki.ca.cert)),
        format!(
            "--service-account-private-key-file={}",
            p(&pki.service_account_key)
        ),
        format!("--cluster-signing-cert-file={}", p(&pki.ca.cert)),
        format!("--cluster-signing-key-file={}", p(&pki.ca.key)),
        // Each controller acts as its own ServiceAccount, with the bootstrap RBAC roles
        // (the HPA controller's includes reading external.metrics.k8s.io).
        "--use-service-account-credentials=true".into(),
        "--controllers=*".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        format!(
            "--horizontal-pod-autoscaler-sync-period={}s",
            options.hpa_sync_period.as_secs().max(1)
        ),
        format!(
            "--horizontal-pod-autoscaler-downscale-stabilization={}s",
            options.hpa_downscale_stabilization.as_secs()
        ),
        // One instance: no need to wait for a lease.
        "--leader-elect=false".into(),
        "--profiling=false".into(),
    ]
}

fn scheduler_args(pki: &Pki, ports: &Ports, kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", p(kubeconfig)),
        format!("--authentication-kubeconfig={}", p(kubeconfig)),
        format!("--authorization-kubeconfig={}", p(kubeconfig)),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", ports.scheduler),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        format!("--client-ca-file={}", p(&pki.ca.cert)),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
    ]
}

fn kwok_args(pki: &Pki, ports: &Ports, kubeconfig: &Path, config: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", p(kubeconfig)),
        format!("--config={}", p(config)),
        "--manage-all-nodes=false".into(),
        format!(
            "--manage-nodes-with-annotation-selector={}={}",
            kwok::NODE_ANNOTATION.0,
            kwok::NODE_ANNOTATION.1
        ),
        format!("--cidr={POD_CIDR}"),
        "--node-ip=127.0.0.1".into(),
        format!("--node-port={}", ports.kwok),
        format!("--server-address=127.0.0.1:{}", ports.kwok),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        "--node-lease-duration-seconds=40".into(),
    ]
}
