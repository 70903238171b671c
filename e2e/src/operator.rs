//! `lexserve-operator run` as a real process against a [`LocalCluster`], the way users run it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cluster::LocalCluster;
use crate::process::Process;
use crate::wait::{self, Poll};

/// A workspace binary next to the running test executable (`target/<profile>/<name>`).
///
/// Integration tests of one crate cannot ask cargo for another crate's binary, so the test
/// command builds them in the same compilation as the tests (`cargo test --workspace --no-run`,
/// in `scripts/test.sh`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo test --workspace --no-run` first (scripts/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// A running operator.
pub struct OperatorProcess {
    process: Process,
    identity: String,
    metrics_port: u16,
    health_port: u16,
    metrics_api_port: Option<u16>,
}

/// How an operator is started.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Its identity in the leader election (also names its log file).
    pub identity: String,
    pub leader_elect: bool,
    /// The namespace to watch; None for all.
    pub namespace: Option<String>,
    /// Seconds between reconciles of a settled object.
    pub resync_seconds: u64,
    /// The lease's name, so that tests electing leaders do not disturb each other.
    pub lease_name: String,
    /// The lease's duration in seconds.
    pub lease_duration_seconds: u64,
    /// Prometheus' URL (the load signal); None leaves the operator's default, which does not
    /// resolve here.
    pub prometheus_url: Option<String>,
    /// Serve the external metrics API on a free loopback port.
    pub metrics_api: bool,
    /// Check the load signal every `.0` seconds with a grace period of `.1` seconds; None turns
    /// the checks off (tests that do not run Prometheus).
    pub scaling_signal: Option<(u64, u64)>,
    /// Whom it acts as: a kubeconfig of its own (see
    /// [`LocalCluster::service_account_kubeconfig`]); None, the cluster's admin.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Seconds between analyses of a running ShadowDeployment; None leaves the operator's
    /// default.
    pub shadow_analysis_seconds: Option<u64>,
    /// The port of its `/metrics` (on 127.0.0.1), for a Prometheus started before it; None: a
    /// free one.
    pub metrics_port: Option<u16>,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            identity: "operator".to_string(),
            leader_elect: false,
            namespace: None,
            resync_seconds: 300,
            lease_name: "lexserve-operator".to_string(),
            lease_duration_seconds: 15,
            prometheus_url: None,
            metrics_api: false,
            scaling_signal: None,
            kubeconfig: None,
            shadow_analysis_seconds: None,
            metrics_port: None,
        }
    }
}

fn free_port() -> Result<u16> {
    crate::ports::unused_port()
}

impl OperatorProcess {
    /// Starts the operator and waits until it answers `/readyz`.
    pub async fn start(cluster: &LocalCluster, options: OperatorOptions) -> Result<Self> {
        Self::spawn(cluster, options)?
            .ready_within(Duration::from_secs(30))
            .await
    }

    /// Waits until `/readyz` answers 200; the log's tail in the error otherwise.
    async fn ready_within(self, limit: Duration) -> Result<Self> {
        wait::until(
            "the operator's /readyz",
            limit,
            Duration::from_millis(200),
            || async {
                Ok(match self.probe("/readyz").await {
                    Ok((200, _)) => Poll::Ready(()),
                    Ok((code, text)) => Poll::pending(format!("{code}: {text}")),
                    Err(e) => Poll::pending(e),
                })
            },
        )
        .await
        .with_context(|| format!("operator log:\n{}", self.log_tail(30)))?;
        Ok(self)
    }

    /// Starts the operator the way a Deployment runs it: `run` with the container's environment
    /// (`env`, field references already resolved) and nothing else, acting as `kubeconfig` (a
    /// ServiceAccount's, so its RBAC is what the test checks). Only the listen addresses are
    /// overridden: loopback, free ports for metrics and health, the Deployment's port for the
    /// metrics API (the network is the test's to play, not the permissions). Waits until it
    /// answers `/readyz`.
    pub async fn start_as_deployed(
        cluster: &LocalCluster,
        identity: &str,
        kubeconfig: &std::path::Path,
        env: &[(String, String)],
    ) -> Result<Self> {
        let binary = workspace_bin("lexserve-operator")?;
        let metrics_port = free_port()?;
        let health_port = free_port()?;
        // The metrics API keeps the port the Deployment gives it (its Service points there), on
        // loopback.
        let metrics_api_port = crate::chart::metrics_api_port(env)?;
        let args =
            crate::chart::as_deployed_args(kubeconfig, metrics_port, health_port, metrics_api_port);
        let log = cluster.log_dir().join(format!("operator-{identity}.log"));
        let process =
            Process::spawn_with_env(&format!("operator-{identity}"), &binary, &args, env, &log)?;
        Self {
            process,
            identity: identity.to_string(),
            metrics_port,
            health_port,
            metrics_api_port,
        }
        .ready_within(Duration::from_secs(60))
        .await
    }

