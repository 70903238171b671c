//! The children of an Experiment with `routing.provider: router`, as pure builders: the router's
//! ConfigMap (`router.yaml`), one Service per variant (`<experiment>-<variant>`, selecting that
//! variant's model pods: the router's upstreams), the router's Deployment and Service, and its
//! autoscaler.
//!
//! The router pods carry the model-server labels of a service named `<experiment>-router`:
//! the scrape configs (`deploy/prometheus`) and the load signal select model-server pods, so
//! this is what puts the router's series in Prometheus and lets it scale on the same signal
//! as an InferenceService.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DynamicObject, ObjectMeta};
use kube::{Resource, ResourceExt};
use lexserve_contract::names::{command, drain, flag, http, path};
use lexserve_contract::router::{
    BucketError, BucketTable, CONFIG_FILE, RouterAssignment, RouterConfig, RouterVariant,
};

use crate::api::Experiment;
use crate::api::inference_service::{ScalingProvider, ScalingSpec};
use crate::config::OperatorConfig;
use crate::resources::deployment::{
    HTTP_PORT, RUN_AS_USER, liveness_probe, readiness_probe, restricted_security_context,
};
use crate::resources::hash::stable_hash;
use crate::resources::labels::{FIELD_MANAGER, MANAGED_BY_LABEL, selector_labels};
use crate::resources::service::SERVICE_PORT;

/// The label naming the Experiment a child belongs to.
pub use crate::resources::http_route::EXPERIMENT_LABEL;

/// The name of the router's Deployment, Service, ConfigMap and autoscaler, and the
/// `inference_service` its series carry.
pub fn router_name(experiment: &str) -> String {
    format!("{experiment}-router")
}

/// The Service of one variant, which only the router uses.
pub fn variant_service_name(experiment: &str, variant: &str) -> String {
    format!("{experiment}-{variant}")
}

/// The labels that select the router's pods: what the control's Service selects while the
/// experiment holds it.
pub fn router_selector_labels(experiment: &str) -> BTreeMap<String, String> {
    selector_labels(&router_name(experiment))
}

/// Metadata of every child: the experiment's labels and an owner reference (controller = true)
/// so that deleting the Experiment garbage-collects them.
fn child_meta(experiment: &Experiment, name: String) -> ObjectMeta {
    let mut labels = BTreeMap::from([
        (EXPERIMENT_LABEL.to_string(), experiment.name_any()),
        (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
        (
            "app.kubernetes.io/name".to_string(),
            "lexserve-router".to_string(),
        ),
    ]);
    if name == router_name(&experiment.name_any()) {
        labels.extend(router_selector_labels(&experiment.name_any()));
    }
    ObjectMeta {
        name: Some(name),
        namespace: experiment.namespace(),
        labels: Some(labels),
        owner_references: experiment.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// The assignment seed: the spec's, else a hash of the experiment's UID (stable for its life,
/// different for every experiment).
pub fn seed(experiment: &Experiment) -> u64 {
    experiment.spec.assignment.seed.unwrap_or_else(|| {
        u64::from_str_radix(&stable_hash(&experiment.uid().unwrap_or_default()), 16).unwrap_or(0)
    })
}

/// The router's configuration for `weights` (variant order, the control first). The bucket
/// table is rebalanced from the one the router runs (`running`), so that a weight change moves
/// as few users as possible; the generation moves on only when the content changes. Pure.
pub fn build_router_config(
    experiment: &Experiment,
    weights: &[(String, u32)],
    running: Option<&RouterConfig>,
    config: &OperatorConfig,
) -> Result<RouterConfig, BucketError> {
    let name = experiment.name_any();
    let namespace = experiment.namespace().unwrap_or_default();
    let spec = &experiment.spec;
    let buckets = match running {
        Some(running) => running.buckets.rebalance(weights)?,
        None => BucketTable::initial(weights)?,
    };
    let variants = ordered_variants(experiment)
        .into_iter()
        .map(|v| RouterVariant {
            name: v.name.clone(),
            url: format!(
                "http://{}.{namespace}.svc.{}:{SERVICE_PORT}",
                variant_service_name(&name, &v.name),
                config.cluster_domain
            ),
            model: v.inference_service.clone(),
            weight: weights
                .iter()
                .find(|(n, _)| *n == v.name)
                .map_or(0, |(_, w)| *w),
        })
        .collect();
    let mut built = RouterConfig {
        experiment: name,
        generation: 1,
        model: spec.control.clone(),
        assignment: RouterAssignment {
            by: spec.assignment.by,
            key: spec.assignment.key.clone(),
            seed: seed(experiment),
        },
        variants,
        buckets,
        outcomes: spec
            .metrics
            .iter()
            .filter_map(|m| m.source.builtin.clone())
            .collect(),
    };
    if let Some(running) = running {
        built.generation = running.generation;
        if built != *running {
            built.generation = running.generation + 1;
        }
    }
    Ok(built)
}

/// The variants, the control first (the router's and the bucket table's order).
pub fn ordered_variants(experiment: &Experiment) -> Vec<&crate::api::experiment::Variant> {
    let spec = &experiment.spec;
    let mut variants: Vec<_> = spec.variants.iter().collect();
    variants.sort_by_key(|v| v.inference_service != spec.control);
    variants
}

/// The router configuration a ConfigMap holds, if it holds a readable one.
pub fn running_config(config_map: &ConfigMap) -> Option<RouterConfig> {
    let text = config_map.data.as_ref()?.get(CONFIG_FILE)?;
    serde_yaml::from_str(text).ok()
}

/// The router's ConfigMap.
pub fn build_config_map(experiment: &Experiment, router: &RouterConfig) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(experiment, router_name(&experiment.name_any())),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            serde_yaml::to_string(router).unwrap_or_default(),
        )])),
        ..Default::default()
    }
}

