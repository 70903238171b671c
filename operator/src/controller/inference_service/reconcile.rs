//! One reconcile of an InferenceService, as named phases:
//!
//! read (caches) → validate (pure) → build (pure) → apply → sweep orphans → observe (caches)
//! → status (pure) → events (pure) → write status and publish events.
//!
//! An unchanged, settled service makes no API request at all: every read is served from the
//! watch caches, nothing drifted is re-applied, and an unchanged status is not written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument};

use super::drift;
use super::events::events;
use super::gpu_capacity::node_gpus;
use super::scaling_signal::autoscaled;
use super::status::{Observed, ScalingSignal, compute_status, is_settled};
use crate::api::conditions::{
    ConditionType, DesiredCondition, reason, remove_condition, set_condition,
};
use crate::api::inference_service::{InferenceServiceStatus, ScalingProvider};
use crate::api::{InferenceService, ShadowDeployment};
use crate::config::OperatorConfig;
use crate::controller::Error;
use crate::controller::apply::{AppliedChildren, OptionalKind, apply_children};
use crate::controller::child::{ChildKind, DesiredChild};
use crate::controller::context::Context;
use crate::controller::error_policy::key;
use crate::controller::events::publish;
use crate::controller::experiment::children::{router_name, router_selector_labels};
use crate::controller::experiment::routing;
use crate::controller::orphans::{orphans, sweep};
use crate::controller::shadow::children::{candidate_name, candidate_ready};
use crate::controller::shadow::mirror::{is_active, mirror_config, running_mirror_config};
use crate::gpu::{GpuFit, gpu_fit, gpu_resource_name, plan_rollout};
use crate::resources::config_map::{build_config_map, config_map_name};
use crate::resources::labels::{FIELD_MANAGER, selector_labels};
use crate::resources::service::service_url;
use crate::resources::{Children, build_children, deployment, hpa};
use lexserve_contract::mirror::MirrorConfig;

pub(super) const KIND: &str = "InferenceService";
/// How often a service in rollout or trouble is looked at again.
const UNSETTLED_REQUEUE: Duration = Duration::from_secs(10);

/// One reconcile.
#[instrument(skip_all, fields(namespace = %isvc.namespace().unwrap_or_default(), name = %isvc.name_any()))]
pub async fn reconcile(isvc: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    if isvc.metadata.deletion_timestamp.is_some() {
        // Children go with the owner through garbage collection; nothing to undo outside it.
        return Ok(Action::await_change());
    }
    let result = reconcile_phases(&isvc, &ctx).await;
    ctx.metrics.reconciled(KIND, started.elapsed());
    if result.is_ok() {
        ctx.backoff.reset(&key(isvc.as_ref()));
    }
    result
}

async fn reconcile_phases(isvc: &InferenceService, ctx: &Context) -> Result<Action, Error> {
    let namespace = isvc
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("InferenceService has no namespace".to_string()))?;
    if let Err(message) = validate(isvc) {
        let status = invalid_status(isvc, &message, Time(Timestamp::now()));
        write_status(isvc, ctx, &status).await?;
        return Err(Error::InvalidSpec(message));
    }
    let inputs = read(isvc, ctx).await?;
    let desired = build(isvc, &ctx.config, &inputs);
    let applied = apply_children(ctx, KIND, &namespace, desired, Some(&KEDA)).await?;
    let deleted = if applied.rejected.is_empty() {
        sweep_orphans(isvc, ctx, &namespace, &applied.built).await?
    } else {
        // A child that replaces an old one may be the rejected one: keep the old until the
        // new one exists.
        0
    };
    count_writes(ctx, applied.written + deleted);
    let observations = observe(isvc, ctx, &namespace, &applied);
    let mut status = compute_status(isvc, &observations.view(isvc, ctx, &inputs, &applied));
    let next_drift_check = monitor_drift(isvc, ctx, &mut status).await;
    let events = events(isvc.status.as_ref(), &status);
    write_status(isvc, ctx, &status).await?;
    for event in &events {
        publish(ctx, KIND, isvc, event).await;
    }
    if let Some(error) = applied.deferred_error() {
        return Err(error);
    }
    let requeue = requeue_after(&status, &ctx.config);
    Ok(Action::requeue(next_drift_check.map_or(requeue, |next| {
        requeue.min(next.max(Duration::from_secs(1)))
    })))
}

