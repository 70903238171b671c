//! An InferenceService's status, computed from what its children report. Pure: the reconciler
//! gathers the Deployment, the pods, the HPA and the GPU numbers, and writes what this returns
//! only when it differs from the stored status.
//!
//! [`compute_status`] composes named steps: the replica counts, the most important problem,
//! then one function per condition.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::InferenceService;
use crate::api::conditions::{
    ConditionStatus, ConditionType, DesiredCondition, remove_condition, set_condition,
};
use crate::api::inference_service::InferenceServiceStatus;
use crate::controller::signal_board::SignalCondition;
use crate::gpu::GpuFit;
use crate::resources::model_pin::resolve_model;

use crate::api::conditions::reason;

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
    /// Children the apiserver refused, said in one sentence that names each and quotes the
    /// apiserver. Ranked before every other problem: nothing else can be fixed while the
    /// declared state cannot even be written.
    pub child_rejected: Option<String>,
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
    let counts = Replicas::of(observed.deployment);
    status.observed_generation = generation;
    status.url = Some(observed.url.clone());
    status.desired_replicas = Some(counts.desired);
    status.replicas = Some(counts.replicas);
    status.ready_replicas = Some(counts.ready);
    status.last_scale_time = observed
        .hpa
        .and_then(|h| h.status.as_ref())
        .and_then(|s| s.last_scale_time.clone())
        .or(status.last_scale_time);
    // Only what a fetch verified: the spec's sha256 is an expectation, shown in the spec.
    status.model = Some(resolve_model(
        &isvc.spec.model,
        status.model.as_ref(),
        observed.pods,
    ));

    let problem = most_important_problem(observed);
    let deadline_exceeded = progress_deadline_exceeded(observed.deployment);
    for condition in [
        ready_condition(&counts, problem.as_ref()),
        progressing_condition(&counts, deadline_exceeded),
        degraded_condition(problem.as_ref(), deadline_exceeded),
    ] {
        set_condition(
            &mut status.conditions,
            condition,
            generation,
            observed.now.clone(),
        );
    }
    match scaling_signal_condition(&observed.scaling_signal) {
        SignalUpdate::Remove => remove_condition(
            &mut status.conditions,
            ConditionType::ScalingSignalAvailable,
        ),
        SignalUpdate::Keep => {}
        SignalUpdate::Set(condition) => set_condition(
            &mut status.conditions,
            condition,
            generation,
            observed.now.clone(),
        ),
    }
    status
}

/// The Deployment's replica counts, and whether its controller has seen its latest spec.
struct Replicas {
    desired: i32,
    replicas: i32,
    ready: i32,
    updated: i32,
    generation_seen: bool,
}

impl Replicas {
    fn of(deployment: Option<&Deployment>) -> Self {
        let dep_status = deployment.and_then(|d| d.status.as_ref());
        Self {
            desired: deployment
                .and_then(|d| d.spec.as_ref())
                .and_then(|s| s.replicas)
                .unwrap_or(1),
            replicas: dep_status.and_then(|s| s.replicas).unwrap_or(0),
            ready: dep_status.and_then(|s| s.ready_replicas).unwrap_or(0),
            updated: dep_status.and_then(|s| s.updated_replicas).unwrap_or(0),
            generation_seen: match (deployment, dep_status) {
                (Some(d), Some(s)) => s.observed_generation >= d.metadata.generation,
                _ => false,
            },
        }
    }

    /// Every replica runs the current spec and is ready.
    fn rolled_out(&self) -> bool {
        self.generation_seen
            && self.updated >= self.desired
            && self.replicas == self.updated
            && self.ready >= self.desired
    }
}

/// The problem the conditions report, most important first: a rejected child, the pods, the
/// Deployment's ReplicaFailure, the reconcile's own, then a missing load signal.
fn most_important_problem(observed: &Observed<'_>) -> Option<PodProblem> {
    let rejected = observed.child_rejected.as_ref().map(|message| PodProblem {
        reason: reason::CHILD_REJECTED,
        message: message.clone(),
    });
    let replica_failure = deployment_conditions(observed.deployment)
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
    rejected
        .or_else(|| pod_problem(observed))
        .or(replica_failure)
        .or(reconcile_problem)
        .or(signal_problem)
}

fn deployment_conditions(
    deployment: Option<&Deployment>,
) -> impl Iterator<Item = &k8s_openapi::api::apps::v1::DeploymentCondition> {
    deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
}

fn progress_deadline_exceeded(deployment: Option<&Deployment>) -> bool {
    deployment_conditions(deployment).any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    })
}

fn ready_condition(counts: &Replicas, problem: Option<&PodProblem>) -> DesiredCondition {
    let (ready, desired) = (counts.ready, counts.desired);
    if ready > 0 {
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
    } else if let Some(p) = problem {
        DesiredCondition::new(ConditionType::Ready, false, p.reason, p.message.clone())
    } else {
        DesiredCondition::new(
            ConditionType::Ready,
            false,
            reason::DEPLOYING,
            format!("0/{desired} replicas ready: waiting for the model to load and warm up"),
        )
    }
}

const DEADLINE_MESSAGE: &str =
    "the rollout made no progress within the Deployment's progress deadline";

fn progressing_condition(counts: &Replicas, deadline_exceeded: bool) -> DesiredCondition {
    let Replicas {
        desired,
        ready,
        updated,
        ..
    } = *counts;
    if deadline_exceeded {
        DesiredCondition::new(
            ConditionType::Progressing,
            false,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            DEADLINE_MESSAGE,
        )
    } else if counts.rolled_out() {
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
    }
}

fn degraded_condition(problem: Option<&PodProblem>, deadline_exceeded: bool) -> DesiredCondition {
    match (problem, deadline_exceeded) {
        (Some(p), _) => {
            DesiredCondition::new(ConditionType::Degraded, true, p.reason, p.message.clone())
        }
        (None, true) => DesiredCondition::new(
            ConditionType::Degraded,
            true,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            DEADLINE_MESSAGE,
        ),
        (None, false) => DesiredCondition::new(
            ConditionType::Degraded,
            false,
            reason::HEALTHY,
            "no problem found",
        ),
    }
}

/// What to do with the `ScalingSignalAvailable` condition.
enum SignalUpdate {
    Remove,
    Keep,
    Set(DesiredCondition),
}

fn scaling_signal_condition(signal: &ScalingSignal) -> SignalUpdate {
    match signal {
        ScalingSignal::NotAutoscaled => SignalUpdate::Remove,
        ScalingSignal::Unchecked => SignalUpdate::Keep,
        ScalingSignal::Known(SignalCondition::Available) => {
            SignalUpdate::Set(DesiredCondition::new(
                ConditionType::ScalingSignalAvailable,
                true,
                reason::LOAD_MEASURED,
                "the load (waiting plus running requests per ready replica) is measured from Prometheus",
            ))
        }
        ScalingSignal::Known(SignalCondition::Missing(m)) => {
            SignalUpdate::Set(DesiredCondition::new(
                ConditionType::ScalingSignalAvailable,
                false,
                m.reason(),
                format!("the autoscaler holds its replicas: {m}"),
            ))
        }
    }
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

/// Finds `sha256:<64 hex>` (the sidecar's termination message) in a message.
pub fn parse_digest(message: &str) -> Option<String> {
    lexserve_contract::fetch_report::FetchReport::parse(message).map(|report| report.sha256)
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
