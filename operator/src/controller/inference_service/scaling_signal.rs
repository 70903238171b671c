//! Watching each autoscaled InferenceService's load signal, so that a missing signal shows up
//! in its status (condition `ScalingSignalAvailable`, and `Degraded` when monitoring is at
//! fault) instead of only in the HPA's events.
//!
//! The leader checks every autoscaled service every interval with the same code the metrics API
//! answers with. A missing signal becomes a condition only after a grace period, so a pod that
//! has not been scraped yet, or one failed query, does not flap the status. When what a
//! service's condition should say changes, that service is reconciled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::InferenceService;
use crate::api::inference_service::ScalingProvider;
use crate::controller::signal_board::{SignalBoard, SignalCondition};
use crate::metrics_api::signal::LoadSignal;
use crate::telemetry::Metrics;

/// How many services are checked at once.
const CHECK_CONCURRENCY: usize = 8;

/// Whether the service's replicas follow a load signal.
pub fn autoscaled(isvc: &InferenceService) -> bool {
    isvc.spec
        .scaling
        .as_ref()
        .is_some_and(|s| matches!(s.provider, ScalingProvider::Hpa | ScalingProvider::Keda))
}

/// Checks every autoscaled service in `store` every `interval`, records the outcome on `board`,
/// and sends the services whose condition changed to `changed`. Runs until `changed` closes.
pub async fn run(
    store: Store<InferenceService>,
    signal: LoadSignal,
    board: SignalBoard,
    metrics: Metrics,
    interval: Duration,
    changed: mpsc::Sender<ObjectRef<InferenceService>>,
) {
    // No `store.wait_until_ready()`: the controller's store does not signal readiness through
    // this reader (it never resolved here). An empty store only means an empty first round.
    tracing::debug!(?interval, "scaling signal checks started");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if changed.is_closed() {
            return;
        }
        let services: Vec<Arc<InferenceService>> = store
            .state()
            .into_iter()
            .filter(|i| autoscaled(i))
            .collect();
        tracing::debug!(services = services.len(), "checking scaling signals");
        let current: std::collections::HashSet<ObjectRef<InferenceService>> = services
            .iter()
            .map(|i| ObjectRef::from_obj(i.as_ref()))
            .collect();
        board.retain(|k| current.contains(k));
        let checks = futures::stream::iter(services).map(|isvc| {
            let signal = signal.clone();
            async move {
                let namespace = isvc.namespace().unwrap_or_default();
                let outcome = signal.read(&namespace, &isvc.name_any()).await.map(|_| ());
                (ObjectRef::from_obj(isvc.as_ref()), outcome)
            }
        });
        let mut checks = checks.buffer_unordered(CHECK_CONCURRENCY);
        while let Some((key, outcome)) = checks.next().await {
            let now = Instant::now();
            tracing::debug!(service = %key, ?outcome, "scaling signal checked");
            if let Err(missing) = &outcome {
                metrics
                    .signal_missing
                    .get_or_create(&crate::telemetry::ReasonLabels {
                        reason: missing.reason().to_string(),
                    })
                    .inc();
            }
            if let Some(changed_to) = board.record(key.clone(), outcome, now) {
                match &changed_to {
                    SignalCondition::Missing(m) => {
                        warn!(service = %key, reason = m.reason(), "scaling signal missing: {m}")
                    }
                    SignalCondition::Available => info!(service = %key, "scaling signal available"),
                }
                if changed.send(key).await.is_err() {
                    return;
                }
            }
        }
    }
}
