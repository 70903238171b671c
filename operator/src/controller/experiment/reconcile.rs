//! One reconcile of an Experiment, as named phases:
//!
//! read (caches) → validate (pure) → build (pure) → apply → sweep orphans → observe (caches,
//! and Prometheus when an analysis is due) → status (pure) → events (pure) → write status and
//! publish events.
//!
//! Everything the experiment's traffic depends on lives in the cluster: the router's weights
//! follow from the status (see [`super::routing`]), the bucket table is read back from the
//! router's ConfigMap, and the control's Service is the InferenceService controller's, which
//! reads this experiment's status. An operator restart therefore resumes where it stopped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use lexserve_contract::duration::parse_duration;
use lexserve_contract::names::{label, metric};
use serde_json::json;
use tracing::{info, instrument};

use super::children::{
    RouterAutoscaler, build_config_map, build_router_autoscaler, build_router_config,
    build_router_deployment, build_router_service, build_variant_services, router_name,
    running_config,
};
use super::events::events;
use super::observe::{PrometheusClient, observe};
use super::routing::{router_ready, weights_in_force};
use super::status::{Observed, compute_status, next_analysis_in};
use super::validate::validate;
use crate::analysis::decision::{Verdict, decide};
use crate::api::experiment::{ExperimentPhase, ExperimentStatus, RoutingProvider};
use crate::api::{Experiment, InferenceService};
use crate::config::OperatorConfig;
use crate::controller::Error;
use crate::controller::apply::{OptionalKind, apply_children};
use crate::controller::child::{ChildKind, DesiredChild};
use crate::controller::context::Context;
use crate::controller::error_policy::key;
use crate::controller::events::publish;
use crate::controller::orphans::{orphans, sweep};
use crate::resources::http_route::build_http_route;
use crate::resources::labels::FIELD_MANAGER;
use crate::resources::load_query::escape;

pub(super) const KIND: &str = "Experiment";
/// How often an experiment waiting for its router is looked at again (the router's
/// Deployment also triggers a reconcile when it changes).
const PENDING_REQUEUE: Duration = Duration::from_secs(5);

/// What the Experiment controller gets: the shared context and Prometheus.
pub struct ExperimentContext {
    pub shared: Arc<Context>,
    pub prometheus: Option<PrometheusClient>,
}

/// One reconcile.
#[instrument(skip_all, fields(namespace = %experiment.namespace().unwrap_or_default(), name = %experiment.name_any()))]
pub async fn reconcile(
    experiment: Arc<Experiment>,
    ectx: Arc<ExperimentContext>,
) -> Result<Action, Error> {
    let ctx = &ectx.shared;
    let started = Instant::now();
    if experiment.metadata.deletion_timestamp.is_some() {
        // The router goes with the owner through garbage collection, and the control's
        // Service stops selecting it as soon as the InferenceService controller sees this.
        return Ok(Action::await_change());
    }
    let result = reconcile_phases(&experiment, ctx, ectx.prometheus.as_ref()).await;
    ctx.metrics.reconciled(KIND, started.elapsed());
    if result.is_ok() {
        ctx.backoff.reset(&key(experiment.as_ref()));
    }
    result
}