fn http_service(meta: ObjectMeta, selector: BTreeMap<String, String>) -> Service {
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(http::PORT_NAME.to_string()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String(http::PORT_NAME.to_string())),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One Service per variant, selecting that variant's model pods: the router's upstreams (the
/// control's own Service points at the router, so it cannot reach the control).
pub fn build_variant_services(experiment: &Experiment) -> Vec<Service> {
    let name = experiment.name_any();
    ordered_variants(experiment)
        .into_iter()
        .map(|v| {
            http_service(
                child_meta(experiment, variant_service_name(&name, &v.name)),
                selector_labels(&v.inference_service),
            )
        })
        .collect()
}

/// The router's own Service (for clients that address the router directly, and the scrape).
pub fn build_router_service(experiment: &Experiment) -> Service {
    let name = experiment.name_any();
    http_service(
        child_meta(experiment, router_name(&name)),
        router_selector_labels(&name),
    )
}

/// The router's Deployment: `lexserve-sidecar route` from the sidecar image, with a model
/// server's probes and drain. `replicas` is None when an autoscaler owns them.
pub fn build_router_deployment(
    experiment: &Experiment,
    image: &str,
    replicas: Option<i32>,
) -> Deployment {
    let name = router_name(&experiment.name_any());
    let mut pod_labels = router_selector_labels(&experiment.name_any());
    pod_labels.insert(EXPERIMENT_LABEL.to_string(), experiment.name_any());
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
        (
            "prometheus.io/path".to_string(),
            http::METRICS_PATH.to_string(),
        ),
    ]);
    let container = Container {
        name: "router".to_string(),
        image: Some(image.to_string()),
        args: Some(vec![
            command::ROUTE.to_string(),
            flag::arg(flag::CONFIG),
            format!("{}/{CONFIG_FILE}", path::CONFIG_DIR),
            flag::arg(flag::LISTEN),
            http::default_listen(),
        ]),
        env: Some(vec![EnvVar {
            name: "LEXSERVE_DRAIN_TIMEOUT".to_string(),
            value: Some(drain::DRAIN_TIMEOUT_TEXT.to_string()),
            ..Default::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some(http::PORT_NAME.to_string()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        // Forwarding is light work: requests sized for a proxy, limits that leave room for
        // bursts of streamed responses.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("250m".to_string())),
                ("memory".to_string(), Quantity("128Mi".to_string())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("512Mi".to_string()),
            )])),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "config".to_string(),
            mount_path: path::CONFIG_DIR.to_string(),
            read_only: Some(true),
            ..Default::default()
        }]),
        readiness_probe: Some(readiness_probe()),
        liveness_probe: Some(liveness_probe()),
        security_context: Some(restricted_security_context()),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(experiment, name.clone()),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "config".to_string(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: name.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    automount_service_account_token: Some(false),
                    // The router drains like a model server: in-flight (streamed) answers
                    // finish before it exits.
                    termination_grace_period_seconds: Some(drain::termination_grace_seconds(
                        std::time::Duration::ZERO,
                    )),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The router's autoscaler, following the control's scaling: the router carries the control's
/// traffic, so it scales between the same bounds on the same signal (waiting plus running
/// requests per replica, which the router exports like a model server). `None` for a control
/// that does not autoscale (the router then runs the control's fixed replica count).
pub fn build_router_autoscaler(
    experiment: &Experiment,
    scaling: Option<&ScalingSpec>,
    config: &OperatorConfig,
) -> RouterAutoscaler {
    let name = router_name(&experiment.name_any());
    let namespace = experiment.namespace().unwrap_or_default();
    let Some(scaling) = scaling else {
        return RouterAutoscaler::Fixed(1);
    };
    let max = scaling
        .max_replicas
        .unwrap_or(scaling.min_replicas)
        .max(scaling.min_replicas);
    match scaling.provider {
        ScalingProvider::None => RouterAutoscaler::Fixed(scaling.min_replicas.max(1) as i32),
        ScalingProvider::Hpa => {
            use crate::resources::hpa;
            RouterAutoscaler::Hpa(Box::new(hpa::build_hpa_for(
                &name,
                child_meta(experiment, name.clone()),
                scaling,
                max,
            )))
        }
        ScalingProvider::Keda => {
            use crate::resources::scaled_object;
            RouterAutoscaler::Keda(Box::new(scaled_object::build_scaled_object_for(
                &name,
                &namespace,
                child_meta(experiment, name.clone()),
                scaling,
                max,
                config,
            )))
        }
    }
}

/// What sets the router's replica count.
#[derive(Clone, Debug)]
pub enum RouterAutoscaler {
    Fixed(i32),
    Hpa(Box<HorizontalPodAutoscaler>),
    Keda(Box<DynamicObject>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn experiment(weights: &[(&str, &str, u32)]) -> Experiment {
        let variants: Vec<_> = weights
            .iter()
            .map(|(n, s, w)| json!({"name": n, "inferenceService": s, "weight": w}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": "exp", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": {
                "control": "a",
                "variants": variants,
                "assignment": {"by": "header", "key": "x-user"},
                "metrics": [{"name": "converted", "kind": "Proportion", "role": "Primary",
                             "source": {"builtin": "converted"}}],
            }
        }))
        .expect("valid experiment")
    }

    #[test]
    fn the_first_config_puts_the_control_first_and_counts_builtin_outcomes() {
        let exp = experiment(&[("b", "model-b", 50), ("a", "a", 50)]);
        let weights = vec![("a".to_string(), 50), ("b".to_string(), 50)];
        let config =
            build_router_config(&exp, &weights, None, &OperatorConfig::default()).expect("config");
        assert_eq!(config.generation, 1);
        assert_eq!(config.model, "a");
        assert_eq!(config.variants[0].name, "a");
        assert_eq!(config.variants[1].model, "model-b");
        assert_eq!(
            config.variants[1].url,
            "http://exp-b.ns.svc.cluster.local:80"
        );
        assert_eq!(config.outcomes, vec!["converted".to_string()]);
        assert_eq!(config.buckets.count("a"), 5000);
        assert_eq!(config.assignment.seed, seed(&exp));
    }

    #[test]
    fn generation_moves_only_when_the_content_changes_and_buckets_move_minimally() {
        let exp = experiment(&[("a", "a", 50), ("b", "b", 50)]);
        let even = vec![("a".to_string(), 50), ("b".to_string(), 50)];
        let first =
            build_router_config(&exp, &even, None, &OperatorConfig::default()).expect("config");
        let same = build_router_config(&exp, &even, Some(&first), &OperatorConfig::default())
            .expect("config");
        assert_eq!(same, first);
        let promoted = vec![("a".to_string(), 0), ("b".to_string(), 1)];
        let moved = build_router_config(&exp, &promoted, Some(&first), &OperatorConfig::default())
            .expect("config");
        assert_eq!(moved.generation, 2);
        assert_eq!(moved.buckets.count("b"), 10_000);
        // What b owned stays b's.
        for bucket in 0..10_000u16 {
            if first.buckets.owner(bucket) == Some("b") {
                assert_eq!(moved.buckets.owner(bucket), Some("b"));
            }
        }
    }

    #[test]
    fn the_config_map_round_trips_through_running_config() {
        let exp = experiment(&[("a", "a", 1), ("b", "b", 3)]);
        let weights = vec![("a".to_string(), 1), ("b".to_string(), 3)];
        let config =
            build_router_config(&exp, &weights, None, &OperatorConfig::default()).expect("config");
        let cm = build_config_map(&exp, &config);
        assert_eq!(running_config(&cm), Some(config));
        assert_eq!(cm.metadata.name.as_deref(), Some("exp-router"));
        assert_eq!(
            cm.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].uid.as_str()),
            Some("u-1")
        );
    }

    #[test]
    fn variant_services_select_the_variant_pods_and_the_router_runs_route() {
        let exp = experiment(&[("a", "a", 1), ("b", "model-b", 1)]);
        let services = build_variant_services(&exp);
        let selector = services[1].spec.as_ref().and_then(|s| s.selector.clone());
        assert_eq!(services[1].metadata.name.as_deref(), Some("exp-b"));
        assert_eq!(selector, Some(selector_labels("model-b")));
        let deployment = build_router_deployment(&exp, "img", Some(2));
        let pod = deployment.spec.as_ref().expect("spec").template.clone();
        let labels = pod.metadata.and_then(|m| m.labels).unwrap_or_default();
        for (k, v) in router_selector_labels("exp") {
            assert_eq!(labels.get(&k), Some(&v));
        }
        let args = pod.spec.expect("pod").containers[0]
            .args
            .clone()
            .unwrap_or_default();
        assert_eq!(args[0], "route");
        assert!(args.contains(&"/etc/lexserve/router.yaml".to_string()));
    }
}