    /// Starts the operator without waiting for it to be ready.
    pub fn spawn(cluster: &LocalCluster, options: OperatorOptions) -> Result<Self> {
        let binary = workspace_bin("lexserve-operator")?;
        let metrics_port = match options.metrics_port {
            Some(port) => port,
            None => free_port()?,
        };
        let health_port = free_port()?;
        let mut args = vec![
            "run".to_string(),
            "--kubeconfig".to_string(),
            options
                .kubeconfig
                .as_deref()
                .unwrap_or(cluster.kubeconfig())
                .display()
                .to_string(),
            "--metrics-addr".to_string(),
            format!("127.0.0.1:{metrics_port}"),
            "--health-addr".to_string(),
            format!("127.0.0.1:{health_port}"),
            "--identity".to_string(),
            options.identity.clone(),
            "--leader-elect".to_string(),
            options.leader_elect.to_string(),
            "--lease-namespace".to_string(),
            "default".to_string(),
            "--lease-name".to_string(),
            options.lease_name.clone(),
            "--lease-duration-seconds".to_string(),
            options.lease_duration_seconds.to_string(),
            "--resync-seconds".to_string(),
            options.resync_seconds.to_string(),
            "--log-format".to_string(),
            "text".to_string(),
        ];
        if let Some(ns) = &options.namespace {
            args.extend(["--namespace".to_string(), ns.clone()]);
        }
        if let Some(url) = &options.prometheus_url {
            args.extend(["--prometheus-url".to_string(), url.clone()]);
        }
        if let Some(seconds) = options.shadow_analysis_seconds {
            args.extend([
                "--shadow-analysis-interval-seconds".to_string(),
                seconds.to_string(),
            ]);
        }
        let metrics_api_port = if options.metrics_api {
            Some(free_port()?)
        } else {
            None
        };
        args.extend([
            "--metrics-api-addr".to_string(),
            metrics_api_port.map_or_else(String::new, |p| format!("127.0.0.1:{p}")),
        ]);
        let (interval, grace) = options.scaling_signal.unwrap_or((0, 0));
        args.extend([
            "--scaling-signal-interval-seconds".to_string(),
            interval.to_string(),
            "--scaling-signal-grace-seconds".to_string(),
            grace.to_string(),
        ]);
        let log = cluster
            .log_dir()
            .join(format!("operator-{}.log", options.identity));
        let process = Process::spawn(
            &format!("operator-{}", options.identity),
            &binary,
            &args,
            &log,
        )?;
        Ok(Self {
            process,
            identity: options.identity,
            metrics_port,
            health_port,
            metrics_api_port,
        })
    }

    /// Its identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        Ok(reqwest::get(&url).await?.text().await?)
    }

    /// The value of one unlabelled metric (such as `lexserve_operator_leader`).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let text = self.metrics().await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no {name} in the operator's /metrics"))
    }

    /// The port of the external metrics API (HTTPS), when started with one.
    /// The port of its `/metrics` (on 127.0.0.1).
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub fn metrics_api_port(&self) -> Option<u16> {
        self.metrics_api_port
    }

    /// `GET /readyz` (or `/healthz`): the status code and the text.
    pub async fn probe(&self, path: &str) -> Result<(u16, String)> {
        let response = reqwest::get(format!("http://127.0.0.1:{}{path}", self.health_port)).await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// The port of `/healthz` and `/readyz`.
    pub fn health_port(&self) -> u16 {
        self.health_port
    }

    /// Its log so far.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::cluster::tail(self.process.log(), lines)
    }

    /// Kills it with SIGKILL: no graceful shutdown, no lease release.
    pub fn kill(&mut self) {
        // SAFETY: plain kill(2) on the child's process group id.
        unsafe {
            libc::kill(-(self.process.pid() as i32), libc::SIGKILL);
        }
        self.process.stop();
    }

    /// Stops it with SIGTERM (graceful shutdown), then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.process.exited().is_some()
    }
}
