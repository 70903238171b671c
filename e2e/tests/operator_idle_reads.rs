//! A reconcile of a settled object is served from the watch caches: however often the
//! operator reconciles, it makes no API request (no GET per child, no node or pod list for a
//! GPU service), as the operator's own `lexserve_operator_api_requests` counts them. A cluster
//! (a test binary) of its own, so that nothing else reconciles meanwhile.

mod common;

use std::time::Duration;

use common::*;
use kube::api::Api;
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::shared_cluster;
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::ConditionType;
use serde_json::json;

/// Sums the samples of a counter over its label sets.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn reconciles_of_settled_objects_make_no_api_requests() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs install");
    let ns = cluster.namespace("idle-reads").await.expect("namespace");
    let api: Api<InferenceService> = Api::namespaced(cluster.client().expect("client"), &ns);
    let resync = 2;
    let operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "idle-reads".to_string(),
            namespace: Some(ns.to_string()),
            resync_seconds: resync,
            ..Default::default()
        },
    )
    .await
    .expect("operator");

    let mut hpa = embedder(1);
    hpa["scaling"] = json!({"provider": "hpa", "minReplicas": 1, "maxReplicas": 3});
    let mut gpu = embedder(2);
    gpu["resources"]["gpu"] = json!({"count": 1});
    for (name, spec) in [("fixed", embedder(2)), ("scaled", hpa), ("gpu", gpu)] {
        create(&api, &isvc(name, spec)).await.expect("create");
    }
    for name in ["fixed", "scaled", "gpu"] {
        wait_condition(
            &api,
            name,
            ConditionType::Progressing,
            "False",
            Some("RolloutComplete"),
        )
        .await
        .expect("settled");
    }
    tokio::time::sleep(Duration::from_secs(resync * 2)).await;

    let before = operator.metrics().await.expect("operator metrics");
    tokio::time::sleep(Duration::from_secs(resync * 8)).await;
    let after = operator.metrics().await.expect("operator metrics");
    let reconciles = counter(&after, "lexserve_operator_reconciliations_total")
        - counter(&before, "lexserve_operator_reconciliations_total");
    let requests = counter(&after, "lexserve_operator_api_requests_total")
        - counter(&before, "lexserve_operator_api_requests_total");
    println!("{reconciles} reconciles of settled objects, {requests} API requests");
    assert!(
        counter(&before, "lexserve_operator_api_requests_total") > 0.0,
        "the counter counts: creating the children took requests"
    );
    assert!(
        reconciles >= 6.0,
        "the objects were reconciled (resync {resync}s)"
    );
    let lines: Vec<_> = after
        .lines()
        .filter(|l| l.starts_with("lexserve_operator_api_requests_total"))
        .collect();
    assert_eq!(
        requests, 0.0,
        "a reconcile of a settled object must be served from the caches: {lines:?}"
    );
}
