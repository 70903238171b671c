//! `provider: keda` against KEDA's real ScaledObject CRD (from KEDA's Go module, provisioned by
//! `e2e/cluster/setup.sh`): the apiserver validates the operator's ScaledObject with KEDA's
//! own schema, keeps every field (nothing pruned as unknown), and the trigger carries the same
//! query and threshold as the HPA's external metric.
//!
//! A cluster of its own (this test binary's): installing KEDA's CRD must not leak into the
//! cluster where "no KEDA CRD" is tested.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DynamicObject};
use lexserve_e2e::bins::bin_dir;
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::shared_cluster;
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::InferenceService;
use lexserve_operator::api::conditions::ConditionType;
use lexserve_operator::config::OperatorConfig;
use lexserve_operator::resources::hpa::default_scale_down;
use lexserve_operator::resources::load_query::load_query;
use lexserve_operator::resources::scaled_object::scaled_object_resource;
use serde_json::json;

#[tokio::test]
async fn scaled_objects_pass_kedas_own_schema_with_the_hpas_query_and_threshold() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("lexserve CRDs");
    let keda_crd = bin_dir().join("keda-crds/keda.sh_scaledobjects.yaml");
    assert!(
        keda_crd.is_file(),
        "{} missing: run e2e/cluster/setup.sh",
        keda_crd.display()
    );
    cluster
        .apply_crds(&keda_crd)
        .await
        .expect("KEDA's ScaledObject CRD applies and is Established");

    let ns = cluster.namespace("keda").await.expect("namespace");
    let _operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "keda".to_string(),
            namespace: Some(ns.name().to_string()),
            ..OperatorOptions::default()
        },
    )
    .await
    .expect("operator");
    let client = cluster.client().expect("client");
    let isvcs: Api<InferenceService> = Api::namespaced(client.clone(), ns.name());
    let mut spec = embedder(1);
    spec["scaling"] = json!({
        "provider": "keda",
        "minReplicas": 2,
        "maxReplicas": 7,
        "targetLoadPerReplica": 6,
    });
    create(&isvcs, &isvc("scaled", spec)).await.expect("create");
    wait_condition(
        &isvcs,
        "scaled",
        ConditionType::Ready,
        "True",
        Some("Available"),
    )
    .await
    .expect("Ready with KEDA installed");

    let scaled_objects: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &scaled_object_resource());
    let stored = wait::until(
        "the ScaledObject",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            Ok(match scaled_objects.get_opt("scaled").await? {
                Some(so) => Poll::Ready(so),
                None => Poll::pending("absent"),
            })
        },
    )
    .await
    .expect("ScaledObject created");
    let spec = &stored.data["spec"];

    // The same signal as the HPA's: the load query of this service, the same target.
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(trigger["metricType"], "AverageValue");
    assert_eq!(
        trigger["metadata"]["query"],
        load_query(ns.name(), "scaled"),
        "{spec:#}"
    );
    assert_eq!(trigger["metadata"]["threshold"], "6");
    assert_eq!(trigger["metadata"]["ignoreNullValues"], "false");
    assert_eq!(
        trigger["metadata"]["serverAddress"],
        OperatorConfig::default().prometheus_url
    );
    assert_eq!(spec["minReplicaCount"], 2);
    assert_eq!(spec["maxReplicaCount"], 7);
    assert_eq!(spec["scaleTargetRef"]["name"], "scaled");

    // Nothing pruned: KEDA's schema knows every field the operator writes, including the HPA
    // behaviour (the same stabilized scale-down as provider hpa).
    let behavior = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
    assert_eq!(
        behavior["scaleDown"]["stabilizationWindowSeconds"],
        default_scale_down()
            .stabilization_window_seconds
            .expect("window"),
        "{spec:#}"
    );
    assert_eq!(behavior["scaleUp"]["stabilizationWindowSeconds"], 0);

    // No HPA of the operator's own: KEDA makes one from the ScaledObject.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns.name());
    assert!(hpas.get_opt("scaled").await.expect("get").is_none());

    // KEDA's schema is enforced here: a ScaledObject the schema forbids is rejected, so the
    // acceptance above means something.
    let mut bad = stored.clone();
    bad.metadata = kube::api::ObjectMeta {
        name: Some("bad".to_string()),
        namespace: Some(ns.name().to_string()),
        ..Default::default()
    };
    // Two mistakes the operator could make: a number where KEDA's trigger metadata takes only
    // strings, and minReplicaCount above maxReplicaCount (KEDA's CEL rule).
    let numeric = {
        let mut b = bad.clone();
        b.data["spec"]["triggers"][0]["metadata"]["threshold"] = json!(6);
        b
    };
    let inverted = {
        let mut b = bad.clone();
        b.data["spec"]["minReplicaCount"] = json!(9);
        b
    };
    for (object, field) in [(numeric, "threshold"), (inverted, "minReplicaCount")] {
        let manifest = serde_json::to_string(&object).expect("JSON");
        let out = cluster
            .kubectl_with_stdin(["apply", "--dry-run=server", "-f", "-"], Some(&manifest))
            .await
            .expect("kubectl");
        assert!(!out.success, "KEDA's schema accepted a bad {field}");
        assert!(out.stderr.contains(field), "{field}: {}", out.stderr);
    }
}