/// Runs a drift check into `status` when one is due (`spec.monitoring.drift`); returns when
/// the next one is. Without drift monitoring, its status and conditions go.
async fn monitor_drift(
    isvc: &InferenceService,
    ctx: &Context,
    status: &mut InferenceServiceStatus,
) -> Option<Duration> {
    let Some(spec) = drift::spec(isvc) else {
        status.drift = None;
        remove_condition(&mut status.conditions, ConditionType::DriftDetected);
        remove_condition(
            &mut status.conditions,
            ConditionType::DriftMonitoringAvailable,
        );
        return None;
    };
    let now = Time(Timestamp::now());
    let version = drift::model_version(isvc, status);
    let carried = drift::carried(status.drift.as_ref(), &version, is_settled(status), &now);
    let wait = drift::next_check_in(spec, Some(&carried), &now);
    if !wait.is_zero() {
        status.drift = Some(carried);
        return Some(wait);
    }
    let reading = match &ctx.prometheus {
        Some(prometheus) => drift::read(prometheus, isvc, spec, &carried, &now).await,
        None => drift::Reading::Unreachable(format!(
            "no Prometheus client for {} (see the operator's log)",
            ctx.config.prometheus_url
        )),
    };
    let (drift_status, conditions) = drift::apply(spec, carried, reading, &now);
    for condition in conditions {
        set_condition(
            &mut status.conditions,
            condition,
            isvc.metadata.generation,
            now.clone(),
        );
    }
    let next = drift::next_check_in(spec, Some(&drift_status), &now);
    status.drift = Some(drift_status);
    Some(next)
}

/// Checks what the CRD's rules cannot. Pure.
pub fn validate(isvc: &InferenceService) -> Result<(), String> {
    let uris = std::iter::once(("spec.model.uri", isvc.spec.model.uri.as_str())).chain(
        isvc.spec
            .model
            .tokenizer
            .as_deref()
            .map(|t| ("spec.model.tokenizer", t)),
    );
    for (field, uri) in uris {
        if uri.starts_with("pvc://") && deployment::pvc_claim(uri).is_none() {
            return Err(format!(
                "{field}: {uri} names no claim; use pvc://<claim>/<path>"
            ));
        }
    }
    Ok(())
}

/// The conditions of a spec that cannot be built, and nothing else changed. Pure.
pub fn invalid_status(isvc: &InferenceService, message: &str, now: Time) -> InferenceServiceStatus {
    let mut status = isvc.status.clone().unwrap_or_default();
    let generation = isvc.metadata.generation;
    status.observed_generation = generation;
    for condition in [
        DesiredCondition::new(ConditionType::Ready, false, reason::INVALID_SPEC, message),
        DesiredCondition::new(ConditionType::Degraded, true, reason::INVALID_SPEC, message),
    ] {
        set_condition(&mut status.conditions, condition, generation, now.clone());
    }
    status
}

/// What the build needs from the cluster besides the object.
pub struct Inputs {
    /// The GPU situation, when the pods request GPUs.
    pub gpu: Option<GpuInputs>,
    /// The selector of the experiment router that holds this service's Service, when one does
    /// (see [`crate::controller::experiment::routing`]): the Service then selects the router's
    /// pods instead of its own, so clients keep their URL.
    pub router_selector: Option<BTreeMap<String, String>>,
    /// The mirror configuration of the shadows that name this service (see
    /// [`crate::controller::shadow::mirror`]), written as a second key of its ConfigMap.
    pub mirror: Option<MirrorConfig>,
}

pub struct GpuInputs {
    /// The extended resource the pods request.
    pub resource: String,
    pub fit: GpuFit,
}

