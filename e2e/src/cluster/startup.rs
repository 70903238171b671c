//! Waiting for the components of a starting [`LocalCluster`], and creating its nodes.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::{ClusterOptions, LocalCluster, lock, tail};
use crate::bins;
use crate::kwok::{self, NodeKind};
use crate::process::Process;
use crate::wait::{self, Poll};

impl LocalCluster {
    pub(super) fn spawn(&self, name: &str, args: Vec<String>) -> Result<()> {
        let program = bins::bin(name)?;
        let log = self.log_dir.join(format!("{name}.log"));
        let process = Process::spawn(name, &program, &args, &log)?;
        lock(&self.processes).push(process);
        Ok(())
    }

    /// Fails at once (with its log) if `name` has exited.
    pub(super) fn check_alive(&self, name: &str) -> Result<()> {
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

    pub(super) async fn wait_http(
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

    pub(super) async fn create_nodes(&self, options: &ClusterOptions) -> Result<Vec<String>> {
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

    pub(super) async fn wait_nodes_ready(&self, timeout: Duration) -> Result<()> {
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

    pub(super) async fn wait_default_service_account(&self, timeout: Duration) -> Result<()> {
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

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
