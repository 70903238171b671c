//! What the CRD's rules cannot check, because it depends on other objects: the variants'
//! InferenceServices exist in the namespace and can answer the same requests, no other
//! experiment holds the control, and builtin outcome metrics have a router to count them. Pure.

use kube::ResourceExt;

use super::children::router_name;
use crate::api::conditions::reason;
use crate::api::experiment::RoutingProvider;
use crate::api::{Experiment, InferenceService};
use lexserve_contract::model::ModelTask;

/// Why an experiment cannot run: a condition reason and a message that names what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// Checks `experiment` against the InferenceServices `lookup` finds (by name, in its namespace)
/// and the other experiments in its namespace. Returns every problem, the first one first.
pub fn validate<'a>(
    experiment: &Experiment,
    lookup: impl Fn(&str) -> Option<&'a InferenceService>,
    others: &[&Experiment],
) -> Vec<Problem> {
    let spec = &experiment.spec;
    let name = experiment.name_any();
    let namespace = experiment.namespace().unwrap_or_default();
    let mut problems = Vec::new();

    let missing: Vec<_> = spec
        .variants
        .iter()
        .filter(|v| lookup(&v.inference_service).is_none())
        .map(|v| format!("{} (variant {})", v.inference_service, v.name))
        .collect();
    if !missing.is_empty() {
        problems.push(Problem {
            reason: reason::VARIANT_NOT_FOUND,
            message: format!(
                "spec.variants: no InferenceService {} in namespace {namespace}",
                missing.join(", ")
            ),
        });
    }
    if !spec
        .variants
        .iter()
        .any(|v| v.inference_service == spec.control)
    {
        problems.push(Problem {
            reason: reason::INCOMPATIBLE_VARIANTS,
            message: format!(
                "spec.control: {} is not the inferenceService of any variant",
                spec.control
            ),
        });
    }
    if let Some(variant) = spec
        .variants
        .iter()
        .find(|v| super::children::variant_service_name(&name, &v.name) == router_name(&name))
    {
        problems.push(Problem {
            reason: reason::INCOMPATIBLE_VARIANTS,
            message: format!(
                "spec.variants: the variant name {:?} is reserved (its Service would be the router's, {})",
                variant.name,
                router_name(&name)
            ),
        });
    }
    problems.extend(compatibility(experiment, &lookup));

    if spec.routing.provider == RoutingProvider::Router {
        let rivals: Vec<_> = others
            .iter()
            .filter(|o| {
                o.name_any() != name
                    && o.spec.control == spec.control
                    && o.spec.routing.provider == RoutingProvider::Router
                    && o.metadata.deletion_timestamp.is_none()
                    && !o.status.as_ref().is_some_and(|s| {
                        s.phase.is_some_and(|p| {
                            !matches!(
                                p,
                                crate::api::experiment::ExperimentPhase::Pending
                                    | crate::api::experiment::ExperimentPhase::Running
                            )
                        })
                    })
                    && (o.creation_timestamp().map(|t| t.0), o.name_any())
                        < (experiment.creation_timestamp().map(|t| t.0), name.clone())
            })
            .map(|o| o.name_any())
            .collect();
        if !rivals.is_empty() {
            problems.push(Problem {
                reason: reason::CONTROL_IN_USE,
                message: format!(
                    "spec.control: InferenceService {} is already the control of experiment {}; one experiment at a time can route its traffic",
                    spec.control,
                    rivals.join(", ")
                ),
            });
        }
    } else {
        let builtin: Vec<_> = spec
            .metrics
            .iter()
            .filter(|m| m.source.builtin.is_some())
            .map(|m| m.name.clone())
            .collect();
        if !builtin.is_empty() {
            problems.push(Problem {
                reason: reason::OUTCOMES_NEED_ROUTER,
                message: format!(
                    "spec.metrics: {} use builtin outcomes, which only the lexserve router counts; with routing.provider gatewayAPI use prometheus metrics",
                    builtin.join(", ")
                ),
            });
        }
    }
    problems
}

/// The variants must answer the control's requests the same way: the same task; for `classify`,
/// the same labels (the outcomes compare classes); for `embed`, the same normalization.
fn compatibility<'a>(
    experiment: &Experiment,
    lookup: &impl Fn(&str) -> Option<&'a InferenceService>,
) -> Option<Problem> {
    let control = lookup(&experiment.spec.control)?;
    let model = &control.spec.model;
    let mut differences = Vec::new();
    for variant in &experiment.spec.variants {
        let Some(other) = lookup(&variant.inference_service) else {
            continue;
        };
        let theirs = &other.spec.model;
        if theirs.task != model.task {
            differences.push(format!(
                "{} has task {}, the control {} has task {}",
                variant.inference_service,
                task_name(theirs.task),
                experiment.spec.control,
                task_name(model.task)
            ));
        } else if model.task == ModelTask::Classify
            && model.labels.is_some()
            && theirs.labels.is_some()
            && theirs.labels != model.labels
        {
            differences.push(format!(
                "{} classifies into other labels than the control {} (spec.model.labels differ)",
                variant.inference_service, experiment.spec.control
            ));
        } else if model.task == ModelTask::Embed && theirs.normalize != model.normalize {
            differences.push(format!(
                "{} normalizes embeddings differently from the control {} (spec.model.normalize differs)",
                variant.inference_service, experiment.spec.control
            ));
        }
    }
    (!differences.is_empty()).then(|| Problem {
        reason: reason::INCOMPATIBLE_VARIANTS,
        message: format!(
            "spec.variants cannot answer the same requests: {}",
            differences.join("; ")
        ),
    })
}

