//! Publishing Events. Which events to publish is decided by each kind's pure `events` phase;
//! this is the I/O.

use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::context::Context;

/// An Event to publish about the reconciled object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

impl EventSpec {
    pub fn warning(reason: impl Into<String>, note: impl Into<String>) -> Self {
        Self {
            warning: true,
            reason: reason.into(),
            note: note.into(),
        }
    }

    pub fn normal(reason: impl Into<String>, note: impl Into<String>) -> Self {
        Self {
            warning: false,
            reason: reason.into(),
            note: note.into(),
        }
    }
}

/// Publishes `event` about `object`. A failure is logged, never returned: an Event is a
/// courtesy, and the reconcile's outcome must not depend on it.
pub async fn publish<K>(ctx: &Context, controller: &'static str, object: &K, event: &EventSpec)
where
    K: Resource<DynamicType = ()> + ResourceExt,
{
    let event = Event {
        type_: if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: event.reason.clone(),
        // The apiserver caps a note at 1 kB.
        note: Some(event.note.chars().take(1000).collect()),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    ctx.metrics.api_request(controller, "POST", "events");
    let reference = object.object_ref(&());
    match ctx
        .leadership
        .write(ctx.recorder.publish(&event, &reference))
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "could not publish event"),
        Err(e) => warn!(error = %e, reason = %event.reason, "event not published"),
    }
}
