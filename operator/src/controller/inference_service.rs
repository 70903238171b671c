//! The InferenceService reconciler: fetch what the object needs → validate → build every child
//! (pure) → apply what changed → delete children no longer wanted → write status computed from
//! the children, only when it changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::Error;
use super::apply::{Applied, apply_if_changed, delete_if_owned};
use super::context::Context;
use super::gpu_capacity::node_gpus;
use super::scaling_signal::{self, autoscaled};
use super::status::{Observed, ScalingSignal, compute_status, is_settled, reason};
use crate::api::InferenceService;
use crate::api::conditions::{ConditionType, DesiredCondition, set_condition};
use crate::gpu::{GpuFit, gpu_fit, gpu_resource_name, plan_rollout};
use crate::metrics_api::signal::LoadSignal;
use crate::resources::labels::{
    COMPONENT_LABEL, FIELD_MANAGER, INFERENCE_SERVICE_LABEL, selector_labels,
};
use crate::resources::scaled_object::scaled_object_resource;
use crate::resources::service::service_url;
use crate::resources::{Children, build_children, deployment, hpa, pdb, scaled_object};

const KIND: &str = "InferenceService";
/// How often a service in rollout or trouble is looked at again.
const UNSETTLED_REQUEUE: Duration = Duration::from_secs(10);

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    load_signal: Option<LoadSignal>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<InferenceService> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    // Only our children are watched (and cached): a label selector keeps the operator's memory
    // independent of everything else in the cluster.
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let pods = watcher::Config::default().labels(&format!("{COMPONENT_LABEL}=model-server"));
    let controller = Controller::new(api, watcher::Config::default());
    // The load-signal checks re-reconcile a service when what its status should say changes.
    let (signal_tx, signal_rx) = tokio::sync::mpsc::channel(256);
    if let (Some(signal), Some(interval)) = (load_signal, ctx.config.scaling_signal_interval) {
        tokio::spawn(scaling_signal::run(
            controller.store(),
            signal,
            ctx.signals.clone(),
            ctx.metrics.clone(),
            interval,
            signal_tx,
        ));
    } else {
        drop(signal_tx);
    }
    let signal_changes = futures::stream::unfold(signal_rx, |mut rx| async move {
        rx.recv().await.map(|key| (key, rx))
    });
    controller
        .reconcile_on(signal_changes)
        .owns(scoped::<Deployment>(&client, &namespace), owned.clone())
        .owns(scoped::<ConfigMap>(&client, &namespace), owned.clone())
        .owns(scoped::<Service>(&client, &namespace), owned.clone())
        .owns(
            scoped::<HorizontalPodAutoscaler>(&client, &namespace),
            owned.clone(),
        )
        .owns(scoped::<PodDisruptionBudget>(&client, &namespace), owned)
        .watches(scoped::<Pod>(&client, &namespace), pods, |pod| {
            let name = pod.labels().get(INFERENCE_SERVICE_LABEL)?;
            Some(ObjectRef::new(name).within(&pod.namespace()?))
        })
        // Bounded parallelism: a thousand objects changing at once must not become a thousand
        // concurrent reconciles that time the apiserver out. A short debounce folds the burst
        // of events a rollout produces into one reconcile.
        .with_config(
            controller::Config::default()
                .concurrency(ctx.config.concurrency)
                .debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile loop");
            }
        })
        .await;
}

fn key(isvc: &InferenceService) -> String {
    format!(
        "{}/{}",
        isvc.namespace().unwrap_or_default(),
        isvc.name_any()
    )
}

/// One reconcile.
#[instrument(skip_all, fields(namespace = %isvc.namespace().unwrap_or_default(), name = %isvc.name_any()))]
pub async fn reconcile(isvc: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    if isvc.metadata.deletion_timestamp.is_some() {
        // Children go with the owner through garbage collection; nothing to undo outside it.
        return Ok(Action::await_change());
    }
    let result = reconcile_inner(&isvc, &ctx).await;
    ctx.metrics.reconciled(KIND, started.elapsed());
    if result.is_ok() {
        ctx.backoff.reset(&key(&isvc));
    }
    result
}

