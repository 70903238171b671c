//! The harness playing kubelet for one kwok pod (kwok's pods run no containers).
//!
//! For a pod labelled [`crate::kwok::TEST_KUBELET_LABEL`] (which kwok leaves alone), [`PodHost`]
//! runs the containers the pod spec names, on this machine, with the args and environment the
//! operator wrote there: each volume becomes a directory of its own, and every mount path in an
//! argument or a variable is mapped to that directory, as a container would see the volume there.
//! It then reports what kubelet would: the init containers' exit codes and termination messages
//! in `status.initContainerStatuses`, and the pod Ready only once the serving container's
//! readiness endpoint answers 200.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use lexserve_contract::names::{command, env, flag};

use crate::operator::workspace_bin;
use crate::process::Process;
use crate::sidecar::{SidecarProcess, free_port, ort_dylib};

/// How an init container ended: its exit code and its termination message (the file the
/// container wrote, or the end of its log when it failed without one: the pod's
/// `FallbackToLogsOnError`).
#[derive(Debug, Clone)]
pub struct Terminated {
    pub exit_code: i32,
    pub message: String,
}

/// A pod's volumes and logs on this machine.
pub struct PodHost {
    pod: Pod,
    dir: PathBuf,
    volumes: BTreeMap<String, PathBuf>,
}

