//! An operator left alone with settled objects writes nothing, however often it reconciles.
//! Write requests are counted from the apiserver's own `apiserver_request_total`, which has no
//! namespace label: this test has a cluster (a test binary) of its own so that nothing else
//! writes meanwhile.

mod common;

use std::time::Duration;

use common::*;
use kube::api::Api;
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::shared_cluster;
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::ConditionType;
use serde_json::json;

const WRITTEN: &[&str] = lexserve_e2e::request_counts::OPERATOR_WRITTEN;

#[tokio::test]
async fn unchanged_objects_cause_no_writes_across_resyncs() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("CRDs install");
    let ns = cluster.namespace("idle").await.expect("namespace");
    let api: Api<InferenceService> = Api::namespaced(cluster.client().expect("client"), &ns);
    let resync = 2;
    let operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "idle".to_string(),
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
    // Let in-flight reconciles (triggered by the last pod and status events) finish.
    tokio::time::sleep(Duration::from_secs(resync * 2)).await;

    let reconciles = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("lexserve_operator_reconciliations_total"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let per_resource = |text: &str| -> Vec<(String, f64)> {
        WRITTEN
            .iter()
            .map(|r| (r.to_string(), write_requests(text, &[r])))
            .collect()
    };
    let before_text = cluster.apiserver_metrics().await.expect("metrics");
    let before_writes = write_requests(&before_text, WRITTEN);
    let before_reconciles = reconciles(&operator.metrics().await.expect("operator metrics"));
    let idle = Duration::from_secs(resync * 8);
    tokio::time::sleep(idle).await;
    let after_text = cluster.apiserver_metrics().await.expect("metrics");
    let after_writes = write_requests(&after_text, WRITTEN);
    let changed: Vec<_> = per_resource(&before_text)
        .into_iter()
        .zip(per_resource(&after_text))
        .filter(|(b, a)| a.1 != b.1)
        .map(|(b, a)| format!("{}: +{}", b.0, a.1 - b.1))
        .collect();
    let after_reconciles = reconciles(&operator.metrics().await.expect("operator metrics"));

    println!(
        "idle {idle:?}: {} reconciles, {} write requests to {WRITTEN:?}",
        after_reconciles - before_reconciles,
        after_writes - before_writes
    );
    assert!(
        after_reconciles - before_reconciles >= 6.0,
        "the objects were reconciled during the idle period (resync {resync}s)"
    );
    assert_eq!(
        after_writes - before_writes,
        0.0,
        "an unchanged object must cause no writes: {changed:?}"
    );
}
