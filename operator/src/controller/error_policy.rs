//! What a failed reconcile leads to, the same for every kind: a log line, a count by reason, a
//! Warning Event, and a retry with backoff, except for an invalid spec, which only a change to
//! the object can fix.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::Error;
use super::context::Context;
use super::events::{EventSpec, publish};

/// The backoff key of an object.
pub fn key<K: ResourceExt>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The error policy of the controller of `controller` (its kind).
pub fn error_policy<K>(
    controller: &'static str,
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action
where
    K: Resource<DynamicType = ()> + ResourceExt + Send + Sync + 'static,
{
    if let Error::NotLeader { .. } = error {
        // Deposed: the controllers are stopping, and nothing may be written, not even an Event.
        return Action::await_change();
    }
    warn!(kind = controller, namespace = %object.namespace().unwrap_or_default(), name = %object.name_any(), error = %error, "reconcile failed");
    ctx.metrics.failed(controller, error.reason());
    let event = EventSpec::warning(error.reason(), error.to_string());
    let action = match error {
        Error::InvalidSpec(_) => Action::await_change(),
        _ => Action::requeue(ctx.backoff.next_delay(&key(object.as_ref()))),
    };
    tokio::spawn(async move {
        publish(&ctx, controller, object.as_ref(), &event).await;
    });
    action
}
