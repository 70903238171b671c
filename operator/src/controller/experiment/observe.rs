//! Reads an Experiment's numbers from Prometheus for the decision engine
//! (`analysis::decision`): per variant, the assignments and each metric's count, sum and sum of
//! squares, cumulative since the experiment started.
//!
//! Builtin metrics come from the router's series (`contract::names::metric`), four queries in
//! all, whatever the number of variants and metrics:
//!
//! ```text
//! sum by (variant[, metric]) (increase(<series>{experiment="<name>", namespace=~"<ns>|"}[<window>ms]))
//! ```
//!
//! evaluated at `<t>`, the newest scrape of the experiment's assignment series
//! (`max(timestamp(...))`), with the window reaching back from there to the experiment's start.
//!
//! - **Counter resets, router restarts.** `increase` treats every decrease of a series as a
//!   restart and adds the value after it in full, so what a router counted before a restart
//!   stays counted (the router's series only grow: outcome values are finite and >= 0, the
//!   contract says so). Lost are only the requests counted between a replica's last scrape and
//!   its restart, and everything before it if the restarted router counts past its old totals
//!   before the next scrape (a decrease is the only sign of a restart). A replaced pod is a new
//!   series (its `pod` label), which the window's start rule below covers; `sum by` adds the
//!   replicas up.
//! - **Extrapolation.** `increase` extrapolates from the first and last samples in the window
//!   to its edges. The window ends at `<t>`, not at "now": a replica's series all have a
//!   sample exactly there, so nothing is extrapolated at the end (other replicas' series by
//!   less than one scrape interval's worth). The window starts at the experiment's start, before the router's first
//!   sample; for a counter Prometheus extrapolates back at most until the series would reach
//!   zero, i.e. it adds at most the first sample's value — what was counted before the first
//!   scrape — and nothing when the first scrape saw zero.
//! - **Namespace.** The scrape configs copy the pod's namespace into `namespace`; series
//!   without that label (a static scrape config) match too, where same-named experiments in
//!   two namespaces would mix.
//!
//! With `routing.provider: gatewayAPI` there is no router: no assignments (no sample-ratio
//! check), no builtin metrics, and the user's queries are evaluated now.
//!
//! `prometheus` metrics run the user's count, sum and sum-of-squares queries once per variant,
//! with `{{variant}}`, `{{experiment}}`, `{{namespace}}` and `{{range}}` (the same window, e.g.
//! `3600000ms`, for `increase(x[{{range}}])`) replaced, evaluated at `<t>` too. A query's answer
//! is its single number, or the sum of its vector.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt, stream};
use kube::ResourceExt;
use lexserve_contract::names::{label, metric};

use crate::analysis::decision::{Observation, Sufficient, VariantData};
use crate::api::experiment::{Experiment, MetricKind, PrometheusMetric, RoutingProvider};
use crate::controller::promql::{Failure, escape, instant};
pub use crate::controller::promql::{PrometheusClient, connect};

/// User queries run at most this many at a time (10 variants × 20 metrics × 3 queries at most).
const PARALLEL_QUERIES: usize = 8;

/// Reads the numbers of every variant and metric, cumulative over `since_start` (PromQL
/// `increase` over the experiment's whole life, so router restarts do not lose counts), with
/// builtin metrics from the router's series and `prometheus` metrics from the user's queries
/// ({{variant}}, {{experiment}} substituted). Prometheus unreachable -> Observation::Unreachable;
/// empty series -> Observation::NoData. Never an error.
///
/// A user query Prometheus rejects (bad PromQL, a range vector) is `NoData` with Prometheus's
/// words: the analysis waits, and the message says which metric to fix.
pub async fn observe(
    prometheus: &PrometheusClient,
    experiment: &Experiment,
    since_start: Duration,
) -> Observation {
    match read(prometheus, experiment, since_start).await {
        Ok(observation) => observation,
        Err(Failure::Unreachable(error)) => Observation::Unreachable { error },
        Err(Failure::Rejected(reason)) => Observation::NoData { reason },
    }
}

