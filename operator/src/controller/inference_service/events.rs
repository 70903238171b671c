//! Which Events a status change deserves. Pure; `controller::events` publishes them.

use crate::api::conditions::{ConditionType, find_condition};
use crate::api::inference_service::InferenceServiceStatus;
use crate::controller::events::EventSpec;

/// A Warning when the service becomes Degraded, or stays Degraded for another reason; nothing
/// when the status did not change, so a steady state publishes nothing.
pub fn events(
    before: Option<&InferenceServiceStatus>,
    after: &InferenceServiceStatus,
) -> Vec<EventSpec> {
    let degraded = |status: &InferenceServiceStatus| {
        find_condition(&status.conditions, ConditionType::Degraded)
            .filter(|c| c.status == "True")
            .cloned()
    };
    match degraded(after) {
        Some(now) if before.and_then(degraded).map(|c| c.reason) != Some(now.reason.clone()) => {
            vec![EventSpec::warning(now.reason, now.message)]
        }
        _ => Vec::new(),
    }
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
