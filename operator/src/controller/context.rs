//! State shared by the reconcilers: the client, the configuration, the watch caches, the
//! metrics, the leadership every write checks, and the per-object memory (backoff, apply
//! residuals, load signals).

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::OnceCell;
use tracing::info;

use super::Error;
use super::apply::Residuals;
use super::backoff::Backoff;
use super::cache::{
    ChildStores, ChildTriggers, Drivers, GpuStores, PeerStores, PeerTriggers, keda_installed,
};
use super::signal_board::SignalBoard;
use crate::config::OperatorConfig;
use crate::leader::Leadership;
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
    /// The children and model-server pods, from watches.
    pub children: ChildStores,
    /// The Experiments and InferenceServices, from watches.
    pub peers: PeerStores,
    /// Nodes and their pods, from watches started by the first GPU service.
    gpu: OnceCell<GpuStores>,
    /// What the apiserver normalized in the last apply of a child (see [`Residuals`]).
    pub residuals: Residuals,
    /// Whether this replica may write; every write goes through [`Leadership::write`].
    pub leadership: Leadership,
    /// The Prometheus client of the InferenceServices' drift checks (None: an invalid URL,
    /// logged at start; the checks then say Prometheus is unreachable).
    pub prometheus: Option<crate::controller::promql::PrometheusClient>,
    _drivers: Drivers,
}

impl Context {
    /// Starts the watch caches (in `namespace`, or everywhere) and waits until they are
    /// filled. Returns the context and the caches' events, which trigger reconciles (the
    /// children's and the peers', see [`PeerStores`]).
    pub async fn start(
        client: Client,
        namespace: Option<&str>,
        config: OperatorConfig,
        metrics: Metrics,
        instance: Option<String>,
        leadership: Leadership,
    ) -> Result<(Self, ChildTriggers, PeerTriggers), Error> {
        let reporter = Reporter {
            controller: crate::resources::labels::FIELD_MANAGER.to_string(),
            instance,
        };
        let keda = keda_installed(&client).await;
        let (children, triggers, mut drivers) = ChildStores::start(&client, namespace, keda);
        let (peers, peer_triggers) = PeerStores::start(&client, namespace, &mut drivers);
        children.wait_until_ready().await?;
        peers.wait_until_ready().await?;
        metrics.watch_inference_services(peers.inference_services.clone());
        info!(keda, "watch caches filled");
        let config_url = config.prometheus_url.clone();
        let context = Self {
            signals: SignalBoard::new(config.scaling_signal_grace),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            backoff: Backoff::default(),
            children,
            peers,
            gpu: OnceCell::new(),
            prometheus: prometheus_client(&config_url),
            residuals: Residuals::default(),
            leadership,
            _drivers: drivers,
        };
        Ok((context, triggers, peer_triggers))
    }

    /// The node and pod caches, started and filled on first use.
    pub async fn gpu_stores(&self) -> Result<&GpuStores, Error> {
        self.gpu
            .get_or_try_init(|| GpuStores::start(&self.client))
            .await
    }
}

fn prometheus_client(url: &str) -> Option<crate::controller::promql::PrometheusClient> {
    match crate::controller::promql::connect(url) {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::warn!(url, error = %e, "no Prometheus client: drift will not be measured");
            None
        }
    }
}
