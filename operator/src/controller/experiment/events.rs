//! Which Events a status change of an Experiment deserves. Pure; `controller::events`
//! publishes them.

use crate::api::conditions::{ConditionType, find_condition};
use crate::api::experiment::{ExperimentPhase, ExperimentStatus};
use crate::controller::events::EventSpec;

/// One Event per phase change (Normal, a Warning for `Failed`), saying what the newest
/// decision says — after a promotion, what to change in the control's manifest — and a
/// Warning when the experiment becomes Degraded or stays Degraded for another reason. Nothing
/// when neither changed, so a steady state publishes nothing.
pub fn events(before: Option<&ExperimentStatus>, after: &ExperimentStatus) -> Vec<EventSpec> {
    let mut out = Vec::new();
    let phase_before = before.and_then(|s| s.phase);
    if let Some(phase) = after.phase
        && phase_before != Some(phase)
    {
        let decision = after.history.last();
        let mut note = format!(
            "{} -> {phase:?}",
            phase_before.map_or_else(|| "new".to_string(), |p| format!("{p:?}"))
        );
        if let Some(d) = decision {
            note.push_str(&format!(": {}", d.message));
        }
        // Once finished, Ready's message says what traffic does now and what to change.
        if let Some(ready) = find_condition(&after.conditions, ConditionType::Ready)
            && !matches!(phase, ExperimentPhase::Pending | ExperimentPhase::Running)
        {
            note.push_str(&format!(". {}", ready.message));
        }
        let reason = decision.map_or_else(|| format!("{phase:?}"), |d| d.reason.clone());
        out.push(EventSpec {
            warning: phase == ExperimentPhase::Failed,
            reason,
            note,
        });
    }
    let degraded = |status: &ExperimentStatus| {
        find_condition(&status.conditions, ConditionType::Degraded)
            .filter(|c| c.status == "True")
            .cloned()
    };
    if let Some(now) = degraded(after)
        && before.and_then(degraded).map(|c| c.reason) != Some(now.reason.clone())
    {
        out.push(EventSpec::warning(now.reason, now.message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{DesiredCondition, set_condition};
    use crate::api::experiment::Decision;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn at() -> Time {
        Time(Timestamp::from_second(1).expect("valid"))
    }

    fn status(phase: ExperimentPhase, reason: &str, degraded: Option<&str>) -> ExperimentStatus {
        let mut s = ExperimentStatus {
            phase: Some(phase),
            history: vec![Decision {
                time: at(),
                phase,
                reason: reason.to_string(),
                message: format!("{reason} because"),
            }],
            ..Default::default()
        };
        set_condition(
            &mut s.conditions,
            DesiredCondition::new(
                ConditionType::Ready,
                true,
                "ExperimentFinished",
                "set spec.model",
            ),
            Some(1),
            at(),
        );
        if let Some(r) = degraded {
            set_condition(
                &mut s.conditions,
                DesiredCondition::new(ConditionType::Degraded, true, r, "why"),
                Some(1),
                at(),
            );
        }
        s
    }

    #[test]
    fn every_phase_change_is_an_event_and_a_steady_state_none() {
        let running = status(ExperimentPhase::Running, "NotEnoughData", None);
        let won = status(ExperimentPhase::Succeeded, "WinnerFound", None);
        let e = events(Some(&running), &won);
        assert_eq!(e.len(), 1);
        assert!(!e[0].warning);
        assert_eq!(e[0].reason, "WinnerFound");
        assert!(
            e[0].note
                .contains("Running -> Succeeded: WinnerFound because. set spec.model")
        );
        assert!(events(Some(&won), &won).is_empty());
        let failed = status(ExperimentPhase::Failed, "GuardrailFailed", None);
        assert!(events(Some(&running), &failed)[0].warning);
        assert_eq!(events(None, &running).len(), 1);
    }

    #[test]
    fn degraded_warns_when_it_starts_or_changes_reason() {
        let fine = status(ExperimentPhase::Running, "NoData", None);
        let down = status(
            ExperimentPhase::Running,
            "NoData",
            Some("PrometheusUnreachable"),
        );
        assert_eq!(
            events(Some(&fine), &down),
            vec![EventSpec::warning("PrometheusUnreachable", "why")]
        );
        assert!(events(Some(&down), &down).is_empty());
    }
}
