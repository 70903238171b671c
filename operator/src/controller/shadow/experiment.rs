//! `onPass: CreateExperiment`: the A/B test that tries a passed candidate on real traffic. The
//! candidate becomes an InferenceService of its own (`<shadow>-candidate`, built from
//! `spec.candidate` like the shadow's candidate) and an Experiment (`<shadow>-experiment`)
//! splits production's traffic between production (the control) and it. Both are owned by the
//! shadow. Pure.

use kube::ResourceExt;
use kube::api::ObjectMeta;

use crate::api::Experiment;
use crate::api::ShadowDeployment;
use crate::api::experiment::{
    AnalysisSpec, Assignment, ExperimentSpec, MetricKind, MetricRole, MetricSource, MetricSpec,
    Variant,
};

/// The candidate's InferenceService of the Experiment.
pub fn promoted_name(shadow: &str) -> String {
    format!("{shadow}-candidate")
}

/// The Experiment's name.
pub fn experiment_name(shadow: &str) -> String {
    format!("{shadow}-experiment")
}

/// The share of production's traffic the candidate gets: a candidate that only agreed with
/// production on copies has not yet served a user, so it starts with a small share.
pub const CANDIDATE_WEIGHT: u32 = 10;

/// The builtin outcome the Experiment decides on: clients report whether an answer served them
/// (`POST /outcome` with metric `success`) through the router.
pub const PRIMARY_METRIC: &str = "success";

/// The Experiment between production (the control) and the candidate: the shadow's assignment
/// (so that users mirrored together are split together), the analysis defaults, no automatic
/// promotion (`onSuccess` is the Experiment's default). Pure.
pub fn build_experiment(shadow: &ShadowDeployment) -> Experiment {
    let name = shadow.name_any();
    let production = shadow.spec.production.clone();
    let mut experiment = Experiment::new(
        &experiment_name(&name),
        ExperimentSpec {
            control: production.clone(),
            variants: vec![
                Variant {
                    name: "control".to_string(),
                    inference_service: production,
                    weight: 100 - CANDIDATE_WEIGHT,
                },
                Variant {
                    name: "candidate".to_string(),
                    inference_service: promoted_name(&name),
                    weight: CANDIDATE_WEIGHT,
                },
            ],
            assignment: shadow
                .spec
                .assignment
                .clone()
                .map(|a| Assignment { seed: None, ..a })
                .unwrap_or_default(),
            metrics: vec![MetricSpec {
                name: PRIMARY_METRIC.to_string(),
                kind: MetricKind::Proportion,
                role: MetricRole::Primary,
                source: MetricSource {
                    builtin: Some(PRIMARY_METRIC.to_string()),
                    prometheus: None,
                },
                direction: Default::default(),
                threshold: None,
            }],
            analysis: AnalysisSpec::default(),
            on_success: Default::default(),
            on_failure: Default::default(),
            on_inconclusive: Default::default(),
            routing: Default::default(),
        },
    );
    experiment.metadata = ObjectMeta {
        namespace: shadow.namespace(),
        ..experiment.metadata
    };
    experiment
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_experiment_splits_production_and_the_candidate() {
        let shadow: ShadowDeployment = serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "ShadowDeployment",
            "metadata": {"name": "s", "namespace": "ns", "uid": "u"},
            "spec": {
                "production": "prod",
                "candidate": {"model": {"uri": "file:///c.onnx", "format": "onnx", "task": "embed"}},
                "comparison": {"mode": "Cosine"},
                "assignment": {"by": "header", "key": "x-user", "seed": 7},
            }
        }))
        .expect("valid");
        let experiment = build_experiment(&shadow);
        assert_eq!(experiment.name_any(), "s-experiment");
        assert_eq!(experiment.namespace().as_deref(), Some("ns"));
        assert_eq!(experiment.spec.control, "prod");
        let variants: Vec<_> = experiment
            .spec
            .variants
            .iter()
            .map(|v| (v.inference_service.as_str(), v.weight))
            .collect();
        assert_eq!(variants, vec![("prod", 90), ("s-candidate", 10)]);
        assert_eq!(experiment.spec.assignment.key.as_deref(), Some("x-user"));
        // The Experiment's own seed: its split is independent of the mirror's sampling.
        assert_eq!(experiment.spec.assignment.seed, None);
    }
}
