//! Children the object owns but no longer builds: a renamed child, an autoscaler after a
//! switch of provider, a PDB after a scale-down to one replica. Found among the cached
//! children (owner reference and managed-by label, never by a fixed name) and deleted.

use std::collections::BTreeSet;

use kube::api::{Api, DeleteParams, DynamicObject, Preconditions};
use tracing::info;

use super::Error;
use super::cache::CachedChild;
use super::child::ChildKind;
use super::context::Context;
use crate::resources::labels::{FIELD_MANAGER, MANAGED_BY_LABEL};

/// The children among `candidates` that `owner_uid` controls, that carry the managed-by
/// label, and that are not in `built`. Pure.
pub fn orphans(
    built: &BTreeSet<(ChildKind, String)>,
    candidates: Vec<CachedChild>,
    owner_uid: &str,
) -> Vec<CachedChild> {
    candidates
        .into_iter()
        .filter(|c| {
            let controlled = c
                .meta
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == owner_uid && r.controller == Some(true));
            let managed = c
                .meta
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_some_and(|v| v == FIELD_MANAGER);
            let name = c.meta.name.clone().unwrap_or_default();
            controlled && managed && !built.contains(&(c.kind, name))
        })
        .collect()
}

/// Deletes the orphans; returns how many were deleted. The uid precondition keeps a child of
/// the same name that was made meanwhile from being deleted in its place.
pub async fn sweep(
    ctx: &Context,
    controller: &'static str,
    orphans: Vec<CachedChild>,
) -> Result<u64, Error> {
    let mut deleted = 0;
    for orphan in orphans {
        let (Some(namespace), Some(name)) = (
            orphan.meta.namespace.as_deref(),
            orphan.meta.name.as_deref(),
        ) else {
            continue;
        };
        let resource = orphan.kind.api_resource();
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &resource);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: orphan.meta.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        ctx.metrics
            .api_request(controller, "DELETE", &resource.plural);
        let deleted_now = ctx
            .leadership
            .write(api.delete(name, &params))
            .await
            .map_err(Error::not_leader("delete orphan"))?;
        match deleted_now {
            Ok(_) => {
                info!(kind = %orphan.kind, %name, "orphan deleted");
                ctx.residuals.forget(orphan.kind, namespace, name);
                deleted += 1;
            }
            // Gone already, or replaced by another object of that name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(Error::kube("delete orphan")(e)),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn child(kind: ChildKind, name: &str, owner: &str, managed: bool) -> CachedChild {
        CachedChild {
            kind,
            meta: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some("ns".to_string()),
                owner_references: Some(vec![OwnerReference {
                    uid: owner.to_string(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                labels: managed.then(|| {
                    BTreeMap::from([(MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string())])
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn only_owned_labelled_unbuilt_children_are_orphans() {
        let built = BTreeSet::from([
            (ChildKind::Deployment, "m".to_string()),
            (ChildKind::ConfigMap, "m-sidecar".to_string()),
        ]);
        let candidates = vec![
            child(ChildKind::Deployment, "m", "u1", true),
            child(ChildKind::ConfigMap, "m-sidecar", "u1", true),
            // Renamed: the old name is no longer built.
            child(ChildKind::ConfigMap, "m-config", "u1", true),
            // The same name as a built child, but of another kind.
            child(ChildKind::HorizontalPodAutoscaler, "m", "u1", true),
            // Someone else's, or not labelled as ours.
            child(ChildKind::ConfigMap, "other", "u2", true),
            child(ChildKind::ConfigMap, "unlabelled", "u1", false),
        ];
        let names: Vec<_> = orphans(&built, candidates, "u1")
            .into_iter()
            .map(|c| (c.kind, c.meta.name.unwrap_or_default()))
            .collect();
        assert_eq!(
            names,
            vec![
                (ChildKind::ConfigMap, "m-config".to_string()),
                (ChildKind::HorizontalPodAutoscaler, "m".to_string()),
            ]
        );
    }
}
