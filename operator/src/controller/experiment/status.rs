//! An Experiment's status from what one reconcile observed. Pure: the phase machine
//! (Pending until the router serves, Running while the analysis decides nothing, then what the
//! verdict says), the conditions, the routing, and the bounded decision history.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::routing::{Traffic, traffic};
use super::validate::Problem;
use crate::analysis::decision::{Action, Verdict};
use crate::api::conditions::{ConditionType, DesiredCondition, reason, set_condition};
use crate::api::experiment::{
    Decision, ExperimentPhase, ExperimentStatus, MAX_HISTORY, RoutingProvider, RoutingStatus,
    VariantWeight,
};
use crate::api::inference_service::ModelSpec;
use crate::api::{Experiment, InferenceService};
use crate::resources::http_route::GATEWAY_API_ROUTING_MESSAGE;

/// What the status is computed from.
pub struct Observed<'a> {
    /// What validation found; any problem keeps the experiment from running.
    pub problems: &'a [Problem],
    /// Whether traffic reaches the variants: the router has a ready replica, or the HTTPRoute
    /// was admitted.
    pub routing_ready: bool,
    /// The router's replicas, ready and wanted, for the messages.
    pub router_replicas: (i32, i32),
    /// The weights the router configuration (or the HTTPRoute) carries now.
    pub weights: &'a [(String, u32)],
    /// The router configuration generation written.
    pub config_generation: Option<u64>,
    /// The generation every router replica serves (min over replicas), when Prometheus said.
    pub live_generation: Option<u64>,
    /// This reconcile's analysis, when one was due.
    pub verdict: Option<&'a Verdict>,
    /// The control InferenceService, for the promotion point and the message.
    pub control: Option<&'a InferenceService>,
    /// The winner's InferenceService, for what to change in the control's manifest.
    pub winner: Option<&'a InferenceService>,
    pub now: Time,
}

