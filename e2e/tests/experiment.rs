//! Experiments on the local control plane, with the operator as a process: the control's
//! Service moves to the router while the experiment runs, stays there through an operator
//! restart (the state lives in the cluster), and comes back to the control when the
//! Experiment is deleted.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TIMEOUT, create, embedder, install_crds, isvc, scene};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, PostParams};
use lexserve_e2e::operator::{OperatorOptions, OperatorProcess};
use lexserve_e2e::request_counts::counter;
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::api::Experiment;
use lexserve_operator::api::experiment::ExperimentPhase;
use lexserve_operator::controller::experiment::children::router_selector_labels;
use lexserve_operator::resources::labels::selector_labels;
use serde_json::json;

fn experiment(name: &str, control: &str, treatment: &str) -> Experiment {
    serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "control": control,
            "variants": [
                {"name": "control", "inferenceService": control, "weight": 50},
                {"name": "treatment", "inferenceService": treatment, "weight": 50},
            ],
            "assignment": {"by": "header", "key": "x-user"},
            "metrics": [{"name": "converted", "kind": "Proportion", "role": "Primary",
                         "source": {"builtin": "converted"}}],
            "analysis": {"interval": "5s"},
        }
    }))
    .expect("valid Experiment")
}

async fn selector_of(
    services: &Api<Service>,
    name: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(services
        .get(name)
        .await?
        .spec
        .and_then(|s| s.selector)
        .unwrap_or_default())
}

async fn wait_selector(
    services: &Api<Service>,
    name: &str,
    want: &BTreeMap<String, String>,
) -> Service {
    wait::until(
        &format!("Service {name} selecting {want:?}"),
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let Some(service) = services.get_opt(name).await? else {
                return Ok(Poll::pending("no Service yet"));
            };
            let selector = service
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            Ok(if selector == *want {
                Poll::Ready(service)
            } else {
                Poll::pending(format!("{selector:?}"))
            })
        },
    )
    .await
    .expect("selector")
}

#[tokio::test]
async fn the_control_service_moves_to_the_router_survives_a_restart_and_returns_on_delete() {
    let cluster = lexserve_e2e::shared_cluster().await.expect("cluster");
    install_crds(cluster).await.expect("CRDs");
    let scene = scene(cluster, "exp-route").await;
    let ns = scene.ns.to_string();
    let options = OperatorOptions {
        identity: "exp-first".to_string(),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    let mut operator = OperatorProcess::start(cluster, options.clone())
        .await
        .expect("operator");
    for name in ["a", "b"] {
        create(&scene.api, &isvc(name, embedder(1)))
            .await
            .expect("InferenceService");
    }
    let services: Api<Service> = Api::namespaced(scene.client.clone(), &ns);
    wait_selector(&services, "a", &selector_labels("a")).await;

    let experiments: Api<Experiment> = Api::namespaced(scene.client.clone(), &ns);
    experiments
        .create(&PostParams::default(), &experiment("exp", "a", "b"))
        .await
        .expect("Experiment admitted");
    let held = wait_selector(&services, "a", &router_selector_labels("exp")).await;

    // The router's children exist: its configuration, its Deployment, one Service per variant
    // selecting that variant's pods.
    let config_maps: Api<ConfigMap> = Api::namespaced(scene.client.clone(), &ns);
    let router_yaml = config_maps
        .get("exp-router")
        .await
        .expect("router ConfigMap")
        .data
        .and_then(|d| d.get("router.yaml").cloned())
        .expect("router.yaml");
    let router: lexserve_contract::router::RouterConfig =
        serde_yaml::from_str(&router_yaml).expect("a RouterConfig");
    assert_eq!(router.generation, 1);
    assert_eq!(router.model, "a");
    assert_eq!(router.buckets.count("control"), 5000);
    Api::<Deployment>::namespaced(scene.client.clone(), &ns)
        .get("exp-router")
        .await
        .expect("router Deployment");
    assert_eq!(
        selector_of(&services, "exp-treatment")
            .await
            .expect("variant Service"),
        selector_labels("b")
    );
    let status = wait::until(
        "Experiment Running",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let e = experiments.get("exp").await?;
            let status = e.status.unwrap_or_default();
            Ok(if status.phase == Some(ExperimentPhase::Running) {
                Poll::Ready(status)
            } else {
                Poll::pending(format!("{:?}", status.phase))
            })
        },
    )
    .await
    .expect("running");
    assert!(status.start_time.is_some());
    assert_eq!(
        status.routing.as_ref().and_then(|r| r.config_generation),
        Some(1)
    );

    // Killed and started again, the operator finds the experiment running and leaves the
    // Service where it is: not a single write to it.
    operator.kill();
    let operator = OperatorProcess::start(
        cluster,
        OperatorOptions {
            identity: "exp-second".to_string(),
            ..options
        },
    )
    .await
    .expect("operator restarts");
    wait::until(
        "the new operator reconciled both kinds",
        TIMEOUT,
        Duration::from_millis(200),
        || async {
            let metrics = operator.metrics().await?;
            let name = "lexserve_operator_reconciliations_total";
            let isvcs = counter(&metrics, name, "InferenceService");
            let exps = counter(&metrics, name, "\"Experiment\"");
            Ok(if isvcs >= 2.0 && exps >= 1.0 {
                Poll::Ready(())
            } else {
                Poll::pending(format!("{isvcs} InferenceService, {exps} Experiment"))
            })
        },
    )
    .await
    .expect("reconciled after restart");
    let after = services.get("a").await.expect("Service a");
    assert_eq!(
        after.metadata.resource_version, held.metadata.resource_version,
        "the restart rewrote the control's Service"
    );
    assert_eq!(
        after.spec.and_then(|s| s.selector).unwrap_or_default(),
        router_selector_labels("exp")
    );

    // Deleted mid-run, the experiment gives the control its Service back.
    experiments
        .delete("exp", &DeleteParams::default())
        .await
        .expect("delete");
    wait_selector(&services, "a", &selector_labels("a")).await;
}
