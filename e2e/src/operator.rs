//! `lexserve-operator run` as a real process against a [`LocalCluster`], the way users run it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cluster::LocalCluster;
use crate::process::Process;
use crate::wait::{self, Poll};

/// A workspace binary next to the running test executable (`target/<profile>/<name>`).
///
/// Integration tests of one crate cannot ask cargo for another crate's binary, so the test
/// command builds them first (`cargo build --workspace --bins`, in `scripts/test.sh`).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` first (scripts/test.sh does)",
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
        }
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl OperatorProcess {
    /// Starts the operator and waits until it answers `/readyz`.
    pub async fn start(cluster: &LocalCluster, options: OperatorOptions) -> Result<Self> {
        let binary = workspace_bin("lexserve-operator")?;
        let metrics_port = free_port()?;
        let health_port = free_port()?;
        let mut args = vec![
            "run".to_string(),
            "--kubeconfig".to_string(),
            cluster.kubeconfig().display().to_string(),
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
        let log = cluster
            .log_dir()
            .join(format!("operator-{}.log", options.identity));
        let process = Process::spawn(
            &format!("operator-{}", options.identity),
            &binary,
            &args,
            &log,
        )?;
        let operator = Self {
            process,
            identity: options.identity,
            metrics_port,
            health_port,
        };
        let url = format!("http://127.0.0.1:{health_port}/readyz");
        wait::until(
            "the operator's /readyz",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let url = url.clone();
                async move {
                    Ok(match reqwest::get(&url).await {
                        Ok(r) if r.status().is_success() => Poll::Ready(()),
                        Ok(r) => Poll::pending(format!("status {}", r.status())),
                        Err(e) => Poll::pending(e),
                    })
                }
            },
        )
        .await
        .with_context(|| format!("operator log:\n{}", crate::cluster::tail(&log, 30)))?;
        Ok(operator)
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
