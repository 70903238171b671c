//! The ShadowDeployment's Prometheus reader (`controller::shadow::observe`) against a real
//! Prometheus scraping exporters of the mirror's series in the production sidecar's format: two
//! pods of production `shop/sentiment`, a pod of another InferenceService and one in another
//! namespace (both with a shadow of the same name), and a second shadow on production's own
//! pods. What it reads is what production's pods exported for this shadow: counts, drops,
//! percentiles to the histogram's resolution and confidence bins; the totals survive a restart
//! of a pod; the live mirror generation is the lowest of the pods'; no series is `NoData`; a
//! stopped Prometheus is `Unreachable`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::header;
use axum::routing::get;
use lexserve_contract::mirror::{CONFIDENCE_BUCKETS, drop_reason};
use lexserve_contract::names::metric;
use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::analysis::shadow::{ShadowCounts, ShadowObservation};
use lexserve_operator::api::shadow_deployment::{LatencyPercentiles, ShadowDeployment};
use lexserve_operator::controller::promql::connect;
use lexserve_operator::controller::shadow::observe::{mirror_generation_live, observe};
use serde_json::json;

/// What the sidecar's `/metrics` says it serves (and what makes Prometheus parse OpenMetrics).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The latency histogram's bucket bounds (the sidecar's request-duration buckets).
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What one production pod's mirror has counted for one shadow since the pod started.
#[derive(Debug, Clone, Default)]
struct Counted {
    agree: u64,
    disagree: u64,
    candidate_errors: u64,
    production_errors: u64,
    dropped: Vec<(&'static str, u64)>,
    /// Each compared pair's latency on each side, and each side's top-label score.
    production_latency: Vec<f64>,
    candidate_latency: Vec<f64>,
    production_confidence: Vec<f64>,
    candidate_confidence: Vec<f64>,
}

impl Counted {
    /// `pairs` compared pairs (`disagree` of them disagreeing), spread deterministically:
    /// production's latency from 4 ms up to 4 + 60·scale ms, the candidate's 1.3 times it;
    /// production's scores in (0.55, 1], the candidate's in (0.35, 1].
    fn pairs(pairs: u64, disagree: u64, scale: f64) -> Counted {
        let at = |i: u64| (i as f64 + 0.5) / pairs as f64;
        let production_latency: Vec<f64> = (0..pairs)
            .map(|i| 0.004 + 0.060 * scale * at(i).powi(2))
            .collect();
        Counted {
            agree: pairs - disagree,
            disagree,
            candidate_latency: production_latency.iter().map(|l| 1.3 * l).collect(),
            production_latency,
            production_confidence: (0..pairs).map(|i| 0.5503 + 0.449 * at(i)).collect(),
            candidate_confidence: (0..pairs).map(|i| 0.3503 + 0.649 * at(i)).collect(),
            ..Counted::default()
        }
    }

