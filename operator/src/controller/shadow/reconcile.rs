//! One reconcile of a ShadowDeployment, as named phases:
//!
//! read (caches) → validate (pure) → build the candidate (pure) → apply → sweep orphans →
//! observe (caches, Prometheus: the live mirror generation, and the shadow's series when an
//! analysis is due) → judge (pure) → on a pass, the Experiment of `onPass` → status (pure) →
//! events (pure) → write status and publish events.
//!
//! The mirror itself is production's: the InferenceService controller writes the target into
//! production's ConfigMap while this shadow is active (see [`super::mirror::is_active`]) and
//! removes it when the shadow finishes or goes. Everything lives in the cluster (the start
//! time, the last analysis, the verdict), so an operator restart resumes where it stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use lexserve_contract::duration::parse_duration;
use serde_json::json;
use tracing::{info, instrument};

use super::children::{
    build_candidate_children, candidate_inference_service, candidate_name, candidate_ready,
};
use super::events::events;
use super::experiment::{build_experiment, experiment_name, promoted_name};
use super::mirror::{generation_with, running_mirror_config};
use super::observe::{mirror_generation_live, observe};
use super::status::{Observed, compute_status, finished, next_analysis_in};
use super::validate::validate;
use crate::analysis::shadow::judge;
use crate::api::shadow_deployment::{OnPass, ShadowDeploymentStatus, ShadowPhase, ShadowVerdict};
use crate::api::{Experiment, InferenceService, ShadowDeployment};
use crate::controller::Error;
use crate::controller::apply::{OptionalKind, apply_children};
use crate::controller::child::ChildKind;
use crate::controller::context::Context;
use crate::controller::error_policy::key;
use crate::controller::events::publish;
use crate::controller::orphans::{orphans, sweep};
use crate::resources::config_map::config_map_name;
use crate::resources::labels::FIELD_MANAGER;

pub(super) const KIND: &str = "ShadowDeployment";
/// How often a shadow waiting for its candidate or its mirror is looked at again (the
/// candidate's Deployment also triggers a reconcile when it changes; the live generation is
/// only in Prometheus).
const PENDING_REQUEUE: Duration = Duration::from_secs(2);

/// What the ShadowDeployment controller gets: the shared context and Prometheus.
pub struct ShadowContext {
    pub shared: Arc<Context>,
    pub prometheus: Option<prometheus_http_query::Client>,
}

/// One reconcile.
#[instrument(skip_all, fields(namespace = %shadow.namespace().unwrap_or_default(), name = %shadow.name_any()))]
pub async fn reconcile(
    shadow: Arc<ShadowDeployment>,
    sctx: Arc<ShadowContext>,
) -> Result<Action, Error> {
    let ctx = &sctx.shared;
    let started = Instant::now();
    if shadow.metadata.deletion_timestamp.is_some() {
        // The candidate goes with the owner through garbage collection, and production's
        // mirror configuration loses the target as soon as the InferenceService controller
        // sees the shadow go (its watch of shadows triggers production).
        return Ok(Action::await_change());
    }
    let result = reconcile_phases(&shadow, ctx, sctx.prometheus.as_ref()).await;
    ctx.metrics.reconciled(KIND, started.elapsed());
    if result.is_ok() {
        ctx.backoff.reset(&key(shadow.as_ref()));
    }
    result
}

