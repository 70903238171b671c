//! The Gateway API HTTPRoute of an Experiment with `routing.provider: gatewayAPI`: the gateway
//! splits requests between the variants' Services by weight. Unlike the router, a gateway assigns
//! each request independently (no user sticks to a variant) and counts no outcomes; the status
//! says so ([`GATEWAY_API_ROUTING_MESSAGE`]).

use std::collections::BTreeMap;

use kube::Resource;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta};
use serde_json::{Value, json};

use super::labels::{FIELD_MANAGER, MANAGED_BY_LABEL};
use super::service::{SERVICE_PORT, service_name};
use crate::api::Experiment;
use crate::api::experiment::GatewayApiRouting;

/// The label naming the Experiment that owns a child.
pub const EXPERIMENT_LABEL: &str = "lexserve.io/experiment";

/// What `status.routing.message` says for `gatewayAPI`.
pub const GATEWAY_API_ROUTING_MESSAGE: &str = "traffic is split by the gateway's HTTPRoute: \
     each request is assigned independently (a user is not kept on one variant), and outcomes \
     reported to /outcome are not counted (that needs provider router); only metrics with a \
     prometheus source can be analysed";

/// Gateway API's HTTPRoute kind (the standard channel's v1).
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The HTTPRoute's name: the Experiment's.
pub fn http_route_name(experiment_name: &str) -> String {
    experiment_name.to_string()
}

/// Builds the HTTPRoute that splits traffic between the variants' Services. `weights` are the
/// weights in force, by variant name (the spec's while running; the winner's or the control's
/// alone after a decision); a variant missing from it gets weight 0.
pub fn build_http_route(
    experiment: &Experiment,
    routing: &GatewayApiRouting,
    weights: &BTreeMap<String, u32>,
) -> DynamicObject {
    let name = experiment.metadata.name.clone().unwrap_or_default();
    let resource = http_route_resource();
    let mut object = DynamicObject::new(&http_route_name(&name), &resource);
    object.metadata = ObjectMeta {
        name: Some(http_route_name(&name)),
        namespace: experiment.metadata.namespace.clone(),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
            (EXPERIMENT_LABEL.to_string(), name.clone()),
        ])),
        owner_references: experiment.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    };
    let parent_refs: Vec<Value> = routing
        .parent_refs
        .iter()
        .map(|parent| {
            let mut reference = json!({
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": parent.name,
            });
            if let Some(namespace) = &parent.namespace {
                reference["namespace"] = json!(namespace);
            }
            if let Some(section) = &parent.section_name {
                reference["sectionName"] = json!(section);
            }
            reference
        })
        .collect();
    let backend_refs: Vec<Value> = experiment
        .spec
        .variants
        .iter()
        .map(|variant| {
            json!({
                "group": "",
                "kind": "Service",
                "name": service_name(&variant.inference_service),
                "port": SERVICE_PORT,
                "weight": weights.get(&variant.name).copied().unwrap_or(0),
            })
        })
        .collect();
    let mut spec = json!({
        "parentRefs": parent_refs,
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": backend_refs,
        }],
    });
    if !routing.hostnames.is_empty() {
        spec["hostnames"] = json!(routing.hostnames);
    }
    object.data = json!({ "spec": spec });
    object
}

/// The weights of the spec, by variant name.
pub fn spec_weights(experiment: &Experiment) -> BTreeMap<String, u32> {
    experiment
        .spec
        .variants
        .iter()
        .map(|v| (v.name.clone(), v.weight))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::experiment::GatewayParentRef;

    fn experiment() -> Experiment {
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "sentiment-ab", "namespace": "team-a", "uid": "u-1"},
            "spec": {
                "control": "sentiment-a",
                "variants": [
                    {"name": "control", "inferenceService": "sentiment-a", "weight": 80},
                    {"name": "candidate", "inferenceService": "sentiment-b", "weight": 20},
                ],
                "metrics": [{
                    "name": "accuracy", "kind": "Proportion", "role": "Primary",
                    "source": {"prometheus": {"count": "c{v=\"{{variant}}\"}", "sum": "s{v=\"{{variant}}\"}"}},
                }],
                "routing": {"provider": "gatewayAPI", "gatewayAPI": {
                    "parentRefs": [{"name": "edge", "namespace": "gateways", "sectionName": "https"}],
                    "hostnames": ["sentiment.example.com"],
                }},
            },
        }))
        .unwrap()
    }

    fn routing() -> GatewayApiRouting {
        GatewayApiRouting {
            parent_refs: vec![GatewayParentRef {
                name: "edge".into(),
                namespace: Some("gateways".into()),
                section_name: Some("https".into()),
            }],
            hostnames: vec!["sentiment.example.com".into()],
        }
    }

    #[test]
    fn one_weighted_backend_per_variant_service_owned_by_the_experiment() {
        let exp = experiment();
        let route = build_http_route(&exp, &routing(), &spec_weights(&exp));
        assert_eq!(route.metadata.name.as_deref(), Some("sentiment-ab"));
        assert_eq!(route.metadata.namespace.as_deref(), Some("team-a"));
        let owner = &route.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Experiment", Some(true))
        );
        let backends = &route.data["spec"]["rules"][0]["backendRefs"];
        assert_eq!(backends[0]["name"], "sentiment-a");
        assert_eq!(backends[0]["weight"], 80);
        assert_eq!(backends[1]["name"], "sentiment-b");
        assert_eq!(backends[1]["weight"], 20);
        assert_eq!(backends[1]["port"], SERVICE_PORT);
        let parent = &route.data["spec"]["parentRefs"][0];
        assert_eq!(
            (
                &parent["name"],
                &parent["namespace"],
                &parent["sectionName"]
            ),
            (&json!("edge"), &json!("gateways"), &json!("https"))
        );
        assert_eq!(route.data["spec"]["hostnames"][0], "sentiment.example.com");
    }

    #[test]
    fn a_decision_moves_every_weight_to_one_variant() {
        let exp = experiment();
        let winner_only = BTreeMap::from([("candidate".to_string(), 1)]);
        let route = build_http_route(&exp, &routing(), &winner_only);
        let backends = &route.data["spec"]["rules"][0]["backendRefs"];
        assert_eq!(backends[0]["weight"], 0, "the control gets nothing");
        assert_eq!(backends[1]["weight"], 1);
    }
}
