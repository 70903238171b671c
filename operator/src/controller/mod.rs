//! The controllers. One reconciler per kind; shared state in [`context`].

pub mod apply;
pub mod backoff;
pub mod context;
pub mod gpu_capacity;
pub mod inference_service;
pub mod scaling_signal;
pub mod status;

#[cfg(test)]
mod status_tests;

/// Errors of a reconcile, each mapped once to a metric label, an Event reason and a requeue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The object cannot be built into children (CEL cannot check everything); fixed only by a
    /// change to the object.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// Something the object needs is missing from the cluster (KEDA's CRD); retried with
    /// backoff, since installing it fixes the object without a change to it.
    #[error("missing dependency: {0}")]
    MissingDependency(String),
}

impl Error {
    /// Wraps a kube error with what was being done, for `map_err`.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }

    /// A short label for metrics and the Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } if status.code == 409 => "Conflict",
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } if status.code == 403 => "Forbidden",
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } if status.code == 404 => "NotFound",
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } if status.code == 422 => "Invalid",
            Error::Kube { .. } => "KubeApiError",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingDependency(_) => "MissingDependency",
        }
    }
}