async fn reconcile_phases(
    shadow: &ShadowDeployment,
    ctx: &Context,
    prometheus: Option<&prometheus_http_query::Client>,
) -> Result<Action, Error> {
    let namespace = shadow
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("ShadowDeployment has no namespace".to_string()))?;
    let name = shadow.name_any();
    let now = Time(Timestamp::now());
    let before = shadow.status.clone().unwrap_or_default();

    if finished(shadow.status.as_ref()) {
        // Nothing is mirrored any more: the candidate goes. A pass whose Experiment could not
        // be created yet is retried.
        remove_candidate(shadow, ctx, &namespace).await?;
        let experiment = create_experiment_if_due(shadow, ctx, &before).await?;
        let status = compute_status(
            shadow,
            &Observed {
                problems: &[],
                candidate_replicas: (0, 0),
                generation_written: None,
                generation_live: None,
                analysis: None,
                experiment,
                now,
            },
        );
        finish(shadow, ctx, &status).await?;
        return Ok(Action::requeue(ctx.config.resync));
    }

    // Read and validate.
    let production = ctx
        .peers
        .inference_service(&namespace, &shadow.spec.production);
    let problems = validate(shadow, production.as_deref());
    if !problems.is_empty() {
        // Nothing is mirrored (the shadow is not active): no candidate either.
        remove_candidate(shadow, ctx, &namespace).await?;
        let status = compute_status(
            shadow,
            &Observed {
                problems: &problems,
                candidate_replicas: (0, 0),
                generation_written: None,
                generation_live: None,
                analysis: None,
                experiment: None,
                now,
            },
        );
        finish(shadow, ctx, &status).await?;
        // A change of production (created, fixed) or of this object triggers the next look.
        return Ok(Action::requeue(ctx.config.resync));
    }

    // Build, apply and sweep.
    let desired = build_candidate_children(shadow, &ctx.config);
    let mut applied = apply_children(ctx, KIND, &namespace, desired, Some(&KEDA)).await?;
    if let Some(missing) = applied.missing_dependency.take() {
        return Err(missing);
    }
    if applied.rejected.is_empty()
        && let Some(uid) = shadow.uid()
    {
        let owned = ctx.children.owned_by(&namespace, &uid);
        let deleted = sweep(ctx, KIND, orphans(&applied.built, owned, &uid)).await?;
        if applied.written + deleted > 0 {
            info!(writes = applied.written + deleted, "children written");
        }
    }

    // Observe.
    let deployment = applied.deployment.clone().or_else(|| {
        ctx.children
            .deployment(&namespace, &candidate_name(&name))
            .map(|d| d.as_ref().clone())
    });
    let ready = if candidate_ready(deployment.as_ref()) {
        deployment
            .as_ref()
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    } else {
        0
    };
    let wanted = deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let generation_written = ctx
        .children
        .config_map(&namespace, &config_map_name(&shadow.spec.production))
        .and_then(|cm| running_mirror_config(&cm))
        .and_then(|config| generation_with(&config, &name));
    let generation_live = match (prometheus, generation_written) {
        (Some(prometheus), Some(_)) => {
            mirror_generation_live(prometheus, &namespace, &shadow.spec.production)
                .await
                .or_else(|| before.mirror.as_ref().and_then(|m| m.generation_live))
        }
        _ => None,
    };
    let interval = ctx.config.shadow_analysis_interval;
    let duration = parse_duration(&shadow.spec.duration).unwrap_or(Duration::from_secs(86_400));
    let analysis = match (prometheus, analysis_due(&before, interval, &now)) {
        (Some(prometheus), Some(elapsed)) => {
            let observation = observe(prometheus, shadow, elapsed).await;
            let judgement = judge(&shadow.spec.criteria, &observation, elapsed, duration);
            Some((observation, judgement))
        }
        _ => None,
    };
    let experiment = match &analysis {
        Some((_, judgement)) if judgement.verdict == Some(ShadowVerdict::Pass) => {
            let passed = ShadowDeploymentStatus {
                verdict: Some(ShadowVerdict::Pass),
                ..before.clone()
            };
            create_experiment_if_due(shadow, ctx, &passed).await?
        }
        _ => None,
    };

    // Status and events.
    let status = compute_status(
        shadow,
        &Observed {
            problems: &[],
            candidate_replicas: (ready, wanted),
            generation_written,
            generation_live,
            analysis: analysis.as_ref().map(|(o, j)| (o, j)),
            experiment,
            now: now.clone(),
        },
    );
    finish(shadow, ctx, &status).await?;
    if finished(Some(&status)) {
        // Mirroring stops (the shadow is no longer active) and the candidate goes now, not at
        // the next reconcile.
        remove_candidate(shadow, ctx, &namespace).await?;
        return Ok(Action::requeue(ctx.config.resync));
    }
    if !applied.rejected.is_empty() {
        return Err(Error::ChildRejected(applied.rejected));
    }
    Ok(Action::requeue(requeue_after(
        &status,
        interval,
        &now,
        ctx.config.resync,
    )))
}

/// KEDA's CRD missing from the cluster is a configuration problem, said plainly.
const KEDA: OptionalKind = OptionalKind {
    kind: ChildKind::ScaledObject,
    missing: "spec.candidate.scaling.provider is keda, but the cluster has no ScaledObject CRD (keda.sh/v1alpha1): install KEDA or use provider hpa or none",
};

/// The time since the shadow started mirroring when an analysis is due now. Pure.
pub fn analysis_due(
    status: &ShadowDeploymentStatus,
    interval: Duration,
    now: &Time,
) -> Option<Duration> {
    if status.phase != Some(ShadowPhase::Running) {
        return None;
    }
    let start = status.start_time.as_ref()?;
    if !next_analysis_in(status, interval, now).is_zero() {
        return None;
    }
    Duration::try_from(now.0.duration_since(start.0)).ok()
}

/// When to look again: soon while waiting for the candidate or the mirror, at the next
/// analysis while running. Pure.
pub fn requeue_after(
    status: &ShadowDeploymentStatus,
    interval: Duration,
    now: &Time,
    resync: Duration,
) -> Duration {
    match status.phase {
        Some(ShadowPhase::Pending) | None => PENDING_REQUEUE,
        Some(ShadowPhase::Running) => next_analysis_in(status, interval, now)
            .max(Duration::from_millis(200))
            .min(resync),
        Some(_) => resync,
    }
}

