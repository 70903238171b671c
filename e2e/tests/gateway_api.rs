//! `routing.provider: gatewayAPI` against Gateway API's real CRDs (the standard channel's
//! GatewayClass, Gateway and HTTPRoute, from its Go module, provisioned by
//! `e2e/cluster/setup.sh`): the HTTPRoute the operator builds for an Experiment passes Gateway
//! API's own schema and CEL rules with strict field validation, keeps every field, and the
//! schema really is enforced (a route it forbids is rejected).
//!
//! A cluster of its own (this test binary's): Gateway API's CRDs must not leak into other tests.

mod common;

use std::collections::BTreeMap;

use common::*;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use lexserve_e2e::bins::bin_dir;
use lexserve_e2e::shared_cluster;
use lexserve_operator::api::Experiment;
use lexserve_operator::resources::http_route::{
    build_http_route, http_route_resource, spec_weights,
};
use lexserve_operator::resources::labels::FIELD_MANAGER;
use serde_json::json;

fn experiment(name: &str) -> Experiment {
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

#[tokio::test]
async fn http_routes_pass_gateway_apis_own_schema_and_keep_every_field() {
    let cluster = shared_cluster().await.expect("local cluster");
    install_crds(cluster).await.expect("lexserve CRDs");
    // A link to the versioned directory in the cache: kubectl reads a linked directory as a file.
    let gateway_crds = std::fs::canonicalize(bin_dir().join("gateway-api-crds"))
        .expect("gateway-api-crds in the bin dir: run e2e/cluster/setup.sh");
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
        .expect("Gateway API's CRDs apply and are Established");

    let ns = cluster.namespace("gateway-api").await.expect("namespace");
    let client = cluster.client().expect("client");
    // The Experiment as the apiserver stores it (its UID goes into the route's owner reference).
    let experiments: Api<Experiment> = Api::namespaced(client.clone(), ns.name());
    let stored = experiments
        .create(&PostParams::default(), &experiment("sentiment-ab"))
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