async fn reconcile_phases(
    experiment: &Experiment,
    ctx: &Context,
    prometheus: Option<&PrometheusClient>,
) -> Result<Action, Error> {
    let namespace = experiment
        .namespace()
        .ok_or_else(|| Error::InvalidSpec("Experiment has no namespace".to_string()))?;
    let name = experiment.name_any();
    let now = Time(Timestamp::now());

    // Read.
    let services: BTreeMap<String, Arc<InferenceService>> = experiment
        .spec
        .variants
        .iter()
        .filter_map(|v| {
            ctx.peers
                .inference_service(&namespace, &v.inference_service)
                .map(|s| (v.inference_service.clone(), s))
        })
        .collect();
    let others = ctx
        .peers
        .experiments_of(&namespace, &experiment.spec.control);
    let others: Vec<&Experiment> = others.iter().map(AsRef::as_ref).collect();

    // Validate.
    let problems = validate(experiment, |n| services.get(n).map(AsRef::as_ref), &others);
    let weights = weights_in_force(experiment);
    let control = services.get(&experiment.spec.control).map(AsRef::as_ref);
    if !problems.is_empty() {
        let status = compute_status(
            experiment,
            &Observed {
                problems: &problems,
                routing_ready: false,
                router_replicas: (0, 0),
                weights: &weights,
                config_generation: None,
                live_generation: None,
                verdict: None,
                control,
                winner: None,
                now,
            },
        );
        finish(experiment, ctx, &status).await?;
        // A change of a variant (created, fixed) or of this object triggers the next look.
        return Ok(Action::requeue(ctx.config.resync));
    }

    // Build.
    let running = ctx
        .children
        .config_map(&namespace, &router_name(&name))
        .and_then(|cm| running_config(&cm));
    let router = build_router_config(experiment, &weights, running.as_ref(), &ctx.config)
        .map_err(|e| Error::InvalidSpec(format!("spec.variants[].weight: {e}")))?;
    let desired = build(experiment, &ctx.config, control, &router);

    // Apply and sweep.
    let mut applied = apply_children(ctx, KIND, &namespace, desired, Some(&GATEWAY_API)).await?;
    if let Some(missing) = applied.missing_dependency.take() {
        return Err(missing);
    }
    if applied.rejected.is_empty()
        && let Some(uid) = experiment.uid()
    {
        let candidates = ctx.children.owned_by(&namespace, &uid);
        let deleted = sweep(ctx, KIND, orphans(&applied.built, candidates, &uid)).await?;
        if applied.written + deleted > 0 {
            info!(writes = applied.written + deleted, "children written");
        }
    }

    // Observe.
    let deployment = applied.deployment.clone().or_else(|| {
        ctx.children
            .deployment(&namespace, &router_name(&name))
            .map(|d| d.as_ref().clone())
    });
    let routing_ready = match experiment.spec.routing.provider {
        RoutingProvider::Router => router_ready(deployment.as_ref()),
        // The HTTPRoute was admitted; whether a gateway programs it is the gateway's status.
        RoutingProvider::GatewayApi => applied.rejected.is_empty(),
    };
    let before = experiment.status.clone().unwrap_or_default();
    let interval = parse_duration(&experiment.spec.analysis.interval)
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    let verdict = match (prometheus, analysis_due(&before, interval, &now)) {
        (Some(prometheus), Some(elapsed)) => {
            let observation = observe(prometheus, experiment, elapsed).await;
            Some(decide(&experiment.spec, &before, &observation, elapsed))
        }
        _ => None,
    };
    let live_generation = match (prometheus, experiment.spec.routing.provider) {
        (Some(prometheus), RoutingProvider::Router) if before.phase.is_some() => {
            live_generation(prometheus, &namespace, &name)
                .await
                .or_else(|| before.routing.as_ref().and_then(|r| r.live_generation))
        }
        _ => None,
    };
    let winner = winner_service(experiment, verdict.as_ref(), &services);

    // Status and events.
    let status = compute_status(
        experiment,
        &Observed {
            problems: &[],
            routing_ready,
            router_replicas: replicas(deployment.as_ref()),
            weights: &weights,
            config_generation: (experiment.spec.routing.provider == RoutingProvider::Router)
                .then_some(router.generation),
            live_generation,
            verdict: verdict.as_ref(),
            control,
            winner: winner.as_deref(),
            now: now.clone(),
        },
    );
    finish(experiment, ctx, &status).await?;
    if !applied.rejected.is_empty() {
        return Err(Error::ChildRejected(applied.rejected));
    }
    Ok(Action::requeue(requeue_after(
        &status,
        interval,
        &now,
        &ctx.config,
    )))
}

/// Writes the status and publishes what changed.
async fn finish(
    experiment: &Experiment,
    ctx: &Context,
    status: &ExperimentStatus,
) -> Result<(), Error> {
    let events = events(experiment.status.as_ref(), status);
    write_status(experiment, ctx, status).await?;
    for event in &events {
        publish(ctx, KIND, experiment, event).await;
    }
    Ok(())
}