/// The new status. `experiment.status` is what earlier reconciles left.
pub fn compute_status(experiment: &Experiment, observed: &Observed) -> ExperimentStatus {
    let mut status = experiment.status.clone().unwrap_or_default();
    let generation = experiment.metadata.generation;
    status.observed_generation = generation;
    let now = observed.now.clone();
    let name = experiment.metadata.name.clone().unwrap_or_default();

    if let Some(first) = observed.problems.first() {
        let message = observed
            .problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if status.phase.is_none() {
            status.phase = Some(ExperimentPhase::Pending);
        }
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

    let phase = status.phase.unwrap_or(ExperimentPhase::Pending);
    if phase == ExperimentPhase::Pending && observed.routing_ready {
        status.phase = Some(ExperimentPhase::Running);
        status.start_time = Some(now.clone());
        record(
            &mut status,
            &now,
            ExperimentPhase::Running,
            reason::EXPERIMENT_RUNNING,
            format!("traffic split: {}", describe(observed.weights)),
        );
    } else if status.phase.is_none() {
        status.phase = Some(ExperimentPhase::Pending);
    }

    let mut promoted_at = status
        .routing
        .as_ref()
        .and_then(|r| r.promoted_at_control_generation);
    if let Some(verdict) = observed.verdict {
        apply_verdict(&mut status, verdict, &now);
        if let Action::Promote { variant } = &verdict.action {
            status.winner = Some(variant.clone());
            promoted_at = observed.control.and_then(|c| c.metadata.generation);
        }
    }

    status.routing = Some(RoutingStatus {
        weights: observed
            .weights
            .iter()
            .map(|(variant, weight)| VariantWeight {
                variant: variant.clone(),
                weight: *weight,
            })
            .collect(),
        config_generation: observed.config_generation,
        live_generation: observed.live_generation,
        promoted_at_control_generation: promoted_at,
        message: match experiment.spec.routing.provider {
            RoutingProvider::GatewayApi => GATEWAY_API_ROUTING_MESSAGE.to_string(),
            RoutingProvider::Router => String::new(),
        },
    });

    let phase = status.phase.unwrap_or(ExperimentPhase::Pending);
    let last = status.history.last().cloned();
    let (last_reason, last_message) = last
        .map(|d| (d.reason, d.message))
        .unwrap_or_else(|| (reason::EXPERIMENT_RUNNING.to_string(), String::new()));
    let conditions = match phase {
        ExperimentPhase::Pending => {
            let (ready, wanted) = observed.router_replicas;
            let message = match experiment.spec.routing.provider {
                RoutingProvider::Router => format!(
                    "router {}: {ready} of {wanted} replicas ready; the Service of {} still selects its own pods",
                    super::children::router_name(&name),
                    experiment.spec.control
                ),
                RoutingProvider::GatewayApi => "waiting for the HTTPRoute".to_string(),
            };
            [
                (
                    ConditionType::Ready,
                    false,
                    reason::ROUTER_NOT_READY,
                    message.clone(),
                ),
                (
                    ConditionType::Progressing,
                    true,
                    reason::ROUTER_NOT_READY,
                    message,
                ),
                (
                    ConditionType::Degraded,
                    false,
                    reason::HEALTHY,
                    String::new(),
                ),
            ]
        }
        ExperimentPhase::Running => {
            let degraded = [
                reason::PROMETHEUS_UNREACHABLE,
                reason::SAMPLE_RATIO_MISMATCH,
                reason::GUARDRAIL_BREACHED,
            ]
            .contains(&last_reason.as_str());
            let ready = format!(
                "traffic split: {}; analysed every {}",
                describe(observed.weights),
                experiment.spec.analysis.interval
            );
            let reason_str = static_reason(&last_reason);
            [
                (
                    ConditionType::Ready,
                    true,
                    reason::EXPERIMENT_RUNNING,
                    ready,
                ),
                (
                    ConditionType::Progressing,
                    true,
                    reason_str,
                    last_message.clone(),
                ),
                if degraded {
                    (ConditionType::Degraded, true, reason_str, last_message)
                } else {
                    (
                        ConditionType::Degraded,
                        false,
                        reason::HEALTHY,
                        String::new(),
                    )
                },
            ]
        }
        _ => {
            let what_now = finished_message(experiment, &status, observed.winner);
            [
                (
                    ConditionType::Ready,
                    true,
                    reason::EXPERIMENT_FINISHED,
                    what_now,
                ),
                (
                    ConditionType::Progressing,
                    false,
                    static_reason(&last_reason),
                    last_message,
                ),
                (
                    ConditionType::Degraded,
                    false,
                    reason::HEALTHY,
                    String::new(),
                ),
            ]
        }
    };
    set(&mut status, conditions, generation, &now);
    status
}

/// The stored reason as one of the constants (conditions take any string; this keeps the
/// borrow simple).
fn static_reason(stored: &str) -> &'static str {
    [
        reason::EXPERIMENT_RUNNING,
        reason::NO_DATA,
        reason::PROMETHEUS_UNREACHABLE,
        reason::GUARDRAIL_BREACHED,
        reason::GUARDRAIL_FAILED,
        reason::NOT_ENOUGH_DATA,
        reason::SAMPLE_RATIO_MISMATCH,
        reason::NO_SIGNIFICANT_DIFFERENCE,
        reason::WINNER_FOUND,
        reason::VARIANTS_WORSE,
        reason::MAX_DURATION_REACHED,
    ]
    .into_iter()
    .find(|r| *r == stored)
    .unwrap_or(reason::EXPERIMENT_RUNNING)
}

fn set<const N: usize>(
    status: &mut ExperimentStatus,
    conditions: [(ConditionType, bool, &str, String); N],
    generation: Option<i64>,
    now: &Time,
) {
    for (type_, value, reason, message) in conditions {
        set_condition(
            &mut status.conditions,
            DesiredCondition::new(type_, value, reason, message),
            generation,
            now.clone(),
        );
    }
}