/// Reads the GPU capacity of the nodes the pods may use, from the node and pod caches, and the
/// experiment that holds the service's Service, from the experiment and Deployment caches.
async fn read(isvc: &InferenceService, ctx: &Context) -> Result<Inputs, Error> {
    let router_selector = held_by_router(isvc, ctx);
    let mirror = mirror(isvc, ctx);
    let Some(gpu) = isvc.spec.resources.as_ref().and_then(|r| r.gpu.as_ref()) else {
        return Ok(Inputs {
            gpu: None,
            router_selector,
            mirror,
        });
    };
    let stores = ctx.gpu_stores().await?;
    let resource = gpu_resource_name(gpu);
    let (selector, tolerations) = deployment::placement(isvc);
    let nodes = stores.nodes.state();
    let pods = stores.pods.state();
    let nodes = node_gpus(
        nodes.iter().map(AsRef::as_ref),
        pods.iter().map(AsRef::as_ref),
        &resource,
        &selector.unwrap_or_default(),
        &tolerations.unwrap_or_default(),
    );
    Ok(Inputs {
        gpu: Some(GpuInputs {
            fit: gpu_fit(u64::from(gpu.count), &nodes),
            resource,
        }),
        router_selector,
        mirror,
    })
}

/// The mirror configuration of this service's active shadows, from the shadow and Deployment
/// caches, continuing the generation its ConfigMap holds.
fn mirror(isvc: &InferenceService, ctx: &Context) -> Option<MirrorConfig> {
    let namespace = isvc.namespace()?;
    let shadows = ctx.peers.shadows_of(&namespace, &isvc.name_any());
    let active: Vec<&ShadowDeployment> = shadows
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| {
            let candidate = ctx
                .children
                .deployment(&namespace, &candidate_name(&s.name_any()));
            is_active(s, isvc, candidate_ready(candidate.as_deref()))
        })
        .collect();
    let running = ctx
        .children
        .config_map(&namespace, &config_map_name(&isvc.name_any()))
        .and_then(|cm| running_mirror_config(&cm));
    mirror_config(isvc, &active, running.as_ref(), &ctx.config)
}

/// The router selector of the experiment that holds this service's Service, if one does and
/// its router has a ready replica.
fn held_by_router(isvc: &InferenceService, ctx: &Context) -> Option<BTreeMap<String, String>> {
    let namespace = isvc.namespace()?;
    let experiments = ctx.peers.experiments_of(&namespace, &isvc.name_any());
    let holder = routing::holder(
        experiments.iter().map(AsRef::as_ref),
        isvc.metadata.generation,
    )?;
    let router = ctx
        .children
        .deployment(&namespace, &router_name(&holder.name_any()));
    routing::router_ready(router.as_deref()).then(|| router_selector_labels(&holder.name_any()))
}

/// Every child this object needs, in apply order. Pure.
pub fn build(
    isvc: &InferenceService,
    config: &OperatorConfig,
    inputs: &Inputs,
) -> Vec<DesiredChild> {
    let rollout = plan_rollout(inputs.gpu.as_ref().map(|g| &g.fit));
    let Children {
        config_map: _,
        deployment,
        service,
        pdb,
        hpa,
        scaled_object,
    } = build_children(isvc, config, rollout);
    let mut service = service;
    if let (Some(selector), Some(spec)) = (&inputs.router_selector, service.spec.as_mut()) {
        spec.selector = Some(selector.clone());
    }
    // The mirror's key changes no pod: the config hash covers only the model's config.
    let config_map = build_config_map(isvc, inputs.mirror.as_ref());
    let mut children = vec![
        DesiredChild::new(ChildKind::ConfigMap, &config_map),
        DesiredChild::new(ChildKind::Service, &service),
        DesiredChild::new(ChildKind::Deployment, &deployment),
    ];
    children.extend(pdb.map(|p| DesiredChild::new(ChildKind::PodDisruptionBudget, &p)));
    children.extend(hpa.map(|h| DesiredChild::new(ChildKind::HorizontalPodAutoscaler, &h)));
    children.extend(scaled_object.map(|s| DesiredChild::new(ChildKind::ScaledObject, &s)));
    children
}

/// KEDA's CRD missing from the cluster is a configuration problem, said plainly.
const KEDA: OptionalKind = OptionalKind {
    kind: ChildKind::ScaledObject,
    missing: "spec.scaling.provider is keda, but the cluster has no ScaledObject CRD (keda.sh/v1alpha1): install KEDA or use provider hpa",
};

/// Deletes the children this object owns and no longer builds.
async fn sweep_orphans(
    isvc: &InferenceService,
    ctx: &Context,
    namespace: &str,
    built: &BTreeSet<(ChildKind, String)>,
) -> Result<u64, Error> {
    let Some(uid) = isvc.uid() else {
        return Ok(0);
    };
    let candidates = ctx.children.owned_by(namespace, &uid);
    sweep(ctx, KIND, orphans(built, candidates, &uid)).await
}