impl PodHost {
    /// Gives every volume of `pod` a directory under `dir`, with the files of ConfigMap volumes
    /// written into theirs (kubelet's projection). Claims and secrets are not projected: the
    /// tests that use this fetch from `file://`.
    pub async fn prepare(config_maps: &Api<ConfigMap>, pod: &Pod, dir: &Path) -> Result<Self> {
        let spec = pod.spec.as_ref().context("pod without a spec")?;
        let mut volumes = BTreeMap::new();
        for volume in spec.volumes.iter().flatten() {
            let host = dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&host)
                .with_context(|| format!("creating {}", host.display()))?;
            if let Some(source) = &volume.config_map {
                let config_map = config_maps.get(&source.name).await?;
                for (key, value) in config_map.data.iter().flatten() {
                    std::fs::write(host.join(key), value)?;
                }
            }
            volumes.insert(volume.name.clone(), host);
        }
        Ok(Self {
            pod: pod.clone(),
            dir: dir.to_path_buf(),
            volumes,
        })
    }

    /// Writes the current content of the pod's ConfigMap volumes (from `config_maps`, by name)
    /// over their files, as kubelet's periodic sync does: each file replaced whole, by rename, so
    /// that a reader never sees half of it. Returns whether a file changed.
    pub fn sync_config_maps(&self, config_maps: &BTreeMap<String, ConfigMap>) -> Result<bool> {
        let spec = self.pod.spec.as_ref().context("pod without a spec")?;
        let mut changed = false;
        for volume in spec.volumes.iter().flatten() {
            let (Some(source), Some(host)) = (&volume.config_map, self.volumes.get(&volume.name))
            else {
                continue;
            };
            let Some(config_map) = config_maps.get(&source.name) else {
                continue;
            };
            for (key, value) in config_map.data.iter().flatten() {
                let path = host.join(key);
                if std::fs::read(&path).ok().as_deref() == Some(value.as_bytes()) {
                    continue;
                }
                let tmp = host.join(format!(".{key}.tmp"));
                std::fs::write(&tmp, value)?;
                std::fs::rename(&tmp, &path)?;
                changed = true;
            }
        }
        Ok(changed)
    }

    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    /// `text` with the container's mount paths replaced by their volumes' directories, deepest
    /// mount first, wherever a mount path starts a path (`/var/lib/...`, `file:///var/lib/...`).
    fn map(&self, container: &Container, text: &str) -> String {
        let mut mounts: Vec<(&str, &Path)> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter_map(|m| Some((m.mount_path.as_str(), self.volumes.get(&m.name)?.as_path())))
            .collect();
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        for (mount, host) in mounts {
            for prefix in ["", "file://"] {
                if let Some(rest) = text.strip_prefix(&format!("{prefix}{mount}"))
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{prefix}{}{rest}", host.display());
                }
            }
        }
        text.to_string()
    }

    /// The container's args and plain environment variables, mapped.
    fn command_line(&self, container: &Container) -> (Vec<String>, Vec<(String, String)>) {
        let args = container
            .args
            .iter()
            .flatten()
            .map(|a| self.map(container, a))
            .collect();
        let env = container
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), self.map(container, e.value.as_deref()?))))
            .collect();
        (args, env)
    }

    /// Runs every init container of the pod in order, as kubelet does, stopping at the first
    /// failure. Returns each one's outcome by name.
    pub async fn run_init_containers(&self) -> Result<Vec<(String, Terminated)>> {
        let binary = workspace_bin(command::SIDECAR_BINARY)?;
        let spec = self.pod.spec.as_ref().context("pod without a spec")?;
        let mut outcomes = Vec::new();
        for container in spec.init_containers.iter().flatten() {
            let (args, mut vars) = self.command_line(container);
            let termination_log = self.dir.join(format!("{}.termination-log", container.name));
            vars.push((
                env::TERMINATION_LOG.to_string(),
                termination_log.display().to_string(),
            ));
            let log = self.dir.join(format!("{}.log", container.name));
            let binary = binary.clone();
            let status = tokio::task::spawn_blocking(move || {
                let log_file = std::fs::File::create(&log)?;
                std::process::Command::new(&binary)
                    .args(&args)
                    .envs(vars)
                    .stdout(log_file.try_clone()?)
                    .stderr(log_file)
                    .status()
            })
            .await??;
            let exit_code = status.code().unwrap_or(-1);
            let mut message = std::fs::read_to_string(&termination_log).unwrap_or_default();
            if message.is_empty() && exit_code != 0 {
                message =
                    crate::cluster::tail(&self.dir.join(format!("{}.log", container.name)), 5);
            }
            outcomes.push((container.name.clone(), Terminated { exit_code, message }));
            if exit_code != 0 {
                break;
            }
        }
        Ok(outcomes)
    }

    /// Writes the init containers' outcomes into the pod's status: Pending, not initialized
    /// until all succeeded, the serving containers waiting.
    pub async fn report_init(
        &self,
        pods: &Api<Pod>,
        outcomes: &[(String, Terminated)],
    ) -> Result<()> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let spec = self.pod.spec.as_ref().context("pod without a spec")?;
        let initialized = outcomes.iter().all(|(_, t)| t.exit_code == 0)
            && outcomes.len() == spec.init_containers.iter().flatten().count();
        let init_statuses: Vec<_> = outcomes
            .iter()
            .map(|(name, t)| {
                json!({
                    "name": name,
                    "image": image_of(spec.init_containers.iter().flatten(), name),
                    "ready": t.exit_code == 0,
                    "restartCount": 0,
                    "state": {"terminated": {
                        "exitCode": t.exit_code,
                        "reason": if t.exit_code == 0 { "Completed" } else { "Error" },
                        "message": t.message,
                        "startedAt": now,
                        "finishedAt": now,
                    }},
                })
            })
            .collect();
        let waiting = if initialized {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let container_statuses: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image, "ready": false, "started": false,
                    "restartCount": 0, "state": {"waiting": {"reason": waiting}},
                })
            })
            .collect();
        let condition = |type_: &str, status: bool| json!({"type": type_, "status": if status { "True" } else { "False" }, "lastTransitionTime": now});
        let status = json!({"status": {
            "phase": "Pending",
            "startTime": now,
            "conditions": [
                condition("PodScheduled", true),
                condition("Initialized", initialized),
                condition("ContainersReady", false),
                condition("Ready", false),
            ],
            "initContainerStatuses": init_statuses,
            "containerStatuses": container_statuses,
        }});
        pods.patch_status(
            &self.name(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .with_context(|| format!("reporting the init containers of pod {}", self.name()))?;
        Ok(())
    }

    /// Starts the pod's first (serving) container from its command line, on a free loopback
    /// port instead of its `--listen` address, with the ONNX Runtime library the image would
    /// carry and one compute thread.
    pub fn start_server(&self) -> Result<SidecarProcess> {
        self.start_server_with(&[])
    }

    /// [`Self::start_server`] with `extra` arguments after the pod's own (what this machine adds
    /// for the cluster's network, e.g. `--resolve` for Service names).
    pub fn start_server_with(&self, extra: &[String]) -> Result<SidecarProcess> {
        let spec = self.pod.spec.as_ref().context("pod without a spec")?;
        let container = spec.containers.first().context("pod without containers")?;
        let (mut args, mut vars) = self.command_line(container);
        args.extend(extra.iter().cloned());
        let port = free_port()?;
        let listen = flag::arg(flag::LISTEN);
        match args.iter().position(|a| *a == listen) {
            Some(i) if i + 1 < args.len() => args[i + 1] = format!("127.0.0.1:{port}"),
            _ => bail!("the serving container has no {listen}: {args:?}"),
        }
        vars.push((
            env::ORT_DYLIB_PATH.to_string(),
            ort_dylib()?.display().to_string(),
        ));
        vars.push(("LEXSERVE_THREADS".to_string(), "1".to_string()));
        let binary = workspace_bin(command::SIDECAR_BINARY)?;
        let name = format!("{}-{}", self.name(), container.name);
        let process = Process::spawn_with_env(
            &name,
            &binary,
            &args,
            &vars,
            &self.dir.join(format!("{}.log", container.name)),
        )?;
        Ok(SidecarProcess::adopt(process, port))
    }

    /// Waits for the server's readiness endpoint to answer 200, then marks
    /// the pod Running and Ready, as kubelet's readiness probe would.
    pub async fn report_ready_when_ready(
        &self,
        pods: &Api<Pod>,
        server: &mut SidecarProcess,
        timeout: Duration,
    ) -> Result<()> {
        server.wait_ready(timeout).await?;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let spec = self.pod.spec.as_ref().context("pod without a spec")?;
        let condition =
            |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
        let container_statuses: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image, "ready": true, "started": true,
                    "restartCount": 0, "state": {"running": {"startedAt": now}},
                })
            })
            .collect();
        let status = json!({"status": {
            "phase": "Running",
            "conditions": [
                condition("PodScheduled"),
                condition("Initialized"),
                condition("ContainersReady"),
                condition("Ready"),
            ],
            "containerStatuses": container_statuses,
        }});
        pods.patch_status(
            &self.name(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .with_context(|| format!("reporting pod {} ready", self.name()))?;
        Ok(())
    }
}

fn image_of<'a>(mut containers: impl Iterator<Item = &'a Container>, name: &str) -> Option<String> {
    containers
        .find(|c| c.name == name)
        .and_then(|c| c.image.clone())
}
