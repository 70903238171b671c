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

/// The most variants one router splits between (the Experiment CRD's own limit).
pub const MAX_VARIANTS: usize = 10;

/// Why weights cannot become a bucket table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BucketError {
    #[error("no variants: a bucket table needs at least one")]
    NoVariants,
    #[error("{count} variants: at most {MAX_VARIANTS} are supported")]
    TooManyVariants { count: usize },
    #[error("every weight is zero: at least one variant must receive traffic")]
    AllZero,
    #[error("variant name {name:?} appears more than once")]
    DuplicateVariant { name: String },
    #[error("a variant name is empty")]
    EmptyName,
}

/// FNV-1a (64 bit) offset basis and prime: written out, because the bucket of a key must never
/// change with a Rust release (std's `DefaultHasher` makes no such promise).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The bucket of an assignment key: stable across processes, platforms and releases (spell out the hash;
/// no std DefaultHasher). 0..BUCKETS.
///
/// FNV-1a over the seed's 8 little-endian bytes then the key, finished with MurmurHash3's
/// `fmix64` (FNV alone leaves the high bits poorly mixed for short keys), then mapped onto
/// `0..BUCKETS` by a 128-bit multiply (the high word; no modulo bias worth the name).
pub fn bucket_of(seed: u64, key: &[u8]) -> u16 {
    let mut hash = FNV_OFFSET;
    for byte in seed.to_le_bytes().iter().chain(key) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    let mixed = fmix64(hash);
    ((u128::from(mixed) * u128::from(BUCKETS)) >> 64) as u16
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// How many buckets each variant gets: the weights' exact shares of [`BUCKETS`] by the largest
/// remainder method (floors first, then one more bucket to the largest remainders, earlier
/// variants first on ties), so the counts always sum to [`BUCKETS`] and zero weight gets zero.
pub fn bucket_counts(weights: &[(String, u32)]) -> Result<Vec<u16>, BucketError> {
    check_weights(weights)?;
    let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
    let buckets = u64::from(BUCKETS);
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|(_, w)| u64::from(*w) * buckets / total)
        .collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Remainders compared as integers (w * BUCKETS mod total): no floating-point ties.
    order.sort_by_key(|&i| std::cmp::Reverse(u64::from(weights[i].1) * buckets % total));
    let missing = buckets - counts.iter().sum::<u64>();
    for &i in order.iter().take(missing as usize) {
        counts[i] += 1;
    }
    Ok(counts.into_iter().map(|c| c as u16).collect())
}

