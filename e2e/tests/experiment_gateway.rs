//! `routing.provider: gatewayAPI` on the local control plane, with Gateway API's own CRDs
//! (from its Go module, provisioned by `e2e/cluster/setup.sh`): the operator emits an HTTPRoute
//! with one weighted backend per variant, and the apiserver admits it; status says plainly what
//! the gateway cannot do; builtin outcome metrics are refused in a condition. The builder's route,
//! applied directly with strict field validation, keeps every field, and a route Gateway API's
//! rules forbid is refused.
//!
//! A cluster of its own (this test binary's): Gateway API's CRDs must not leak into other tests.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TIMEOUT, create, embedder, install_crds, isvc, scene};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use lexserve_e2e::bins::bin_dir;
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::Experiment;
use lexserve_operator::api::conditions::{ConditionType, find_condition};
use lexserve_operator::resources::http_route::{
    build_http_route, http_route_resource, spec_weights,
};
use lexserve_operator::resources::labels::FIELD_MANAGER;
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

/// This binary's cluster with lexserve's CRDs and Gateway API's (once).
async fn cluster_with_gateway_api() -> &'static lexserve_e2e::LocalCluster {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let cluster = lexserve_e2e::shared_cluster().await.expect("cluster");
    install_crds(cluster).await.expect("CRDs");
    INSTALLED
        .get_or_init(|| async {
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
        })
        .await;
    cluster
}

#[tokio::test]
async fn a_gateway_api_experiment_emits_an_http_route_the_apiserver_admits() {
    let cluster = cluster_with_gateway_api().await;
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

/// An Experiment whose HTTPRoute the builder makes directly (no operator running).
fn builder_experiment(name: &str) -> Experiment {
    serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "control": "sentiment",
            "variants": [
                {"name": "control", "inferenceService": "sentiment", "weight": 90},
                {"name": "candidate", "inferenceService": "sentiment-v2", "weight": 10},
            ],
            "metrics": [{
                "name": "accuracy", "kind": "Proportion", "role": "Primary",
                "source": {"prometheus": {
                    "count": "sum(app_feedback_total{variant=\"{{variant}}\"})",
                    "sum": "sum(app_feedback_correct_total{variant=\"{{variant}}\"})",
                }},
            }],
            "routing": {"provider": "gatewayAPI", "gatewayAPI": {
                "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                "hostnames": ["sentiment.example.com"],
            }},
        },
    }))
    .expect("experiment JSON")
}

/// The builder's route, applied directly: Gateway API's schema and CEL admit it under strict
/// field validation and keep every field, and refuse what they forbid, so that the admission
/// above means something.
#[tokio::test]
async fn http_routes_pass_gateway_apis_own_schema_and_keep_every_field() {
    let cluster = cluster_with_gateway_api().await;
    let ns = cluster.namespace("gateway-api").await.expect("namespace");
    let client = cluster.client().expect("client");
    // The Experiment as the apiserver stores it (its UID goes into the route's owner reference).
    let experiments: Api<Experiment> = Api::namespaced(client.clone(), ns.name());
    let stored = experiments
        .create(&PostParams::default(), &builder_experiment("sentiment-ab"))
        .await
        .expect("the gatewayAPI Experiment passes admission");
    let routing = stored
        .spec
        .routing
        .gateway_api
        .clone()
        .expect("gatewayAPI block kept");

    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns.name(), &http_route_resource());
    let strict = PatchParams::apply(FIELD_MANAGER).validation_strict();
    let route = build_http_route(&stored, &routing, &spec_weights(&stored));
    let applied = routes
        .patch("sentiment-ab", &strict, &Patch::Apply(&route))
        .await
        .expect("Gateway API's schema admits the operator's HTTPRoute (strict field validation)");

    // Nothing pruned or defaulted away: what the operator wrote is what is stored.
    let spec = &applied.data["spec"];
    assert_eq!(
        spec["rules"][0]["backendRefs"], route.data["spec"]["rules"][0]["backendRefs"],
        "{spec:#}"
    );
    assert_eq!(spec["parentRefs"], route.data["spec"]["parentRefs"]);
    assert_eq!(spec["hostnames"], json!(["sentiment.example.com"]));
    let owner = &applied.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(owner.uid, stored.metadata.uid.clone().expect("uid"));

    // A decision (everything to one variant) is a valid route too.
    let winner_only = BTreeMap::from([("candidate".to_string(), 1)]);
    routes
        .patch(
            "sentiment-ab",
            &strict,
            &Patch::Apply(&build_http_route(&stored, &routing, &winner_only)),
        )
        .await
        .expect("the promoted route is admitted");

    // Gateway API's rules are enforced here, so the acceptance above means something: a Service
    // backend without a port (its CEL rule) and an unknown field (strict validation) are refused.
    let mut no_port = build_http_route(&stored, &routing, &spec_weights(&stored));
    no_port.metadata.name = Some("no-port".to_string());
    no_port.data["spec"]["rules"][0]["backendRefs"][0]
        .as_object_mut()
        .expect("backendRef")
        .remove("port");
    let refused = routes
        .patch("no-port", &strict, &Patch::Apply(&no_port))
        .await
        .expect_err("a Service backend without a port is refused");
    assert!(
        refused.to_string().contains("port"),
        "the refusal names the port: {refused}"
    );
    let mut unknown = build_http_route(&stored, &routing, &spec_weights(&stored));
    unknown.metadata.name = Some("unknown-field".to_string());
    unknown.data["spec"]["rules"][0]["backendRefs"][0]["percent"] = json!(90);
    let refused = routes
        .patch("unknown-field", &strict, &Patch::Apply(&unknown))
        .await
        .expect_err("an unknown field is refused");
    assert!(refused.to_string().contains("percent"), "{refused}");
}
