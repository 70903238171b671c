//! Conditions shared by every kind, following the Kubernetes API conventions: `Ready`,
//! `Progressing` and `Degraded`, each with a reason, a message, `lastTransitionTime` and
//! `observedGeneration`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use std::fmt;

/// Condition reasons, CamelCase as the conventions ask. They are API: clients (`kubectl wait`,
/// alerts, dashboards) match on them, so they live beside the types and change only with a
/// version of the API.
pub mod reason {
    pub const AVAILABLE: &str = "Available";
    pub const DEPLOYING: &str = "Deploying";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const INSUFFICIENT_GPU: &str = "InsufficientGPU";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const MODEL_FETCH_FAILED: &str = "ModelFetchFailed";
    pub const MODEL_LOAD_FAILED: &str = "ModelLoadFailed";
    pub const MODEL_NOT_READY: &str = "ModelNotReady";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const HEALTHY: &str = "Healthy";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const REPLICA_FAILURE: &str = "ReplicaFailure";
    pub const MISSING_DEPENDENCY: &str = "MissingDependency";
    /// The apiserver refused a child the operator built (a 422): the message names the child
    /// and quotes the apiserver.
    pub const CHILD_REJECTED: &str = "ChildRejected";
    pub const LOAD_MEASURED: &str = "LoadMeasured";
    /// The load signal cannot be read because Prometheus does not answer.
    pub const PROMETHEUS_UNAVAILABLE: &str = "PrometheusUnavailable";
    /// Prometheus answers, but has no load series for the service.
    pub const LOAD_SERIES_MISSING: &str = "LoadSeriesMissing";
    /// No replica is ready, so there is no load to measure yet (not a monitoring problem).
    pub const NO_READY_REPLICAS: &str = "NoReadyReplicas";
    /// Degraded reasons that come from the load signal (see `SignalMissing::reason`): the
    /// signal checks re-reconcile the service when they change, so no fast requeue is needed.
    pub const SIGNAL_REASONS: [&str; 2] = [PROMETHEUS_UNAVAILABLE, LOAD_SERIES_MISSING];

    // Drift monitoring (`controller::inference_service::drift`).
    /// A feature's distribution moved past a threshold.
    pub const FEATURES_DRIFTED: &str = "FeaturesDrifted";
    /// Every feature measured is within its thresholds.
    pub const NO_DRIFT: &str = "NoDrift";
    /// The drift measures were computed.
    pub const DRIFT_MEASURED: &str = "DriftMeasured";
    /// A window baseline is still being learned (until its window after the rollout passed).
    pub const BASELINE_LEARNING: &str = "BaselineLearning";
    /// The reference sample's baseline series are missing (no sidecar exports them).
    pub const BASELINE_MISSING: &str = "BaselineMissing";
    /// No feature of `spec.monitoring.drift.features` applies to the model's task.
    pub const NO_FEATURES: &str = "NoFeatures";

    // An Experiment's analysis (`analysis::decision`).
    /// Prometheus answered, but without the experiment's series (no traffic yet, or not
    /// scraped): the analysis waits.
    pub const NO_DATA: &str = "NoData";
    /// Prometheus did not answer: the analysis waits, never fails a check.
    pub const PROMETHEUS_UNREACHABLE: &str = "PrometheusUnreachable";
    /// A variant breached a guardrail at this analysis (once: a warning, not yet a failure), or
    /// a guardrail failed a variant and the others go on without it.
    pub const GUARDRAIL_BREACHED: &str = "GuardrailBreached";
    /// A guardrail breach two analyses in a row failed the experiment.
    pub const GUARDRAIL_FAILED: &str = "GuardrailFailed";
    /// `minDuration` or `minSamplesPerVariant` not reached yet.
    pub const NOT_ENOUGH_DATA: &str = "NotEnoughData";
    /// The assignments do not fit the weights: results cannot be trusted, nothing is decided.
    pub const SAMPLE_RATIO_MISMATCH: &str = "SampleRatioMismatch";
    /// Enough data, no significant difference yet: the analysis goes on.
    pub const NO_SIGNIFICANT_DIFFERENCE: &str = "NoSignificantDifference";
    /// A variant is significantly better than the control.
    pub const WINNER_FOUND: &str = "WinnerFound";
    /// Every challenger is significantly worse than the control.
    pub const VARIANTS_WORSE: &str = "VariantsWorse";
    /// `maxDuration` passed without a verdict (`onInconclusive` applies).
    pub const MAX_DURATION_REACHED: &str = "MaxDurationReached";

    // Experiments: what the controller checks and does (the analysis's verdict reasons are
    // beside the decision engine's).
    /// A variant's InferenceService does not exist in the experiment's namespace.
    pub const VARIANT_NOT_FOUND: &str = "VariantNotFound";
    /// The variants cannot answer the same requests (different tasks, labels, ...).
    pub const INCOMPATIBLE_VARIANTS: &str = "IncompatibleVariants";
    /// Another experiment already holds the control's Service.
    pub const CONTROL_IN_USE: &str = "ControlInUse";
    /// Builtin (router-counted) metrics with `routing.provider: gatewayAPI`.
    pub const OUTCOMES_NEED_ROUTER: &str = "OutcomesNeedRouter";
    /// The router is not ready yet: the control's Service still selects the control.
    pub const ROUTER_NOT_READY: &str = "RouterNotReady";
    /// Traffic is split and the analysis runs every interval.
    pub const EXPERIMENT_RUNNING: &str = "ExperimentRunning";
    /// The HTTPRoute carries the weights (`routing.provider: gatewayAPI`).
    pub const ROUTE_PROGRAMMED: &str = "RouteProgrammed";
    /// The experiment ended; the message says how and what traffic does now.
    pub const EXPERIMENT_FINISHED: &str = "ExperimentFinished";