/// Copies an analysis into the status.
fn apply_verdict(status: &mut ExperimentStatus, verdict: &Verdict, now: &Time) {
    status.phase = Some(verdict.phase);
    status.variants = verdict.variants.clone();
    status.comparisons = verdict.comparisons.clone();
    status.srm = verdict.srm.clone();
    if verdict.winner.is_some() {
        status.winner = verdict.winner.clone();
    }
    status.sample_size = verdict.sample_size.clone();
    status.guardrail_breaches = verdict.guardrail_breaches.clone();
    status.extensions = verdict.extensions;
    status.last_analysis_time = Some(now.clone());
    record(
        status,
        now,
        verdict.phase,
        verdict.reason,
        verdict.message.clone(),
    );
}

/// Appends a decision when the phase or the reason changed (a steady analysis adds nothing),
/// keeping the newest [`MAX_HISTORY`].
fn record(
    status: &mut ExperimentStatus,
    now: &Time,
    phase: ExperimentPhase,
    reason: &str,
    message: String,
) {
    let unchanged = status
        .history
        .last()
        .is_some_and(|d| d.phase == phase && d.reason == reason);
    if unchanged {
        if let Some(last) = status.history.last_mut() {
            // The numbers move on; the entry says what they are now.
            last.message = message;
        }
        return;
    }
    status.history.push(Decision {
        time: now.clone(),
        phase,
        reason: reason.to_string(),
        message,
    });
    let excess = status.history.len().saturating_sub(MAX_HISTORY);
    status.history.drain(..excess);
}

