//! Applying children with server-side apply, only when they need it: a child is written when
//! it is missing, when it was built from another spec (the hash stored on it differs), or when
//! something changed a field the operator sets (drift, see [`super::drift`]). Everything else
//! is read from the watch caches, so a reconcile of an unchanged object writes nothing and
//! reads nothing from the apiserver. A write is sent only while this replica leads (see
//! [`crate::leader::Leadership`]).

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use tracing::info;

use super::Error;
use super::child::{ChildKind, DesiredChild, Rejection};
use super::context::Context;
use super::drift::{first_difference, project};
use crate::resources::hash::stable_hash;
use crate::resources::labels::{FIELD_MANAGER, SPEC_HASH_ANNOTATION};

/// Why a child is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyReason {
    /// It does not exist (or the cache has not seen it yet).
    Missing,
    /// It was built from another spec.
    Changed,
    /// Someone changed a field the operator sets; the path of the first one.
    Drifted(String),
}

/// What to do with one child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Unchanged,
    Apply(ApplyReason),
}

/// What the apiserver left different from what was built, right after an apply: its
/// normalization (a quantity written in canonical form, say), which another apply would not
/// change. Remembered so that it is not taken for drift and re-applied forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Residual {
    /// The hash of the child that was applied.
    pub hash: String,
    /// [`stable_hash`] of [`project`]ion of the applied object.
    pub projection: String,
}

/// Decides whether `desired` (carrying its hash annotation) must be applied over `live`.
pub fn decide(
    desired: &Value,
    hash: &str,
    live: Option<&Value>,
    residual: Option<&Residual>,
) -> Decision {
    let Some(live) = live else {
        return Decision::Apply(ApplyReason::Missing);
    };
    let stored = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SPEC_HASH_ANNOTATION))
        .and_then(Value::as_str);
    if stored != Some(hash) {
        return Decision::Apply(ApplyReason::Changed);
    }
    match first_difference(desired, live) {
        None => Decision::Unchanged,
        Some(_)
            if residual.is_some_and(|r| {
                r.hash == hash && r.projection == stable_hash(&project(desired, live))
            }) =>
        {
            Decision::Unchanged
        }
        Some(path) => Decision::Apply(ApplyReason::Drifted(path)),
    }
}

/// The residuals of the children whose last apply left one; few, usually none.
#[derive(Default)]
pub struct Residuals(Mutex<HashMap<(ChildKind, String, String), Residual>>);

impl Residuals {
    fn get(&self, key: &(ChildKind, String, String)) -> Option<Residual> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn set(&self, key: (ChildKind, String, String), residual: Option<Residual>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match residual {
            Some(r) => {
                map.insert(key, r);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// Forgets a child that is gone.
    pub fn forget(&self, kind: ChildKind, namespace: &str, name: &str) {
        self.set((kind, namespace.to_string(), name.to_string()), None);
    }
}

/// What applying one child came to.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Left alone; the cached object.
    Unchanged(Value),
    /// Written; the object the apiserver returned.
    Written(Value),
    /// Refused by the apiserver: invalid (422), or denied (403: a quota, an admission policy, a
    /// missing permission). The object's conditions say so, and the reconcile still fails (it
    /// retries with backoff), so that the refusal is both visible and counted.
    Rejected(Rejection),
}

impl Outcome {
    /// The child as the apiserver has it, when it does.
    pub fn live(&self) -> Option<&Value> {
        match self {
            Outcome::Unchanged(v) | Outcome::Written(v) => Some(v),
            Outcome::Rejected(_) => None,
        }
    }
}

/// Applies one child when [`decide`] says so. `controller` names the reconciling kind, for
/// the request counters.
pub async fn apply_child(
    ctx: &Context,
    controller: &'static str,
    namespace: &str,
    mut child: DesiredChild,
) -> Result<Outcome, Error> {
    let resource = child.kind.api_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource);
    if let Some(meta) = child
        .object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
    {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(
                SPEC_HASH_ANNOTATION.to_string(),
                Value::String(child.hash.clone()),
            );
        }
    }
    let live = if ctx.children.watches(child.kind) {
        ctx.children.live(child.kind, namespace, &child.name)
    } else {
        // KEDA's CRD was not there at start: no cache, so read it (a 404 is "absent").
        ctx.metrics.api_request(controller, "GET", &resource.plural);
        api.get_opt(&child.name)
            .await
            .map_err(Error::kube("get"))?
            .and_then(|o| serde_json::to_value(o).ok())
    };
    let key = (child.kind, namespace.to_string(), child.name.clone());
    let residual = ctx.residuals.get(&key);
    let reason = match decide(&child.object, &child.hash, live.as_ref(), residual.as_ref()) {
        Decision::Unchanged => return Ok(Outcome::Unchanged(live.unwrap_or_default())),
        Decision::Apply(reason) => reason,
    };
    // Force: the operator owns these fields; a conflicting manager (a person's kubectl edit)
    // is overridden, as the spec is the source of truth.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.metrics
        .api_request(controller, "APPLY", &resource.plural);
    let applied = match ctx
        .leadership
        .write(api.patch(&child.name, &params, &Patch::Apply(&child.object)))
        .await
        .map_err(Error::not_leader("apply"))?
    {
        Ok(applied) => serde_json::to_value(applied).unwrap_or_default(),
        Err(kube::Error::Api(status)) if status.code == 422 || status.code == 403 => {
            return Ok(Outcome::Rejected(Rejection {
                kind: child.kind,
                name: child.name,
                message: status.message,
            }));
        }
        Err(e) => return Err(Error::kube("apply")(e)),
    };
    if let ApplyReason::Drifted(path) = &reason {
        info!(kind = %child.kind, name = %child.name, %path, "drift corrected");
        ctx.metrics.drift_corrected(child.kind.as_str());
    }
    let residual = first_difference(&child.object, &applied).map(|_| Residual {
        hash: child.hash.clone(),
        projection: stable_hash(&project(&child.object, &applied)),
    });
    ctx.residuals.set(key, residual);
    Ok(Outcome::Written(applied))
}

