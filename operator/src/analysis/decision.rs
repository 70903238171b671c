//! The decision engine: one analysis of an Experiment, from the numbers Prometheus holds to a
//! phase, a reason and an action. Pure: the controller reads Prometheus (`observe`), calls
//! [`decide`], and carries out the [`Action`].

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::conditions::reason;
use crate::api::experiment::{
    Comparison, ExperimentPhase, ExperimentSpec, ExperimentStatus, GuardrailBreach, SampleSizePlan,
    SrmCheck, VariantStatus,
};

/// A metric's sufficient statistics for one variant, cumulative since the experiment started
/// (counter resets already accounted for): trials and successes of a proportion, or
/// observations, sum and sum of squares of a mean.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sufficient {
    pub count: f64,
    pub sum: f64,
    pub sum_squares: f64,
}

/// What Prometheus holds for one variant.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantData {
    pub variant: String,
    /// Requests assigned to the variant.
    pub assignments: f64,
    /// By metric name; a metric without series is absent.
    pub metrics: BTreeMap<String, Sufficient>,
}

/// What one read of Prometheus gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Data(Vec<VariantData>),
    /// Prometheus answered without the series the analysis needs.
    NoData {
        reason: String,
    },
    /// Prometheus did not answer.
    Unreachable {
        error: String,
    },
}

/// What the controller does after an analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep the split and analyse again next interval.
    Continue,
    /// Send all traffic to the winner.
    Promote { variant: String },
    /// Send all traffic to the control.
    Rollback,
    /// Keep the split, decide nothing (sample-ratio mismatch, `onInconclusive: Hold`).
    Hold,
    /// `maxDuration` passed and `onInconclusive: Extend`: keep collecting for one more
    /// `maxDuration` (`Verdict.extensions` already counts it).
    Extend,
    /// The experiment is over without promotion (`onSuccess: Recommend`): the control serves
    /// alone, the winner is only reported.
    End,
}

/// The outcome of one analysis, in the shape of the status it fills.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// `Running` while undecided; `Succeeded`, `Failed` or `Inconclusive` once decided.
    pub phase: ExperimentPhase,
    /// A condition reason constant (`api::conditions::reason`).
    pub reason: &'static str,
    /// The numbers behind it, for status, history and Events.
    pub message: String,
    pub action: Action,
    pub variants: Vec<VariantStatus>,
    pub comparisons: Vec<Comparison>,
    pub srm: Option<SrmCheck>,
    pub winner: Option<String>,
    pub sample_size: Option<SampleSizePlan>,
    /// The guardrail streaks to store in `status.guardrailBreaches`.
    pub guardrail_breaches: Vec<GuardrailBreach>,
    /// `status.extensions` after this analysis.
    pub extensions: u32,
}

/// One analysis: `status` carries what earlier analyses left (breach streaks, extensions),
/// `elapsed` is the time since `status.startTime`.
pub fn decide(
    spec: &ExperimentSpec,
    status: &ExperimentStatus,
    observation: &Observation,
    elapsed: Duration,
) -> Verdict {
    let _ = (spec, elapsed);
    let (reason, message) = match observation {
        Observation::Unreachable { error } => (
            reason::PROMETHEUS_UNREACHABLE,
            format!("Prometheus unreachable: {error}"),
        ),
        Observation::NoData { reason: why } => (reason::NO_DATA, why.clone()),
        Observation::Data(_) => (reason::NOT_ENOUGH_DATA, "analysis pending".to_string()),
    };
    Verdict {
        phase: ExperimentPhase::Running,
        reason,
        message,
        action: Action::Continue,
        variants: status.variants.clone(),
        comparisons: status.comparisons.clone(),
        srm: status.srm.clone(),
        winner: None,
        sample_size: status.sample_size.clone(),
        guardrail_breaches: status.guardrail_breaches.clone(),
        extensions: status.extensions,
    }
}