fn describe(weights: &[(String, u32)]) -> String {
    weights
        .iter()
        .map(|(v, w)| format!("{v}={w}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What traffic does after the experiment, and what the user should change.
pub fn finished_message(
    experiment: &Experiment,
    status: &ExperimentStatus,
    winner: Option<&InferenceService>,
) -> String {
    let control = &experiment.spec.control;
    match traffic(experiment_with(experiment, status).as_ref()) {
        Traffic::Winner(variant) => {
            let at = status
                .routing
                .as_ref()
                .and_then(|r| r.promoted_at_control_generation)
                .unwrap_or_default();
            let target = winner.map_or_else(
                || format!("variant {variant}'s"),
                |w| format!("{}'s", w.metadata.name.clone().unwrap_or_default()),
            );
            let model = winner
                .map(|w| format!(" ({})", describe_model(&w.spec.model)))
                .unwrap_or_default();
            format!(
                "variant {variant} won and serves all traffic of {control}'s Service through the router; to keep it, set InferenceService {control}'s spec.model to {target}{model}; once {control}'s generation moves past {at}, its Service selects its own pods again"
            )
        }
        Traffic::Control => format!(
            "all traffic is back on the control {control}: its Service selects its own pods"
        ),
        Traffic::Split => "the split is held as it is".to_string(),
    }
}

/// The experiment with `status` in place of its own (the phase machine looks at the new one).
fn experiment_with(experiment: &Experiment, status: &ExperimentStatus) -> Box<Experiment> {
    let mut copy = Box::new(experiment.clone());
    copy.status = Some(status.clone());
    copy
}

/// The fields of a model spec a user copies into the control's manifest.
pub fn describe_model(model: &ModelSpec) -> String {
    let mut parts = vec![format!("uri: {}", model.uri)];
    if let Ok(serde_json::Value::String(format)) = serde_json::to_value(model.format) {
        parts.push(format!("format: {format}"));
    }
    if let Some(tokenizer) = &model.tokenizer {
        parts.push(format!("tokenizer: {tokenizer}"));
    }
    if let Some(sha) = &model.sha256 {
        parts.push(format!("sha256: {sha}"));
    }
    parts.join(", ")
}

/// How long until the next analysis is due (zero when it is), from the last one.
pub fn next_analysis_in(status: &ExperimentStatus, interval: Duration, now: &Time) -> Duration {
    let Some(last) = status.last_analysis_time.as_ref() else {
        return Duration::ZERO;
    };
    let since = now.0.duration_since(last.0);
    let since = Duration::try_from(since).unwrap_or(Duration::ZERO);
    interval.saturating_sub(since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::decision::Action;
    use crate::api::conditions::find_condition;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).expect("valid"))
    }

    fn experiment() -> Experiment {
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "exp", "namespace": "ns", "uid": "u", "generation": 2},
            "spec": {
                "control": "a",
                "variants": [{"name": "control", "inferenceService": "a", "weight": 1},
                             {"name": "t", "inferenceService": "b", "weight": 1}],
                "onSuccess": "Promote",
                "metrics": [{"name": "ok", "kind": "Proportion", "role": "Primary",
                             "source": {"builtin": "ok"}}],
            }
        }))
        .expect("valid")
    }

    fn isvc(name: &str, generation: i64) -> InferenceService {
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "ns", "generation": generation},
            "spec": {"model": {"uri": format!("hf://org/{name}"), "format": "onnx", "task": "embed"}}
        }))
        .expect("valid")
    }

    fn weights() -> Vec<(String, u32)> {
        vec![("control".to_string(), 1), ("t".to_string(), 1)]
    }

    fn observed<'a>(
        weights: &'a [(String, u32)],
        ready: bool,
        verdict: Option<&'a Verdict>,
        control: Option<&'a InferenceService>,
        winner: Option<&'a InferenceService>,
        now: i64,
    ) -> Observed<'a> {
        Observed {
            problems: &[],
            routing_ready: ready,
            router_replicas: (i32::from(ready), 1),
            weights,
            config_generation: Some(1),
            live_generation: None,
            verdict,
            control,
            winner,
            now: at(now),
        }
    }

    fn verdict(phase: ExperimentPhase, reason: &'static str, action: Action) -> Verdict {
        Verdict {
            phase,
            reason,
            message: format!("{reason} numbers"),
            action,
            variants: vec![],
            comparisons: vec![],
            srm: None,
            winner: None,
            sample_size: None,
            guardrail_breaches: vec![],
            extensions: 0,
            dropped: vec![],
        }
    }

    fn condition(status: &ExperimentStatus, t: ConditionType) -> (String, String) {
        let c = find_condition(&status.conditions, t).expect("condition");
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn pending_until_the_router_is_ready_then_running_from_then() {
        let mut e = experiment();
        let w = weights();
        let pending = compute_status(&e, &observed(&w, false, None, None, None, 10));
        assert_eq!(pending.phase, Some(ExperimentPhase::Pending));
        assert_eq!(
            condition(&pending, ConditionType::Ready),
            ("False".to_string(), "RouterNotReady".to_string())
        );
        e.status = Some(pending);
        let running = compute_status(&e, &observed(&w, true, None, None, None, 20));
        assert_eq!(running.phase, Some(ExperimentPhase::Running));
        assert_eq!(running.start_time, Some(at(20)));
        assert_eq!(running.history.len(), 1);
        e.status = Some(running.clone());
        // A later reconcile with nothing new changes nothing (no write).
        assert_eq!(
            compute_status(&e, &observed(&w, true, None, None, None, 30)),
            running
        );
    }

    #[test]
    fn a_promotion_records_the_control_generation_and_says_what_to_change() {
        let mut e = experiment();
        e.status = Some(ExperimentStatus {
            phase: Some(ExperimentPhase::Running),
            ..Default::default()
        });
        let (a, b) = (isvc("a", 7), isvc("b", 1));
        let mut v = verdict(
            ExperimentPhase::Succeeded,
            reason::WINNER_FOUND,
            Action::Promote {
                variant: "t".to_string(),
            },
        );
        v.winner = Some("t".to_string());
        let w = weights();
        let status = compute_status(&e, &observed(&w, true, Some(&v), Some(&a), Some(&b), 50));
        assert_eq!(status.phase, Some(ExperimentPhase::Succeeded));
        assert_eq!(status.winner.as_deref(), Some("t"));
        assert_eq!(
            status
                .routing
                .as_ref()
                .and_then(|r| r.promoted_at_control_generation),
            Some(7)
        );
        assert_eq!(status.last_analysis_time, Some(at(50)));
        let ready = find_condition(&status.conditions, ConditionType::Ready).expect("ready");
        assert!(
            ready.message.contains(
                "set InferenceService a's spec.model to b's (uri: hf://org/b, format: onnx)"
            ),
            "{}",
            ready.message
        );
        assert_eq!(
            condition(&status, ConditionType::Progressing),
            ("False".to_string(), "WinnerFound".to_string())
        );
    }

    #[test]
    fn history_grows_only_on_a_new_phase_or_reason_and_stays_bounded() {
        let mut e = experiment();
        e.status = Some(ExperimentStatus {
            phase: Some(ExperimentPhase::Running),
            ..Default::default()
        });
        let w = weights();
        let reasons = [reason::NO_DATA, reason::NOT_ENOUGH_DATA];
        for i in 0..(2 * MAX_HISTORY as i64 + 4) {
            let v = verdict(
                ExperimentPhase::Running,
                reasons[(i as usize / 2) % 2],
                Action::Continue,
            );
            let status = compute_status(&e, &observed(&w, true, Some(&v), None, None, 100 + i));
            e.status = Some(status);
        }
        let status = e.status.expect("status");
        assert_eq!(status.history.len(), MAX_HISTORY);
        assert!(
            status
                .history
                .windows(2)
                .all(|p| p[0].reason != p[1].reason)
        );
    }

    #[test]
    fn unreachable_prometheus_is_a_degraded_wait_not_a_failure() {
        let mut e = experiment();
        e.status = Some(ExperimentStatus {
            phase: Some(ExperimentPhase::Running),
            ..Default::default()
        });
        let v = verdict(
            ExperimentPhase::Running,
            reason::PROMETHEUS_UNREACHABLE,
            Action::Continue,
        );
        let w = weights();
        let status = compute_status(&e, &observed(&w, true, Some(&v), None, None, 5));
        assert_eq!(status.phase, Some(ExperimentPhase::Running));
        assert_eq!(
            condition(&status, ConditionType::Degraded),
            ("True".to_string(), "PrometheusUnreachable".to_string())
        );
    }

    #[test]
    fn a_problem_keeps_it_pending_with_the_names() {
        let e = experiment();
        let problems = [Problem {
            reason: reason::VARIANT_NOT_FOUND,
            message: "spec.variants: no InferenceService b".to_string(),
        }];
        let w = weights();
        let mut o = observed(&w, true, None, None, None, 1);
        o.problems = &problems;
        let status = compute_status(&e, &o);
        assert_eq!(status.phase, Some(ExperimentPhase::Pending));
        assert_eq!(
            condition(&status, ConditionType::Degraded),
            ("True".to_string(), "VariantNotFound".to_string())
        );
    }

    #[test]
    fn the_next_analysis_waits_for_the_interval() {
        let status = ExperimentStatus {
            last_analysis_time: Some(at(100)),
            ..Default::default()
        };
        assert_eq!(
            next_analysis_in(&status, Duration::from_secs(30), &at(110)),
            Duration::from_secs(20)
        );
        assert_eq!(
            next_analysis_in(&status, Duration::from_secs(30), &at(200)),
            Duration::ZERO
        );
        assert_eq!(
            next_analysis_in(
                &ExperimentStatus::default(),
                Duration::from_secs(30),
                &at(1)
            ),
            Duration::ZERO
        );
    }
}