    fn with_errors(
        mut self,
        candidate: u64,
        production: u64,
        dropped: &[(&'static str, u64)],
    ) -> Self {
        self.candidate_errors = candidate;
        self.production_errors = production;
        self.dropped = dropped.to_vec();
        self
    }

    /// Everything two lifetimes of a pod counted.
    fn plus(&self, other: &Counted) -> Counted {
        let cat = |a: &[f64], b: &[f64]| [a, b].concat();
        let mut dropped = self.dropped.clone();
        dropped.extend(other.dropped.iter().copied());
        Counted {
            agree: self.agree + other.agree,
            disagree: self.disagree + other.disagree,
            candidate_errors: self.candidate_errors + other.candidate_errors,
            production_errors: self.production_errors + other.production_errors,
            dropped,
            production_latency: cat(&self.production_latency, &other.production_latency),
            candidate_latency: cat(&self.candidate_latency, &other.candidate_latency),
            production_confidence: cat(&self.production_confidence, &other.production_confidence),
            candidate_confidence: cat(&self.candidate_confidence, &other.candidate_confidence),
        }
    }
}

/// One pod's `/metrics` page, in OpenMetrics as the sidecar's `prometheus-client` writes it
/// (counters registered without `_total`): its mirror series for each `(shadow, counted)` and
/// its mirror configuration generation. No `namespace`, `inference_service` or `pod` label: the
/// scrape config adds them, as on a cluster.
///
/// Every sample carries the timestamp `at` (Unix seconds), which the sidecar's page does not:
/// pages set together then have samples at the same instant in every pod, so the reader's
/// window ends exactly at each pod's last sample and `increase` extrapolates nothing. Numbers
/// read can then be held to the numbers exported exactly (unaligned scrapes over-count by up
/// to a scrape interval's share of the window, which over these few seconds is a lot).
fn page(shadows: &[(&str, &Counted)], generation: u64, at: f64) -> String {
    stamped(&unstamped(shadows, generation), at)
}

fn stamped(page: &str, at: f64) -> String {
    page.lines()
        .map(|line| {
            if line.starts_with('#') {
                format!("{line}\n")
            } else {
                format!("{line} {at:.3}\n")
            }
        })
        .collect()
}

fn unstamped(shadows: &[(&str, &Counted)], generation: u64) -> String {
    let mut text = String::new();
    text.push_str(&format!("# TYPE {} counter\n", metric::SHADOW_COMPARISONS));
    for (shadow, c) in shadows {
        for (outcome, n) in [
            ("agree", c.agree),
            ("disagree", c.disagree),
            ("candidate_error", c.candidate_errors),
            ("production_error", c.production_errors),
        ] {
            text.push_str(&format!(
                "{}_total{{shadow=\"{shadow}\",outcome=\"{outcome}\"}} {n}\n",
                metric::SHADOW_COMPARISONS
            ));
        }
    }
    text.push_str(&format!("# TYPE {} counter\n", metric::SHADOW_DROPPED));
    for (shadow, c) in shadows {
        // Every reason from 0, as the sidecar registers a target's series when configured.
        for reason in [
            drop_reason::QUEUE_FULL,
            drop_reason::TOO_LARGE,
            drop_reason::SHUTDOWN,
        ] {
            let n: u64 = c
                .dropped
                .iter()
                .filter(|(r, _)| *r == reason)
                .map(|(_, n)| n)
                .sum();
            text.push_str(&format!(
                "{}_total{{shadow=\"{shadow}\",reason=\"{reason}\"}} {n}\n",
                metric::SHADOW_DROPPED
            ));
        }
    }
    for (family, bounds, of) in [
        (
            metric::SHADOW_REQUEST_DURATION_SECONDS,
            &LATENCY_BUCKETS[..],
            (|c: &Counted| [c.production_latency.clone(), c.candidate_latency.clone()])
                as fn(&Counted) -> [Vec<f64>; 2],
        ),
        (
            metric::SHADOW_CONFIDENCE,
            &CONFIDENCE_BUCKETS[..],
            |c: &Counted| {
                [
                    c.production_confidence.clone(),
                    c.candidate_confidence.clone(),
                ]
            },
        ),
    ] {
        text.push_str(&format!("# TYPE {family} histogram\n"));
        for (shadow, c) in shadows {
            for (side, values) in ["production", "candidate"].into_iter().zip(of(c)) {
                let labels = format!("shadow=\"{shadow}\",side=\"{side}\"");
                text.push_str(&format!(
                    "{family}_sum{{{labels}}} {:?}\n",
                    values.iter().sum::<f64>()
                ));
                text.push_str(&format!("{family}_count{{{labels}}} {}\n", values.len()));
                for bound in bounds {
                    let below = values.iter().filter(|v| **v <= *bound).count();
                    text.push_str(&format!(
                        "{family}_bucket{{{labels},le=\"{bound:?}\"}} {below}\n"
                    ));
                }
                text.push_str(&format!(
                    "{family}_bucket{{{labels},le=\"+Inf\"}} {}\n",
                    values.len()
                ));
            }
        }
    }
    text.push_str(&format!(
        "# TYPE {0} gauge\n{0} {generation}\n# EOF\n",
        metric::MIRROR_CONFIG_GENERATION
    ));
    text
}

/// An HTTP server whose `/metrics` serves whatever page was set last.
struct Exporter {
    address: String,
    page: Arc<Mutex<String>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Exporter {
    async fn start(page: String) -> Exporter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("exporter port");
        let address = listener.local_addr().expect("exporter address").to_string();
        let mut exporter = Exporter {
            address,
            page: Arc::new(Mutex::new(page)),
            server: None,
        };
        exporter.serve(listener);
        exporter
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let served = self.page.clone();
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let served = served.clone();
                async move {
                    let page = served.lock().expect("page lock").clone();
                    ([(header::CONTENT_TYPE, OPENMETRICS)], page)
                }
            }),
        );
        self.server = Some(tokio::spawn(async move {
            axum::serve(listener, app).await.expect("exporter serves");
        }));
    }

    fn set(&self, page: String) {
        *self.page.lock().expect("page lock") = page;
    }

