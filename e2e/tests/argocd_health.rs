//! Argo CD health checks (`deploy/argocd/health/lexserve.io/<Kind>/health.lua`), run by Argo CD's
//! own Lua engine (gopher-lua, behind `argocd-lua-runner`, built by `e2e/cluster/setup.sh`)
//! against every case of their `health_test.yaml` (Argo CD's layout), whose statuses must also
//! be statuses the operator can write (they deserialize into the API's status types).

use std::path::Path;
use std::process::Command;

use lexserve_e2e::bins::bin_dir;
use lexserve_e2e::repo_root;
use lexserve_operator::api::experiment::ExperimentStatus;
use lexserve_operator::api::inference_service::InferenceServiceStatus;
use lexserve_operator::api::shadow_deployment::ShadowDeploymentStatus;
use serde_json::Value;

fn run_health(script: &Path, object: &Value) -> Value {
    let runner = bin_dir().join("argocd-lua-runner");
    assert!(
        runner.exists(),
        "{} missing: run e2e/cluster/setup.sh",
        runner.display()
    );
    let input = tempfile_path(object);
    let out = Command::new(&runner)
        .arg(script)
        .arg(&input)
        .output()
        .expect("run argocd-lua-runner");
    let _ = std::fs::remove_file(&input);
    assert!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("runner prints JSON")
}

fn tempfile_path(object: &Value) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!(
        "lexserve-argocd-health-{}-{n}.json",
        std::process::id()
    ));
    std::fs::write(&path, serde_json::to_vec(object).expect("JSON")).expect("write object");
    path
}

fn check_status_shape(kind: &str, status: &Value) {
    let result = match kind {
        "InferenceService" => {
            serde_json::from_value::<InferenceServiceStatus>(status.clone()).map(|_| ())
        }
        "Experiment" => serde_json::from_value::<ExperimentStatus>(status.clone()).map(|_| ()),
        "ShadowDeployment" => {
            serde_json::from_value::<ShadowDeploymentStatus>(status.clone()).map(|_| ())
        }
        other => panic!("no health check expected for {other}"),
    };
    result.unwrap_or_else(|e| panic!("{kind} test status is not the operator's shape: {e}"));
}

#[test]
fn health_checks_give_each_status_its_argo_cd_health() {
    let root = repo_root().join("deploy/argocd/health/lexserve.io");
    let mut checked = 0;
    let mut statuses = std::collections::BTreeSet::new();
    for kind in ["InferenceService", "Experiment", "ShadowDeployment"] {
        let dir = root.join(kind);
        let script = dir.join("health.lua");
        let tests: Value = serde_yaml::from_str(
            &std::fs::read_to_string(dir.join("health_test.yaml")).expect("health_test.yaml"),
        )
        .expect("health_test.yaml parses");
        for case in tests["tests"].as_array().expect("tests") {
            let input = dir.join(case["inputPath"].as_str().expect("inputPath"));
            let object: Value =
                serde_yaml::from_str(&std::fs::read_to_string(&input).expect("test object"))
                    .expect("test object parses");
            if let Some(status) = object.get("status") {
                check_status_shape(kind, status);
            }
            let health = run_health(&script, &object);
            assert_eq!(
                health,
                case["healthStatus"],
                "{kind} {}: health differs",
                input.display()
            );
            statuses.insert(health["status"].as_str().unwrap_or("").to_string());
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} cases");
    // Every health Argo CD knows for a resource that can pause is exercised.
    for status in ["Healthy", "Progressing", "Degraded", "Suspended"] {
        assert!(statuses.contains(status), "no case gives {status}");
    }
}
