//! kubectl against a [`LocalCluster`], and applying manifests the way users do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::LocalCluster;
use crate::bins;

impl LocalCluster {
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

    /// A kubeconfig acting as ServiceAccount `name` of `namespace` (created if missing), with
    /// a token valid for an hour: for running a process with only the permissions RBAC grants
    /// that account (none unless the test binds some).
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let exists = self
            .kubectl(["get", "serviceaccount", name, "-n", namespace])
            .await?
            .success;
        if !exists {
            self.kubectl_ok(["create", "serviceaccount", name, "-n", namespace])
                .await?;
        }
        let token = self
            .kubectl_ok(["create", "token", name, "-n", namespace, "--duration=1h"])
            .await?;
        let admin = std::fs::read_to_string(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config = crate::chart::token_kubeconfig(&admin, namespace, name, &token)?;
        let path = self.work_dir.join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Applies the manifests at `path` (a file or a folder) server-side, as users install CRDs,
    /// and waits until every CRD among them is Established (served).
    pub async fn apply_crds(&self, path: &Path) -> Result<()> {
        let path = path.display().to_string();
        self.kubectl_ok(["apply", "--server-side", "--force-conflicts", "-f", &path])
            .await?;
        self.kubectl_ok([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &path,
        ])
        .await?;
        Ok(())
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