    /// The pod restarts: it stops answering, then answers on the same address with `page`
    /// (counters back to what the new process counted).
    async fn restart(&mut self, page: String) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
        self.set(page);
        let listener = tokio::net::TcpListener::bind(&self.address)
            .await
            .expect("the exporter's port again");
        self.serve(listener);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// A scrape job for one pod, with the labels a cluster's scrape config puts on its series.
fn job(
    exporter: &Exporter,
    namespace: &str,
    inference_service: &str,
    pod: &str,
) -> serde_json::Value {
    json!({
        "job_name": pod,
        "static_configs": [{
            "targets": [exporter.address],
            "labels": { "namespace": namespace, "inference_service": inference_service, "pod": pod },
        }],
    })
}

/// Waits until Prometheus's latest sample of `series` is `value`.
async fn scraped(prometheus: &Prometheus, series: &str, value: f64) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client");
    let url = format!("{}/api/v1/query", prometheus.url());
    wait::until(
        &format!("Prometheus to scrape {series} = {value}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let body: serde_json::Value = client
                .get(&url)
                .query(&[("query", series)])
                .send()
                .await?
                .json()
                .await?;
            let latest = body["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            Ok(match latest {
                Some(v) if (v - value).abs() < 1e-6 => Poll::Ready(()),
                _ => Poll::pending(body),
            })
        },
    )
    .await
    .expect("scraped");
}

/// Waits until each pod's page stamped `at` is scraped.
async fn all_scraped(prometheus: &Prometheus, pods: &[&str], at: f64) {
    for pod in pods {
        let series = format!(
            "timestamp({}_total{{pod=\"{pod}\",shadow=\"v2\",outcome=\"agree\"}})",
            metric::SHADOW_COMPARISONS
        );
        scraped(prometheus, &series, at).await;
    }
}

/// Now, in Unix seconds to the millisecond (what a sample's timestamp holds).
fn now() -> f64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    ms as f64 / 1000.0
}

fn shadow(name: &str) -> ShadowDeployment {
    serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "ShadowDeployment",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {
            "production": "sentiment",
            "candidate": { "model": { "uri": "pvc://models/sentiment-v2", "format": "onnx", "task": "classify" } },
            "comparison": { "mode": "Label" },
        },
    }))
    .expect("a ShadowDeployment")
}

#[track_caller]
fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: read {actual}, exported {expected}"
    );
}

/// The bucket of `bounds` that holds the `q` quantile of `values` (the `⌈q·n⌉`-th smallest):
/// `histogram_quantile` interpolates inside it, so its answer must lie within.
fn bucket_of_quantile(values: &[f64], q: f64, bounds: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    let value = sorted[rank - 1];
    let upper = bounds
        .iter()
        .position(|b| value <= *b)
        .expect("inside the buckets");
    (
        if upper == 0 { 0.0 } else { bounds[upper - 1] },
        bounds[upper],
    )
}

#[track_caller]
fn assert_percentiles(read: &Option<LatencyPercentiles>, values: &[f64], what: &str) {
    let read = read
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no percentiles"));
    for (q, p) in [(0.5, read.p50), (0.95, read.p95), (0.99, read.p99)] {
        let (lower, upper) = bucket_of_quantile(values, q, &LATENCY_BUCKETS);
        assert!(
            lower <= p && p <= upper,
            "{what} p{}: read {p}, the exported quantile is in ({lower}, {upper}]",
            q * 100.0
        );
    }
}

/// Per-bucket counts of `values` on CONFIDENCE_BUCKETS.
fn bins(values: &[f64]) -> Vec<f64> {
    let mut below = 0.0;
    CONFIDENCE_BUCKETS
        .iter()
        .map(|b| {
            let upto = values.iter().filter(|v| **v <= *b).count() as f64;
            let bin = upto - below;
            below = upto;
            bin
        })
        .collect()
}

/// The observation holds exactly what `pods` counted, together.
#[track_caller]
fn assert_reads(observation: &ShadowObservation, pods: &[&Counted]) {
    let ShadowObservation::Data(read) = observation else {
        panic!("expected data, got {observation:?}");
    };
    let all = pods
        .iter()
        .fold(Counted::default(), |sum, pod| sum.plus(pod));
    let ShadowCounts {
        agree,
        disagree,
        candidate_errors,
        production_errors,
        dropped,
        production_latency,
        candidate_latency,
        production_confidence,
        candidate_confidence,
    } = read;
    close(*agree, all.agree as f64, "agree");
    close(*disagree, all.disagree as f64, "disagree");
    close(
        *candidate_errors,
        all.candidate_errors as f64,
        "candidate errors",
    );
    close(
        *production_errors,
        all.production_errors as f64,
        "production errors",
    );
    let drops: u64 = all.dropped.iter().map(|(_, n)| n).sum();
    close(*dropped, drops as f64, "dropped");
    assert_percentiles(production_latency, &all.production_latency, "production");
    assert_percentiles(candidate_latency, &all.candidate_latency, "candidate");
    for (read, values, what) in [
        (
            production_confidence,
            &all.production_confidence,
            "production confidence",
        ),
        (
            candidate_confidence,
            &all.candidate_confidence,
            "candidate confidence",
        ),
    ] {
        let expected = bins(values);
        assert_eq!(read.len(), expected.len(), "{what}: {read:?}");
        for (i, (r, e)) in read.iter().zip(&expected).enumerate() {
            close(*r, *e, &format!("{what} bin {i}"));
        }
    }
}