fn count_writes(ctx: &Context, writes: u64) {
    if writes > 0 {
        ctx.metrics
            .writes
            .get_or_create(&crate::telemetry::KindLabels {
                kind: KIND.to_string(),
            })
            .inc_by(writes);
        info!(writes, "children written");
    }
}

/// What the status is computed from, read from the apply's results and the caches.
struct Observations {
    deployment: Option<Deployment>,
    pods: Vec<Pod>,
    hpa: Option<Arc<HorizontalPodAutoscaler>>,
}

fn observe(
    isvc: &InferenceService,
    ctx: &Context,
    namespace: &str,
    applied: &AppliedChildren,
) -> Observations {
    let name = isvc.name_any();
    let hpa_wanted = isvc
        .spec
        .scaling
        .as_ref()
        .is_some_and(|s| s.provider == ScalingProvider::Hpa);
    Observations {
        deployment: applied.deployment.clone(),
        pods: ctx.children.pods(namespace, &selector_labels(&name)),
        hpa: hpa_wanted
            .then(|| ctx.children.hpa(namespace, &hpa::hpa_name(&name)))
            .flatten(),
    }
}

impl Observations {
    fn view<'a>(
        &'a self,
        isvc: &InferenceService,
        ctx: &Context,
        inputs: &'a Inputs,
        applied: &AppliedChildren,
    ) -> Observed<'a> {
        let name = isvc.name_any();
        let namespace = isvc.namespace().unwrap_or_default();
        Observed {
            deployment: self.deployment.as_ref(),
            pods: &self.pods,
            hpa: self.hpa.as_deref(),
            gpu_fit: inputs.gpu.as_ref().map(|g| &g.fit),
            gpu_resource: inputs.gpu.as_ref().map(|g| g.resource.as_str()),
            url: service_url(&name, &namespace, &ctx.config),
            reconcile_problem: applied
                .missing_dependency
                .as_ref()
                .map(|e| (reason::MISSING_DEPENDENCY, e.to_string())),
            child_rejected: (!applied.rejected.is_empty()).then(|| {
                applied
                    .rejected
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            scaling_signal: if !autoscaled(isvc) {
                ScalingSignal::NotAutoscaled
            } else {
                match ctx
                    .signals
                    .condition(&ObjectRef::from_obj(isvc), Instant::now())
                {
                    Some(known) => ScalingSignal::Known(known),
                    None => ScalingSignal::Unchecked,
                }
            },
            now: Time(Timestamp::now()),
        }
    }
}

/// Writes the status with server-side apply, only when it changed.
async fn write_status(
    isvc: &InferenceService,
    ctx: &Context,
    status: &InferenceServiceStatus,
) -> Result<(), Error> {
    if isvc.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<InferenceService> =
        Api::namespaced(ctx.client.clone(), &isvc.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": InferenceService::api_version(&()),
        "kind": InferenceService::kind(&()),
        "status": status,
    });
    ctx.metrics
        .api_request(KIND, "APPLY", "inferenceservices/status");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.leadership
        .write(api.patch_status(&isvc.name_any(), &params, &Patch::Apply(&body)))
        .await
        .map_err(Error::not_leader("patch status"))?
        .map_err(Error::kube("patch status"))?;
    Ok(())
}

