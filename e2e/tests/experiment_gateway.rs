//! `routing.provider: gatewayAPI` on the local control plane, with Gateway API's own CRDs
//! (from its Go module, provisioned by `e2e/cluster/setup.sh`): the operator emits an HTTPRoute
//! with one weighted backend per variant, and the apiserver admits it; status says plainly what
//! the gateway cannot do; builtin outcome metrics are refused in a condition.
//!
//! A cluster of its own (this test binary's): Gateway API's CRDs must not leak into other tests.

mod common;

use std::time::Duration;

use common::{TIMEOUT, create, embedder, install_crds, isvc, scene};
use kube::api::{Api, DynamicObject, PostParams};
use lexserve_e2e::bins::bin_dir;
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::Experiment;
use lexserve_operator::api::conditions::{ConditionType, find_condition};
use lexserve_operator::resources::http_route::http_route_resource;
use serde_json::json;

fn experiment(name: &str, source: serde_json::Value) -> Experiment {
    serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "control": "a",
            "variants": [
                {"name": "control", "inferenceService": "a", "weight": 90},
                {"name": "candidate", "inferenceService": "b", "weight": 10},
            ],
            "metrics": [{"name": "accuracy", "kind": "Proportion", "role": "Primary",
                         "source": source}],
            "analysis": {"interval": "5s"},
            "routing": {"provider": "gatewayAPI", "gatewayAPI": {
                "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                "hostnames": ["sentiment.example.com"],
            }},
        }
    }))
    .expect("valid Experiment")
}

#[tokio::test]
async fn a_gateway_api_experiment_emits_an_http_route_the_apiserver_admits() {
    let cluster = lexserve_e2e::shared_cluster().await.expect("cluster");
    install_crds(cluster).await.expect("CRDs");
    // kubectl does not follow a symlink to a directory.
    let gateway_crds = std::fs::canonicalize(bin_dir().join("gateway-api-crds"))
        .expect("gateway-api-crds missing: run e2e/cluster/setup.sh");
    assert!(
        gateway_crds
            .join("gateway.networking.k8s.io_httproutes.yaml")
            .is_file(),
        "{} missing: run e2e/cluster/setup.sh",
        gateway_crds.display()
    );
    cluster
        .apply_crds(&gateway_crds)
        .await
        .expect("Gateway API's CRDs are Established");
    let scene = scene(cluster, "exp-gateway").await;
    let ns = scene.ns.to_string();
    let _operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "exp-gateway".to_string(),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("operator");
    for name in ["a", "b"] {
        create(&scene.api, &isvc(name, embedder(1)))
            .await
            .expect("InferenceService");
    }
    let experiments: Api<Experiment> = Api::namespaced(scene.client.clone(), &ns);
    let prometheus = json!({"prometheus": {
        "count": "sum(app_feedback_total{variant=\"{{variant}}\"})",
        "sum": "sum(app_feedback_correct_total{variant=\"{{variant}}\"})",
    }});
    experiments
        .create(&PostParams::default(), &experiment("gw", prometheus))
        .await
        .expect("Experiment admitted");

    // The route exists as the apiserver admitted it, with the spec's weights.
    let routes: Api<DynamicObject> =
        Api::namespaced_with(scene.client.clone(), &ns, &http_route_resource());
    let route = wait::until(
        "the HTTPRoute",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            Ok(match routes.get_opt("gw").await? {
                Some(route) => Poll::Ready(route),
                None => Poll::pending("absent"),
            })
        },
    )
    .await
    .expect("HTTPRoute");
    assert_eq!(
        route.data["spec"]["rules"][0]["backendRefs"],
        json!([
            {"group": "", "kind": "Service", "name": "a", "port": 80, "weight": 90},
            {"group": "", "kind": "Service", "name": "b", "port": 80, "weight": 10},
        ])
    );
    assert_eq!(route.data["spec"]["parentRefs"][0]["name"], "public");
    assert_eq!(
        route.data["spec"]["hostnames"],
        json!(["sentiment.example.com"])
    );
    let owner = route.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.first().map(|o| o.kind.as_str()), Some("Experiment"));

    // Status says what the gateway cannot do.
    let message = wait::until(
        "routing.message",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let status = experiments.get("gw").await?.status.unwrap_or_default();
            Ok(
                match status.routing.map(|r| r.message).filter(|m| !m.is_empty()) {
                    Some(m) => Poll::Ready(m),
                    None => Poll::pending("no routing status"),
                },
            )
        },
    )
    .await
    .expect("routing status");
    assert!(
        message.contains("each request is assigned independently"),
        "{message}"
    );
    assert!(
        message.contains("not counted (that needs provider router)"),
        "{message}"
    );

    // Builtin outcomes need the router: refused in a condition that names the metric.
    experiments
        .create(
            &PostParams::default(),
            &experiment("gw-builtin", json!({"builtin": "accuracy"})),
        )
        .await
        .expect("Experiment admitted");
    let degraded = wait::until(
        "OutcomesNeedRouter",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let status = experiments
                .get("gw-builtin")
                .await?
                .status
                .unwrap_or_default();
            Ok(
                match find_condition(&status.conditions, ConditionType::Degraded) {
                    Some(c) if c.reason == "OutcomesNeedRouter" => Poll::Ready(c.message.clone()),
                    other => Poll::pending(format!("{other:?}")),
                },
            )
        },
    )
    .await
    .expect("condition");
    assert!(
        degraded.contains("spec.metrics: accuracy use builtin outcomes"),
        "{degraded}"
    );
}
