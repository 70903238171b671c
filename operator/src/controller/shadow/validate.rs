//! What the CRD's rules cannot check, because it depends on another object or on a regex
//! engine: production exists, the candidate can answer production's requests, and every
//! redaction pattern compiles. Pure.

use kube::ResourceExt;
use lexserve_contract::model::ModelTask;

use crate::api::conditions::reason;
use crate::api::{InferenceService, ShadowDeployment};
pub use crate::controller::experiment::validate::Problem;

/// Checks `shadow` against its production InferenceService (`None`: not found in the shadow's
/// namespace). Returns every problem, the first one first.
pub fn validate(shadow: &ShadowDeployment, production: Option<&InferenceService>) -> Vec<Problem> {
    let spec = &shadow.spec;
    let mut problems = Vec::new();
    match production {
        None => problems.push(Problem {
            reason: reason::PRODUCTION_NOT_FOUND,
            message: format!(
                "spec.production: no InferenceService {} in namespace {}",
                spec.production,
                shadow.namespace().unwrap_or_default()
            ),
        }),
        Some(production) => problems.extend(compatibility(shadow, production)),
    }
    problems.extend(redaction(shadow));
    problems
}

/// The candidate must answer production's requests the same way: the same task, and for
/// `classify` the same labels when both name them (a label comparison across other label sets
/// would count every pair as a disagreement).
fn compatibility(shadow: &ShadowDeployment, production: &InferenceService) -> Option<Problem> {
    let ours = &shadow.spec.candidate.model;
    let theirs = &production.spec.model;
    let difference = if ours.task != theirs.task {
        format!(
            "the candidate has task {}, production {} has task {}",
            task_name(ours.task),
            shadow.spec.production,
            task_name(theirs.task)
        )
    } else if ours.task == ModelTask::Classify
        && ours.labels.is_some()
        && theirs.labels.is_some()
        && ours.labels != theirs.labels
    {
        format!(
            "the candidate classifies into other labels than production {} (spec.candidate.model.labels {:?}, production's {:?})",
            shadow.spec.production,
            ours.labels.as_deref().unwrap_or_default(),
            theirs.labels.as_deref().unwrap_or_default()
        )
    } else {
        return None;
    };
    Some(Problem {
        reason: reason::INCOMPATIBLE_CANDIDATE,
        message: format!("spec.candidate cannot answer production's requests: {difference}"),
    })
}

/// Every redaction pattern must compile as the sidecar's `regex` reads it: a pattern the
/// sidecar cannot apply would mirror unmasked data, so nothing is mirrored instead.
fn redaction(shadow: &ShadowDeployment) -> Vec<Problem> {
    let Some(redaction) = &shadow.spec.redaction else {
        return Vec::new();
    };
    redaction
        .patterns
        .iter()
        .enumerate()
        .filter_map(|(i, pattern)| {
            regex::Regex::new(pattern).err().map(|e| Problem {
                reason: reason::INVALID_REDACTION,
                message: format!(
                    "spec.redaction.patterns[{i}]: {pattern:?} does not compile: {}; nothing is mirrored until it is fixed",
                    first_line(&e.to_string())
                ),
            })
        })
        .collect()
}

/// The regex crate's errors span several lines (the pattern, a caret, the error): the last line
/// says what is wrong.
fn first_line(error: &str) -> String {
    error
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(error)
        .trim()
        .to_string()
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

    fn shadow(model: serde_json::Value, redaction: Option<serde_json::Value>) -> ShadowDeployment {
        let mut value = json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "ShadowDeployment",
            "metadata": {"name": "s", "namespace": "ns", "uid": "u"},
            "spec": {
                "production": "prod",
                "candidate": {"model": model},
                "comparison": {"mode": "Label"},
            }
        });
        if let Some(r) = redaction {
            value["spec"]["redaction"] = r;
        }
        serde_json::from_value(value).expect("valid")
    }

    fn production(model: serde_json::Value) -> InferenceService {
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "prod", "namespace": "ns"},
            "spec": {"model": model}
        }))
        .expect("valid")
    }

    fn classifier(labels: &[&str]) -> serde_json::Value {
        json!({"uri": "file:///m.onnx", "format": "onnx", "task": "classify", "labels": labels})
    }

    #[test]
    fn a_missing_production_is_named() {
        let problems = validate(&shadow(classifier(&["a", "b"]), None), None);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].reason, reason::PRODUCTION_NOT_FOUND);
        assert_eq!(
            problems[0].message,
            "spec.production: no InferenceService prod in namespace ns"
        );
    }

    #[test]
    fn a_compatible_candidate_passes() {
        let prod = production(classifier(&["a", "b"]));
        assert_eq!(
            validate(&shadow(classifier(&["a", "b"]), None), Some(&prod)),
            vec![]
        );
    }

    #[test]
    fn another_task_or_other_labels_are_incompatible() {
        let prod = production(json!({"uri": "file:///m.onnx", "format": "onnx", "task": "embed"}));
        let problems = validate(&shadow(classifier(&["a", "b"]), None), Some(&prod));
        assert_eq!(problems[0].reason, reason::INCOMPATIBLE_CANDIDATE);
        assert!(
            problems[0]
                .message
                .contains("the candidate has task classify, production prod has task embed"),
            "{}",
            problems[0].message
        );
        let prod = production(classifier(&["a", "b"]));
        let problems = validate(&shadow(classifier(&["b", "c"]), None), Some(&prod));
        assert_eq!(problems[0].reason, reason::INCOMPATIBLE_CANDIDATE);
        assert!(
            problems[0].message.contains("other labels"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn a_pattern_that_does_not_compile_is_named_with_its_error() {
        let prod = production(classifier(&["a", "b"]));
        let problems = validate(
            &shadow(
                classifier(&["a", "b"]),
                Some(json!({"patterns": ["[0-9]{3}", "([a-z]+"]})),
            ),
            Some(&prod),
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].reason, reason::INVALID_REDACTION);
        assert!(
            problems[0]
                .message
                .starts_with("spec.redaction.patterns[1]: \"([a-z]+\" does not compile: "),
            "{}",
            problems[0].message
        );
        assert!(
            problems[0].message.contains("unclosed group"),
            "{}",
            problems[0].message
        );
    }
}
