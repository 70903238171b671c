//! A ShadowDeployment's status from what one reconcile observed. Pure: the phase machine
//! (Pending until the candidate is ready and production's sidecars run a mirror generation
//! that includes the shadow, Running while the analysis gives no verdict, then Completed; a
//! running shadow whose production goes away is Aborted), the conditions and the figures of
//! the latest analysis.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::validate::Problem;
use crate::analysis::shadow::{ShadowJudgement, ShadowObservation};
use crate::api::ShadowDeployment;
use crate::api::conditions::{ConditionType, DesiredCondition, reason, set_condition};
use crate::api::shadow_deployment::{
    MirrorStatus, ShadowDeploymentStatus, ShadowPhase, ShadowVerdict,
};

/// What the status is computed from.
pub struct Observed<'a> {
    /// What validation found; any problem keeps the shadow from mirroring.
    pub problems: &'a [Problem],
    /// The candidate's replicas, ready and wanted.
    pub candidate_replicas: (i32, i32),
    /// The generation of production's mirror configuration that includes this shadow.
    pub generation_written: Option<u64>,
    /// The lowest generation production's sidecars report running.
    pub generation_live: Option<u64>,
    /// This reconcile's analysis, when one was due.
    pub analysis: Option<(&'a ShadowObservation, &'a ShadowJudgement)>,
    /// The Experiment `onPass: CreateExperiment` created.
    pub experiment: Option<String>,
    pub now: Time,
}

/// Whether production's sidecars run a configuration that includes the shadow. Pure.
pub fn mirror_live(written: Option<u64>, live: Option<u64>) -> bool {
    matches!((written, live), (Some(w), Some(l)) if l >= w)
}

/// Whether the shadow has finished (its candidate gone, nothing mirrored any more).
pub fn finished(status: Option<&ShadowDeploymentStatus>) -> bool {
    status
        .and_then(|s| s.phase)
        .is_some_and(|p| matches!(p, ShadowPhase::Completed | ShadowPhase::Aborted))
}

