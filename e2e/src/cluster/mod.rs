//! [`LocalCluster`]: a real Kubernetes control plane on loopback, for tests and the demo.
//!
//! etcd, kube-apiserver (RBAC, the aggregation layer), kube-controller-manager (a short HPA
//! sync period), kube-scheduler and kwok (simulated GPU and CPU nodes whose pods become Ready)
//! run as child processes on free loopback ports. Nothing is faked: the scheduler really
//! schedules, the HPA controller really scales, admission really runs CEL rules.

mod args;
mod files;
mod kubectl;
mod namespace;
mod startup;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use kubectl::KubectlOutput;
pub use namespace::TestNamespace;

use crate::kwok;
use crate::pki::Pki;
use crate::process::Process;
use args::{
    AUDIT_LOG_FILE, AUDIT_POLICY_FILE, apiserver_args, controller_manager_args, etcd_args,
    kwok_args, scheduler_args,
};
use files::{free_ports, https_client, new_temp_dir, write_kubeconfig};

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
        std::fs::write(work_dir.join(AUDIT_POLICY_FILE), crate::audit::POLICY)
            .context("writing the audit policy")?;

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

    /// The apiserver's audit log: writes by ServiceAccounts outside kube-system (see
    /// [`crate::audit`]).
    pub fn audit_log(&self) -> PathBuf {
        self.log_dir.join(AUDIT_LOG_FILE)
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
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start progress, on stderr: libtest shows it with a failing test's output, and
/// `cluster up`'s supervisor log keeps it. (Tests install no tracing subscriber.)
fn progress(message: String) {
    eprintln!("lexserve-e2e: {message}");
    tracing::info!("{message}");
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
