//! An InferenceService's status, computed from what its children report. Pure: the reconciler
//! gathers the Deployment, the pods, the HPA and the GPU numbers, and writes what this returns
//! only when it differs from the stored status.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::scaling_signal::SignalCondition;
use crate::api::InferenceService;
use crate::api::conditions::{
    ConditionStatus, ConditionType, DesiredCondition, remove_condition, set_condition,
};
use crate::api::inference_service::{InferenceServiceStatus, ResolvedModel};
use crate::gpu::GpuFit;

/// Condition reasons, CamelCase as the conventions ask.
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
    pub const LOAD_MEASURED: &str = "LoadMeasured";
    /// Degraded reasons that come from the load signal (see `SignalMissing::reason`): the
    /// signal checks re-reconcile the service when they change, so no fast requeue is needed.
    pub const SIGNAL_REASONS: [&str; 2] = ["PrometheusUnavailable", "LoadSeriesMissing"];
}

/// What the reconciler knows about an InferenceService's load signal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScalingSignal {
    /// `provider: none`: no condition.
    NotAutoscaled,
    /// Not checked yet (or checks are off): the condition stays as it is.
    Unchecked,
    /// The checks' verdict.
    Known(SignalCondition),
}

/// What the reconciler observed, for [`compute_status`].
pub struct Observed<'a> {
    pub deployment: Option<&'a Deployment>,
    pub pods: &'a [Pod],
    pub hpa: Option<&'a HorizontalPodAutoscaler>,
    /// The GPU situation, when the pods request GPUs.
    pub gpu_fit: Option<&'a GpuFit>,
    /// The GPU resource name the pods request.
    pub gpu_resource: Option<&'a str>,
    /// The Service URL.
    pub url: String,
    /// A problem the reconcile itself ran into (a missing KEDA CRD), as (reason, message).
    pub reconcile_problem: Option<(&'static str, String)>,
    /// The load signal's state.
    pub scaling_signal: ScalingSignal,
    pub now: Time,
}

/// A problem found on the pods, most important first.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodProblem {
    reason: &'static str,
    message: String,
}

