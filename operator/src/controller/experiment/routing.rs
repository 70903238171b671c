//! Where an experiment sends traffic, derived only from what is in the cluster (its spec and
//! status, the control's generation), so that an operator restart reaches the same answer:
//! the weights the router runs, and whether the control's Service selects the router.

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use super::children::ordered_variants;
use crate::analysis::decision::BREACHES_TO_FAIL;
use crate::api::Experiment;
use crate::api::experiment::{ExperimentPhase, OnInconclusive, RoutingProvider};

/// What the traffic does in the experiment's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Split by the spec's weights (pending, running, or inconclusive with `Hold`).
    Split,
    /// All to the promoted winner, until the control's manifest changes.
    Winner(String),
    /// All to the control: rolled back, failed, aborted, or finished without a promotion.
    Control,
}

/// The traffic of `experiment`'s current state. Pure.
pub fn traffic(experiment: &Experiment) -> Traffic {
    let status = experiment.status.as_ref();
    match status.and_then(|s| s.phase) {
        None | Some(ExperimentPhase::Pending | ExperimentPhase::Running) => Traffic::Split,
        Some(ExperimentPhase::Inconclusive)
            if experiment.spec.on_inconclusive == OnInconclusive::Hold =>
        {
            Traffic::Split
        }
        Some(ExperimentPhase::Succeeded) => {
            let promoted = status
                .and_then(|s| s.routing.as_ref())
                .is_some_and(|r| r.promoted_at_control_generation.is_some());
            match status.and_then(|s| s.winner.clone()) {
                Some(winner) if promoted => Traffic::Winner(winner),
                _ => Traffic::Control,
            }
        }
        Some(_) => Traffic::Control,
    }
}

