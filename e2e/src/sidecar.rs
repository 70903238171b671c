//! Real `lexserve-sidecar` processes standing in for a Deployment's pods.
//!
//! kwok's pods run no containers, so a test that needs the sidecars' behaviour (their metrics
//! under load) starts one real sidecar per pod on this machine, from the same config the
//! operator wrote into the pod's ConfigMap, with the model files the fetch init container would
//! have put in place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::operator::workspace_bin;
use crate::process::Process;
use lexserve_testkit::{MINILM, MINILM_FP32_ONNX, MINILM_INT8_ONNX, Model, locate};

/// The int8 ONNX MiniLM and its tokenizer, as `file://` URIs for an InferenceService.
pub fn minilm_int8_uris() -> Result<(String, String)> {
    minilm_onnx_uris(MINILM_INT8_ONNX)
}

/// The fp32 ONNX MiniLM (another model file than the int8 one) and its tokenizer.
pub fn minilm_fp32_uris() -> Result<(String, String)> {
    minilm_onnx_uris(MINILM_FP32_ONNX)
}

fn minilm_onnx_uris(onnx: Model) -> Result<(String, String)> {
    let model = locate(onnx).map_err(anyhow::Error::msg)?;
    let tokenizer = locate(MINILM)
        .map_err(anyhow::Error::msg)?
        .join("tokenizer.json");
    Ok((
        format!("file://{}", model.display()),
        format!("file://{}", tokenizer.display()),
    ))
}

/// The ONNX Runtime library the sidecars load.
pub fn ort_dylib() -> Result<PathBuf> {
    lexserve_testkit::ort_dylib().map_err(anyhow::Error::msg)
}

/// A loopback port nothing listens on now.
pub fn free_port() -> Result<u16> {
    crate::ports::unused_port()
}

/// Starts the sidecar of pod `pod` as the pod would: from the config the operator wrote into
/// ConfigMap `config_map`, with one compute thread, its config and log under `dir`; waits until
/// it is ready.
pub async fn start_for_pod(
    config_maps: &kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
    config_map: &str,
    pod: &str,
    dir: &Path,
) -> Result<SidecarProcess> {
    let config = config_maps
        .get(config_map)
        .await
        .context("reading the sidecar ConfigMap")?;
    let yaml = config
        .data
        .and_then(|d| d.get(lexserve_contract::names::path::CONFIG_FILE).cloned())
        .context("no sidecar config in the ConfigMap")?;
    let path = dir.join(format!("{pod}.yaml"));
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    let mut sidecar = SidecarProcess::start(&path, 1, &dir.join(format!("{pod}.log")))?;
    sidecar.wait_ready(Duration::from_secs(120)).await?;
    Ok(sidecar)
}

/// A running sidecar on a loopback port.
pub struct SidecarProcess {
    process: Process,
    port: u16,
}

impl SidecarProcess {
    /// Starts `lexserve-sidecar serve --config CONFIG` on a free loopback port, with `threads`
    /// compute threads, logging to `log`. Does not wait for readiness.
    pub fn start(config: &Path, threads: u32, log: &Path) -> Result<Self> {
        Self::start_on(config, threads, log, free_port()?, &[])
    }

    /// As [`Self::start`], on loopback port `port`, with `extra` arguments (a pod's env, such as
    /// `--model-name`, or the harness's `--resolve`).
    pub fn start_on(
        config: &Path,
        threads: u32,
        log: &Path,
        port: u16,
        extra: &[String],
    ) -> Result<Self> {
        let binary = workspace_bin("lexserve-sidecar")?;
        let mut args = vec![
            "serve".to_string(),
            "--config".to_string(),
            config.display().to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--threads".to_string(),
            threads.to_string(),
            "--ort-dylib-path".to_string(),
            ort_dylib()?.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let name = log.file_stem().map_or_else(
            || "sidecar".to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let process = Process::spawn(&name, &binary, &args, log)?;
        Ok(Self { process, port })
    }

    /// A sidecar that `process` runs (started from a pod's own command line by
    /// [`crate::kubelet`]), listening on `127.0.0.1:port`.
    pub fn adopt(process: Process, port: u16) -> Self {
        Self { process, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    /// Waits until `/ready` answers 200 (model loaded and warmed up).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!(
            "{}{}",
            self.url(),
            lexserve_contract::names::http::READY_PATH
        );
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                bail!(
                    "the sidecar exited ({status}): {}",
                    crate::cluster::tail(self.process.log(), 20)
                );
            }
            let last = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => r.status().to_string(),
                Err(e) => e.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                bail!(
                    "the sidecar was not ready after {timeout:?} (last: {last}): {}",
                    crate::cluster::tail(self.process.log(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, as the kubelet sends it to a terminating pod; returns at once.
    pub fn terminate(&self) {
        self.process.terminate();
    }

    /// Waits (blocking) up to `limit` for the sidecar to exit; its exit status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit(limit)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// Stops it (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        self.process.stop();
    }
}
