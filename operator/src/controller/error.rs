//! The error of a reconcile, mapped once to a metric label, an Event reason and a requeue.

/// Errors of a reconcile.
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
    /// A watch cache could not be filled (the operator may lack the RBAC to list what it
    /// watches); retried with backoff.
    #[error("watch cache: {0}")]
    Cache(String),
    /// The apiserver refused children the operator built (422): a bug in a builder, or input
    /// that admission let through. Retried with backoff, reported in status and as an Event.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    ChildRejected(Vec<super::child::Rejection>),
    /// A write was refused, unsent, because this replica no longer leads (or abandoned because
    /// the lease ran out while it waited). The controllers are stopping.
    #[error("{action}: not sent: {source}")]
    NotLeader {
        action: &'static str,
        #[source]
        source: crate::leader::NotLeader,
    },
}

impl Error {
    /// Wraps a kube error with what was being done, for `map_err`.
    pub fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }

    /// Wraps a refusal of the leadership with what was being written, for `map_err`.
    pub fn not_leader(action: &'static str) -> impl FnOnce(crate::leader::NotLeader) -> Error {
        move |source| Error::NotLeader { action, source }
    }

    /// A short label for metrics and the Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } => match status.code {
                409 => "Conflict",
                403 => "Forbidden",
                404 => "NotFound",
                422 => "Invalid",
                _ => "KubeApiError",
            },
            Error::Kube { .. } => "KubeApiError",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingDependency(_) => "MissingDependency",
            Error::Cache(_) => "CacheNotReady",
            Error::ChildRejected(_) => crate::api::conditions::reason::CHILD_REJECTED,
            Error::NotLeader { .. } => "NotLeader",
        }
    }
}
