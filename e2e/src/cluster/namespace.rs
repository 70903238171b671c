//! A namespace per test, deleted when the test ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::LocalCluster;
use crate::bins;

impl LocalCluster {
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
