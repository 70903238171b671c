//! The model server's Deployment: an init container that fetches the model and checks its
//! digest, then the sidecar serving it, with probes, a restricted security context, GPUs and the
//! user's pod template fragments.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, HTTPGetAction, KeyToPath, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use lexserve_contract::drift;
use lexserve_contract::names::{command, drain, env, flag, http, path};
use lexserve_contract::uri::ModelUri;
use lexserve_contract::{DraftModelSpec, SpeculationMode};

use super::config_map::{config_hash, config_map_name};
use super::labels::{CONFIG_HASH_ANNOTATION, selector_labels};
use super::{autoscaled, child_meta, fixed_replicas, model_pin};
use crate::api::InferenceService;
use crate::api::inference_service::{ConfigMapKey, GpuSpec, ModelSpec, PodTemplateFragment};
use crate::config::OperatorConfig;
use crate::gpu::{RolloutPlan, gpu_resource_name};

/// The port the sidecar listens on (HTTP API and `/metrics`).
pub const HTTP_PORT: i32 = http::PORT as i32;
/// The unprivileged user the sidecar runs as (the distroless `nonroot` user).
pub(crate) const RUN_AS_USER: i64 = 65532;
/// The node label the NVIDIA GPU feature discovery sets to the GPU model.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// The taint GPU node pools usually carry.
pub const GPU_TAINT_KEY: &str = "nvidia.com/gpu";

/// The Deployment's name for an InferenceService (the same as the InferenceService).
pub fn deployment_name(isvc_name: &str) -> String {
    isvc_name.to_string()
}

