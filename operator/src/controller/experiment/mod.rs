//! The Experiment controller: the wiring of its watches ([`run`]), its reconcile phases
//! ([`reconcile`]), what CEL cannot check ([`validate`], pure), the router's children
//! ([`children`], pure), where traffic goes ([`routing`], pure; the InferenceService
//! controller follows it for the control's Service), the status ([`status`], pure), its Events
//! ([`events`], pure) and the Prometheus reader of the analysis ([`observe`]).

pub mod children;
pub mod events;
pub mod observe;
pub mod reconcile;
pub mod routing;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tracing::warn;

use super::Error;
use super::cache::Triggers;
use super::context::Context;
use crate::api::{Experiment, InferenceService};
use children::EXPERIMENT_LABEL;
pub use reconcile::{ExperimentContext, reconcile};

/// Runs the controller until `shutdown` resolves. `inference_services` are the events of the
/// context's InferenceService cache: a variant that appears, changes or goes re-reconciles the
/// experiments that name it.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    inference_services: Triggers<InferenceService>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<Experiment> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let routers: Api<Deployment> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let prometheus = match super::promql::connect(&ctx.config.prometheus_url) {
        Ok(client) => Some(client),
        Err(e) => {
            warn!(url = %ctx.config.prometheus_url, error = %e, "no Prometheus client: experiments will not be analysed");
            None
        }
    };
    let experiments = ctx.peers.experiments.clone();
    let ectx = Arc::new(ExperimentContext {
        shared: ctx.clone(),
        prometheus,
    });
    Controller::new(api, watcher::Config::default())
        // The router's readiness moves the experiment from Pending to Running.
        .owns(routers, watcher::Config::default().labels(EXPERIMENT_LABEL))
        .watches_stream(inference_services, move |isvc| {
            let namespace = isvc.namespace();
            let name = isvc.name_any();
            experiments
                .state_filter(|e| {
                    e.metadata.namespace == namespace
                        && e.spec.variants.iter().any(|v| v.inference_service == name)
                })
                .iter()
                .map(|e| ObjectRef::from_obj(e.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(
            controller::Config::default()
                .concurrency(ctx.config.concurrency)
                .debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ectx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "experiment reconcile loop");
            }
        })
        .await;
}

/// The shared error policy, for this kind.
pub fn error_policy(
    experiment: Arc<Experiment>,
    error: &Error,
    ectx: Arc<ExperimentContext>,
) -> Action {
    super::error_policy::error_policy(reconcile::KIND, experiment, error, ectx.shared.clone())
}