/// What applying one object's children did.
pub struct AppliedChildren {
    /// Every child built this pass, as (kind, name): what the orphan sweep keeps.
    pub built: std::collections::BTreeSet<(ChildKind, String)>,
    /// The Deployment as the apiserver has it, when it does.
    pub deployment: Option<k8s_openapi::api::apps::v1::Deployment>,
    /// Children written.
    pub written: u64,
    /// Children the apiserver refused.
    pub rejected: Vec<Rejection>,
    /// The CRD of an optional child kind is missing.
    pub missing_dependency: Option<Error>,
}

impl AppliedChildren {
    /// The error the reconcile ends with after status is written, if any.
    pub fn deferred_error(self) -> Option<Error> {
        if !self.rejected.is_empty() {
            return Some(Error::ChildRejected(self.rejected));
        }
        self.missing_dependency
    }
}

/// A child kind whose CRD a cluster may lack (KEDA's ScaledObject, Gateway API's HTTPRoute), and
/// what to tell the user when it does.
pub struct OptionalKind {
    pub kind: ChildKind,
    pub missing: &'static str,
}

/// Applies every child that is missing, changed or drifted. A child the apiserver rejects does
/// not stop the others, nor does a child of `optional`'s kind whose CRD the cluster lacks (that
/// becomes `missing_dependency`, with `optional.missing` as the message); any other failure ends
/// the apply.
pub async fn apply_children(
    ctx: &Context,
    kind: &'static str,
    namespace: &str,
    desired: Vec<DesiredChild>,
    optional: Option<&OptionalKind>,
) -> Result<AppliedChildren, Error> {
    let mut applied = AppliedChildren {
        built: std::collections::BTreeSet::new(),
        deployment: None,
        written: 0,
        rejected: Vec::new(),
        missing_dependency: None,
    };
    for child in desired {
        let child_kind = child.kind;
        applied.built.insert((child_kind, child.name.clone()));
        let outcome = match apply_child(ctx, kind, namespace, child).await {
            Err(Error::Kube {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 404 && optional.is_some_and(|o| o.kind == child_kind) => {
                let message = optional.map_or("", |o| o.missing);
                applied.missing_dependency = Some(Error::MissingDependency(message.to_string()));
                continue;
            }
            other => other?,
        };
        match outcome {
            Outcome::Rejected(rejection) => applied.rejected.push(rejection),
            outcome => {
                applied.written += u64::from(matches!(outcome, Outcome::Written(_)));
                if child_kind == ChildKind::Deployment {
                    applied.deployment = outcome
                        .live()
                        .and_then(|v| serde_json::from_value(v.clone()).ok());
                }
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn built(image: &str) -> Value {
        json!({
            "metadata": {"name": "m", "annotations": {SPEC_HASH_ANNOTATION: "h1"}},
            "spec": {"image": image, "cpu": "0.5"}
        })
    }

    #[test]
    fn missing_changed_drifted_unchanged() {
        let desired = built("a:1");
        assert_eq!(
            decide(&desired, "h1", None, None),
            Decision::Apply(ApplyReason::Missing)
        );
        let mut old = built("a:0");
        old["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = json!("h0");
        assert_eq!(
            decide(&desired, "h1", Some(&old), None),
            Decision::Apply(ApplyReason::Changed)
        );
        let mut edited = built("evil:1");
        edited["metadata"]["resourceVersion"] = json!("7");
        assert_eq!(
            decide(&desired, "h1", Some(&edited), None),
            Decision::Apply(ApplyReason::Drifted("spec.image".to_string()))
        );
        let mut same = built("a:1");
        same["status"] = json!({"ready": true});
        assert_eq!(
            decide(&desired, "h1", Some(&same), None),
            Decision::Unchanged
        );
    }

    #[test]
    fn a_normalization_the_apply_left_is_not_drift_but_a_later_edit_is() {
        let desired = built("a:1");
        // The apiserver answered with a form the comparison does not know as equal.
        let mut served = built("a:1");
        served["spec"]["cpu"] = json!("half a core");
        let residual = Residual {
            hash: "h1".to_string(),
            projection: stable_hash(&project(&desired, &served)),
        };
        assert_eq!(
            decide(&desired, "h1", Some(&served), Some(&residual)),
            Decision::Unchanged
        );
        let mut edited = served.clone();
        edited["spec"]["image"] = json!("evil:1");
        assert!(matches!(
            decide(&desired, "h1", Some(&edited), Some(&residual)),
            Decision::Apply(ApplyReason::Drifted(_))
        ));
        // A residual of another spec does not count.
        let stale = Residual {
            hash: "h0".to_string(),
            ..residual
        };
        assert!(matches!(
            decide(&desired, "h1", Some(&served), Some(&stale)),
            Decision::Apply(ApplyReason::Drifted(_))
        ));
    }
}