/// The time since the experiment started when an analysis is due now. Pure.
pub fn analysis_due(status: &ExperimentStatus, interval: Duration, now: &Time) -> Option<Duration> {
    if status.phase != Some(ExperimentPhase::Running) {
        return None;
    }
    let start = status.start_time.as_ref()?;
    if !next_analysis_in(status, interval, now).is_zero() {
        return None;
    }
    Duration::try_from(now.0.duration_since(start.0)).ok()
}

/// Every child, in apply order. Pure.
pub fn build(
    experiment: &Experiment,
    config: &OperatorConfig,
    control: Option<&InferenceService>,
    router: &lexserve_contract::router::RouterConfig,
) -> Vec<DesiredChild> {
    if let Some(routing) = &experiment.spec.routing.gateway_api
        && experiment.spec.routing.provider == RoutingProvider::GatewayApi
    {
        // The gateway reaches the variants through their own Services: no router takes over
        // the control's, and no Services of the experiment's own are needed.
        let weights = weights_in_force(experiment).into_iter().collect();
        return vec![DesiredChild::new(
            ChildKind::HttpRoute,
            &build_http_route(experiment, routing, &weights),
        )];
    }
    let mut children: Vec<DesiredChild> = build_variant_services(experiment)
        .iter()
        .map(|s| DesiredChild::new(ChildKind::Service, s))
        .collect();
    let image = control
        .and_then(|c| c.spec.runtime.as_ref())
        .and_then(|r| r.image.clone())
        .unwrap_or_else(|| config.sidecar_image.clone());
    let autoscaler = build_router_autoscaler(
        experiment,
        control.and_then(|c| c.spec.scaling.as_ref()),
        config,
    );
    let replicas = match &autoscaler {
        RouterAutoscaler::Fixed(n) => Some(*n),
        _ => None,
    };
    children.push(DesiredChild::new(
        ChildKind::ConfigMap,
        &build_config_map(experiment, router),
    ));
    children.push(DesiredChild::new(
        ChildKind::Service,
        &build_router_service(experiment),
    ));
    children.push(DesiredChild::new(
        ChildKind::Deployment,
        &build_router_deployment(experiment, &image, replicas),
    ));
    match autoscaler {
        RouterAutoscaler::Fixed(_) => {}
        RouterAutoscaler::Hpa(h) => children.push(DesiredChild::new(
            ChildKind::HorizontalPodAutoscaler,
            h.as_ref(),
        )),
        RouterAutoscaler::Keda(s) => {
            children.push(DesiredChild::new(ChildKind::ScaledObject, s.as_ref()))
        }
    }
    children
}

/// Gateway API's CRD missing from the cluster is a configuration problem, said plainly.
const GATEWAY_API: OptionalKind = OptionalKind {
    kind: ChildKind::HttpRoute,
    missing: "spec.routing.provider is gatewayAPI, but the cluster has no HTTPRoute CRD (gateway.networking.k8s.io/v1): install Gateway API or use provider router",
};

fn replicas(deployment: Option<&Deployment>) -> (i32, i32) {
    let ready = deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let wanted = deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    (ready, wanted)
}

/// The InferenceService of the variant that won, for the promotion message.
fn winner_service(
    experiment: &Experiment,
    verdict: Option<&Verdict>,
    services: &BTreeMap<String, Arc<InferenceService>>,
) -> Option<Arc<InferenceService>> {
    let winner = verdict
        .and_then(|v| v.winner.clone())
        .or_else(|| experiment.status.as_ref().and_then(|s| s.winner.clone()))?;
    let variant = experiment.spec.variants.iter().find(|v| v.name == winner)?;
    services.get(&variant.inference_service).cloned()
}

/// The configuration generation every router replica serves: the minimum over the replicas'
/// series. None when Prometheus does not answer or has no series yet.
async fn live_generation(
    prometheus: &PrometheusClient,
    namespace: &str,
    name: &str,
) -> Option<u64> {
    // A series without a namespace label (a scrape config that does not copy it) still
    // counts, as in the analysis's own queries.
    let query = format!(
        "min({}{{{}=~\"{}|\",{}=\"{}\"}})",
        metric::ROUTER_CONFIG_GENERATION,
        label::NAMESPACE,
        escape(namespace),
        label::EXPERIMENT,
        escape(name)
    );
    let result = prometheus.query(&query).get().await.ok()?;
    let sample = result.data().as_vector()?.first()?.sample().value();
    (sample.is_finite() && sample >= 0.0).then_some(sample as u64)
}

