//! The committed manifests: `crds/` must equal what `lexserve-operator crd` generates, and the
//! examples under `examples/` must be what the README says they are (valid ones deserialize and
//! pass every rule; invalid ones fail with the message their `# expect:` line gives).

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use lexserve_operator::api::{Experiment, InferenceService, ShadowDeployment};
use lexserve_operator::crd::{MAX_CRD_BYTES, render_all};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate lives in the workspace")
        .to_path_buf()
}

#[test]
fn committed_crds_match_the_generator() {
    check_generated_crds(&repo_root().join("crds"));
}

/// Helm installs the chart's `crds/` before its templates: they must be the same CRDs.
#[test]
fn the_charts_crds_match_the_generator() {
    check_generated_crds(&repo_root().join("charts/lexserve/crds"));
}

fn check_generated_crds(dir: &Path) {
    let rendered = render_all().expect("CRDs render");
    assert_eq!(rendered.len(), 3);
    for crd in &rendered {
        let path = dir.join(&crd.file_name);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p lexserve-operator -- crd`",
                path.display()
            )
        });
        assert!(
            committed == crd.yaml,
            "{} is out of date; run `cargo run -p lexserve-operator -- crd`",
            path.display()
        );
        println!("{}: {} bytes", crd.file_name, crd.yaml.len());
        assert!(
            crd.yaml.len() < MAX_CRD_BYTES,
            "{} is {} bytes, over {MAX_CRD_BYTES}",
            crd.file_name,
            crd.yaml.len()
        );
    }
    let mut on_disk: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.expect("readable entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut expected: Vec<_> = rendered.iter().map(|c| c.file_name.clone()).collect();
    expected.sort();
    assert_eq!(
        on_disk,
        expected,
        "{} holds exactly the generated files",
        dir.display()
    );
}

#[test]
fn every_field_has_a_description() {
    // `kubectl explain` shows these; a field without one is a gap in the docs.
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
            return;
        };
        for (name, child) in props {
            let child_path = format!("{path}.{name}");
            let is_meta =
                path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
            if !is_meta
                && child
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                missing.push(child_path.clone());
            }
            walk(&child_path, child, missing);
        }
    }
    for crd in [
        InferenceService::crd(),
        Experiment::crd(),
        ShadowDeployment::crd(),
    ] {
        let schema = schema_json(&crd);
        let mut missing = Vec::new();
        walk("", &schema, &mut missing);
        assert!(
            missing.is_empty(),
            "{}: fields without a description: {missing:#?}",
            crd.spec.names.kind
        );
    }
}

/// Every YAML file directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The schema's value checks that kube's CEL validator leaves to the apiserver (patterns, sizes,
/// bounds), with the apiserver's own wording, so an invalid example's `# expect:` line holds for
/// both this check and a real apiserver (`e2e/tests/cluster.rs`).
fn schema_errors(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    match value {
        Value::Object(fields) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, child) in fields {
                    if let Some(child_schema) = props.get(name) {
                        let child_path = if path.is_empty() {
                            name.clone()
                        } else {
                            format!("{path}.{name}")
                        };
                        schema_errors(child_schema, child, &child_path, errors);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(min) = number("minItems").filter(|m| (items.len() as f64) < *m) {
                errors.push(format!("{path} in body should have at least {min} items"));
            }
            if let Some(max) = number("maxItems").filter(|m| (items.len() as f64) > *m) {
                errors.push(format!("{path} in body should have at most {max} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    schema_errors(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::String(text) => {
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                let regex = regex::Regex::new(pattern).expect("the CRD's patterns compile");
                if !regex.is_match(text) {
                    errors.push(format!("{path} in body should match '{pattern}'"));
                }
            }
            let chars = text.chars().count() as f64;
            if let Some(min) = number("minLength").filter(|m| chars < *m) {
                errors.push(format!(
                    "{path} in body should be at least {min} chars long"
                ));
            }
            if let Some(max) = number("maxLength").filter(|m| chars > *m) {
                errors.push(format!("{path} in body should be at most {max} chars long"));
            }
        }
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or_default();
            if let Some(min) = number("minimum").filter(|m| n < *m) {
                errors.push(format!(
                    "{path} in body should be greater than or equal to {min}"
                ));
            }
            if let Some(max) = number("maximum").filter(|m| n > *m) {
                errors.push(format!(
                    "{path} in body should be less than or equal to {max}"
                ));
            }
        }
        _ => {}
    }
}

/// Deserializes into the typed kind (enums, required fields, types), checks the schema's value
/// rules, and runs the CEL rules on the raw object, defaults applied as the apiserver would.
fn check_manifest(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let raw: Value = serde_yaml::from_str(&text).map_err(|e| format!("not YAML: {e}"))?;
    let crd = match raw["kind"].as_str() {
        Some("InferenceService") => {
            serde_json::from_value::<InferenceService>(raw.clone()).map_err(|e| e.to_string())?;
            InferenceService::crd()
        }
        Some("Experiment") => {
            serde_json::from_value::<Experiment>(raw.clone()).map_err(|e| e.to_string())?;
            Experiment::crd()
        }
        Some("ShadowDeployment") => {
            serde_json::from_value::<ShadowDeployment>(raw.clone()).map_err(|e| e.to_string())?;
            ShadowDeployment::crd()
        }
        other => return Err(format!("unknown kind {other:?}")),
    };
    let schema = schema_json(&crd);
    let mut errors = Vec::new();
    schema_errors(&schema, &raw, "", &mut errors);
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Validator::new()
        .validate(&schema, &raw, None)
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })
}

#[test]
fn examples_are_valid() {
    let files = yaml_files(&repo_root().join("examples"));
    let kinds: Vec<String> = files
        .iter()
        .map(|p| {
            let raw: Value =
                serde_yaml::from_str(&std::fs::read_to_string(p).expect("readable")).expect("YAML");
            raw["kind"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    for kind in ["InferenceService", "Experiment", "ShadowDeployment"] {
        assert!(kinds.iter().any(|k| k == kind), "examples/ has no {kind}");
    }
    for path in files {
        if let Err(e) = check_manifest(&path) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn invalid_examples_fail_with_their_expected_message() {
    let files = yaml_files(&repo_root().join("examples/invalid"));
    assert!(files.len() >= 3, "one invalid example per kind at least");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        match check_manifest(&path) {
            Ok(()) => panic!("{} was accepted", path.display()),
            Err(e) => assert!(
                e.contains(expected),
                "{}: expected `{expected}`, got `{e}`",
                path.display()
            ),
        }
    }
}

/// The CRD's (single version's) OpenAPI schema as JSON.
fn schema_json(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> serde_json::Value {
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the CRD has a schema"),
    )
    .expect("the schema serializes")
}
