//! A real Prometheus (Debian's package, provisioned by `e2e/cluster/setup.sh`) for tests that
//! query one: it scrapes the given loopback targets every second and keeps its data in a
//! temporary directory. It stops, and its directory goes, when dropped.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bins;
use crate::process::Process;
use crate::wait::{self, Poll};

/// A scrape target: a job name and a `host:port` (with `/metrics`).
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    pub address: String,
}

/// A running Prometheus on a free loopback port.
#[derive(Debug)]
pub struct Prometheus {
    url: String,
    dir: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    process: Option<Process>,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (and itself, as job `prometheus`) every second, and
    /// waits until it is ready.
    pub async fn start(targets: &[Target]) -> Result<Self> {
        let jobs = targets
            .iter()
            .map(|t| {
                serde_json::json!({
                    "job_name": t.job,
                    "static_configs": [{ "targets": [t.address] }],
                })
            })
            .collect();
        Self::start_with_jobs(jobs).await
    }

    /// Starts Prometheus with these scrape configs (plus itself, as job `prometheus`), scraping
    /// every second, and waits until it is ready.
    pub async fn start_with_jobs(extra_jobs: Vec<serde_json::Value>) -> Result<Self> {
        let binary = bins::bin("prometheus")?;
        let port = crate::ports::unused_port()?;
        let dir = std::env::temp_dir().join(format!(
            "lexserve-e2e-prometheus-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("data"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut jobs = vec![serde_json::json!({
            "job_name": "prometheus",
            "static_configs": [{ "targets": [format!("127.0.0.1:{port}")] }],
        })];
        jobs.extend(extra_jobs);
        let config = serde_json::json!({
            "global": { "scrape_interval": "1s", "evaluation_interval": "1s" },
            "scrape_configs": jobs,
        });
        let config_path = dir.join("prometheus.yml");
        std::fs::write(
            &config_path,
            serde_yaml::to_string(&config).context("serializing the config")?,
        )
        .with_context(|| format!("writing {}", config_path.display()))?;
        let args = vec![
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--web.enable-lifecycle".to_string(),
            "--log.level=warn".to_string(),
        ];
        let url = format!("http://127.0.0.1:{port}");
        let mut prometheus = Prometheus {
            url,
            dir,
            binary,
            args,
            process: None,
        };
        prometheus.resume().await?;
        Ok(prometheus)
    }

    /// Stops it (SIGTERM, then SIGKILL), keeping its data: queries fail until [`Self::resume`].
    pub fn pause(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// Starts it again on the same port and data, and waits until it is ready.
    pub async fn resume(&mut self) -> Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let log = self.dir.join("prometheus.log");
        self.process = Some(Process::spawn(
            "prometheus",
            &self.binary,
            &self.args,
            &log,
        )?);
        let prometheus = &*self;
        let url = prometheus.url.clone();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .context("HTTP client")?;
        let ready = format!("{url}/-/ready");
        wait::until(
            "Prometheus to be ready",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async {
                Ok(match client.get(&ready).send().await {
                    Ok(resp) if resp.status().is_success() => Poll::Ready(()),
                    Ok(resp) => Poll::pending(resp.status()),
                    Err(err) => Poll::pending(err),
                })
            },
        )
        .await
        .with_context(|| {
            format!(
                "log: {}",
                crate::cluster::tail(&prometheus.dir.join("prometheus.log"), 20)
            )
        })?;
        Ok(())
    }

    /// `http://127.0.0.1:PORT`, the base of the HTTP API.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
