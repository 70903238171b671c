//! State shared by the reconcilers.

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::backoff::Backoff;
use super::scaling_signal::SignalBoard;
use crate::config::OperatorConfig;
use crate::telemetry::Metrics;

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub backoff: Backoff,
    /// The last known state of each autoscaled service's load signal.
    pub signals: SignalBoard,
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: crate::resources::labels::FIELD_MANAGER.to_string(),
            instance,
        };
        Self {
            signals: SignalBoard::new(config.scaling_signal_grace),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            backoff: Backoff::default(),
        }
    }
}
