//! The operator↔sidecar contract, end to end without a cluster: every manifest in `examples/` goes
//! through the operator's builders (the ConfigMap and the Deployment's serve container) and then
//! through the sidecar's own config loader, exactly as a pod would start it. An object the
//! apiserver admits (the examples are checked against a real apiserver in `cluster.rs`) that the
//! sidecar would refuse fails here.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use k8s_openapi::api::core::v1::Container;
use lexserve_contract::names::{command, flag, path};
use lexserve_operator::api::{InferenceService, ShadowDeployment};
use lexserve_operator::config::OperatorConfig;
use lexserve_operator::gpu::RolloutPlan;
use lexserve_operator::resources::config_map::{build_config_map, serving_config_yaml};
use lexserve_operator::resources::deployment::build_deployment;
use lexserve_sidecar::cli::ServeArgs;
use lexserve_sidecar::config::{ConfigFile, ServeConfig};
use serde_json::Value;

fn examples() -> Vec<(PathBuf, Value)> {
    let dir = lexserve_e2e::repo_root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable example");
            let value: Value = serde_yaml::from_str(&text).expect("YAML example");
            (p, value)
        })
        .collect()
}

/// The serve container's arguments, with its environment turned into the flags it stands for
/// (each `LEXSERVE_*` variable is the env fallback of exactly one flag), and the config path
/// pointed at `config`.
fn pod_argv(container: &Container, config: &Path) -> Vec<String> {
    // `serve`'s own parser takes the subcommand's name where a program's name would be.
    let mut argv = vec![command::SERVE.to_string()];
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some(command::SERVE));
    let mut rest = args.into_iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == flag::arg(flag::CONFIG) {
            let in_pod = rest.next().expect("--config has a value");
            assert_eq!(in_pod, path::config_file());
            argv.extend([arg, config.display().to_string()]);
        } else {
            argv.push(arg);
        }
    }
    let command = ServeArgs::command();
    for var in container.env.clone().unwrap_or_default() {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var.name.as_str()))
            .unwrap_or_else(|| panic!("{} is no flag's env variable", var.name));
        let long = arg.get_long().expect("env-backed flags are long flags");
        argv.extend([format!("--{long}"), var.value.clone().unwrap_or_default()]);
    }
    argv
}

fn load(yaml: &str, argv: &[String]) -> Result<ServeConfig, String> {
    let file = ConfigFile::parse(yaml)?;
    let args = ServeArgs::try_parse_from(argv).map_err(|e| e.to_string())?;
    ServeConfig::resolve(file, &args).map_err(|e| e.to_string())
}

#[test]
fn every_example_the_apiserver_admits_starts_a_sidecar() {
    let tmp = std::env::temp_dir().join(format!("lexserve-contract-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let operator = OperatorConfig::default();
    let mut checked = 0;
    for (file, value) in examples() {
        let name = file.display().to_string();
        match value["kind"].as_str() {
            Some("InferenceService") => {
                let mut isvc: InferenceService =
                    serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"));
                isvc.metadata.namespace = Some("default".into());
                let config_map = build_config_map(&isvc, None);
                let yaml = config_map
                    .data
                    .as_ref()
                    .and_then(|d| d.get(path::CONFIG_FILE))
                    .unwrap_or_else(|| panic!("{name}: no {} in the ConfigMap", path::CONFIG_FILE));
                let config_path = tmp.join(format!("{checked}.yaml"));
                std::fs::write(&config_path, yaml).expect("write config");
                let deployment = build_deployment(&isvc, &operator, RolloutPlan::Surge);
                let pod = deployment
                    .spec
                    .and_then(|s| s.template.spec)
                    .expect("pod spec");
                let serve = pod
                    .containers
                    .iter()
                    .find(|c| c.args.as_ref().is_some_and(|a| a[0] == command::SERVE))
                    .expect("a serve container");
                let argv = pod_argv(serve, &config_path);
                let config = load(yaml, &argv).unwrap_or_else(|e| {
                    panic!("{name}: the apiserver admits it, the sidecar refuses it: {e}\n{yaml}")
                });
                // What the pod serves is what the spec says.
                assert_eq!(config.task, isvc.spec.model.task, "{name}");
                assert_eq!(config.format, isvc.spec.model.format, "{name}");
                assert_eq!(
                    config.model_name,
                    isvc.metadata.name.clone().unwrap(),
                    "{name}"
                );
                assert!(
                    config
                        .model_uri
                        .to_string()
                        .starts_with(&format!("file://{}", path::MODELS_DIR)),
                    "{name}: serves the fetched copy, not {}",
                    config.model_uri
                );
                checked += 1;
            }
            Some("ShadowDeployment") => {
                let shadow: ShadowDeployment =
                    serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"));
                let candidate = &shadow.spec.candidate;
                let yaml = serving_config_yaml(&candidate.model, candidate.runtime.as_ref());
                let argv = vec![command::SERVE.to_string()];
                load(&yaml, &argv).unwrap_or_else(|e| {
                    panic!("{name}: the candidate's config is refused by the sidecar: {e}\n{yaml}")
                });
                checked += 1;
            }
            _ => {}
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
    assert!(
        checked >= 4,
        "every InferenceService and ShadowDeployment example ({checked})"
    );
}

/// The other direction, for the rules that moved to admission: each `examples/invalid/` case
/// that the sidecar would refuse is refused by the sidecar too, so the CRD is no looser than
/// the sidecar and no stricter than it needs to be.
#[test]
fn what_the_sidecar_refuses_is_refused_at_admission() {
    let dir = lexserve_e2e::repo_root().join("examples").join("invalid");
    let mut refused_by_both = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/invalid") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        if !text.contains("# sidecar refuses:") {
            continue;
        }
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# sidecar refuses: "))
            .expect("a `# sidecar refuses:` line");
        let value: Value = serde_yaml::from_str(&text).expect("YAML");
        let spec = &value["spec"];
        let yaml = serde_yaml::to_string(&serde_json::json!({
            "model": spec["model"],
            "runtime": spec.get("runtime").cloned().unwrap_or(Value::Null),
        }))
        .expect("yaml");
        let argv = vec![command::SERVE.to_string()];
        match load(&yaml, &argv) {
            Ok(_) => panic!("{}: the sidecar accepts it", path.display()),
            Err(e) => assert!(
                e.contains(expected),
                "{}: expected `{expected}` from the sidecar, got `{e}`",
                path.display()
            ),
        }
        refused_by_both += 1;
    }
    assert!(refused_by_both >= 4, "{refused_by_both} cases");
}
