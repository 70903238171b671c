//! The mirror configuration of one production InferenceService: one target per active shadow
//! that names it. The InferenceService controller writes it into production's sidecar ConfigMap
//! (key `mirror.yaml`, one writer per object); the ShadowDeployment controller reads the
//! generation that includes its shadow back from there. Pure.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use lexserve_contract::duration::parse_duration;
use lexserve_contract::mirror::{
    CONFIG_FILE, MirrorComparison, MirrorConfig, MirrorLimits, MirrorSampling, MirrorTarget,
    Redaction,
};
use lexserve_contract::router::AssignmentSource;

use super::children::candidate_name;
use super::validate::validate;
use crate::api::shadow_deployment::{MirrorSpec, ShadowPhase};
use crate::api::{InferenceService, ShadowDeployment};
use crate::config::OperatorConfig;
use crate::resources::hash::stable_hash;
use crate::resources::service::SERVICE_PORT;

/// Whether production mirrors to `shadow` now: the shadow is not being deleted and has not
/// finished, its spec is valid against production (task, labels, redaction), and its
/// candidate has a ready replica (`candidate_ready`). Pure.
pub fn is_active(
    shadow: &ShadowDeployment,
    production: &InferenceService,
    candidate_ready: bool,
) -> bool {
    shadow.metadata.deletion_timestamp.is_none()
        && shadow.spec.production == production.name_any()
        && shadow.namespace() == production.namespace()
        && !shadow
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| matches!(p, ShadowPhase::Completed | ShadowPhase::Aborted))
        && candidate_ready
        && validate(shadow, Some(production)).is_empty()
}

/// Production's mirror configuration for its `active` shadows (see [`is_active`]), in name
/// order. `running` is the configuration production's ConfigMap holds now: the generation
/// moves on only when the content changes. None when nothing is mirrored and nothing ever was,
/// so that a plain InferenceService's ConfigMap stays what it always was; once a configuration
/// was written, an empty one (with the next generation) replaces it, so that the sidecars
/// report the change. Pure.
pub fn mirror_config(
    production: &InferenceService,
    active: &[&ShadowDeployment],
    running: Option<&MirrorConfig>,
    config: &OperatorConfig,
) -> Option<MirrorConfig> {
    let namespace = production.namespace().unwrap_or_default();
    let mut shadows: Vec<&ShadowDeployment> = active.to_vec();
    shadows.sort_by_key(|s| s.name_any());
    let targets: Vec<MirrorTarget> = shadows
        .iter()
        .map(|s| mirror_target(s, &namespace, config))
        .collect();
    if targets.is_empty() && running.is_none() {
        return None;
    }
    let mut built = MirrorConfig {
        generation: 1,
        targets,
    };
    if let Some(running) = running {
        built.generation = running.generation;
        if built != *running {
            built.generation = running.generation + 1;
        }
    }
    Some(built)
}

/// One shadow's target. Pure.
pub fn mirror_target(
    shadow: &ShadowDeployment,
    namespace: &str,
    config: &OperatorConfig,
) -> MirrorTarget {
    let spec = &shadow.spec;
    let candidate = candidate_name(&shadow.name_any());
    let assignment = spec.assignment.clone().unwrap_or_default();
    let limits = spec.mirror.clone().unwrap_or_default();
    MirrorTarget {
        shadow: shadow.name_any(),
        url: format!(
            "http://{candidate}.{namespace}.svc.{}:{SERVICE_PORT}",
            config.cluster_domain
        ),
        model: candidate,
        percent: spec.mirror_percent.min(100),
        sampling: MirrorSampling {
            by: assignment.by,
            key: match assignment.by {
                AssignmentSource::Random => None,
                _ => assignment.key,
            },
            seed: assignment.seed.unwrap_or_else(|| seed(shadow)),
        },
        comparison: MirrorComparison {
            mode: spec.comparison.mode,
            tolerance: spec
                .comparison
                .tolerance
                .unwrap_or_else(|| spec.comparison.mode.default_tolerance()),
            k: spec.comparison.k,
        },
        redaction: spec
            .redaction
            .as_ref()
            .map(|r| Redaction {
                fields: r.fields.clone(),
                patterns: r.patterns.clone(),
            })
            .unwrap_or_default(),
        limits: limits_of(&limits),
    }
}

/// The sampling seed when the spec sets none: a hash of the shadow's UID (stable for its life,
/// different for every shadow).
fn seed(shadow: &ShadowDeployment) -> u64 {
    u64::from_str_radix(&stable_hash(&shadow.uid().unwrap_or_default()), 16).unwrap_or(0)
}

fn limits_of(spec: &MirrorSpec) -> MirrorLimits {
    let defaults = MirrorLimits::default();
    MirrorLimits {
        queue: spec.queue_size,
        concurrency: spec.concurrency,
        // The CRD's pattern admits only valid durations; a bad one keeps the default.
        timeout_ms: parse_duration(&spec.timeout)
            .map_or(defaults.timeout_ms, |d| d.as_millis() as u64),
    }
}

/// The mirror configuration a ConfigMap holds, if it holds a readable one.
pub fn running_mirror_config(config_map: &ConfigMap) -> Option<MirrorConfig> {
    let text = config_map.data.as_ref()?.get(CONFIG_FILE)?;
    serde_yaml::from_str(text).ok()
}

