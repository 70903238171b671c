//! Operator-wide settings that shape the children it builds. They come from the command line
//! (flags with env fallbacks, see `main.rs`); the builders take them as plain data.

use std::time::Duration;

/// The image of the sidecar when an InferenceService does not override it.
pub const DEFAULT_SIDECAR_IMAGE: &str = "ghcr.io/lexserve/lexserve-sidecar:0.1.0";

/// What the builders need to know beyond the InferenceService itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    /// The default sidecar image.
    pub sidecar_image: String,
    /// Prometheus as KEDA's trigger should reach it (the `serverAddress`).
    pub prometheus_url: String,
    /// The cluster's DNS suffix, for the URL in status.
    pub cluster_domain: String,
    /// How often a settled object is reconciled again when nothing changes.
    pub resync: Duration,
    /// The most reconciles running at once.
    pub concurrency: u16,
    /// How often the leader checks each autoscaled service's load signal; None turns the
    /// checks (and the `ScalingSignalAvailable` condition) off.
    pub scaling_signal_interval: Option<Duration>,
    /// How long a signal must stay missing before the status says so.
    pub scaling_signal_grace: Duration,
    /// How often a running ShadowDeployment's analysis reads Prometheus and judges.
    pub shadow_analysis_interval: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            sidecar_image: DEFAULT_SIDECAR_IMAGE.to_string(),
            prometheus_url: "http://prometheus-operated.monitoring.svc:9090".to_string(),
            cluster_domain: "cluster.local".to_string(),
            resync: Duration::from_secs(300),
            concurrency: 16,
            scaling_signal_interval: Some(Duration::from_secs(15)),
            scaling_signal_grace: Duration::from_secs(60),
            shadow_analysis_interval: Duration::from_secs(30),
        }
    }
}