/// Computes the status from the observations, keeping `lastTransitionTime` of conditions whose
/// status did not change.
pub fn compute_status(isvc: &InferenceService, observed: &Observed<'_>) -> InferenceServiceStatus {
    let generation = isvc.metadata.generation;
    let mut status = isvc.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.url = Some(observed.url.clone());

    let dep_status = observed.deployment.and_then(|d| d.status.as_ref());
    let desired = observed
        .deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let replicas = dep_status.and_then(|s| s.replicas).unwrap_or(0);
    let ready = dep_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = dep_status.and_then(|s| s.updated_replicas).unwrap_or(0);
    let dep_generation_seen = match (observed.deployment, dep_status) {
        (Some(d), Some(s)) => s.observed_generation >= d.metadata.generation,
        _ => false,
    };
    status.replicas = Some(replicas);
    status.ready_replicas = Some(ready);
    status.last_scale_time = observed
        .hpa
        .and_then(|h| h.status.as_ref())
        .and_then(|s| s.last_scale_time.clone())
        .or(status.last_scale_time);
    status.model = Some(ResolvedModel {
        uri: isvc.spec.model.uri.clone(),
        digest: fetched_digest(observed.pods).or_else(|| isvc.spec.model.sha256.clone()),
    });

    let replica_failure = dep_status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        .map(|c| PodProblem {
            reason: reason::REPLICA_FAILURE,
            message: format!(
                "pods cannot be created: {}",
                c.message.clone().unwrap_or_default()
            ),
        });
    let reconcile_problem = observed
        .reconcile_problem
        .as_ref()
        .map(|(reason, message)| PodProblem {
            reason,
            message: message.clone(),
        });
    let signal_problem = match &observed.scaling_signal {
        ScalingSignal::Known(SignalCondition::Missing(m)) if m.is_monitoring_problem() => {
            Some(PodProblem {
                reason: m.reason(),
                message: format!("the autoscaler holds its replicas: {m}"),
            })
        }
        _ => None,
    };
    let problem = pod_problem(observed)
        .or(replica_failure)
        .or(reconcile_problem)
        .or(signal_problem);
    let deadline_exceeded = dep_status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    let rolled_out =
        dep_generation_seen && updated >= desired && replicas == updated && ready >= desired;

    let ready_condition = if ready > 0 {
        DesiredCondition::new(
            ConditionType::Ready,
            true,
            reason::AVAILABLE,
            format!("{ready}/{desired} replicas ready"),
        )
    } else if desired == 0 {
        DesiredCondition::new(
            ConditionType::Ready,
            false,
            reason::SCALED_TO_ZERO,
            "no replicas requested",
        )
    } else if let Some(p) = &problem {
        DesiredCondition::new(ConditionType::Ready, false, p.reason, p.message.clone())
    } else {
        DesiredCondition::new(
            ConditionType::Ready,
            false,
            reason::DEPLOYING,
            format!("0/{desired} replicas ready: waiting for the model to load and warm up"),
        )
    };

    let progressing_condition = if deadline_exceeded {
        DesiredCondition::new(
            ConditionType::Progressing,
            false,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            "the rollout made no progress within the Deployment's progress deadline",
        )
    } else if rolled_out {
        DesiredCondition::new(
            ConditionType::Progressing,
            false,
            reason::ROLLOUT_COMPLETE,
            format!("{updated} replicas run the current spec"),
        )
    } else {
        DesiredCondition::new(
            ConditionType::Progressing,
            true,
            reason::ROLLING_OUT,
            format!("{updated}/{desired} replicas updated, {ready} ready"),
        )
    };

    let degraded_condition = match (&problem, deadline_exceeded) {
        (Some(p), _) => {
            DesiredCondition::new(ConditionType::Degraded, true, p.reason, p.message.clone())
        }
        (None, true) => DesiredCondition::new(
            ConditionType::Degraded,
            true,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            "the rollout made no progress within the Deployment's progress deadline",
        ),
        (None, false) => DesiredCondition::new(
            ConditionType::Degraded,
            false,
            reason::HEALTHY,
            "no problem found",
        ),
    };

    for condition in [ready_condition, progressing_condition, degraded_condition] {
        set_condition(
            &mut status.conditions,
            condition,
            generation,
            observed.now.clone(),
        );
    }
    match &observed.scaling_signal {
        ScalingSignal::NotAutoscaled => remove_condition(
            &mut status.conditions,
            ConditionType::ScalingSignalAvailable,
        ),
        ScalingSignal::Unchecked => {}
        ScalingSignal::Known(signal) => {
            let condition = match signal {
                SignalCondition::Available => DesiredCondition::new(
                    ConditionType::ScalingSignalAvailable,
                    true,
                    reason::LOAD_MEASURED,
                    "the load (waiting plus running requests per ready replica) is measured from Prometheus",
                ),
                SignalCondition::Missing(m) => DesiredCondition::new(
                    ConditionType::ScalingSignalAvailable,
                    false,
                    m.reason(),
                    format!("the autoscaler holds its replicas: {m}"),
                ),
            };
            set_condition(
                &mut status.conditions,
                condition,
                generation,
                observed.now.clone(),
            );
        }
    }
    status
}