#[tokio::test]
async fn the_reader_reads_what_production_pods_exported_for_the_shadow() {
    let started = Instant::now();
    // The shadow started a moment before its pods' first scrape.
    let since_start = || started.elapsed() + Duration::from_secs(1);
    let zero = Counted::default();
    let first = now();
    let zeros = || page(&[("v2", &zero), ("v3", &zero)], 0, first);
    let mut pod_a = Exporter::start(zeros()).await;
    let pod_b = Exporter::start(zeros()).await;
    // Same shadow name, not this production: another InferenceService, another namespace.
    let reviews = Exporter::start(zeros()).await;
    let lab = Exporter::start(zeros()).await;
    let mut prometheus = Prometheus::start_with_jobs(vec![
        job(&pod_a, "shop", "sentiment", "sentiment-a"),
        job(&pod_b, "shop", "sentiment", "sentiment-b"),
        job(&reviews, "shop", "reviews", "reviews-a"),
        job(&lab, "lab", "sentiment", "sentiment-lab"),
    ])
    .await
    .expect("prometheus");
    let client = connect(prometheus.url()).expect("a Prometheus client");
    let v2 = shadow("v2");
    let pods = ["sentiment-a", "sentiment-b", "reviews-a", "sentiment-lab"];
    // The pods' first scrapes see zeros (the mirror has just been configured).
    all_scraped(&prometheus, &pods, first).await;

    let a = Counted::pairs(630, 30, 1.0).with_errors(5, 2, &[(drop_reason::QUEUE_FULL, 7)]);
    let b = Counted::pairs(420, 20, 3.0).with_errors(3, 0, &[(drop_reason::TOO_LARGE, 1)]);
    // Others' numbers, all different from this shadow's.
    let other = Counted::pairs(900, 400, 10.0).with_errors(90, 9, &[(drop_reason::QUEUE_FULL, 99)]);
    let counted = now();
    pod_a.set(page(&[("v2", &a), ("v3", &other)], 7, counted));
    pod_b.set(page(&[("v2", &b), ("v3", &other)], 6, counted));
    reviews.set(page(&[("v2", &other)], 1, counted));
    lab.set(page(&[("v2", &other)], 1, counted));
    all_scraped(&prometheus, &pods, counted).await;
    assert_reads(&observe(&client, &v2, since_start()).await, &[&a, &b]);
    // The lowest generation of production's pods, not of the others'.
    assert_eq!(
        mirror_generation_live(&client, "shop", "sentiment").await,
        Some(6)
    );

    // Pod A restarts: its counters start again from zero and count a little (pod B's page is
    // scraped again, unchanged).
    let a_after = Counted::pairs(40, 2, 0.5).with_errors(1, 1, &[(drop_reason::SHUTDOWN, 2)]);
    let restarted = now();
    pod_a
        .restart(page(&[("v2", &a_after), ("v3", &zero)], 8, restarted))
        .await;
    pod_b.set(page(&[("v2", &b), ("v3", &other)], 6, restarted));
    all_scraped(&prometheus, &pods[..2], restarted).await;
    let after = observe(&client, &v2, since_start()).await;
    assert_reads(&after, &[&a.plus(&a_after), &b]);
    assert_eq!(
        mirror_generation_live(&client, "shop", "sentiment").await,
        Some(6)
    );

    // A shadow, or a production, without series: no data, and the reason names it.
    match observe(&client, &shadow("v9"), since_start()).await {
        ShadowObservation::NoData { reason } => {
            assert!(reason.contains("shop/v9"), "{reason}");
            assert!(reason.contains("sentiment"), "{reason}");
        }
        other => panic!("expected NoData, got {other:?}"),
    }
    assert_eq!(
        mirror_generation_live(&client, "shop", "absent").await,
        None
    );

    // Prometheus stopped: unreachable, never an error.
    prometheus.pause();
    match observe(&client, &v2, since_start()).await {
        ShadowObservation::Unreachable { error } => assert!(!error.is_empty()),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(
        mirror_generation_live(&client, "shop", "sentiment").await,
        None
    );
}