/// The new status. `shadow.status` is what earlier reconciles left.
pub fn compute_status(shadow: &ShadowDeployment, observed: &Observed) -> ShadowDeploymentStatus {
    let mut status = shadow.status.clone().unwrap_or_default();
    let generation = shadow.metadata.generation;
    status.observed_generation = generation;
    let now = observed.now.clone();
    if let Some(experiment) = &observed.experiment
        && status.experiment.as_ref() != Some(experiment)
    {
        status.experiment = Some(experiment.clone());
        set(
            &mut status,
            [(
                ConditionType::Progressing,
                false,
                reason::EXPERIMENT_CREATED,
                format!(
                    "the candidate passed: Experiment {experiment} tries it on real traffic against {}",
                    shadow.spec.production
                ),
            )],
            generation,
            &now,
        );
    }
    if finished(Some(&status)) {
        return status;
    }

    if let Some(first) = observed.problems.first() {
        let message = observed
            .problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        status.phase = Some(match status.phase {
            // Mirroring stopped with the problem: what was measured cannot be finished.
            Some(ShadowPhase::Running) => ShadowPhase::Aborted,
            _ => ShadowPhase::Pending,
        });
        set(
            &mut status,
            [
                (ConditionType::Ready, false, first.reason, message.clone()),
                (ConditionType::Degraded, true, first.reason, message.clone()),
                (ConditionType::Progressing, false, first.reason, message),
            ],
            generation,
            &now,
        );
        return status;
    }

    status.mirror = Some(MirrorStatus {
        generation_written: observed.generation_written,
        generation_live: observed.generation_live,
    });
    let phase = status.phase.unwrap_or(ShadowPhase::Pending);
    let (ready, wanted) = observed.candidate_replicas;
    if phase == ShadowPhase::Pending {
        let live = mirror_live(observed.generation_written, observed.generation_live);
        if ready > 0 && live {
            status.phase = Some(ShadowPhase::Running);
            status.start_time = Some(now.clone());
        } else {
            status.phase = Some(ShadowPhase::Pending);
            let (why, message) = if ready == 0 {
                (
                    reason::CANDIDATE_NOT_READY,
                    format!(
                        "the candidate has {ready}/{wanted} replicas ready; nothing is mirrored yet"
                    ),
                )
            } else {
                (
                    reason::MIRROR_PENDING,
                    match (observed.generation_written, observed.generation_live) {
                        (None, _) => format!(
                            "production {}'s mirror configuration does not include the shadow yet",
                            shadow.spec.production
                        ),
                        (Some(w), None) => format!(
                            "mirror generation {w} written; production's sidecars report none yet"
                        ),
                        (Some(w), Some(l)) => format!(
                            "mirror generation {w} written; production's sidecars run generation {l}"
                        ),
                    },
                )
            };
            set(
                &mut status,
                [
                    (ConditionType::Ready, false, why, message.clone()),
                    (ConditionType::Progressing, true, why, message),
                    (
                        ConditionType::Degraded,
                        false,
                        reason::HEALTHY,
                        "no problem found".to_string(),
                    ),
                ],
                generation,
                &now,
            );
            return status;
        }
    }

    // Running.
    let mirroring = format!(
        "production {} mirrors {}% of its requests to the candidate (mirror generation {})",
        shadow.spec.production,
        shadow.spec.mirror_percent,
        observed
            .generation_written
            .or(status.mirror.as_ref().and_then(|m| m.generation_written))
            .map_or_else(|| "?".to_string(), |g| g.to_string())
    );
    let mut progress = (reason::MIRRORING, mirroring.clone());
    if let Some((observation, judgement)) = observed.analysis {
        status.last_analysis_time = Some(now.clone());
        // Without numbers (Prometheus unreachable, no series yet) the judgement carries none:
        // the status keeps the last ones rather than falling back to zero.
        if let ShadowObservation::Data(counts) = observation {
            status.samples = judgement.samples;
            status.dropped = judgement.dropped;
            status.agreement = judgement.agreement.clone();
            status.latency_ratio = judgement.latency_ratio.clone();
            status.candidate_error_rate = judgement.candidate_error_rate;
            status.production_error_rate = judgement.production_error_rate;
            status.confidence_shift = judgement.confidence_shift;
            status.production_latency = counts.production_latency.clone();
            status.candidate_latency = counts.candidate_latency.clone();
        }
        progress = (judgement.reason, judgement.message.clone());
        if let Some(verdict) = judgement.verdict {
            status.phase = Some(ShadowPhase::Completed);
            status.verdict = Some(verdict);
            let done = format!(
                "verdict {verdict:?}: {}; mirroring stopped and the candidate removed",
                judgement.message
            );
            let mut conditions = vec![
                (ConditionType::Ready, true, judgement.reason, done.clone()),
                (
                    ConditionType::Degraded,
                    false,
                    reason::HEALTHY,
                    "no problem found".to_string(),
                ),
            ];
            if status.experiment.is_none() || verdict != ShadowVerdict::Pass {
                conditions.push((ConditionType::Progressing, false, judgement.reason, done));
            }
            set(&mut status, conditions, generation, &now);
            return status;
        }
    }
    set(
        &mut status,
        [
            (ConditionType::Ready, true, reason::MIRRORING, mirroring),
            (ConditionType::Progressing, true, progress.0, progress.1),
            (
                ConditionType::Degraded,
                false,
                reason::HEALTHY,
                "no problem found".to_string(),
            ),
        ],
        generation,
        &now,
    );
    status
}

/// How long until the next analysis is due: `interval` after the last one (or after the
/// start). Zero when due now or not running. Pure.
pub fn next_analysis_in(
    status: &ShadowDeploymentStatus,
    interval: Duration,
    now: &Time,
) -> Duration {
    let Some(last) = status
        .last_analysis_time
        .as_ref()
        .or(status.start_time.as_ref())
    else {
        return Duration::ZERO;
    };
    let since = Duration::try_from(now.0.duration_since(last.0)).unwrap_or(Duration::ZERO);
    interval.saturating_sub(since)
}