fn task_name(task: ModelTask) -> &'static str {
    match task {
        ModelTask::Embed => "embed",
        ModelTask::Classify => "classify",
        ModelTask::Generate => "generate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn isvc(name: &str, model: serde_json::Value) -> InferenceService {
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"model": model}
        }))
        .expect("valid")
    }

    fn model(task: &str) -> serde_json::Value {
        json!({"uri": "file:///m/model.onnx", "format": "onnx", "task": task})
    }

    fn experiment(name: &str, variants: &[(&str, &str)], created: i64) -> Experiment {
        let variants: Vec<_> = variants
            .iter()
            .map(|(n, s)| json!({"name": n, "inferenceService": s, "weight": 1}))
            .collect();
        let mut e: Experiment = serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "control": "a",
                "variants": variants,
                "metrics": [{"name": "ok", "kind": "Proportion", "role": "Primary",
                             "source": {"builtin": "ok"}}],
            }
        }))
        .expect("valid");
        e.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("valid"),
        ));
        e
    }

    fn problems(
        e: &Experiment,
        services: &[InferenceService],
        others: &[&Experiment],
    ) -> Vec<Problem> {
        let by_name: BTreeMap<String, &InferenceService> =
            services.iter().map(|s| (s.name_any(), s)).collect();
        validate(e, |n| by_name.get(n).copied(), others)
    }

    #[test]
    fn compatible_variants_that_exist_pass() {
        let e = experiment("exp", &[("control", "a"), ("t", "b")], 1);
        let services = [isvc("a", model("embed")), isvc("b", model("embed"))];
        assert_eq!(problems(&e, &services, &[]), vec![]);
    }

    #[test]
    fn a_missing_variant_is_named() {
        let e = experiment("exp", &[("control", "a"), ("t", "b")], 1);
        let found = problems(&e, &[isvc("a", model("embed"))], &[]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].reason, "VariantNotFound");
        assert!(
            found[0]
                .message
                .contains("no InferenceService b (variant t) in namespace ns")
        );
    }

    #[test]
    fn different_tasks_and_labels_are_incompatible() {
        let e = experiment("exp", &[("control", "a"), ("t", "b")], 1);
        let found = problems(
            &e,
            &[isvc("a", model("embed")), isvc("b", model("classify"))],
            &[],
        );
        assert_eq!(found[0].reason, "IncompatibleVariants");
        assert!(
            found[0]
                .message
                .contains("b has task classify, the control a has task embed")
        );
        let mut ca = model("classify");
        ca["labels"] = json!(["neg", "pos"]);
        let mut cb = model("classify");
        cb["labels"] = json!(["pos", "neg", "neutral"]);
        let found = problems(&e, &[isvc("a", ca), isvc("b", cb)], &[]);
        assert!(found[0].message.contains("other labels"), "{found:?}");
    }

    #[test]
    fn a_second_experiment_on_the_same_control_conflicts_and_the_first_does_not() {
        let first = experiment("first", &[("control", "a"), ("t", "b")], 1);
        let second = experiment("second", &[("control", "a"), ("t", "b")], 2);
        let services = [isvc("a", model("embed")), isvc("b", model("embed"))];
        assert_eq!(problems(&first, &services, &[&first, &second]), vec![]);
        let found = problems(&second, &services, &[&first, &second]);
        assert_eq!(found[0].reason, "ControlInUse");
        assert!(found[0].message.contains("experiment first"));
    }

    #[test]
    fn a_reserved_variant_name_and_builtin_metrics_on_a_gateway_are_rejected() {
        let e = experiment("exp", &[("control", "a"), ("router", "b")], 1);
        let services = [isvc("a", model("embed")), isvc("b", model("embed"))];
        assert_eq!(
            problems(&e, &services, &[])[0].reason,
            "IncompatibleVariants"
        );
        let mut g = experiment("exp", &[("control", "a"), ("t", "b")], 1);
        g.spec.routing.provider = RoutingProvider::GatewayApi;
        let found = problems(&g, &services, &[]);
        assert_eq!(found[0].reason, "OutcomesNeedRouter");
        assert!(
            found[0]
                .message
                .contains("spec.metrics: ok use builtin outcomes")
        );
    }
}
