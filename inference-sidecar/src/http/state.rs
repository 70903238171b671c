//! What every handler shares: the model service, the metrics, and the metadata the API reports.

use std::sync::Arc;

use super::admission::Admission;
use crate::encoder::service::ModelService;
use crate::metrics::Metrics;
use crate::mirror::Mirror;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<ModelService>,
    pub metrics: Arc<Metrics>,
    /// KServe metadata `platform`.
    pub platform: String,
    pub started_unix: u64,
    /// Permits and deadlines of the inference routes.
    pub admission: Arc<Admission>,
    /// The shadow mirror (does nothing while no target is configured).
    pub mirror: Arc<Mirror>,
}