/// The most important problem among the pods: scheduling, then fetching, then loading.
fn pod_problem(observed: &Observed<'_>) -> Option<PodProblem> {
    let mut problems: Vec<PodProblem> = Vec::new();
    for pod in observed.pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(cond) = unschedulable {
            let scheduler_message = cond.message.clone().unwrap_or_default();
            let gpu_short = match (observed.gpu_fit, observed.gpu_resource) {
                (Some(fit), Some(resource)) => {
                    !fit.one_more_fits()
                        || scheduler_message.contains(&format!("Insufficient {resource}"))
                }
                _ => false,
            };
            if gpu_short {
                let (fit, resource) = (observed.gpu_fit, observed.gpu_resource);
                let numbers = match (fit, resource) {
                    (Some(fit), Some(resource)) => fit.describe(resource),
                    _ => String::new(),
                };
                problems.push(PodProblem {
                    reason: reason::INSUFFICIENT_GPU,
                    message: format!("pod {} cannot be scheduled: {numbers}", name_of(pod)),
                });
            } else {
                problems.push(PodProblem {
                    reason: reason::UNSCHEDULABLE,
                    message: format!(
                        "pod {} cannot be scheduled: {scheduler_message}",
                        name_of(pod)
                    ),
                });
            }
            continue;
        }
        for init in status.init_container_statuses.iter().flatten() {
            if let Some(message) = failure_message(init) {
                problems.push(PodProblem {
                    reason: reason::MODEL_FETCH_FAILED,
                    message: format!("pod {}: {} failed: {message}", name_of(pod), init.name),
                });
            }
        }
        for container in status.container_statuses.iter().flatten() {
            if let Some(message) = failure_message(container) {
                problems.push(PodProblem {
                    reason: reason::MODEL_LOAD_FAILED,
                    message: format!("pod {}: {} failed: {message}", name_of(pod), container.name),
                });
            } else if container.started == Some(true) && !container.ready {
                problems.push(PodProblem {
                    reason: reason::MODEL_NOT_READY,
                    message: format!(
                        "pod {}: {} is running but /ready fails (model loading or warming up)",
                        name_of(pod),
                        container.name
                    ),
                });
            }
        }
    }
    let rank = |p: &PodProblem| match p.reason {
        reason::INSUFFICIENT_GPU => 0,
        reason::UNSCHEDULABLE => 1,
        reason::MODEL_FETCH_FAILED => 2,
        reason::MODEL_LOAD_FAILED => 3,
        _ => 4,
    };
    problems.into_iter().min_by_key(rank)
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Why a container failed: a crash loop, a non-zero exit, or an image that cannot be pulled;
/// the termination message (the sidecar writes its error there) when there is one.
fn failure_message(status: &ContainerStatus) -> Option<String> {
    let state = status.state.as_ref()?;
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if matches!(
            reason,
            "CrashLoopBackOff"
                | "ImagePullBackOff"
                | "ErrImagePull"
                | "CreateContainerConfigError"
                | "InvalidImageName"
        ) {
            let last = status
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.message.clone().or_else(|| t.reason.clone()));
            return Some(match last {
                Some(last) => format!("{reason}: {}", last.trim()),
                None => format!("{reason}: {}", waiting.message.clone().unwrap_or_default()),
            });
        }
    }
    if let Some(terminated) = &state.terminated
        && terminated.exit_code != 0
    {
        let detail = terminated
            .message
            .clone()
            .or_else(|| terminated.reason.clone())
            .unwrap_or_default();
        return Some(format!(
            "exit code {}: {}",
            terminated.exit_code,
            detail.trim()
        ));
    }
    None
}

/// The digest the fetch init container verified, from its termination message
/// (`sha256:<hex>`), on any pod that got that far.
fn fetched_digest(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.init_container_statuses.iter().flatten())
        .filter(|c| c.name == "fetch-model")
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code == 0)
        .filter_map(|t| t.message.as_deref())
        .find_map(parse_digest)
}

/// Finds `sha256:<64 hex>` in a message.
pub fn parse_digest(message: &str) -> Option<String> {
    message.split_whitespace().find_map(|word| {
        let hex = word.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hex.to_ascii_lowercase())
    })
}

/// Whether the status says the service is Ready.
pub fn is_ready(status: &InferenceServiceStatus) -> bool {
    crate::api::conditions::is_true(&status.conditions, ConditionType::Ready)
}

/// Whether a rollout or a problem is in progress (the controller then polls more often).
pub fn is_settled(status: &InferenceServiceStatus) -> bool {
    let find = |t| crate::api::conditions::find_condition(&status.conditions, t);
    is_ready(status)
        && find(ConditionType::Progressing)
            .is_some_and(|c| c.status == ConditionStatus::False.as_str())
        && find(ConditionType::Degraded).is_some_and(|c| {
            c.status == ConditionStatus::False.as_str()
                || reason::SIGNAL_REASONS.contains(&c.reason.as_str())
        })
}