/// Writes the status with server-side apply, only when it changed.
async fn write_status(
    experiment: &Experiment,
    ctx: &Context,
    status: &ExperimentStatus,
) -> Result<(), Error> {
    if experiment.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<Experiment> = Api::namespaced(
        ctx.client.clone(),
        &experiment.namespace().unwrap_or_default(),
    );
    let body = json!({
        "apiVersion": Experiment::api_version(&()),
        "kind": Experiment::kind(&()),
        "status": status,
    });
    ctx.metrics.api_request(KIND, "APPLY", "experiments/status");
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.leadership
        .write(api.patch_status(&experiment.name_any(), &params, &Patch::Apply(&body)))
        .await
        .map_err(Error::not_leader("patch status"))?
        .map_err(Error::kube("patch status"))?;
    Ok(())
}

/// When to look again: soon while the router is coming up, at the next analysis while
/// running, after the resync period once finished. Pure.
pub fn requeue_after(
    status: &ExperimentStatus,
    interval: Duration,
    now: &Time,
    config: &OperatorConfig,
) -> Duration {
    match status.phase {
        Some(ExperimentPhase::Pending) | None => PENDING_REQUEUE,
        Some(ExperimentPhase::Running) => next_analysis_in(status, interval, now)
            .max(Duration::from_millis(200))
            .min(config.resync),
        Some(_) => config.resync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("valid"))
    }

    fn experiment(routing: serde_json::Value) -> Experiment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "exp", "namespace": "ns", "uid": "u"},
            "spec": {
                "control": "a",
                "variants": [{"name": "control", "inferenceService": "a", "weight": 1},
                             {"name": "t", "inferenceService": "b", "weight": 1}],
                "metrics": [{"name": "ok", "kind": "Proportion", "role": "Primary",
                             "source": {"builtin": "ok"}}],
                "routing": routing,
            }
        }))
        .expect("valid")
    }

    #[test]
    fn a_router_experiment_builds_the_router_and_a_gateway_one_only_its_route() {
        let config = OperatorConfig::default();
        let router = experiment(serde_json::json!({"provider": "router"}));
        let weights = weights_in_force(&router);
        let table = build_router_config(&router, &weights, None, &config).expect("config");
        let kinds: Vec<_> = build(&router, &config, None, &table)
            .iter()
            .map(|c| (c.kind, c.name.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (ChildKind::Service, "exp-control".to_string()),
                (ChildKind::Service, "exp-t".to_string()),
                (ChildKind::ConfigMap, "exp-router".to_string()),
                (ChildKind::Service, "exp-router".to_string()),
                (ChildKind::Deployment, "exp-router".to_string()),
            ]
        );
        let gateway = experiment(serde_json::json!({"provider": "gatewayAPI",
            "gatewayAPI": {"parentRefs": [{"name": "gw"}]}}));
        let kinds: Vec<_> = build(&gateway, &config, None, &table)
            .iter()
            .map(|c| (c.kind, c.name.clone()))
            .collect();
        assert_eq!(kinds, vec![(ChildKind::HttpRoute, "exp".to_string())]);
    }

    #[test]
    fn an_analysis_is_due_only_while_running_and_once_per_interval() {
        let mut status = ExperimentStatus {
            phase: Some(ExperimentPhase::Running),
            start_time: Some(at(100)),
            ..Default::default()
        };
        let interval = Duration::from_secs(10);
        assert_eq!(
            analysis_due(&status, interval, &at(105)),
            Some(Duration::from_secs(5))
        );
        status.last_analysis_time = Some(at(105));
        assert_eq!(analysis_due(&status, interval, &at(110)), None);
        assert_eq!(
            analysis_due(&status, interval, &at(115)),
            Some(Duration::from_secs(15))
        );
        status.phase = Some(ExperimentPhase::Succeeded);
        assert_eq!(analysis_due(&status, interval, &at(200)), None);
    }
}