/// Builds the Deployment.
pub fn build_deployment(
    isvc: &InferenceService,
    config: &OperatorConfig,
    rollout: RolloutPlan,
) -> Deployment {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let spec = &isvc.spec;
    let fragment = spec.pod_template.clone().unwrap_or_default();
    let gpu = spec.resources.as_ref().and_then(|r| r.gpu.as_ref());
    let image = spec
        .runtime
        .as_ref()
        .and_then(|r| r.image.clone())
        .unwrap_or_else(|| config.sidecar_image.clone());

    let mut pod_labels = fragment.labels.clone().unwrap_or_default();
    // The operator's own labels win: the selector depends on them.
    pod_labels.extend(selector_labels(&name));

    let mut pod_annotations = fragment.annotations.clone().unwrap_or_default();
    pod_annotations.extend([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
        (
            "prometheus.io/path".to_string(),
            http::METRICS_PATH.to_string(),
        ),
        (CONFIG_HASH_ANNOTATION.to_string(), config_hash(isvc)),
    ]);

    let (fetch_containers, mut volumes) = fetch_init_containers(isvc, &image);
    volumes.push(Volume {
        name: "config".to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&name),
            ..Default::default()
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    if let Some(reference) = drift_reference(isvc) {
        volumes.push(Volume {
            name: DRIFT_REFERENCE_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: reference.name.clone(),
                items: Some(vec![KeyToPath {
                    key: reference.key.clone(),
                    path: reference.key.clone(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let (node_selector, tolerations) = placement(isvc);
    let pod_spec = PodSpec {
        init_containers: Some(fetch_containers),
        containers: vec![serve_container(isvc, &name, &image, gpu)],
        volumes: Some(volumes),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // The sidecar never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        node_selector,
        tolerations,
        affinity: fragment.affinity.clone(),
        priority_class_name: fragment.priority_class_name.clone(),
        service_account_name: fragment.service_account_name.clone(),
        image_pull_secrets: fragment.image_pull_secrets.clone(),
        // Long enough for the sidecar to keep serving through its shutdown delay, then drain
        // in-flight requests (its own drain timeout), with room for the process to exit. The
        // delay reaches the sidecar through the config file's runtime block.
        termination_grace_period_seconds: Some(drain::termination_grace_seconds(
            spec.runtime.clone().unwrap_or_default().shutdown_delay(),
        )),
        ..Default::default()
    };

    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&name)),
            ..child_meta(isvc)
        },
        spec: Some(DeploymentSpec {
            // With an autoscaler, replicas belong to it: leaving the field out of the apply
            // means the operator never fights the HPA over it.
            replicas: if autoscaled(isvc) {
                None
            } else {
                Some(fixed_replicas(isvc))
            },
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            strategy: Some(strategy(rollout)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where the pods may run: the node selector and tolerations of the pod template. The
/// controller uses the same answer to find the nodes whose GPU capacity it checks.
pub fn placement(
    isvc: &InferenceService,
) -> (Option<BTreeMap<String, String>>, Option<Vec<Toleration>>) {
    let fragment = isvc.spec.pod_template.clone().unwrap_or_default();
    let gpu = isvc.spec.resources.as_ref().and_then(|r| r.gpu.as_ref());
    (node_selector(&fragment, gpu), tolerations(&fragment, gpu))
}

/// Surge when a new pod fits beside the old ones; otherwise replace in place, because a surge
/// pod that cannot get a GPU stays Pending and the rollout deadlocks.
fn strategy(rollout: RolloutPlan) -> DeploymentStrategy {
    let (max_surge, max_unavailable) = match rollout {
        RolloutPlan::Surge => (IntOrString::String("25%".to_string()), IntOrString::Int(0)),
        RolloutPlan::InPlace => (IntOrString::Int(0), IntOrString::Int(1)),
    };
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_string()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(max_surge),
            max_unavailable: Some(max_unavailable),
        }),
    }
}

fn volume_mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

pub(crate) fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a fetched artifact is in the pod, as a `file://` URI for the sidecar: the path `fetch`
/// was given as `--dest`, which is the artifact itself (the model file, whatever its name, or the
/// model's directory), so the sidecar loads and digests exactly what `fetch` verified.
fn local_uri(artifact: &str) -> String {
    ModelUri::File(path::fetched_artifact(artifact).into()).to_string()
}

/// The init containers that fetch the model (and its tokenizer, when it lives elsewhere), and
/// the volumes they need. Each fetch gets what the first one resolved its uri to, once the
/// status records it (see [`model_pin`]), and the model's format, task and quantization, which
/// pick the files of an `hf://` repository that names none.
fn fetch_init_containers(isvc: &InferenceService, image: &str) -> (Vec<Container>, Vec<Volume>) {
    let model: &ModelSpec = &isvc.spec.model;
    let recorded = isvc.status.as_ref().and_then(|s| s.model.as_ref());
    let mut volumes = vec![Volume {
        name: "models".to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: model_volume_size_limit(model, draft_model(isvc)),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut claims: Vec<String> = Vec::new();
    let mut containers = Vec::new();

    let (model_fetch, tokenizer_fetch) = model_pin::wanted(model);
    let mut artifacts = vec![(model_fetch, path::MODEL_ARTIFACT)];
    artifacts.extend(tokenizer_fetch.map(|t| (t, path::TOKENIZER_ARTIFACT)));
    artifacts.extend(draft_model(isvc).map(|d| (model_pin::wanted_draft(d), path::DRAFT_ARTIFACT)));
    for (wanted, artifact) in artifacts {
        let (container_name, uri, sha256) = (wanted.container, wanted.uri, wanted.sha256);
        let mut mounts = vec![volume_mount("models", path::MODELS_DIR, false)];
        if let Some(claim) = pvc_claim(uri) {
            let volume_name = format!("pvc-{claim}");
            if !claims.contains(&claim) {
                claims.push(claim.clone());
                volumes.push(Volume {
                    name: volume_name.clone(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.clone(),
                        read_only: Some(true),
                    }),
                    ..Default::default()
                });
            }
            mounts.push(volume_mount(
                &volume_name,
                &format!("{}/{claim}", path::PVC_ROOT),
                true,
            ));
        }
        let mut args = vec![
            command::FETCH.to_string(),
            flag::arg(flag::URI),
            uri.to_string(),
            flag::arg(flag::DEST),
            path::fetched_artifact(artifact),
            flag::arg(flag::PVC_ROOT),
            path::PVC_ROOT.to_string(),
        ];
        if let Some(sha) = sha256 {
            args.extend([flag::arg(flag::SHA256), sha.to_string()]);
        }
        if let Some(revision) = model_pin::pinned_revision(recorded, wanted) {
            args.extend([flag::arg(flag::REVISION), revision]);
        }
        args.extend(selection_args(isvc, uri, artifact));
        let env_from = model.credentials_secret.as_ref().map(|secret| {
            vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.name.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        });
        containers.push(Container {
            name: container_name.to_string(),
            image: Some(image.to_string()),
            args: Some(args),
            env_from,
            volume_mounts: Some(mounts),
            resources: Some(fetch_resources()),
            security_context: Some(restricted_security_context()),
            // The digest it verified is read back from here into status.model.digest.
            termination_message_policy: Some("FallbackToLogsOnError".to_string()),
            ..Default::default()
        });
    }
    (containers, volumes)
}

/// What the fetch init container asks for. `fetch` streams: it copies and hashes through a fixed
/// 1 MiB buffer, so its memory does not grow with the model (peak RSS measured at 12 MiB copying
/// the 94 MiB SmolLM2 GGUF); a remote fetch adds an HTTP/TLS client and a listing. 64Mi requested,
/// 256Mi as the limit leaves that room several times over. The page cache of the written model is
/// charged to the container too, but the kernel reclaims it under the limit instead of killing
/// the process, so models far larger than the limit fetch fine. One CPU is all it can use: one
/// thread hashes, and the downloads run on a single-threaded runtime; 100m requested because it
/// mostly waits on the disk or the network. (An init container's requests count toward scheduling
/// only where they exceed the serving container's, so these never move a pod.)
pub fn fetch_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("100m", "64Mi")),
        limits: Some(quantities("1", "256Mi")),
        ..Default::default()
    }
}

/// The draft model of speculation mode `draft`, when the spec runs that mode (the CRD admits a
/// `draftModel` only with it).
pub fn draft_model(isvc: &InferenceService) -> Option<&DraftModelSpec> {
    let speculation = isvc
        .spec
        .runtime
        .as_ref()?
        .generation
        .as_ref()?
        .speculation
        .as_ref()?;
    if speculation.mode != Some(SpeculationMode::Draft) {
        return None;
    }
    speculation.draft_model.as_ref()
}

/// Room beyond twice the model in its volume: a separate tokenizer and filesystem overhead.
const MODEL_VOLUME_HEADROOM: u64 = 256 << 20;

/// The model volume's `sizeLimit` from `spec.model.size`: twice the model, because a fetch stages
/// its copy beside a complete one an earlier attempt in the same pod may have left (an init
/// container restarted in place keeps its emptyDir, and the old copy is removed only once the new
/// one is verified), plus [`MODEL_VOLUME_HEADROOM`]; a draft model adds twice its own size (its
/// `size`, else the model's). Rounded up to whole MiB. Without a size, no limit: a guess would
/// evict pods serving models larger than it.
pub fn model_volume_size_limit(
    model: &ModelSpec,
    draft: Option<&DraftModelSpec>,
) -> Option<Quantity> {
    const MIB: u64 = 1 << 20;
    // The CRD's pattern admits only quantities that parse; an amount too large saturates.
    let size = model.size.as_ref()?.value().ok()?;
    let draft_size = match draft {
        Some(d) => match &d.size {
            Some(q) => q.value().ok()?,
            None => size,
        },
        None => 0,
    };
    let bytes = size
        .saturating_add(draft_size)
        .saturating_mul(2)
        .saturating_add(MODEL_VOLUME_HEADROOM);
    Some(Quantity(format!("{}Mi", bytes.div_ceil(MIB))))
}

/// What the fetch of an `hf://` repository without a file picks: the model's weights for its
/// format, task and quantization, or the tokenizer's files. Nothing for other schemes, whose uri
/// names exactly what to copy (and whose pods then keep their template as it was).
fn selection_args(isvc: &InferenceService, uri: &str, artifact: &str) -> Vec<String> {
    if !matches!(ModelUri::parse(uri), Ok(ModelUri::HuggingFace { .. })) {
        return Vec::new();
    }
    if artifact == path::TOKENIZER_ARTIFACT {
        return vec![flag::arg(flag::ARTIFACT), "tokenizer".to_string()];
    }
    let model = &isvc.spec.model;
    let mut args = vec![
        flag::arg(flag::FORMAT),
        lowercase_name(&model.format),
        flag::arg(flag::TASK),
        lowercase_name(&model.task),
    ];
    if let Some(quantize) = isvc.spec.runtime.as_ref().and_then(|r| r.quantize) {
        args.extend([flag::arg(flag::QUANTIZE), lowercase_name(&quantize)]);
    }
    args
}

/// An enum's name as the spec (and the sidecar's flags) spell it.
fn lowercase_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The claim name of a `pvc://<claim>/<path>` URI (the contract's grammar decides what a claim is).
pub fn pvc_claim(uri: &str) -> Option<String> {
    match ModelUri::parse(uri) {
        Ok(ModelUri::Pvc { claim, .. }) => Some(claim),
        _ => None,
    }
}

fn serve_container(
    isvc: &InferenceService,
    name: &str,
    image: &str,
    gpu: Option<&GpuSpec>,
) -> Container {
    let spec = &isvc.spec;
    let mut env = vec![
        EnvVar {
            name: env::MODEL_URI.to_string(),
            value: Some(local_uri(path::MODEL_ARTIFACT)),
            ..Default::default()
        },
        EnvVar {
            name: env::MODEL_NAME.to_string(),
            value: Some(name.to_string()),
            ..Default::default()
        },
    ];
    if spec.model.tokenizer.is_some() {
        env.push(EnvVar {
            name: env::TOKENIZER.to_string(),
            value: Some(local_uri(path::TOKENIZER_ARTIFACT)),
            ..Default::default()
        });
    }
    if draft_model(isvc).is_some() {
        // The config file names where the draft comes from; the sidecar loads the fetched copy
        // (and checks the digest the file pins).
        env.push(EnvVar {
            name: env::DRAFT_MODEL_URI.to_string(),
            value: Some(local_uri(path::DRAFT_ARTIFACT)),
            ..Default::default()
        });
    }
    if let Some(generation) = isvc.metadata.generation {
        env.push(EnvVar {
            name: env::MODEL_VERSION.to_string(),
            value: Some(generation.to_string()),
            ..Default::default()
        });
    }

    let mut args = vec![
        command::SERVE.to_string(),
        flag::arg(flag::CONFIG),
        path::config_file(),
        flag::arg(flag::LISTEN),
        http::default_listen(),
    ];
    let mut mounts = vec![
        volume_mount("config", path::CONFIG_DIR, true),
        volume_mount("models", path::MODELS_DIR, true),
        volume_mount("tmp", "/tmp", false),
    ];
    if let Some(reference) = drift_reference(isvc) {
        args.extend([
            flag::arg(flag::DRIFT_REFERENCE),
            format!("{}/{}", drift::REFERENCE_DIR, reference.key),
        ]);
        mounts.push(volume_mount(
            DRIFT_REFERENCE_VOLUME,
            drift::REFERENCE_DIR,
            true,
        ));
    }

    Container {
        name: "sidecar".to_string(),
        image: Some(image.to_string()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(http::PORT_NAME.to_string()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        resources: Some(resources(isvc, gpu)),
        volume_mounts: Some(mounts),
        // A large model can take minutes to load and warm up: the startup probe allows up to
        // 10 minutes before liveness takes over, so slow loads are not killed.
        startup_probe: Some(Probe {
            http_get: Some(http_get(http::HEALTH_PATH)),
            period_seconds: Some(5),
            failure_threshold: Some(120),
            ..Default::default()
        }),
        readiness_probe: Some(readiness_probe()),
        liveness_probe: Some(liveness_probe()),
        security_context: Some(restricted_security_context()),
        ..Default::default()
    }
}

/// The volume holding a drift reference sample.
const DRIFT_REFERENCE_VOLUME: &str = "drift-reference";

/// The ConfigMap key of the drift reference sample, when the baseline is one.
fn drift_reference(isvc: &InferenceService) -> Option<&ConfigMapKey> {
    isvc.spec
        .monitoring
        .as_ref()?
        .drift
        .as_ref()?
        .baseline
        .reference
        .as_ref()
}

/// An HTTP probe of `path` on the named HTTP port.
fn http_get(path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.to_string()),
        port: IntOrString::String(http::PORT_NAME.to_string()),
        ..Default::default()
    }
}

/// `/ready` every 5 s: out of the endpoints after two misses (a draining sidecar or router).
pub fn readiness_probe() -> Probe {
    Probe {
        http_get: Some(http_get(http::READY_PATH)),
        period_seconds: Some(5),
        failure_threshold: Some(2),
        ..Default::default()
    }
}

/// `/health` every 10 s: restarted after three misses (a crashed worker answers 503 there).
pub fn liveness_probe() -> Probe {
    Probe {
        http_get: Some(http_get(http::HEALTH_PATH)),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// CPU and memory as requests and limits (equal, so the pod is Guaranteed when both are set and
/// latency does not suffer from CPU throttling surprises); GPUs in limits.
fn resources(isvc: &InferenceService, gpu: Option<&GpuSpec>) -> ResourceRequirements {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(r) = isvc.spec.resources.as_ref() {
        if let Some(cpu) = &r.cpu {
            requests.insert("cpu".to_string(), cpu.clone());
            limits.insert("cpu".to_string(), cpu.clone());
        }
        if let Some(memory) = &r.memory {
            requests.insert("memory".to_string(), memory.clone());
            limits.insert("memory".to_string(), memory.clone());
        }
    }
    if let Some(gpu) = gpu {
        limits.insert(gpu_resource_name(gpu), Quantity(gpu.count.to_string()));
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

/// The user's node selector plus the GPU product; the product wins on conflict because the GPU
/// request was derived from it.
fn node_selector(
    fragment: &PodTemplateFragment,
    gpu: Option<&GpuSpec>,
) -> Option<BTreeMap<String, String>> {
    let mut selector = fragment.node_selector.clone().unwrap_or_default();
    if let Some(gpu) = gpu {
        if let Some(product) = &gpu.product {
            selector.insert(GPU_PRODUCT_LABEL.to_string(), product.clone());
        }
        if gpu.mig_profile.is_some()
            && gpu.resource_name == crate::api::inference_service::DEFAULT_GPU_RESOURCE
        {
            // MIG "single" strategy: every GPU of the node is sliced alike and exposed as
            // nvidia.com/gpu; only such nodes may take the pod.
            selector.insert("nvidia.com/mig.strategy".to_string(), "single".to_string());
        }
    }
    (!selector.is_empty()).then_some(selector)
}

/// The user's tolerations plus one for the usual GPU taint when GPUs are requested.
fn tolerations(fragment: &PodTemplateFragment, gpu: Option<&GpuSpec>) -> Option<Vec<Toleration>> {
    let mut tolerations = fragment.tolerations.clone().unwrap_or_default();
    if gpu.is_some()
        && !tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some(GPU_TAINT_KEY))
    {
        tolerations.push(Toleration {
            key: Some(GPU_TAINT_KEY.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some("NoSchedule".to_string()),
            ..Default::default()
        });
    }
    (!tolerations.is_empty()).then_some(tolerations)
}