async fn read(
    prometheus: &PrometheusClient,
    experiment: &Experiment,
    since_start: Duration,
) -> Result<Observation, Failure> {
    let spec = &experiment.spec;
    let builtin: BTreeMap<&str, &str> = spec
        .metrics
        .iter()
        .filter_map(|m| Some((m.source.builtin.as_deref()?, m.name.as_str())))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let (window, assigned, outcomes) = if spec.routing.provider == RoutingProvider::GatewayApi {
        // No router: no assignment counts (so no sample-ratio check) and no builtin outcomes,
        // only the user's queries, up to now.
        let window = Window {
            range: format!("{}ms", since_start.as_millis().max(1)),
            at: format!("{now:.3}"),
        };
        (window, Answer::default(), Outcomes::default())
    } else {
        match router_counts(
            prometheus,
            experiment,
            since_start,
            now,
            !builtin.is_empty(),
        )
        .await?
        {
            Ok(counts) => counts,
            Err(reason) => return Ok(Observation::NoData { reason }),
        }
    };

    let custom = custom_metrics(prometheus, experiment, &window).await?;
    if assigned.is_empty() && custom.is_empty() {
        return Ok(Observation::NoData {
            reason: format!(
                "the prometheus metrics' queries of experiment {}/{} return nothing",
                experiment.namespace().unwrap_or_default(),
                experiment.name_any()
            ),
        });
    }
    let data = spec
        .variants
        .iter()
        .map(|v| {
            let mut metrics = BTreeMap::new();
            for (outcome, metric_name) in &builtin {
                let key = |m: &Answer| m.get(&[v.name.as_str(), outcome]).copied();
                if let Some(count) = key(&outcomes.count) {
                    metrics.insert(
                        metric_name.to_string(),
                        Sufficient {
                            count,
                            sum: key(&outcomes.sum).unwrap_or(0.0),
                            sum_squares: key(&outcomes.sum_squares).unwrap_or(0.0),
                        },
                    );
                }
            }
            for ((variant, metric_name), stats) in &custom {
                if *variant == v.name {
                    metrics.insert(metric_name.clone(), *stats);
                }
            }
            VariantData {
                variant: v.name.clone(),
                assignments: assigned.get(&[v.name.as_str()]).copied().unwrap_or(0.0),
                metrics,
            }
        })
        .collect();
    Ok(Observation::Data(data))
}

/// The router's counts: the window (ending at the newest scrape of the experiment's
/// assignments), the assignments by variant, and, with `outcomes`, the builtin outcome series
/// by variant and metric. `Ok(Err(reason))` when there is nothing to read yet.
async fn router_counts(
    prometheus: &PrometheusClient,
    experiment: &Experiment,
    since_start: Duration,
    now: f64,
    outcomes: bool,
) -> Result<Result<(Window, Answer, Outcomes), String>, Failure> {
    let name = experiment.name_any();
    let namespace = experiment.namespace().unwrap_or_default();
    let series = RouterSeries {
        experiment: &name,
        namespace: &namespace,
    };
    let assignments = format!("{}_total", metric::EXPERIMENT_ASSIGNMENTS);

    let newest = query(
        prometheus,
        format!("max(timestamp({}))", series.select(&assignments)),
        None,
    )
    .await?;
    let Some(newest) = newest.values().next().copied() else {
        return Ok(Err(format!(
            "Prometheus has no {assignments} series for experiment {namespace}/{name}: the \
             router has not assigned a request yet, or Prometheus does not scrape it"
        )));
    };
    // The window ends at the newest scrape and starts at the experiment's start.
    let window_ms = ((since_start.as_secs_f64() - (now - newest).max(0.0)) * 1000.0).floor();
    if window_ms < 1000.0 {
        return Ok(Err(format!(
            "the experiment started {}s ago, Prometheus's newest sample of it is older",
            since_start.as_secs()
        )));
    }
    let at = Window {
        range: format!("{window_ms:.0}ms"),
        at: format!("{newest:.3}"),
    };

    let by_variant = query(
        prometheus,
        series.increase(&assignments, &[label::VARIANT], &at),
        Some(&at),
    );
    let (assigned, outcomes) = if !outcomes {
        (by_variant.await?, Outcomes::default())
    } else {
        let by_metric = [label::VARIANT, label::METRIC];
        let count = format!("{}_total", metric::EXPERIMENT_OUTCOME);
        let (assigned, count, sum, sum_squares) = futures::try_join!(
            by_variant,
            query(
                prometheus,
                series.increase(&count, &by_metric, &at),
                Some(&at)
            ),
            query(
                prometheus,
                series.increase(metric::EXPERIMENT_OUTCOME_SUM, &by_metric, &at),
                Some(&at)
            ),
            query(
                prometheus,
                series.increase(metric::EXPERIMENT_OUTCOME_SUM_SQUARES, &by_metric, &at),
                Some(&at)
            ),
        )?;
        (
            assigned,
            Outcomes {
                count,
                sum,
                sum_squares,
            },
        )
    };
    if assigned.is_empty() {
        return Ok(Err(format!(
            "no assignments of experiment {namespace}/{name} in the last {}",
            at.range
        )));
    }
    Ok(Ok((at, assigned, outcomes)))
}