fn check_weights(weights: &[(String, u32)]) -> Result<(), BucketError> {
    if weights.is_empty() {
        return Err(BucketError::NoVariants);
    }
    if weights.len() > MAX_VARIANTS {
        return Err(BucketError::TooManyVariants {
            count: weights.len(),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in weights {
        if name.is_empty() {
            return Err(BucketError::EmptyName);
        }
        if !seen.insert(name.as_str()) {
            return Err(BucketError::DuplicateVariant { name: name.clone() });
        }
    }
    if weights.iter().all(|(_, w)| *w == 0) {
        return Err(BucketError::AllZero);
    }
    Ok(())
}

impl BucketTable {
    /// Contiguous ranges in variant order, sized by the weights (largest remainder; zero weight, no buckets).
    pub fn initial(weights: &[(String, u32)]) -> Result<BucketTable, BucketError> {
        let counts = bucket_counts(weights)?;
        let mut start = 0u16;
        let owners = weights
            .iter()
            .zip(counts)
            .map(|((name, _), count)| {
                let ranges = if count == 0 {
                    vec![]
                } else {
                    vec![[start, start + count]]
                };
                start += count;
                BucketOwner {
                    variant: name.clone(),
                    ranges,
                }
            })
            .collect();
        Ok(BucketTable { owners })
    }

    /// The table for new weights that moves as few buckets as possible from `self` (variants that shrink
    /// give up buckets, variants that grow take them); `initial` when `self` names other variants.
    ///
    /// A shrinking variant gives up its highest buckets; growing variants, in the order of
    /// `weights`, take the lowest freed ones. A table that does not own every bucket exactly once
    /// (hand-edited, or from an older layout) is treated like one naming other variants.
    pub fn rebalance(&self, weights: &[(String, u32)]) -> Result<BucketTable, BucketError> {
        let counts = bucket_counts(weights)?;
        let Some(mut owned) = self.buckets_per_variant(weights) else {
            return BucketTable::initial(weights);
        };
        let mut freed = Vec::new();
        for (buckets, &count) in owned.iter_mut().zip(&counts) {
            if buckets.len() > usize::from(count) {
                freed.extend(buckets.drain(usize::from(count)..));
            }
        }
        freed.sort_unstable();
        let mut freed = freed.into_iter();
        for (buckets, &count) in owned.iter_mut().zip(&counts) {
            while buckets.len() < usize::from(count) {
                // The counts sum to BUCKETS and so did the old table: what growers need was freed.
                buckets.extend(freed.next());
            }
        }
        let owners = weights
            .iter()
            .zip(owned)
            .map(|((name, _), mut buckets)| {
                buckets.sort_unstable();
                BucketOwner {
                    variant: name.clone(),
                    ranges: to_ranges(&buckets),
                }
            })
            .collect();
        Ok(BucketTable { owners })
    }

    /// The variant owning `bucket`.
    pub fn owner(&self, bucket: u16) -> Option<&str> {
        self.owners
            .iter()
            .find(|o| {
                o.ranges
                    .iter()
                    .any(|[start, end]| (*start..*end).contains(&bucket))
            })
            .map(|o| o.variant.as_str())
    }

    /// How many buckets each variant owns, by name.
    pub fn count(&self, variant: &str) -> u32 {
        self.owners
            .iter()
            .filter(|o| o.variant == variant)
            .flat_map(|o| &o.ranges)
            .map(|[start, end]| u32::from(end.saturating_sub(*start)))
            .sum()
    }

    /// The owner's index in `owners` of every bucket, or `None` when a bucket is owned by no
    /// variant or by two, or a range is out of `0..BUCKETS`: the router's lookup table.
    pub fn lookup(&self) -> Option<Vec<u8>> {
        let mut table = vec![u8::MAX; usize::from(BUCKETS)];
        for (index, owner) in self.owners.iter().enumerate() {
            let index = u8::try_from(index).ok().filter(|i| *i != u8::MAX)?;
            for &[start, end] in &owner.ranges {
                if start > end || end > BUCKETS {
                    return None;
                }
                for slot in &mut table[usize::from(start)..usize::from(end)] {
                    if *slot != u8::MAX {
                        return None;
                    }
                    *slot = index;
                }
            }
        }
        table.iter().all(|slot| *slot != u8::MAX).then_some(table)
    }

    /// The buckets of each of `weights`' variants (in that order), ascending, when `self` names
    /// exactly those variants and owns every bucket exactly once.
    fn buckets_per_variant(&self, weights: &[(String, u32)]) -> Option<Vec<Vec<u16>>> {
        let mut ours: Vec<&str> = self.owners.iter().map(|o| o.variant.as_str()).collect();
        let mut theirs: Vec<&str> = weights.iter().map(|(name, _)| name.as_str()).collect();
        ours.sort_unstable();
        theirs.sort_unstable();
        if ours != theirs {
            return None;
        }
        let lookup = self.lookup()?;
        let mut per_variant = vec![Vec::new(); weights.len()];
        for (bucket, &index) in (0..BUCKETS).zip(&lookup) {
            let name = &self.owners[usize::from(index)].variant;
            let position = weights.iter().position(|(n, _)| n == name)?;
            per_variant[position].push(bucket);
        }
        Some(per_variant)
    }
}

/// Sorted buckets as half-open ranges, adjacent buckets merged.
fn to_ranges(buckets: &[u16]) -> Vec<[u16; 2]> {
    let mut ranges: Vec<[u16; 2]> = Vec::new();
    for &bucket in buckets {
        match ranges.last_mut() {
            Some(last) if last[1] == bucket => last[1] = bucket + 1,
            _ => ranges.push([bucket, bucket + 1]),
        }
    }
    ranges
}