/// The generation of `config` that includes `shadow`, if it does. Pure.
pub fn generation_with(config: &MirrorConfig, shadow: &str) -> Option<u64> {
    config
        .targets
        .iter()
        .any(|t| t.shadow == shadow)
        .then_some(config.generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use lexserve_contract::mirror::ComparisonMode;
    use serde_json::json;

    fn production() -> InferenceService {
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "prod", "namespace": "ns", "uid": "p"},
            "spec": {"model": {"uri": "file:///m.onnx", "format": "onnx", "task": "embed"}}
        }))
        .expect("valid")
    }

    fn shadow(name: &str, extra: serde_json::Value) -> ShadowDeployment {
        let mut spec = json!({
            "production": "prod",
            "candidate": {"model": {"uri": "file:///c.onnx", "format": "onnx", "task": "embed"}},
            "comparison": {"mode": "Cosine"},
            "mirrorPercent": 25,
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            spec[k] = v;
        }
        serde_json::from_value(json!({
            "apiVersion": "lexserve.io/v1alpha1",
            "kind": "ShadowDeployment",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": spec,
        }))
        .expect("valid")
    }

    #[test]
    fn a_plain_inference_service_gets_no_mirror_configuration() {
        assert_eq!(
            mirror_config(&production(), &[], None, &OperatorConfig::default()),
            None
        );
    }

    #[test]
    fn a_target_carries_everything_the_sidecar_needs() {
        let s = shadow(
            "s",
            json!({
                "assignment": {"by": "header", "key": "x-user"},
                "mirror": {"queueSize": 8, "concurrency": 2, "timeout": "1500ms"},
                "redaction": {"fields": ["user.email"], "patterns": ["[0-9]{3}"]},
            }),
        );
        let config = mirror_config(&production(), &[&s], None, &OperatorConfig::default())
            .expect("a configuration");
        assert_eq!(config.generation, 1);
        let target = &config.targets[0];
        assert_eq!(target.shadow, "s");
        assert_eq!(target.url, "http://s-shadow.ns.svc.cluster.local:80");
        assert_eq!(target.model, "s-shadow");
        assert_eq!(target.percent, 25);
        assert_eq!(target.sampling.by, AssignmentSource::Header);
        assert_eq!(target.sampling.key.as_deref(), Some("x-user"));
        assert_eq!(target.sampling.seed, seed(&s));
        assert_ne!(seed(&s), seed(&shadow("t", json!({}))));
        assert_eq!(target.comparison.mode, ComparisonMode::Cosine);
        assert_eq!(target.comparison.tolerance, 1e-3);
        assert_eq!(target.redaction.fields, vec!["user.email".to_string()]);
        assert_eq!(target.redaction.patterns, vec!["[0-9]{3}".to_string()]);
        assert_eq!(
            target.limits,
            MirrorLimits {
                queue: 8,
                concurrency: 2,
                timeout_ms: 1500
            }
        );
        // Random sampling by default, the spec's seed when it sets one, its tolerance.
        let s = shadow(
            "s",
            json!({"comparison": {"mode": "Cosine", "tolerance": 0.01}}),
        );
        let target = mirror_target(&s, "ns", &OperatorConfig::default());
        assert_eq!(target.sampling.by, AssignmentSource::Random);
        assert_eq!(target.sampling.key, None);
        assert_eq!(target.comparison.tolerance, 0.01);
        assert_eq!(target.limits, MirrorLimits::default());
    }

    #[test]
    fn the_generation_moves_on_only_when_the_content_changes_and_an_emptied_one_stays() {
        let config = OperatorConfig::default();
        let (a, b) = (shadow("a", json!({})), shadow("b", json!({})));
        let first = mirror_config(&production(), &[&a], None, &config).expect("first");
        let same = mirror_config(&production(), &[&a], Some(&first), &config).expect("same");
        assert_eq!(same, first);
        let both = mirror_config(&production(), &[&b, &a], Some(&first), &config).expect("both");
        assert_eq!(both.generation, 2);
        assert_eq!(
            both.targets
                .iter()
                .map(|t| t.shadow.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(generation_with(&both, "b"), Some(2));
        let none = mirror_config(&production(), &[], Some(&both), &config).expect("emptied");
        assert_eq!(none.generation, 3);
        assert!(none.targets.is_empty());
        assert_eq!(generation_with(&none, "a"), None);
    }

    #[test]
    fn only_a_ready_valid_unfinished_shadow_of_this_production_is_active() {
        let prod = production();
        let s = shadow("s", json!({}));
        assert!(is_active(&s, &prod, true));
        assert!(!is_active(&s, &prod, false));
        let mut deleted = s.clone();
        deleted.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).expect("t")));
        assert!(!is_active(&deleted, &prod, true));
        let mut finished = s.clone();
        finished.status = Some(crate::api::ShadowDeploymentStatus {
            phase: Some(ShadowPhase::Completed),
            ..Default::default()
        });
        assert!(!is_active(&finished, &prod, true));
        let other = shadow("o", json!({"production": "other"}));
        assert!(!is_active(&other, &prod, true));
        let bad = shadow("b", json!({"redaction": {"patterns": ["("]}}));
        assert!(!is_active(&bad, &prod, true));
    }
}
