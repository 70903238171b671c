//! The router's configuration in force, reloaded by [`crate::reload`]: a new valid file comes
//! into force (its generation and series exported), a new invalid one is logged and counted once
//! and the configuration in force stays.

use std::path::Path;
use std::sync::Arc;

use super::config::{Resolve, Routing, RoutingError, parse};
use super::metrics::RouterMetrics;
use crate::reload::Watch;

/// The router's configuration in force.
pub type Live = crate::reload::Live<Routing>;
/// The router's file poller.
pub type Reloader = crate::reload::Reloader<RouterWatch>;

/// What the router makes of its file.
pub struct RouterWatch {
    pub resolve: Resolve,
    pub metrics: Arc<RouterMetrics>,
}

impl Watch for RouterWatch {
    type Config = Routing;
    type Error = RoutingError;

    fn compile(
        &self,
        path: &Path,
        read: Result<&[u8], &std::io::Error>,
    ) -> Result<Routing, RoutingError> {
        match read {
            Ok(text) => parse(path, text, &self.resolve),
            Err(error) => Err(RoutingError::Read {
                path: path.to_path_buf(),
                source: std::io::Error::new(error.kind(), error.to_string()),
            }),
        }
    }

    fn installed(&self, routing: &Routing, _previous: Option<&Routing>) {
        tracing::info!(
            experiment = %routing.config.experiment,
            generation = routing.config.generation,
            "router configuration in force"
        );
        self.metrics.configured(routing);
    }

    fn rejected(&self, error: &RoutingError, in_force: Option<&Routing>) {
        self.metrics.config_errors.inc();
        match in_force {
            Some(routing) => tracing::warn!(
                %error,
                generation = routing.config.generation,
                "router configuration rejected; keeping the one in force"
            ),
            None => tracing::error!(%error, "router configuration rejected; not ready"),
        }
    }
}