fn set(
    status: &mut ShadowDeploymentStatus,
    conditions: impl IntoIterator<Item = (ConditionType, bool, &'static str, String)>,
    generation: Option<i64>,
    now: &Time,
) {
    for (type_, value, why, message) in conditions {
        set_condition(
            &mut status.conditions,
            DesiredCondition::new(type_, value, why, message),
            generation,
            now.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::shadow::ShadowCounts;
    use crate::api::conditions::find_condition;
    use crate::api::shadow_deployment::{Agreement, LatencyPercentiles};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("valid"))
    }

    fn shadow(status: Option<ShadowDeploymentStatus>) -> ShadowDeployment {
        let mut shadow: ShadowDeployment = serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "ShadowDeployment",
            "metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 2},
            "spec": {
                "production": "prod",
                "candidate": {"model": {"uri": "file:///c.onnx", "format": "onnx", "task": "embed"}},
                "comparison": {"mode": "Cosine"},
            }
        }))
        .expect("valid");
        shadow.status = status;
        shadow
    }

    fn observed<'a>(ready: i32, written: Option<u64>, live: Option<u64>, now: i64) -> Observed<'a> {
        Observed {
            problems: &[],
            candidate_replicas: (ready, 1),
            generation_written: written,
            generation_live: live,
            analysis: None,
            experiment: None,
            now: at(now),
        }
    }

    fn reason_of(status: &ShadowDeploymentStatus, type_: ConditionType) -> (String, String) {
        let c = find_condition(&status.conditions, type_).expect("condition");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn pending_until_the_candidate_is_ready_and_the_mirror_is_live() {
        let status = compute_status(&shadow(None), &observed(0, None, None, 10));
        assert_eq!(status.phase, Some(ShadowPhase::Pending));
        assert_eq!(status.observed_generation, Some(2));
        assert_eq!(
            reason_of(&status, ConditionType::Ready),
            ("False".to_string(), reason::CANDIDATE_NOT_READY.to_string())
        );
        let status = compute_status(&shadow(Some(status)), &observed(1, Some(3), Some(2), 11));
        assert_eq!(status.phase, Some(ShadowPhase::Pending));
        let ready = find_condition(&status.conditions, ConditionType::Ready).expect("Ready");
        assert_eq!(ready.reason, reason::MIRROR_PENDING);
        assert_eq!(
            ready.message,
            "mirror generation 3 written; production's sidecars run generation 2"
        );
        let status = compute_status(&shadow(Some(status)), &observed(1, Some(3), Some(3), 12));
        assert_eq!(status.phase, Some(ShadowPhase::Running));
        assert_eq!(status.start_time, Some(at(12)));
        assert_eq!(
            reason_of(&status, ConditionType::Ready),
            ("True".to_string(), reason::MIRRORING.to_string())
        );
        assert_eq!(
            status.mirror,
            Some(MirrorStatus {
                generation_written: Some(3),
                generation_live: Some(3)
            })
        );
    }

    fn judgement(verdict: Option<ShadowVerdict>, reason: &'static str) -> ShadowJudgement {
        ShadowJudgement {
            verdict,
            reason,
            message: "agreement 0.99 [0.98, 1.00] over 500 pairs".to_string(),
            samples: 500,
            dropped: 3,
            agreement: Some(Agreement {
                rate: 0.99,
                lower: 0.98,
                upper: 1.0,
            }),
            latency_ratio: Some(LatencyPercentiles {
                p50: 1.0,
                p95: 1.1,
                p99: 1.2,
            }),
            candidate_error_rate: Some(0.0),
            production_error_rate: Some(0.0),
            confidence_shift: None,
        }
    }

    #[test]
    fn an_analysis_without_numbers_keeps_the_last_figures() {
        let running = ShadowDeploymentStatus {
            phase: Some(ShadowPhase::Running),
            start_time: Some(at(10)),
            samples: 800,
            agreement: Some(Agreement {
                rate: 0.97,
                lower: 0.96,
                upper: 0.98,
            }),
            ..Default::default()
        };
        let down = ShadowObservation::Unreachable {
            error: "connection refused".to_string(),
        };
        let waiting = ShadowJudgement {
            samples: 0,
            dropped: 0,
            agreement: None,
            latency_ratio: None,
            candidate_error_rate: None,
            production_error_rate: None,
            ..judgement(None, reason::PROMETHEUS_UNREACHABLE)
        };
        let status = compute_status(
            &shadow(Some(running.clone())),
            &Observed {
                analysis: Some((&down, &waiting)),
                ..observed(1, Some(1), Some(1), 40)
            },
        );
        assert_eq!(status.samples, 800);
        assert_eq!(status.agreement, running.agreement);
        assert_eq!(status.last_analysis_time, Some(at(40)));
        assert_eq!(
            reason_of(&status, ConditionType::Progressing),
            (
                "True".to_string(),
                reason::PROMETHEUS_UNREACHABLE.to_string()
            )
        );
    }

    #[test]
    fn an_analysis_fills_the_figures_and_a_verdict_completes_the_shadow() {
        let running = ShadowDeploymentStatus {
            phase: Some(ShadowPhase::Running),
            start_time: Some(at(10)),
            ..Default::default()
        };
        let counts = ShadowObservation::Data(ShadowCounts {
            production_latency: Some(LatencyPercentiles {
                p50: 0.01,
                p95: 0.02,
                p99: 0.03,
            }),
            ..Default::default()
        });
        let still = judgement(None, reason::NOT_ENOUGH_DATA);
        let status = compute_status(
            &shadow(Some(running.clone())),
            &Observed {
                analysis: Some((&counts, &still)),
                ..observed(1, Some(1), Some(1), 40)
            },
        );
        assert_eq!(status.phase, Some(ShadowPhase::Running));
        assert_eq!(status.samples, 500);
        assert_eq!(status.dropped, 3);
        assert_eq!(status.last_analysis_time, Some(at(40)));
        assert_eq!(
            status.production_latency.as_ref().map(|l| l.p95),
            Some(0.02)
        );
        assert_eq!(status.verdict, None);
        assert_eq!(
            reason_of(&status, ConditionType::Progressing),
            ("True".to_string(), reason::NOT_ENOUGH_DATA.to_string())
        );

        let failed = judgement(Some(ShadowVerdict::Fail), reason::CANDIDATE_FAILED);
        let status = compute_status(
            &shadow(Some(status)),
            &Observed {
                analysis: Some((&counts, &failed)),
                ..observed(1, Some(1), Some(1), 50)
            },
        );
        assert_eq!(status.phase, Some(ShadowPhase::Completed));
        assert_eq!(status.verdict, Some(ShadowVerdict::Fail));
        let ready = find_condition(&status.conditions, ConditionType::Ready).expect("Ready");
        assert_eq!(ready.reason, reason::CANDIDATE_FAILED);
        assert!(
            ready.message.contains("over 500 pairs"),
            "{}",
            ready.message
        );
        // Finished is final: a later reconcile changes nothing.
        let again = compute_status(&shadow(Some(status.clone())), &observed(0, None, None, 60));
        assert_eq!(again, status);
    }

    #[test]
    fn a_pass_with_its_experiment_names_it() {
        let running = ShadowDeploymentStatus {
            phase: Some(ShadowPhase::Running),
            start_time: Some(at(10)),
            ..Default::default()
        };
        let counts = ShadowObservation::Data(ShadowCounts::default());
        let passed = judgement(Some(ShadowVerdict::Pass), reason::CANDIDATE_PASSED);
        let status = compute_status(
            &shadow(Some(running)),
            &Observed {
                analysis: Some((&counts, &passed)),
                experiment: Some("s-experiment".to_string()),
                ..observed(1, Some(1), Some(1), 50)
            },
        );
        assert_eq!(status.phase, Some(ShadowPhase::Completed));
        assert_eq!(status.experiment.as_deref(), Some("s-experiment"));
        assert_eq!(
            reason_of(&status, ConditionType::Progressing),
            ("False".to_string(), reason::EXPERIMENT_CREATED.to_string())
        );
    }

    #[test]
    fn a_problem_keeps_a_new_shadow_pending_and_aborts_a_running_one() {
        let problems = [Problem {
            reason: reason::PRODUCTION_NOT_FOUND,
            message: "spec.production: no InferenceService prod in namespace ns".to_string(),
        }];
        let status = compute_status(
            &shadow(None),
            &Observed {
                problems: &problems,
                ..observed(0, None, None, 10)
            },
        );
        assert_eq!(status.phase, Some(ShadowPhase::Pending));
        assert_eq!(
            reason_of(&status, ConditionType::Degraded),
            ("True".to_string(), reason::PRODUCTION_NOT_FOUND.to_string())
        );
        let running = ShadowDeploymentStatus {
            phase: Some(ShadowPhase::Running),
            ..Default::default()
        };
        let status = compute_status(
            &shadow(Some(running)),
            &Observed {
                problems: &problems,
                ..observed(0, None, None, 10)
            },
        );
        assert_eq!(status.phase, Some(ShadowPhase::Aborted));
    }
}