/// A settled service is looked at again after the resync period; one in rollout or trouble
/// sooner. Pure.
pub fn requeue_after(status: &InferenceServiceStatus, config: &OperatorConfig) -> Duration {
    if is_settled(status) {
        config.resync
    } else {
        UNSETTLED_REQUEUE.min(config.resync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn isvc(spec: serde_json::Value) -> InferenceService {
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": 3},
            "spec": spec
        }))
        .expect("valid")
    }

    fn embedder() -> serde_json::Value {
        json!({"model": {"uri": "file:///m/model.onnx", "format": "onnx", "task": "embed"}})
    }

    #[test]
    fn build_lists_every_wanted_child_in_apply_order() {
        let mut spec = embedder();
        spec["scaling"] = json!({"provider": "hpa", "minReplicas": 2, "maxReplicas": 4});
        let children = build(
            &isvc(spec),
            &OperatorConfig::default(),
            &Inputs {
                gpu: None,
                router_selector: None,
                mirror: None,
            },
        );
        let kinds: Vec<_> = children.iter().map(|c| (c.kind, c.name.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (ChildKind::ConfigMap, "m-sidecar"),
                (ChildKind::Service, "m"),
                (ChildKind::Deployment, "m"),
                (ChildKind::PodDisruptionBudget, "m"),
                (ChildKind::HorizontalPodAutoscaler, "m"),
            ]
        );
        assert!(children.iter().all(|c| c.hash.len() == 16));
    }

    #[test]
    fn a_service_held_by_an_experiment_selects_the_router_and_nothing_else_changes() {
        let own = build(
            &isvc(embedder()),
            &OperatorConfig::default(),
            &Inputs {
                gpu: None,
                router_selector: None,
                mirror: None,
            },
        );
        let router = BTreeMap::from([(
            "lexserve.io/inference-service".to_string(),
            "x-router".to_string(),
        )]);
        let held = build(
            &isvc(embedder()),
            &OperatorConfig::default(),
            &Inputs {
                gpu: None,
                router_selector: Some(router.clone()),
                mirror: None,
            },
        );
        let selector = |children: &[DesiredChild]| {
            children
                .iter()
                .find(|c| c.kind == ChildKind::Service)
                .map(|c| c.object["spec"]["selector"].clone())
        };
        assert_eq!(
            selector(&held),
            Some(serde_json::to_value(&router).expect("json"))
        );
        assert_ne!(selector(&own), selector(&held));
        let others = |children: &[DesiredChild]| {
            children
                .iter()
                .filter(|c| c.kind != ChildKind::Service)
                .map(|c| c.hash.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&own), others(&held));
    }

    #[test]
    fn a_mirror_configuration_is_a_second_config_map_key_and_rolls_no_pod() {
        let inputs = |mirror| Inputs {
            gpu: None,
            router_selector: None,
            mirror,
        };
        let plain = build(&isvc(embedder()), &OperatorConfig::default(), &inputs(None));
        let mirror = MirrorConfig {
            generation: 4,
            targets: vec![],
        };
        let mirrored = build(
            &isvc(embedder()),
            &OperatorConfig::default(),
            &inputs(Some(mirror.clone())),
        );
        let data = |children: &[DesiredChild]| {
            children
                .iter()
                .find(|c| c.kind == ChildKind::ConfigMap)
                .map(|c| c.object["data"].clone())
                .expect("ConfigMap")
        };
        // A plain service writes what it always wrote: the model's config alone.
        let keys: Vec<_> = data(&plain)
            .as_object()
            .expect("data")
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, vec!["config.yaml".to_string()]);
        let with_mirror = data(&mirrored);
        let written: MirrorConfig =
            serde_yaml::from_str(with_mirror["mirror.yaml"].as_str().expect("mirror.yaml"))
                .expect("a MirrorConfig");
        assert_eq!(written, mirror);
        assert_eq!(with_mirror["config.yaml"], data(&plain)["config.yaml"]);
        // Not a pod changes: every other child is the same, the Deployment included.
        let others = |children: &[DesiredChild]| {
            children
                .iter()
                .filter(|c| c.kind != ChildKind::ConfigMap)
                .map(|c| c.hash.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&plain), others(&mirrored));
    }

    #[test]
    fn validate_names_the_field_of_a_claimless_pvc_uri() {
        assert_eq!(validate(&isvc(embedder())), Ok(()));
        let mut spec = embedder();
        spec["model"]["uri"] = json!("pvc://");
        let message = validate(&isvc(spec)).expect_err("invalid");
        assert!(message.starts_with("spec.model.uri: pvc://"), "{message}");
    }

    #[test]
    fn an_invalid_spec_sets_ready_false_and_degraded_true() {
        let status = invalid_status(
            &isvc(embedder()),
            "bad",
            Time(Timestamp::from_second(5).expect("valid")),
        );
        assert_eq!(status.observed_generation, Some(3));
        let reasons: Vec<_> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("Ready", "False", "InvalidSpec"),
                ("Degraded", "True", "InvalidSpec")
            ]
        );
    }
}
