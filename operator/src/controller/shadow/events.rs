//! A ShadowDeployment's Events. Pure.

use crate::api::conditions::{ConditionType, find_condition, reason};
use crate::api::shadow_deployment::{ShadowDeploymentStatus, ShadowPhase, ShadowVerdict};
use crate::controller::events::EventSpec;

/// One Event per phase change, saying why (the verdict's numbers once Completed; a Warning for
/// `Fail` and `Aborted`), one when the Experiment of `onPass: CreateExperiment` was created, and
/// a Warning when the shadow becomes Degraded or stays Degraded for another reason. Nothing when
/// none of these changed, so a steady state publishes nothing.
pub fn events(
    before: Option<&ShadowDeploymentStatus>,
    after: &ShadowDeploymentStatus,
) -> Vec<EventSpec> {
    let mut out = Vec::new();
    let phase_before = before.and_then(|s| s.phase);
    if let Some(phase) = after.phase
        && phase_before != Some(phase)
    {
        let ready = find_condition(&after.conditions, ConditionType::Ready);
        let note = format!(
            "{} -> {phase:?}{}",
            phase_before.map_or_else(|| "new".to_string(), |p| format!("{p:?}")),
            ready.map_or_else(String::new, |c| format!(": {}", c.message))
        );
        let event_reason = match phase {
            ShadowPhase::Running => reason::MIRRORING.to_string(),
            _ => ready.map_or_else(|| format!("{phase:?}"), |c| c.reason.clone()),
        };
        out.push(EventSpec {
            warning: phase == ShadowPhase::Aborted
                || (phase == ShadowPhase::Completed && after.verdict == Some(ShadowVerdict::Fail)),
            reason: event_reason,
            note,
        });
    }
    if let Some(experiment) = &after.experiment
        && before.and_then(|s| s.experiment.as_ref()) != Some(experiment)
    {
        out.push(EventSpec {
            warning: false,
            reason: reason::EXPERIMENT_CREATED.to_string(),
            note: format!("created Experiment {experiment} between production and the candidate"),
        });
    }
    let degraded = |status: &ShadowDeploymentStatus| {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::from_second(0).expect("t")),
        }
    }

    fn status(phase: ShadowPhase, conditions: Vec<Condition>) -> ShadowDeploymentStatus {
        ShadowDeploymentStatus {
            phase: Some(phase),
            conditions,
            ..Default::default()
        }
    }

    #[test]
    fn a_failing_verdict_is_a_warning_with_the_numbers_and_a_steady_state_says_nothing() {
        let running = status(ShadowPhase::Running, vec![]);
        let mut failed = status(
            ShadowPhase::Completed,
            vec![condition(
                "Ready",
                "True",
                reason::CANDIDATE_FAILED,
                "agreement 0.41",
            )],
        );
        failed.verdict = Some(ShadowVerdict::Fail);
        let events = events(Some(&running), &failed);
        assert_eq!(
            events,
            vec![EventSpec {
                warning: true,
                reason: reason::CANDIDATE_FAILED.to_string(),
                note: "Running -> Completed: agreement 0.41".to_string(),
            }]
        );
        assert_eq!(super::events(Some(&failed), &failed), vec![]);
    }

    #[test]
    fn a_pass_with_an_experiment_is_two_normal_events_and_a_problem_one_warning() {
        let running = status(ShadowPhase::Running, vec![]);
        let mut passed = status(
            ShadowPhase::Completed,
            vec![condition(
                "Ready",
                "True",
                reason::CANDIDATE_PASSED,
                "agreement 1",
            )],
        );
        passed.verdict = Some(ShadowVerdict::Pass);
        passed.experiment = Some("s-experiment".to_string());
        let events = events(Some(&running), &passed);
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| !e.warning));
        assert_eq!(events[1].reason, reason::EXPERIMENT_CREATED);
        let missing = status(
            ShadowPhase::Pending,
            vec![condition(
                "Degraded",
                "True",
                reason::PRODUCTION_NOT_FOUND,
                "no prod",
            )],
        );
        let events = super::events(Some(&missing), &missing);
        assert_eq!(events, vec![]);
        let events = super::events(None, &missing);
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1],
            EventSpec::warning(reason::PRODUCTION_NOT_FOUND, "no prod")
        );
    }
}
