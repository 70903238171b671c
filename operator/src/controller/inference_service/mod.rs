//! The InferenceService controller: the wiring of its watches ([`run`]), its reconcile phases
//! ([`reconcile`]), its status ([`status`], pure), its Events ([`events`], pure), the GPU
//! capacity its rollouts depend on ([`gpu_capacity`], pure), the checks of its load signal
//! ([`scaling_signal`]) and its drift monitoring ([`drift`]).

pub mod drift;
pub mod events;
pub mod gpu_capacity;
pub mod reconcile;
pub mod scaling_signal;
pub mod status;

#[cfg(test)]
mod status_tests;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::warn;

use super::Error;
use super::cache::{ChildTriggers, Triggers};
use super::context::Context;
use crate::api::{Experiment, InferenceService, ShadowDeployment};
use crate::metrics_api::signal::LoadSignal;
use crate::resources::labels::INFERENCE_SERVICE_LABEL;
use crate::resources::scaled_object::scaled_object_resource;
use reconcile::KIND;
pub use reconcile::reconcile;

/// The events of the peer kinds that change what an InferenceService builds.
pub struct PeerEvents {
    /// An experiment's state decides what its control's Service selects.
    pub experiments: Triggers<Experiment>,
    /// The shadows naming a service make its mirror configuration.
    pub shadows: Triggers<ShadowDeployment>,
}

/// Runs the controller until `shutdown` resolves. `triggers` are the events of the context's
/// child and pod caches, `peers` those of its Experiment and ShadowDeployment caches (see
/// [`Context::start`]).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    triggers: ChildTriggers,
    peers: PeerEvents,
    load_signal: Option<LoadSignal>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<InferenceService> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
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
    let ChildTriggers {
        config_maps,
        services,
        deployments,
        pdbs,
        hpas,
        scaled_objects,
        pods,
    } = triggers;
    let mut controller = controller
        .reconcile_on(signal_changes)
        .owns_stream(deployments)
        .owns_stream(config_maps)
        .owns_stream(services)
        .owns_stream(hpas)
        .owns_stream(pdbs)
        .watches_stream(pods, |pod| {
            let name = pod.labels().get(INFERENCE_SERVICE_LABEL)?;
            Some(ObjectRef::new(name).within(&pod.namespace()?))
        })
        // An experiment's state decides what its control's Service selects.
        .watches_stream(peers.experiments, |experiment| {
            Some(ObjectRef::new(&experiment.spec.control).within(&experiment.namespace()?))
        })
        // A shadow that appears, changes (its candidate ready, finished) or goes changes its
        // production's mirror configuration.
        .watches_stream(peers.shadows, |shadow| {
            Some(ObjectRef::new(&shadow.spec.production).within(&shadow.namespace()?))
        });
    if let Some(scaled_objects) = scaled_objects {
        controller = controller.owns_stream_with(scaled_objects, scaled_object_resource());
    }
    controller
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

/// The shared error policy, for this kind.
pub fn error_policy(isvc: Arc<InferenceService>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy::error_policy(KIND, isvc, error, ctx)
}