    // Shadows.
    /// The production InferenceService does not exist in the shadow's namespace.
    pub const PRODUCTION_NOT_FOUND: &str = "ProductionNotFound";
    /// The candidate cannot answer production's requests (another task, other labels).
    pub const INCOMPATIBLE_CANDIDATE: &str = "IncompatibleCandidate";
    /// A redaction pattern does not compile: nothing is mirrored until it is fixed.
    pub const INVALID_REDACTION: &str = "InvalidRedaction";
    /// The candidate's Deployment is not ready yet: nothing is mirrored.
    pub const CANDIDATE_NOT_READY: &str = "CandidateNotReady";
    /// The production sidecars do not run the mirror configuration yet.
    pub const MIRROR_PENDING: &str = "MirrorPending";
    /// Production mirrors to the candidate; the analysis runs every interval.
    pub const MIRRORING: &str = "Mirroring";
    /// The candidate met every criterion with enough compared pairs.
    pub const CANDIDATE_PASSED: &str = "CandidatePassed";
    /// The candidate cannot meet a criterion any more (the message names it, with the numbers).
    pub const CANDIDATE_FAILED: &str = "CandidateFailed";
    /// `duration` passed without a pass or a fail.
    pub const SHADOW_DURATION_REACHED: &str = "ShadowDurationReached";
    /// The Experiment of `onPass: CreateExperiment` was created.
    pub const EXPERIMENT_CREATED: &str = "ExperimentCreated";
}

/// The condition types lexserve sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The resource serves (or, for experiments and shadows, runs) as declared.
    Ready,
    /// A change is being rolled out or an analysis is under way.
    Progressing,
    /// Something is wrong that needs attention (a model that fails to load, missing GPUs, a
    /// missing scaling signal).
    Degraded,
    /// The autoscaler's load signal can be measured (only with `provider: hpa` or `keda`).
    ScalingSignalAvailable,
    /// The traffic no longer looks like its baseline (only with `spec.monitoring.drift`):
    /// True names the features that moved; Unknown while no verdict can be made.
    DriftDetected,
    /// Drift can be measured: Prometheus answers, the baseline is known, there are enough
    /// samples (only with `spec.monitoring.drift`).
    DriftMonitoringAvailable,
}

impl ConditionType {
    /// The `type` string stored in the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Progressing => "Progressing",
            ConditionType::Degraded => "Degraded",
            ConditionType::ScalingSignalAvailable => "ScalingSignalAvailable",
            ConditionType::DriftDetected => "DriftDetected",
            ConditionType::DriftMonitoringAvailable => "DriftMonitoringAvailable",
        }
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tri-state status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// The `status` string stored in the condition.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// What a reconciler wants a condition to say; `set_condition` turns it into a stored
/// [`Condition`] while keeping `lastTransitionTime` stable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    pub type_: ConditionType,
    pub status: ConditionStatus,
    /// A CamelCase reason (`InsufficientGPU`, `ModelLoadFailed`, ...).
    pub reason: String,
    /// A sentence for people, with the numbers that explain it.
    pub message: String,
}

impl DesiredCondition {
    pub fn new(
        type_: ConditionType,
        status: impl Into<ConditionStatus>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Upserts `desired` into `conditions`.
///
/// `lastTransitionTime` changes only when the status flips: a condition whose message is
/// refreshed on every reconcile must not look like a new transition, or `kubectl wait` and
/// alerting on transitions would fire constantly. `now` is passed in so the function stays pure.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    desired: DesiredCondition,
    observed_generation: Option<i64>,
    now: Time,
) {
    let type_ = desired.type_.as_str();
    let status = desired.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now;
            }
            existing.status = status.to_string();
            existing.reason = desired.reason;
            existing.message = desired.message;
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: desired.reason,
            message: desired.message,
            observed_generation,
            last_transition_time: now,
        }),
    }
}

/// Removes the condition of the given type, if present.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: ConditionType) {
    conditions.retain(|c| c.type_ != type_.as_str());
}

/// The condition of the given type, if present.
pub fn find_condition(conditions: &[Condition], type_: ConditionType) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Whether the condition of the given type is present and `True`.
pub fn is_true(conditions: &[Condition], type_: ConditionType) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    #[test]
    fn new_condition_is_appended_with_the_given_time() {
        let mut conditions = Vec::new();
        let desired = DesiredCondition::new(ConditionType::Ready, false, "Deploying", "0/1 ready");
        set_condition(&mut conditions, desired, Some(3), at(100));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "Ready");
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].observed_generation, Some(3));
        assert_eq!(conditions[0].last_transition_time, at(100));
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut conditions = Vec::new();
        let not_ready = DesiredCondition::new(ConditionType::Ready, false, "Deploying", "0/2");
        set_condition(&mut conditions, not_ready, Some(1), at(100));

        let still_not_ready =
            DesiredCondition::new(ConditionType::Ready, false, "Deploying", "1/2");
        set_condition(&mut conditions, still_not_ready, Some(1), at(200));
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].message, "1/2");

        let ready = DesiredCondition::new(ConditionType::Ready, true, "Available", "2/2");
        set_condition(&mut conditions, ready, Some(2), at(300));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(300));
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert!(is_true(&conditions, ConditionType::Ready));
        assert!(!is_true(&conditions, ConditionType::Degraded));
    }
}