/// Deletes every child the shadow owns (the candidate's): nothing is mirrored to it any more.
async fn remove_candidate(
    shadow: &ShadowDeployment,
    ctx: &Context,
    namespace: &str,
) -> Result<(), Error> {
    let Some(uid) = shadow.uid() else {
        return Ok(());
    };
    let owned = ctx.children.owned_by(namespace, &uid);
    let deleted = sweep(ctx, KIND, orphans(&Default::default(), owned, &uid)).await?;
    if deleted > 0 {
        info!(deleted, "candidate removed");
    }
    Ok(())
}

/// With `onPass: CreateExperiment` and a pass that has no Experiment yet: applies the
/// candidate as an InferenceService and an Experiment between production and it, both owned
/// by the shadow. Returns the Experiment's name when it was created now.
async fn create_experiment_if_due(
    shadow: &ShadowDeployment,
    ctx: &Context,
    status: &ShadowDeploymentStatus,
) -> Result<Option<String>, Error> {
    if shadow.spec.on_pass != OnPass::CreateExperiment
        || status.verdict != Some(ShadowVerdict::Pass)
        || status.experiment.is_some()
    {
        return Ok(None);
    }
    let namespace = shadow.namespace().unwrap_or_default();
    let name = shadow.name_any();
    let owner = shadow.controller_owner_ref(&());
    let mut isvc = candidate_inference_service(shadow, &promoted_name(&name));
    isvc.metadata.owner_references = owner.clone().map(|r| vec![r]);
    apply(
        Api::<InferenceService>::namespaced(ctx.client.clone(), &namespace),
        ctx,
        &promoted_name(&name),
        serde_json::to_value(&isvc).unwrap_or_default(),
        "inferenceservices",
    )
    .await?;
    let mut experiment = build_experiment(shadow);
    experiment.metadata.owner_references = owner.map(|r| vec![r]);
    apply(
        Api::<Experiment>::namespaced(ctx.client.clone(), &namespace),
        ctx,
        &experiment_name(&name),
        serde_json::to_value(&experiment).unwrap_or_default(),
        "experiments",
    )
    .await?;
    info!(experiment = %experiment_name(&name), "experiment created");
    Ok(Some(experiment_name(&name)))
}

/// Server-side apply of one object the shadow makes outside its candidate.
async fn apply<K>(
    api: Api<K>,
    ctx: &Context,
    name: &str,
    mut body: serde_json::Value,
    resource: &'static str,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    // An apply carries only what the operator means to own: no status.
    if let Some(object) = body.as_object_mut() {
        object.remove("status");
    }
    ctx.metrics.api_request(KIND, "APPLY", resource);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.leadership
        .write(api.patch(name, &params, &Patch::Apply(&body)))
        .await
        .map_err(Error::not_leader("apply"))?
        .map_err(Error::kube("apply"))?;
    Ok(())
}

/// Writes the status and publishes what changed.
async fn finish(
    shadow: &ShadowDeployment,
    ctx: &Context,
    status: &ShadowDeploymentStatus,
) -> Result<(), Error> {
    let events = events(shadow.status.as_ref(), status);
    write_status(shadow, ctx, status).await?;
    for event in &events {
        publish(ctx, KIND, shadow, event).await;
    }
    Ok(())
}

/// Writes the status with server-side apply, only when it changed.
async fn write_status(
    shadow: &ShadowDeployment,
    ctx: &Context,
    status: &ShadowDeploymentStatus,
) -> Result<(), Error> {
    if shadow.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<ShadowDeployment> =
        Api::namespaced(ctx.client.clone(), &shadow.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": ShadowDeployment::api_version(&()),
        "kind": ShadowDeployment::kind(&()),
        "status": status,
    });
    ctx.metrics
        .api_request(KIND, "APPLY", "shadowdeployments/status");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.leadership
        .write(api.patch_status(&shadow.name_any(), &params, &Patch::Apply(&body)))
        .await
        .map_err(Error::not_leader("patch status"))?
        .map_err(Error::kube("patch status"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("valid"))
    }

    #[test]
    fn an_analysis_is_due_only_while_running_and_once_per_interval() {
        let mut status = ShadowDeploymentStatus {
            phase: Some(ShadowPhase::Running),
            start_time: Some(at(100)),
            ..Default::default()
        };
        let interval = Duration::from_secs(10);
        assert_eq!(analysis_due(&status, interval, &at(105)), None);
        assert_eq!(
            analysis_due(&status, interval, &at(110)),
            Some(Duration::from_secs(10))
        );
        status.last_analysis_time = Some(at(110));
        assert_eq!(analysis_due(&status, interval, &at(115)), None);
        assert_eq!(
            requeue_after(&status, interval, &at(115), Duration::from_secs(300)),
            Duration::from_secs(5)
        );
        assert_eq!(
            analysis_due(&status, interval, &at(121)),
            Some(Duration::from_secs(21))
        );
        status.phase = Some(ShadowPhase::Completed);
        assert_eq!(analysis_due(&status, interval, &at(200)), None);
        assert_eq!(
            requeue_after(&status, interval, &at(200), Duration::from_secs(300)),
            Duration::from_secs(300)
        );
    }
}
