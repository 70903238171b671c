//! The experiment router's configuration: what the operator writes into the router's ConfigMap
//! and `lexserve-sidecar route` reads (and re-reads, without restart, when it changes).
//!
//! Assignment is a pure function of this file and the request: a key's bucket is a hash of the
//! experiment's seed and the key into [`BUCKETS`] buckets, and [`BucketTable`] says which variant
//! owns each bucket. The operator derives a new table from the one the router runs (read back from
//! the ConfigMap), so that changing weights moves as few buckets as possible.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many buckets the assignment keys are hashed into: weights are honoured to 1/10,000.
pub const BUCKETS: u16 = 10_000;

/// The file the router reads, under [`crate::names::path::CONFIG_DIR`] (the ConfigMap's key).
pub const CONFIG_FILE: &str = "router.yaml";

/// Where the assignment key comes from. The same enum is `spec.assignment.by` of an Experiment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum AssignmentSource {
    /// A request header, named by the key.
    Header,
    /// A cookie, named by the key.
    Cookie,
    /// A field of the JSON request body; dots in the key separate levels (`user.id`).
    JsonField,
    /// No key: every request is assigned independently, with the weights' probabilities.
    Random,
}

/// The router's whole configuration for one experiment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouterConfig {
    /// The Experiment's name: the `experiment` label of every router series.
    pub experiment: String,
    /// Increases with every change the operator makes; the router exports the generation it runs
    /// (`lexserve_router_config_generation`), so the operator knows when new weights are live.
    pub generation: u64,
    /// The model name clients use (the control's served name). Requests naming it (OpenAI
    /// `model`, the `/v2/models/{name}` path) are rewritten to the chosen variant's `model`;
    /// requests naming anything else get 404.
    pub model: String,
    /// How requests are assigned.
    pub assignment: RouterAssignment,
    /// The arms, the control first.
    pub variants: Vec<RouterVariant>,
    /// Which variant owns each bucket.
    pub buckets: BucketTable,
    /// The outcome metrics `/outcome` accepts (the Experiment's builtin metrics); others get 400.
    #[serde(default)]
    pub outcomes: Vec<String>,
}

/// How the router assigns requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouterAssignment {
    pub by: AssignmentSource,
    /// The header name, cookie name or JSON field path; absent for `random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Mixed into the hash so that two experiments over the same users split them independently.
    pub seed: u64,
}

/// One arm as the router sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouterVariant {
    /// The variant's name (the `variant` label; the response's `x-lexserve-variant` header).
    pub name: String,
    /// Where its Service answers, e.g. `http://sentiment-b.team-a.svc:8080`.
    pub url: String,
    /// The name that variant's sidecar serves (its InferenceService's name).
    pub model: String,
    /// Its share, relative to the others (0: no new assignments).
    pub weight: u32,
}

/// Which variant owns each bucket: per variant, half-open ranges `[start, end)` of buckets. Every
/// bucket in `0..BUCKETS` belongs to exactly one variant with a weight above zero.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BucketTable {
    pub owners: Vec<BucketOwner>,
}

/// The buckets of one variant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BucketOwner {
    pub variant: String,
    /// Half-open ranges `[start, end)`, sorted, disjoint.
    pub ranges: Vec<[u16; 2]>,
}
