//! The ShadowDeployment controller: the wiring of its watches ([`run`]), its reconcile phases
//! ([`reconcile`]), what CEL cannot check ([`validate`], pure), the candidate's children
//! ([`children`], pure), production's mirror configuration ([`mirror`], pure; the
//! InferenceService controller writes it), the Experiment of `onPass` ([`experiment`], pure),
//! the status ([`status`], pure), its Events ([`events`], pure) and the Prometheus reader of the
//! analysis ([`observe`]).

pub mod children;
pub mod events;
pub mod experiment;
pub mod mirror;
pub mod observe;
pub mod reconcile;
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
use crate::api::{InferenceService, ShadowDeployment};
use children::SHADOW_LABEL;
pub use reconcile::{ShadowContext, reconcile};

/// Runs the controller until `shutdown` resolves. `inference_services` are the events of the
/// context's InferenceService cache: a production that appears, changes or goes re-reconciles
/// the shadows that name it.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<Context>,
    inference_services: Triggers<InferenceService>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<ShadowDeployment> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let candidates: Api<Deployment> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let prometheus = match super::promql::connect(&ctx.config.prometheus_url) {
        Ok(client) => Some(client),
        Err(e) => {
            warn!(url = %ctx.config.prometheus_url, error = %e, "no Prometheus client: shadows will not be analysed");
            None
        }
    };
    let shadows = ctx.peers.shadows.clone();
    let sctx = Arc::new(ShadowContext {
        shared: ctx.clone(),
        prometheus,
    });
    Controller::new(api, watcher::Config::default())
        // The candidate's readiness moves the shadow on from Pending.
        .owns(candidates, watcher::Config::default().labels(SHADOW_LABEL))
        .watches_stream(inference_services, move |isvc| {
            let namespace = isvc.namespace();
            let name = isvc.name_any();
            shadows
                .state_filter(|s| s.metadata.namespace == namespace && s.spec.production == name)
                .iter()
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(
            controller::Config::default()
                .concurrency(ctx.config.concurrency)
                .debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, sctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "shadow reconcile loop");
            }
        })
        .await;
}

/// The shared error policy, for this kind.
pub fn error_policy(
    shadow: Arc<ShadowDeployment>,
    error: &Error,
    sctx: Arc<ShadowContext>,
) -> Action {
    super::error_policy::error_policy(reconcile::KIND, shadow, error, sctx.shared.clone())
}
