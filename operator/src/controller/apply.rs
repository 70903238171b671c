//! Applying children with server-side apply, but only when they changed: the desired object's
//! hash is stored on the child, and a child whose stored hash matches is left alone, so a
//! reconcile of an unchanged InferenceService writes nothing.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use crate::resources::hash::stable_hash;
use crate::resources::labels::{FIELD_MANAGER, SPEC_HASH_ANNOTATION};

/// What [`apply_if_changed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Unchanged,
    Written,
}

/// Applies `desired` unless the live child already carries its hash. Returns what was done and
/// the child as the apiserver has it now (the live one, or the one the apply returned), so the
/// caller needs no second read.
pub async fn apply_if_changed<K>(api: &Api<K>, mut desired: K) -> Result<(Applied, K), Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.name_any();
    let hash = stable_hash(&desired);
    if let Some(live) = api.get_opt(&name).await.map_err(Error::kube("get"))?
        && live.annotations().get(SPEC_HASH_ANNOTATION) == Some(&hash)
    {
        return Ok((Applied::Unchanged, live));
    }
    desired
        .annotations_mut()
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash);
    // Force: the operator owns these fields; a conflicting manager (a person's kubectl edit)
    // is overridden, as the spec is the source of truth.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(&desired))
        .await
        .map_err(Error::kube("apply"))?;
    Ok((Applied::Written, applied))
}

/// Deletes a child that is no longer wanted, if it exists and the given owner controls it
/// (an object of the same name that someone else made is left alone).
pub async fn delete_if_owned<K>(api: &Api<K>, name: &str, owner_uid: &str) -> Result<bool, Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let Some(live) = api.get_opt(name).await.map_err(Error::kube("get"))? else {
        return Ok(false);
    };
    let owned = live
        .owner_references()
        .iter()
        .any(|r| r.uid == owner_uid && r.controller == Some(true));
    if !owned {
        return Ok(false);
    }
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(Error::kube("delete")(e)),
    }
}