/// The user's `prometheus` metrics, by (variant, metric); a metric whose count query returns
/// nothing for a variant is absent.
async fn custom_metrics(
    prometheus: &PrometheusClient,
    experiment: &Experiment,
    window: &Window,
) -> Result<BTreeMap<(String, String), Sufficient>, Failure> {
    let spec = &experiment.spec;
    let name = experiment.name_any();
    let namespace = experiment.namespace().unwrap_or_default();
    let mut jobs = Vec::new();
    for m in &spec.metrics {
        let Some(queries) = &m.source.prometheus else {
            continue;
        };
        for v in &spec.variants {
            for part in Part::of(m.kind, queries) {
                let text = part
                    .query(queries)
                    .replace("{{variant}}", &v.name)
                    .replace("{{experiment}}", &name)
                    .replace("{{namespace}}", &namespace)
                    .replace("{{range}}", &window.range);
                jobs.push((v.name.clone(), m.name.clone(), part, text));
            }
        }
    }
    let answers: Vec<_> = stream::iter(jobs)
        .map(|(variant, metric_name, part, text)| async move {
            let answer = query(prometheus, text, Some(window))
                .await
                .map_err(|failure| match failure {
                    Failure::Rejected(error) => Failure::Rejected(format!(
                        "spec.metrics[{metric_name}].source.prometheus.{}: Prometheus rejected the \
                     query for variant {variant}: {error}",
                        part.field()
                    )),
                    unreachable => unreachable,
                })?;
            Ok::<_, Failure>((variant, metric_name, part, answer.total()))
        })
        .buffer_unordered(PARALLEL_QUERIES)
        .try_collect()
        .await?;
    let mut parts: BTreeMap<(String, String), BTreeMap<Part, f64>> = BTreeMap::new();
    for (variant, metric_name, part, value) in answers {
        if let Some(value) = value {
            parts
                .entry((variant, metric_name))
                .or_default()
                .insert(part, value);
        }
    }
    Ok(parts
        .into_iter()
        .filter_map(|(key, p)| {
            let count = *p.get(&Part::Count)?;
            let sum = p.get(&Part::Sum).copied().unwrap_or(0.0);
            Some((
                key,
                Sufficient {
                    count,
                    sum,
                    // Successes are 0/1 outcomes: their squares sum to their sum.
                    sum_squares: p.get(&Part::SumSquares).copied().unwrap_or(sum),
                },
            ))
        })
        .collect())
}

/// One of a user metric's queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Count,
    Sum,
    SumSquares,
}

impl Part {
    fn of(kind: MetricKind, queries: &PrometheusMetric) -> Vec<Part> {
        match (kind, &queries.sum_squares) {
            (MetricKind::Mean, Some(_)) => vec![Part::Count, Part::Sum, Part::SumSquares],
            _ => vec![Part::Count, Part::Sum],
        }
    }

    fn query(self, queries: &PrometheusMetric) -> &str {
        match self {
            Part::Count => &queries.count,
            Part::Sum => &queries.sum,
            Part::SumSquares => queries.sum_squares.as_deref().unwrap_or_default(),
        }
    }

    fn field(self) -> &'static str {
        match self {
            Part::Count => "count",
            Part::Sum => "sum",
            Part::SumSquares => "sumSquares",
        }
    }
}

/// The router's series of one experiment.
struct RouterSeries<'a> {
    experiment: &'a str,
    namespace: &'a str,
}

/// The window of a cumulative query: its length (a PromQL duration) and its end (Unix seconds,
/// the evaluation time).
struct Window {
    range: String,
    at: String,
}

impl RouterSeries<'_> {
    fn select(&self, series: &str) -> String {
        format!(
            "{series}{{{}=\"{}\",{}=~\"{}|\"}}",
            label::EXPERIMENT,
            escape(self.experiment),
            label::NAMESPACE,
            // Namespaces are DNS labels: nothing in them is special to a regex.
            escape(self.namespace),
        )
    }

    fn increase(&self, series: &str, by: &[&str], window: &Window) -> String {
        format!(
            "sum by ({}) (increase({}[{}]))",
            by.join(", "),
            self.select(series),
            window.range,
        )
    }
}

/// The router's outcome series by (variant, metric).
#[derive(Default)]
struct Outcomes {
    count: Answer,
    sum: Answer,
    sum_squares: Answer,
}

/// A query's samples, keyed by the values of the labels it was grouped by (in the order of the
/// `by` clause; empty for a scalar or an ungrouped sum).
#[derive(Default, Debug)]
struct Answer {
    samples: Vec<(Vec<String>, f64)>,
}

impl Answer {
    fn get(&self, key: &[&str]) -> Option<&f64> {
        self.samples
            .iter()
            .find(|(k, _)| k.iter().map(String::as_str).eq(key.iter().copied()))
            .map(|(_, v)| v)
    }

    fn values(&self) -> impl Iterator<Item = &f64> {
        self.samples.iter().map(|(_, v)| v)
    }

    fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The query's number: its scalar, or the sum of its vector; `None` for an empty vector.
    fn total(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.values().sum())
    }
}

/// Runs an instant query; the labels the key is made of are the router's (`variant`, then
/// `metric`), absent ones empty.
/// Runs at `window.at`, or now.
async fn query(
    prometheus: &PrometheusClient,
    text: String,
    window: Option<&Window>,
) -> Result<Answer, Failure> {
    let at = window.map(|w| w.at.as_str());
    // The key is made of the router's labels, in the order of its `by` clauses.
    let samples = instant(prometheus, &text, at)
        .await?
        .into_iter()
        .map(|(labels, value)| {
            let key = [label::VARIANT, label::METRIC]
                .iter()
                .filter_map(|l| labels.get(*l).cloned())
                .collect();
            (key, value)
        })
        .collect();
    Ok(Answer { samples })
}
