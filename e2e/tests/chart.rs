//! The Helm chart (`charts/lexserve`), rendered by the real `helm` (provisioned by
//! `e2e/cluster/setup.sh`): it lints, every toggle renders what it says and nothing else, the
//! RBAC has no wildcard, and values that break `values.schema.json` fail with the schema's
//! message. The Dockerfiles name the binaries, paths, user and ports the workspace builds and the
//! chart and operator use (no image can be built on these machines, so this keeps them honest).

use std::path::PathBuf;
use std::process::Command;

use lexserve_contract::names::{command, http, path};
use lexserve_e2e::bins::bin_dir;
use lexserve_e2e::repo_root;
use serde_json::Value;

fn chart() -> PathBuf {
    repo_root().join("charts/lexserve")
}

fn helm(args: &[&str]) -> std::process::Output {
    let helm = bin_dir().join("helm");
    assert!(
        helm.exists(),
        "{} missing: run e2e/cluster/setup.sh",
        helm.display()
    );
    Command::new(&helm)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()))
}

/// `helm template` with `--set` values (and extra flags); the rendered objects as JSON.
fn render(sets: &[&str], extra: &[&str]) -> Vec<Value> {
    let chart = chart().display().to_string();
    let mut args = vec![
        "template",
        "lx",
        chart.as_str(),
        "--namespace",
        "lexserve-system",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {sets:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| {
            let value = Value::deserialize(doc).expect("rendered YAML parses");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

use serde::Deserialize;

fn kinds(objects: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    kinds.sort();
    kinds
}

fn has_kind(objects: &[Value], kind: &str) -> bool {
    objects.iter().any(|o| o["kind"] == kind)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kinds(objects)))
}

fn operator_env(objects: &[Value]) -> Vec<(String, Value)> {
    let deployment = find(objects, "Deployment", "lx-lexserve");
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                e.get("value").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn env_value(objects: &[Value], name: &str) -> Option<String> {
    operator_env(objects)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str().unwrap_or("").to_string())
}

#[test]
fn the_chart_lints_and_its_defaults_install_a_leader_elected_pair() {
    let chart = chart().display().to_string();
    let lint = helm(&["lint", "--strict", &chart]);
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let objects = render(&[], &[]);
    let deployment = find(&objects, "Deployment", "lx-lexserve");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        env_value(&objects, "LEXSERVE_LEADER_ELECT").as_deref(),
        Some("true")
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert!(pod["affinity"]["podAntiAffinity"].is_object(), "{pod:#}");
    assert!(has_kind(&objects, "PodDisruptionBudget"));
    // Cluster-wide by default: the kinds' rules in a ClusterRole.
    let role = find(&objects, "ClusterRole", "lx-lexserve");
    assert!(role["rules"].as_array().expect("rules").len() > 5);
    assert!(has_kind(&objects, "APIService"));
    assert!(has_kind(&objects, "ValidatingAdmissionPolicy"));
    // The Prometheus Operator's CRDs are absent here: no monitors, even if enabled.
    let objects = render(&["monitoring.podMonitor.enabled=true"], &[]);
    assert!(!has_kind(&objects, "PodMonitor"), "{:?}", kinds(&objects));
}

#[test]
fn every_toggle_renders_what_it_says() {
    // Namespace-only: Roles in the watched namespace, no ClusterRole for the kinds.
    let objects = render(&["watchNamespace=team-a"], &[]);
    let role = find(&objects, "Role", "lx-lexserve");
    assert_eq!(role["metadata"]["namespace"], "team-a");
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "lx-lexserve"),
        "{:?}",
        kinds(&objects)
    );
    assert_eq!(
        env_value(&objects, "LEXSERVE_WATCH_NAMESPACE").as_deref(),
        Some("team-a")
    );
    // GPU capacity without cluster scope: no node reads at all.
    let objects = render(&["gpuCapacity.clusterScope=false"], &[]);
    assert!(
        !objects
            .iter()
            .filter(|o| o["kind"] == "ClusterRole")
            .any(|o| o.to_string().contains("\"nodes\"")),
        "{:?}",
        kinds(&objects)
    );
    // No metrics API (KEDA or prometheus-adapter owns it): no APIService, and the operator does
    // not serve it.
    let objects = render(&["metricsApi.enabled=false"], &[]);
    assert!(!has_kind(&objects, "APIService"));
    assert_eq!(
        env_value(&objects, "LEXSERVE_METRICS_API_ADDR").as_deref(),
        Some("")
    );
    // cert-manager: a Certificate, the CA injected by annotation, the operator serving the
    // mounted files and leaving the APIService alone.
    let objects = render(
        &[
            "metricsApi.certificate.source=certManager",
            "metricsApi.certificate.certManager.issuerRef.name=cluster-ca",
        ],
        &[],
    );
    assert!(has_kind(&objects, "Certificate"));
    let apiservice = find(&objects, "APIService", "v1beta1.external.metrics.k8s.io");
    assert!(apiservice["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_string());
    assert!(apiservice["spec"].get("insecureSkipTLSVerify").is_none());
    assert_eq!(
        env_value(&objects, "LEXSERVE_METRICS_API_APISERVICE").as_deref(),
        Some("")
    );
    // No admission policy.
    let objects = render(&["admissionPolicy.enabled=false"], &[]);
    assert!(!has_kind(&objects, "ValidatingAdmissionPolicy"));
    // Monitors where the Prometheus Operator's CRDs exist.
    let objects = render(
        &[
            "monitoring.podMonitor.enabled=true",
            "monitoring.serviceMonitor.enabled=true",
        ],
        &["--api-versions", "monitoring.coreos.com/v1"],
    );
    assert!(has_kind(&objects, "PodMonitor"));
    assert!(has_kind(&objects, "ServiceMonitor"));
    assert!(!has_kind(&objects, "PrometheusRule"));
    // The observability pack, unchanged from files/ (also usable without the chart).
    let objects = render(
        &[
            "monitoring.prometheusRule.enabled=true",
            "monitoring.dashboards.enabled=true",
        ],
        &["--api-versions", "monitoring.coreos.com/v1"],
    );
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("files/alerts/lexserve.rules.yaml")).expect("rules"),
    )
    .expect("rules YAML");
    assert_eq!(
        find(&objects, "PrometheusRule", "lx-lexserve-alerts")["spec"]["groups"],
        rules["groups"]
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("files/dashboards/lexserve.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let config_map = find(&objects, "ConfigMap", "lx-lexserve-dashboards");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        config_map["data"]["lexserve.json"]
            .as_str()
            .expect("lexserve.json"),
    )
    .expect("the shipped dashboard is JSON");
    assert_eq!(shipped, dashboard);
    // Without the Prometheus Operator, no PrometheusRule (the ConfigMap needs nothing).
    let objects = render(
        &[
            "monitoring.prometheusRule.enabled=true",
            "monitoring.dashboards.enabled=true",
        ],
        &[],
    );
    assert!(!has_kind(&objects, "PrometheusRule"));
    assert!(has_kind(&objects, "ConfigMap"));
    // One replica without leader election (and then no PDB that would block every drain).
    let objects = render(&["replicaCount=1", "leaderElection.enabled=false"], &[]);
    assert!(!has_kind(&objects, "PodDisruptionBudget"));
    // More operator environment (every flag has a variable), after the chart's own.
    let objects = render(
        &[
            "extraEnv[0].name=RUST_LOG",
            "extraEnv[0].value=lexserve_operator=debug",
        ],
        &[],
    );
    assert_eq!(
        env_value(&objects, "RUST_LOG").as_deref(),
        Some("lexserve_operator=debug")
    );
    assert_eq!(env_value(&render(&[], &[]), "RUST_LOG"), None);
}

#[test]
fn rbac_names_every_verb_and_resource_without_wildcards() {
    for sets in [
        &[][..],
        &["watchNamespace=team-a"][..],
        &[
            "metricsApi.certificate.source=certManager",
            "metricsApi.certificate.certManager.issuerRef.name=ca",
        ][..],
    ] {
        for object in render(sets, &[]) {
            if !matches!(object["kind"].as_str(), Some("Role" | "ClusterRole")) {
                continue;
            }
            for rule in object["rules"].as_array().expect("rules") {
                for field in ["apiGroups", "resources", "verbs"] {
                    let values = rule[field].as_array().expect(field);
                    assert!(!values.is_empty(), "{field} empty in {rule}");
                    assert!(
                        values
                            .iter()
                            .all(|v| v.as_str().is_some_and(|s| !s.contains('*'))),
                        "wildcard in {}/{}: {rule}",
                        object["kind"],
                        object["metadata"]["name"]
                    );
                }
            }
        }
    }
}

#[test]
fn values_that_break_the_schema_fail_with_its_message() {
    let chart = chart().display().to_string();
    for (set, expect) in [
        ("logFormat=xml", "logFormat"),
        ("replicaCount=0", "replicaCount"),
        (
            "admissionPolicy.validationActions[0]=Block",
            "validationActions",
        ),
        ("watchNamespace=Team_A", "watchNamespace"),
        ("unknownKey=1", "unknownKey"),
        ("extraEnv[0].name=NOT-A-NAME", "extraEnv"),
    ] {
        let out = helm(&["template", "lx", &chart, "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(
            stderr.contains("schema") || stderr.contains(expect),
            "{set}: {stderr}"
        );
        assert!(
            stderr.contains(expect),
            "{set}: the message names {expect}: {stderr}"
        );
    }
    // Two writers without an election: refused by the schema, not discovered in production.
    let out = helm(&[
        "template",
        "lx",
        &chart,
        "--set",
        "replicaCount=2",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("replicaCount"));
}

#[test]
fn the_dockerfiles_name_what_the_workspace_builds_and_the_chart_runs() {
    let docker = repo_root().join("deploy/docker");
    let operator = std::fs::read_to_string(docker.join("operator.Dockerfile")).expect("read");
    let sidecar = std::fs::read_to_string(docker.join("sidecar.Dockerfile")).expect("read");
    // The binaries are the workspace's.
    assert!(operator.contains("-p lexserve-operator"));
    assert!(operator.contains("target/release/lexserve-operator"));
    assert!(sidecar.contains(&format!("target/release/{}", command::SIDECAR_BINARY)));
    // The sidecar's default command is what the operator runs: serve, the config path.
    let config = format!("{}/{}", path::CONFIG_DIR, path::CONFIG_FILE);
    assert!(
        sidecar.contains(&format!(
            r#"CMD ["{}", "--config", "{config}"]"#,
            command::SERVE
        )),
        "{sidecar}"
    );
    assert!(sidecar.contains(&format!("EXPOSE {}", http::PORT)));
    // ONNX Runtime: the version and checksum the tests use.
    let setup =
        std::fs::read_to_string(repo_root().join("inference-sidecar/scripts/setup-models.sh"))
            .expect("read setup-models.sh");
    let wheel_line = setup
        .lines()
        .find(|l| l.starts_with("ORT_WHEEL="))
        .expect("ORT_WHEEL in setup-models.sh");
    let version = wheel_line
        .trim_start_matches("ORT_WHEEL=onnxruntime-")
        .split('-')
        .next()
        .expect("version");
    assert!(
        sidecar.contains(&format!("ARG ORT_VERSION={version}")),
        "{version}"
    );
    let checksum_line = setup
        .lines()
        .skip_while(|l| !l.starts_with("fetch onnxruntime"))
        .nth(1)
        .expect("the onnxruntime checksum line")
        .trim_end_matches('\\')
        .trim()
        .to_string();
    assert!(
        sidecar.contains(&format!("ARG ORT_WHEEL_SHA256={checksum_line}")),
        "{checksum_line}"
    );
    // A CPU baseline build argument, non-root, OCI labels.
    for file in [&operator, &sidecar] {
        assert!(file.contains("ARG TARGET_CPU=x86-64-v3"));
        assert!(file.contains("USER 65532:65532"));
        assert!(file.contains("org.opencontainers.image.source"));
    }
    // The chart runs the operator as that user, on the ports the image exposes.
    let objects = render(&[], &[]);
    let pod = &find(&objects, "Deployment", "lx-lexserve")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    let ports: Vec<i64> = pod["containers"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["containerPort"].as_i64().expect("port"))
        .collect();
    let exposed = operator
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    let exposed: Vec<i64> = exposed
        .split_whitespace()
        .map(|p| p.parse().expect("port number"))
        .collect();
    assert_eq!(ports, exposed);
    assert_eq!(
        pod["containers"][0]["args"][0], "run",
        "the chart runs the operator's run subcommand"
    );
}
