//! What each fetched artifact (the model, its tokenizer) is pinned to, both ways round: read from
//! the fetch init containers' reports into `status.model`, and from there into every later pod's
//! fetch (`--revision`).
//!
//! The first pod that fetches a remote URI decides what `main` (or an S3 object) is; the operator
//! records it and the Deployment's fetch carries it from then on, so replicas started later, on
//! other nodes, after a push, serve the same bytes. Recording it changes the pod template once,
//! which rolls the pods that fetched before the pin onto it: replicas that raced on the first
//! fetch end up on one revision, not left on whatever each resolved.
//!
//! A record belongs to what the spec asked for: another URI, or an expected digest it does not
//! have, and it is dropped, so the next fetch resolves again. Pure.

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use lexserve_contract::fetch_report::FetchReport;
use lexserve_contract::names::flag;

use crate::api::inference_service::{ModelSpec, ResolvedArtifact, ResolvedModel};
use lexserve_contract::DraftModelSpec;

/// The fetch init container of the model.
pub const FETCH_MODEL_CONTAINER: &str = "fetch-model";
/// The fetch init container of a tokenizer kept apart from the model.
pub const FETCH_TOKENIZER_CONTAINER: &str = "fetch-tokenizer";
/// The fetch init container of the draft model (speculation mode `draft`). Not pinned: what the
/// draft is changes only the speed, never an answer (every token is sampled from the model's own
/// logits), so replicas on different draft revisions still answer alike.
pub const FETCH_DRAFT_CONTAINER: &str = "fetch-draft-model";

/// One artifact as the spec asks for it.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    pub container: &'a str,
    pub uri: &'a str,
    /// The digest the spec pins, if any.
    pub sha256: Option<&'a str>,
}

/// The model and, when it lives elsewhere, the tokenizer, as `spec.model` asks for them.
pub fn wanted(model: &ModelSpec) -> (Wanted<'_>, Option<Wanted<'_>>) {
    (
        Wanted {
            container: FETCH_MODEL_CONTAINER,
            uri: &model.uri,
            sha256: model.sha256.as_deref(),
        },
        model.tokenizer.as_deref().map(|uri| Wanted {
            container: FETCH_TOKENIZER_CONTAINER,
            uri,
            sha256: model.tokenizer_sha256.as_deref(),
        }),
    )
}

/// The draft model, as `runtime.generation.speculation.draftModel` asks for it.
pub fn wanted_draft(draft: &DraftModelSpec) -> Wanted<'_> {
    Wanted {
        container: FETCH_DRAFT_CONTAINER,
        uri: &draft.uri,
        sha256: draft.sha256.as_deref(),
    }
}

/// The record, if it still belongs to what is wanted: the same URI, and a digest that is the one
/// the spec pins (when it pins one).
pub fn still_wanted<'r>(
    record: Option<&'r ResolvedArtifact>,
    wanted: Wanted<'_>,
) -> Option<&'r ResolvedArtifact> {
    record.filter(|r| {
        r.uri == wanted.uri
            && match (wanted.sha256, r.digest.as_deref()) {
                (Some(expected), Some(digest)) => expected == digest,
                _ => true,
            }
    })
}

/// The revision a new pod's fetch of `wanted` must get, from the stored status.
pub fn pinned_revision(status: Option<&ResolvedModel>, wanted: Wanted<'_>) -> Option<String> {
    let status = status?;
    let record = match wanted.container {
        FETCH_MODEL_CONTAINER => model_record(status),
        FETCH_TOKENIZER_CONTAINER => status.tokenizer.clone()?,
        _ => return None,
    };
    still_wanted(Some(&record), wanted)?.revision.clone()
}

fn model_record(status: &ResolvedModel) -> ResolvedArtifact {
    ResolvedArtifact {
        uri: status.uri.clone(),
        digest: status.digest.clone(),
        revision: status.revision.clone(),
    }
}

/// `status.model`: the previous record of each artifact while it is still wanted, else what the
/// first pod that fetched it (exactly as the spec asks now) reported, else only the URI.
pub fn resolve_model(
    model: &ModelSpec,
    previous: Option<&ResolvedModel>,
    pods: &[Pod],
) -> ResolvedModel {
    let (model_wanted, tokenizer_wanted) = wanted(model);
    let resolved = resolve_artifact(model_wanted, previous.map(model_record).as_ref(), pods);
    let tokenizer = tokenizer_wanted
        .map(|wanted| resolve_artifact(wanted, previous.and_then(|p| p.tokenizer.as_ref()), pods));
    ResolvedModel {
        uri: resolved.uri,
        digest: resolved.digest,
        revision: resolved.revision,
        tokenizer,
    }
}

fn resolve_artifact(
    wanted: Wanted<'_>,
    previous: Option<&ResolvedArtifact>,
    pods: &[Pod],
) -> ResolvedArtifact {
    if let Some(kept) = still_wanted(previous, wanted).filter(|r| r.digest.is_some()) {
        return kept.clone();
    }
    let report = first_report(pods, wanted);
    ResolvedArtifact {
        uri: wanted.uri.to_string(),
        digest: report.as_ref().map(|r| r.sha256.clone()),
        revision: report.and_then(|r| r.revision),
    }
}

/// The report of the pod that finished fetching `wanted` first (by the time its fetch
/// terminated, then by name), among pods whose fetch was asked for exactly that: a pod still
/// running an older spec reports an older model.
fn first_report(pods: &[Pod], wanted: Wanted<'_>) -> Option<FetchReport> {
    let mut reports: Vec<(Option<String>, String, FetchReport)> = pods
        .iter()
        .filter(|pod| fetch_container(pod, wanted.container).is_some_and(|c| fetches(c, wanted)))
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            let terminated =
                fetch_status(status.init_container_statuses.as_deref()?, wanted.container)?
                    .state
                    .as_ref()?
                    .terminated
                    .as_ref()?;
            if terminated.exit_code != 0 {
                return None;
            }
            let report = FetchReport::parse(terminated.message.as_deref()?)?;
            let finished = terminated.finished_at.as_ref().map(|t| t.0.to_string());
            Some((
                finished,
                pod.metadata.name.clone().unwrap_or_default(),
                report,
            ))
        })
        .collect();
    // An unknown finish time sorts last: it is the least sure to be first.
    reports.sort_by(|a, b| (a.0.is_none(), &a.0, &a.1).cmp(&(b.0.is_none(), &b.0, &b.1)));
    reports.into_iter().next().map(|(_, _, report)| report)
}

fn fetch_container<'p>(pod: &'p Pod, name: &str) -> Option<&'p Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

fn fetch_status<'s>(statuses: &'s [ContainerStatus], name: &str) -> Option<&'s ContainerStatus> {
    statuses.iter().find(|c| c.name == name)
}

/// Whether a fetch container's arguments ask for `wanted`: its `--uri`, and its `--sha256` (or
/// none).
fn fetches(container: &Container, wanted: Wanted<'_>) -> bool {
    let args = container.args.as_deref().unwrap_or_default();
    let value = |name: &str| {
        let long = flag::arg(name);
        args.iter()
            .position(|a| *a == long)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    value(flag::URI) == Some(wanted.uri) && value(flag::SHA256) == wanted.sha256
}