/// The challengers a guardrail has failed while the others go on: the analysis leaves them
/// out, and they get no new traffic. Read from the breach streaks in status, which stay at or
/// above [`BREACHES_TO_FAIL`] for a dropped variant. Pure.
pub fn dropped(experiment: &Experiment) -> Vec<String> {
    let control = &experiment.spec.control;
    experiment
        .status
        .as_ref()
        .map(|s| {
            s.guardrail_breaches
                .iter()
                .filter(|b| b.consecutive >= BREACHES_TO_FAIL)
                .map(|b| b.variant.clone())
                .filter(|v| {
                    experiment
                        .spec
                        .variants
                        .iter()
                        .any(|x| x.name == *v && x.inference_service != *control)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The weights in force, per variant in router order (the control first). Pure.
pub fn weights_in_force(experiment: &Experiment) -> Vec<(String, u32)> {
    let traffic = traffic(experiment);
    let control = &experiment.spec.control;
    let dropped = dropped(experiment);
    ordered_variants(experiment)
        .into_iter()
        .map(|v| {
            let weight = match &traffic {
                Traffic::Split if dropped.contains(&v.name) => 0,
                Traffic::Split => v.weight,
                Traffic::Winner(winner) => u32::from(v.name == *winner),
                Traffic::Control => u32::from(v.inference_service == *control),
            };
            (v.name.clone(), weight)
        })
        .collect()
}

/// Whether `experiment` holds its control's Service now: a router experiment that is not
/// being deleted, while it splits traffic or sends it to a promoted winner and the control is
/// still at the generation it was promoted at. Pure.
pub fn holds_control_service(experiment: &Experiment, control_generation: Option<i64>) -> bool {
    if experiment.spec.routing.provider != RoutingProvider::Router
        || experiment.metadata.deletion_timestamp.is_some()
    {
        return false;
    }
    match traffic(experiment) {
        Traffic::Split => true,
        Traffic::Winner(_) => {
            experiment
                .status
                .as_ref()
                .and_then(|s| s.routing.as_ref())
                .and_then(|r| r.promoted_at_control_generation)
                == control_generation
        }
        Traffic::Control => false,
    }
}

/// Whether a router Deployment has a replica ready to serve: until then the control's Service
/// keeps its own pods, so clients never face a router that is not up.
pub fn router_ready(deployment: Option<&Deployment>) -> bool {
    deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .is_some_and(|r| r > 0)
}

/// Of the experiments that hold a control's Service, the one that wins: the oldest (a second
/// experiment on the same control is reported as a conflict by its own validation). Pure.
pub fn holder<'a>(
    experiments: impl IntoIterator<Item = &'a Experiment>,
    control_generation: Option<i64>,
) -> Option<&'a Experiment> {
    experiments
        .into_iter()
        .filter(|e| holds_control_service(e, control_generation))
        .min_by_key(|e| (e.creation_timestamp().map(|t| t.0), e.name_any()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::experiment::{ExperimentStatus, RoutingStatus};
    use serde_json::json;

    fn experiment(status: Option<ExperimentStatus>) -> Experiment {
        let mut e: Experiment = serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "exp", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "control": "a",
                "variants": [
                    {"name": "treatment", "inferenceService": "b", "weight": 30},
                    {"name": "control", "inferenceService": "a", "weight": 70},
                ],
                "metrics": [{"name": "ok", "kind": "Proportion", "role": "Primary",
                             "source": {"builtin": "ok"}}],
            }
        }))
        .expect("valid");
        e.status = status;
        e
    }

    fn phase(phase: ExperimentPhase) -> ExperimentStatus {
        ExperimentStatus {
            phase: Some(phase),
            ..Default::default()
        }
    }

    fn promoted(at: i64) -> ExperimentStatus {
        ExperimentStatus {
            phase: Some(ExperimentPhase::Succeeded),
            winner: Some("treatment".to_string()),
            routing: Some(RoutingStatus {
                promoted_at_control_generation: Some(at),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn w(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    #[test]
    fn weights_follow_the_state_with_the_control_first() {
        assert_eq!(
            weights_in_force(&experiment(None)),
            w(&[("control", 70), ("treatment", 30)])
        );
        assert_eq!(
            weights_in_force(&experiment(Some(promoted(4)))),
            w(&[("control", 0), ("treatment", 1)])
        );
        for finished in [ExperimentPhase::Failed, ExperimentPhase::Aborted] {
            assert_eq!(
                weights_in_force(&experiment(Some(phase(finished)))),
                w(&[("control", 1), ("treatment", 0)])
            );
        }
        let mut recommended = promoted(4);
        recommended.routing = None;
        assert_eq!(traffic(&experiment(Some(recommended))), Traffic::Control);
        let mut hold = experiment(Some(phase(ExperimentPhase::Inconclusive)));
        assert_eq!(traffic(&hold), Traffic::Control);
        hold.spec.on_inconclusive = OnInconclusive::Hold;
        assert_eq!(traffic(&hold), Traffic::Split);
    }

    #[test]
    fn a_variant_failed_by_a_guardrail_gets_no_new_traffic_but_the_control_keeps_its_own() {
        use crate::api::experiment::GuardrailBreach;
        let breach = |variant: &str, consecutive| GuardrailBreach {
            variant: variant.to_string(),
            metric: "latency".to_string(),
            consecutive,
        };
        let mut status = phase(ExperimentPhase::Running);
        status.guardrail_breaches = vec![breach("treatment", 1)];
        assert_eq!(
            weights_in_force(&experiment(Some(status.clone()))),
            w(&[("control", 70), ("treatment", 30)])
        );
        status.guardrail_breaches = vec![breach("treatment", 2), breach("control", 3)];
        assert_eq!(
            weights_in_force(&experiment(Some(status))),
            w(&[("control", 70), ("treatment", 0)])
        );
    }

    #[test]
    fn the_service_is_held_while_running_and_until_the_control_changes_after_a_promotion() {
        assert!(holds_control_service(&experiment(None), Some(1)));
        assert!(holds_control_service(
            &experiment(Some(phase(ExperimentPhase::Running))),
            Some(1)
        ));
        assert!(holds_control_service(
            &experiment(Some(promoted(4))),
            Some(4)
        ));
        assert!(!holds_control_service(
            &experiment(Some(promoted(4))),
            Some(5)
        ));
        assert!(!holds_control_service(
            &experiment(Some(phase(ExperimentPhase::Failed))),
            Some(1)
        ));
        let mut deleting = experiment(None);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1).expect("valid"),
            ));
        assert!(!holds_control_service(&deleting, Some(1)));
        let mut gateway = experiment(None);
        gateway.spec.routing.provider = RoutingProvider::GatewayApi;
        assert!(!holds_control_service(&gateway, Some(1)));
    }

    #[test]
    fn the_oldest_holder_wins() {
        let mut old = experiment(None);
        old.metadata.name = Some("old".to_string());
        old.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1).expect("valid"),
            ));
        let mut new = experiment(None);
        new.metadata.name = Some("new".to_string());
        new.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(2).expect("valid"),
            ));
        let done = experiment(Some(phase(ExperimentPhase::Failed)));
        assert_eq!(
            holder([&new, &old, &done], Some(1)).map(|e| e.name_any()),
            Some("old".to_string())
        );
        assert!(holder([&done], Some(1)).is_none());
    }
}
