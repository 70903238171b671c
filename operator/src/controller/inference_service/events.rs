//! Which Events a status change deserves. Pure; `controller::events` publishes them.

use crate::api::conditions::{ConditionType, find_condition};
use crate::api::inference_service::InferenceServiceStatus;
use crate::controller::events::EventSpec;

/// A Warning when the service becomes Degraded, or stays Degraded for another reason; a Warning
/// when drift is detected (or the features that moved change) and a Normal Event when it
/// clears; nothing when the status did not change, so a steady state publishes nothing.
pub fn events(
    before: Option<&InferenceServiceStatus>,
    after: &InferenceServiceStatus,
) -> Vec<EventSpec> {
    let degraded = |status: &InferenceServiceStatus| {
        find_condition(&status.conditions, ConditionType::Degraded)
            .filter(|c| c.status == "True")
            .cloned()
    };
    let mut events = Vec::new();
    if let Some(now) = degraded(after)
        && before.and_then(degraded).map(|c| c.reason) != Some(now.reason.clone())
    {
        events.push(EventSpec::warning(now.reason, now.message));
    }
    events.extend(drift_event(before, after));
    events
}

/// The features that moved, from the drift scores (empty when none did).
fn moved(status: &InferenceServiceStatus) -> Vec<String> {
    let detected = find_condition(&status.conditions, ConditionType::DriftDetected)
        .is_some_and(|c| c.status == "True");
    if !detected {
        return Vec::new();
    }
    status
        .drift
        .iter()
        .flat_map(|d| &d.features)
        .filter(|f| f.drifted)
        .map(|f| f.feature.label().to_string())
        .collect()
}

fn drift_event(
    before: Option<&InferenceServiceStatus>,
    after: &InferenceServiceStatus,
) -> Option<EventSpec> {
    let (was, now) = (before.map(moved).unwrap_or_default(), moved(after));
    if was == now {
        return None;
    }
    if now.is_empty() {
        let condition = find_condition(&after.conditions, ConditionType::DriftDetected)?;
        // Only a verdict of no drift clears it: Unknown (no numbers) says nothing new.
        return (condition.status == "False").then(|| {
            EventSpec::normal(
                "DriftCleared",
                format!("no drift any more ({})", condition.message),
            )
        });
    }
    let condition = find_condition(&after.conditions, ConditionType::DriftDetected)?;
    Some(EventSpec::warning(
        condition.reason.clone(),
        condition.message.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{DesiredCondition, set_condition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn status(degraded: Option<(&str, &str)>) -> InferenceServiceStatus {
        let mut status = InferenceServiceStatus::default();
        let condition = match degraded {
            Some((reason, message)) => {
                DesiredCondition::new(ConditionType::Degraded, true, reason, message)
            }
            None => DesiredCondition::new(ConditionType::Degraded, false, "Healthy", "fine"),
        };
        set_condition(
            &mut status.conditions,
            condition,
            Some(1),
            Time(Timestamp::from_second(1).expect("valid")),
        );
        status
    }

    #[test]
    fn a_warning_when_degraded_begins_or_changes_reason_only() {
        let healthy = status(None);
        let rejected = status(Some((
            "ChildRejected",
            "the apiserver rejected Deployment m",
        )));
        assert_eq!(
            events(Some(&healthy), &rejected),
            vec![EventSpec::warning(
                "ChildRejected",
                "the apiserver rejected Deployment m"
            )]
        );
        assert_eq!(events(None, &rejected).len(), 1);
        assert!(events(Some(&rejected), &rejected).is_empty());
        assert!(events(Some(&rejected), &healthy).is_empty());
        let gpu = status(Some(("InsufficientGPU", "16 requested")));
        assert_eq!(events(Some(&rejected), &gpu)[0].reason, "InsufficientGPU");
    }
}