async fn reconcile_inner(isvc: &InferenceService, ctx: &Context) -> Result<Action, Error> {
    let namespace = isvc
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("InferenceService has no namespace".to_string()))?;
    let name = isvc.name_any();
    let uid = isvc.uid().unwrap_or_default();
    let client = &ctx.client;

    // Validate what CEL cannot: a pvc:// URI must name a claim.
    if let Err(message) = validate(isvc) {
        write_invalid_status(isvc, ctx, &message).await?;
        return Err(Error::InvalidSpec(message));
    }

    // Fetch: the GPU situation, when GPUs are requested.
    let gpu = isvc.spec.resources.as_ref().and_then(|r| r.gpu.as_ref());
    let fit: Option<GpuFit> = match gpu {
        Some(gpu) => {
            let (selector, tolerations) = deployment::placement(isvc);
            let nodes = node_gpus(
                client,
                &gpu_resource_name(gpu),
                &selector.unwrap_or_default(),
                &tolerations.unwrap_or_default(),
            )
            .await?;
            Some(gpu_fit(u64::from(gpu.count), &nodes))
        }
        None => None,
    };

    // Build (pure).
    let rollout = plan_rollout(fit.as_ref());
    let Children {
        config_map,
        deployment: desired_deployment,
        service,
        pdb: desired_pdb,
        hpa: desired_hpa,
        scaled_object: desired_scaled_object,
    } = build_children(isvc, &ctx.config, rollout);

    // Apply what changed; delete what is no longer wanted.
    fn written<K>((applied, _): (Applied, K)) -> u64 {
        u64::from(applied == Applied::Written)
    }
    let mut writes = 0u64;
    writes += written(
        apply_if_changed(
            &Api::<ConfigMap>::namespaced(client.clone(), &namespace),
            config_map,
        )
        .await?,
    );
    writes += written(
        apply_if_changed(
            &Api::<Service>::namespaced(client.clone(), &namespace),
            service,
        )
        .await?,
    );
    let (applied, live_deployment) = apply_if_changed(
        &Api::<Deployment>::namespaced(client.clone(), &namespace),
        desired_deployment,
    )
    .await?;
    writes += written((applied, ()));

    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace);
    writes += match desired_pdb {
        Some(p) => written(apply_if_changed(&pdbs, p).await?),
        None => u64::from(delete_if_owned(&pdbs, &pdb::pdb_name(&name), &uid).await?),
    };
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &namespace);
    writes += match desired_hpa {
        Some(h) => written(apply_if_changed(&hpas, h).await?),
        None => u64::from(delete_if_owned(&hpas, &hpa::hpa_name(&name), &uid).await?),
    };
    let scaled_objects: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &scaled_object_resource());
    let mut deferred_error = None;
    writes += match desired_scaled_object {
        Some(so) => match apply_if_changed(&scaled_objects, so)
            .await
            .map_err(keda_missing)
        {
            Ok(applied) => written(applied),
            // The rest of the service works: report it in status, then fail the reconcile so
            // it is retried with backoff and an Event says why.
            Err(e @ Error::MissingDependency(_)) => {
                deferred_error = Some(e);
                0
            }
            Err(e) => return Err(e),
        },
        // Without KEDA's CRD there is nothing to delete.
        None => match delete_if_owned(
            &scaled_objects,
            &scaled_object::scaled_object_name(&name),
            &uid,
        )
        .await
        {
            Ok(deleted) => u64::from(deleted),
            Err(Error::Kube {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 404 => 0,
            Err(e) => return Err(e),
        },
    };
    if writes > 0 {
        ctx.metrics
            .writes
            .get_or_create(&crate::telemetry::KindLabels {
                kind: KIND.to_string(),
            })
            .inc_by(writes);
        info!(writes, "children applied");
    }

    // Observe and write status.
    let selector = selector_labels(&name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list pods"))?
        .items;
    let live_hpa = if isvc
        .spec
        .scaling
        .as_ref()
        .is_some_and(|s| s.provider == crate::api::inference_service::ScalingProvider::Hpa)
    {
        hpas.get_opt(&hpa::hpa_name(&name))
            .await
            .map_err(Error::kube("get hpa"))?
    } else {
        None
    };
    let gpu_resource = gpu.map(gpu_resource_name);
    let observed = Observed {
        deployment: Some(&live_deployment),
        pods: &pods,
        hpa: live_hpa.as_ref(),
        gpu_fit: fit.as_ref(),
        gpu_resource: gpu_resource.as_deref(),
        url: service_url(&name, &namespace, &ctx.config),
        reconcile_problem: deferred_error
            .as_ref()
            .map(|e| (reason::MISSING_DEPENDENCY, e.to_string())),
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
    };
    let status = compute_status(isvc, &observed);
    if isvc.status.as_ref() != Some(&status) {
        let became_degraded = degraded_reason(&status)
            .filter(|r| Some(*r) != isvc.status.as_ref().and_then(degraded_reason));
        patch_status(isvc, ctx, &status).await?;
        if let Some(reason) = became_degraded {
            let message =
                crate::api::conditions::find_condition(&status.conditions, ConditionType::Degraded)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
            publish(ctx, isvc, EventType::Warning, reason, &message).await;
        }
    }
    if let Some(e) = deferred_error {
        return Err(e);
    }
    Ok(Action::requeue(if is_settled(&status) {
        ctx.config.resync
    } else {
        UNSETTLED_REQUEUE.min(ctx.config.resync)
    }))
}

/// The Degraded reason when the condition is True.
fn degraded_reason(status: &crate::api::inference_service::InferenceServiceStatus) -> Option<&str> {
    crate::api::conditions::find_condition(&status.conditions, ConditionType::Degraded)
        .filter(|c| c.status == "True")
        .map(|c| c.reason.as_str())
}

/// KEDA's CRD missing from the cluster is a configuration problem, said plainly.
fn keda_missing(e: Error) -> Error {
    match e {
        Error::Kube { source: kube::Error::Api(s), .. } if s.code == 404 => Error::MissingDependency(
            "spec.scaling.provider is keda, but the cluster has no ScaledObject CRD (keda.sh/v1alpha1): install KEDA or use provider hpa".to_string(),
        ),
        other => other,
    }
}

/// Checks what the CRD's rules cannot.
fn validate(isvc: &InferenceService) -> Result<(), String> {
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

async fn patch_status(
    isvc: &InferenceService,
    ctx: &Context,
    status: &crate::api::inference_service::InferenceServiceStatus,
) -> Result<(), Error> {
    let api: Api<InferenceService> =
        Api::namespaced(ctx.client.clone(), &isvc.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": InferenceService::api_version(&()),
        "kind": InferenceService::kind(&()),
        "status": status,
    });
    api.patch_status(
        &isvc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::kube("patch status"))?;
    Ok(())
}

/// Puts an invalid spec into the conditions (and nothing else), so `kubectl get` shows why.
async fn write_invalid_status(
    isvc: &InferenceService,
    ctx: &Context,
    message: &str,
) -> Result<(), Error> {
    let mut status = isvc.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let generation = isvc.metadata.generation;
    status.observed_generation = generation;
    for condition in [
        DesiredCondition::new(ConditionType::Ready, false, reason::INVALID_SPEC, message),
        DesiredCondition::new(ConditionType::Degraded, true, reason::INVALID_SPEC, message),
    ] {
        set_condition(&mut status.conditions, condition, generation, now.clone());
    }
    if isvc.status.as_ref() != Some(&status) {
        patch_status(isvc, ctx, &status).await?;
    }
    Ok(())
}

async fn publish(
    ctx: &Context,
    isvc: &InferenceService,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &isvc.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

/// Logs, counts, publishes a Warning event, and requeues with backoff — except for an invalid
/// spec, which only a change to the object can fix.
pub fn error_policy(isvc: Arc<InferenceService>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = %isvc.namespace().unwrap_or_default(), name = %isvc.name_any(), error = %error, "reconcile failed");
    ctx.metrics.failed(KIND, error.reason());
    let reason = error.reason();
    let note = error.to_string();
    let event_ctx = ctx.clone();
    let event_isvc = isvc.clone();
    tokio::spawn(async move {
        publish(&event_ctx, &event_isvc, EventType::Warning, reason, &note).await;
    });
    match error {
        Error::InvalidSpec(_) => Action::await_change(),
        _ => Action::requeue(ctx.backoff.next_delay(&key(&isvc))),
    }
}
