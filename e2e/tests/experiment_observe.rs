//! The Experiment's Prometheus reader (`controller::experiment::observe`) against a real
//! Prometheus scraping an exporter of router-format series: the numbers it reads are the
//! exported ones, they keep counting across a router restart (counters back to lower values),
//! no series is `NoData`, a stopped Prometheus is `Unreachable`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::routing::get;
use lexserve_contract::names::metric;
use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::wait::{self, Poll};
use lexserve_operator::analysis::decision::{Observation, Sufficient, VariantData};
use lexserve_operator::api::experiment::Experiment;
use lexserve_operator::controller::experiment::observe::{connect, observe};
use serde_json::json;

/// What the router's `/metrics` says it serves (and what makes Prometheus parse OpenMetrics).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What one arm's router (and the user's own latency histogram) has counted so far.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    assignments: f64,
    trials: f64,
    successes: f64,
    latency_count: f64,
    latency_sum: f64,
    latency_sum_squares: f64,
}

/// The exporter's page, in OpenMetrics as the router's `prometheus-client` writes it (counters
/// registered without `_total`, the sums as gauges): the router's series of experiment
/// `shop/checkout` for two variants, the same experiment name in another namespace and another
/// experiment (both to be ignored), and the user's series for the `prometheus` metric.
/// `namespace` is on the series themselves (scraped with `honor_labels`), as the cluster's
/// relabelling would put it.
fn page(control: Counted, candidate: Counted) -> String {
    let arms = [("control", control), ("candidate", candidate)];
    let router = |v: &str| format!(r#"experiment="checkout",namespace="shop",variant="{v}""#);
    let outcome = |v: &str| format!(r#"{},metric="thumbs-up""#, router(v));
    let user = |v: &str| format!(r#"arm="{v}",exp="checkout""#);
    // One sample per arm: its labels and one of its numbers.
    let per_arm = |labels: &dyn Fn(&str) -> String, value: fn(&Counted) -> f64| {
        arms.iter()
            .map(|(v, c)| (labels(v), value(c)))
            .collect::<Vec<_>>()
    };
    let mut assignments = per_arm(&router, |c| c.assignments);
    for (v, c) in arms {
        // Not this experiment: the same name elsewhere, another name here.
        let elsewhere = format!(r#"experiment="checkout",namespace="lab",variant="{v}""#);
        assignments.push((elsewhere, 3.0 * c.assignments));
        let other = format!(r#"experiment="pricing",namespace="shop",variant="{v}""#);
        assignments.push((other, 5.0 * c.assignments));
    }
    let families = [
        (metric::EXPERIMENT_ASSIGNMENTS, "counter", assignments),
        (
            metric::EXPERIMENT_OUTCOME,
            "counter",
            per_arm(&outcome, |c| c.trials),
        ),
        (
            metric::EXPERIMENT_OUTCOME_SUM,
            "gauge",
            per_arm(&outcome, |c| c.successes),
        ),
        (
            metric::EXPERIMENT_OUTCOME_SUM_SQUARES,
            "gauge",
            per_arm(&outcome, |c| c.successes),
        ),
        (
            "shop_latency_observations",
            "counter",
            per_arm(&user, |c| c.latency_count),
        ),
        (
            "shop_latency_seconds_sum",
            "gauge",
            per_arm(&user, |c| c.latency_sum),
        ),
        (
            "shop_latency_seconds_sum_squares",
            "gauge",
            per_arm(&user, |c| c.latency_sum_squares),
        ),
    ];
    let mut text = String::new();
    for (family, kind, samples) in families {
        text.push_str(&format!("# TYPE {family} {kind}\n"));
        let suffix = if kind == "counter" { "_total" } else { "" };
        for (labels, value) in samples {
            text.push_str(&format!("{family}{suffix}{{{labels}}} {value:?}\n"));
        }
    }
    text.push_str("# EOF\n");
    text
}

/// An HTTP server whose `/metrics` serves whatever page was set last (one lock: every scrape
/// sees one consistent page).
struct Exporter {
    address: String,
    page: Arc<Mutex<String>>,
    server: tokio::task::JoinHandle<()>,
}

impl Exporter {
    async fn start(page: String) -> Exporter {
        let page = Arc::new(Mutex::new(page));
        let served = page.clone();
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("exporter port");
        let address = listener.local_addr().expect("exporter address").to_string();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("exporter serves");
        });
        Exporter {
            address,
            page,
            server,
        }
    }

    fn set(&self, page: String) {
        *self.page.lock().expect("page lock") = page;
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Waits until Prometheus's latest sample of `series` is `value`: the page set last has been
/// scraped.
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
                Some(v) if v == value => Poll::Ready(()),
                _ => Poll::pending(body),
            })
        },
    )
    .await
    .expect("scraped");
}

fn experiment(name: &str) -> Experiment {
    serde_json::from_value(json!({
        "apiVersion": "lexserve.io/v1alpha1",
        "kind": "Experiment",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {
            "control": "sentiment",
            "variants": [
                { "name": "control", "inferenceService": "sentiment", "weight": 50 },
                { "name": "candidate", "inferenceService": "sentiment-v2", "weight": 50 },
            ],
            "metrics": [
                {
                    "name": "thumbs-up", "kind": "Proportion", "role": "Primary",
                    "source": { "builtin": "thumbs-up" },
                },
                {
                    "name": "latency", "kind": "Mean", "role": "Guardrail",
                    "direction": "LowerIsBetter", "threshold": 0.1,
                    "source": { "prometheus": {
                        "count": "sum(increase(shop_latency_observations_total{arm=\"{{variant}}\",exp=\"{{experiment}}\"}[{{range}}]))",
                        "sum": "sum(increase(shop_latency_seconds_sum{arm=\"{{variant}}\",exp=\"{{experiment}}\"}[{{range}}]))",
                        "sumSquares": "sum(increase(shop_latency_seconds_sum_squares{arm=\"{{variant}}\",exp=\"{{experiment}}\"}[{{range}}]))",
                    } },
                },
            ],
        },
    }))
    .expect("an Experiment")
}

#[track_caller]
fn close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: read {actual}, exported {expected}"
    );
}

/// The observation holds exactly `expected` per variant, in the spec's order.
#[track_caller]
fn assert_reads(observation: &Observation, expected: [(&str, Counted); 2]) {
    let Observation::Data(data) = observation else {
        panic!("expected data, got {observation:?}");
    };
    assert_eq!(data.len(), 2, "{data:?}");
    for (
        VariantData {
            variant,
            assignments,
            metrics,
        },
        (name, c),
    ) in data.iter().zip(expected)
    {
        assert_eq!(variant, name);
        close(*assignments, c.assignments, &format!("{name} assignments"));
        let thumbs: Sufficient = metrics["thumbs-up"];
        close(thumbs.count, c.trials, &format!("{name} thumbs-up count"));
        close(thumbs.sum, c.successes, &format!("{name} thumbs-up sum"));
        close(
            thumbs.sum_squares,
            c.successes,
            &format!("{name} thumbs-up sum of squares"),
        );
        let latency: Sufficient = metrics["latency"];
        close(
            latency.count,
            c.latency_count,
            &format!("{name} latency count"),
        );
        close(latency.sum, c.latency_sum, &format!("{name} latency sum"));
        close(
            latency.sum_squares,
            c.latency_sum_squares,
            &format!("{name} latency sum of squares"),
        );
    }
}

fn add(a: Counted, b: Counted) -> Counted {
    Counted {
        assignments: a.assignments + b.assignments,
        trials: a.trials + b.trials,
        successes: a.successes + b.successes,
        latency_count: a.latency_count + b.latency_count,
        latency_sum: a.latency_sum + b.latency_sum,
        latency_sum_squares: a.latency_sum_squares + b.latency_sum_squares,
    }
}

#[tokio::test]
async fn the_reader_reads_what_the_router_exported_across_restarts() {
    let started = Instant::now();
    let zero = Counted::default();
    let exporter = Exporter::start(page(zero, zero)).await;
    let mut prometheus = Prometheus::start_with_jobs(vec![json!({
        "job_name": "router",
        "honor_labels": true,
        "static_configs": [{ "targets": [exporter.address] }],
    })])
    .await
    .expect("prometheus");
    let client = connect(prometheus.url()).expect("a Prometheus client");
    let checkout = experiment("checkout");
    let last_series = r#"shop_latency_seconds_sum_squares{arm="candidate"}"#;
    // The router's first scrape sees zeros (it has just started).
    scraped(&prometheus, last_series, 0.0).await;

    let control = Counted {
        assignments: 1000.0,
        trials: 400.0,
        successes: 40.0,
        latency_count: 990.0,
        latency_sum: 99.5,
        latency_sum_squares: 12.25,
    };
    let candidate = Counted {
        assignments: 1010.0,
        trials: 420.0,
        successes: 63.0,
        latency_count: 1005.0,
        latency_sum: 120.75,
        latency_sum_squares: 18.5,
    };
    exporter.set(page(control, candidate));
    scraped(&prometheus, last_series, candidate.latency_sum_squares).await;
    let before = observe(&client, &checkout, started.elapsed()).await;
    assert_reads(&before, [("control", control), ("candidate", candidate)]);

    // The router restarts: every series starts again from zero and counts a little.
    let control_after = Counted {
        assignments: 30.0,
        trials: 12.0,
        successes: 2.0,
        latency_count: 29.0,
        latency_sum: 3.5,
        latency_sum_squares: 0.5,
    };
    let candidate_after = Counted {
        assignments: 32.0,
        trials: 11.0,
        successes: 3.0,
        latency_count: 31.0,
        latency_sum: 4.25,
        latency_sum_squares: 0.75,
    };
    exporter.set(page(control_after, candidate_after));
    scraped(
        &prometheus,
        last_series,
        candidate_after.latency_sum_squares,
    )
    .await;
    let after = observe(&client, &checkout, started.elapsed()).await;
    assert_reads(
        &after,
        [
            ("control", add(control, control_after)),
            ("candidate", add(candidate, candidate_after)),
        ],
    );

    // Without a router (gatewayAPI) only the user's queries count, read up to now: the
    // extrapolation of `increase` to now scales count and sums of one target alike, and by
    // less than the scrape interval over the window.
    let mut gateway = experiment("checkout");
    gateway.spec.routing = serde_json::from_value(json!({
        "provider": "gatewayAPI",
        "gatewayAPI": { "parentRefs": [{ "name": "web" }] },
    }))
    .expect("routing");
    let Observation::Data(data) = observe(&client, &gateway, started.elapsed()).await else {
        panic!("expected data without a router");
    };
    for (read, exported) in data
        .iter()
        .zip([add(control, control_after), add(candidate, candidate_after)])
    {
        assert_eq!(read.assignments, 0.0, "{read:?}");
        assert!(!read.metrics.contains_key("thumbs-up"), "{read:?}");
        let latency = read.metrics["latency"];
        let scale = latency.count / exported.latency_count;
        assert!((1.0..1.5).contains(&scale), "{read:?} against {exported:?}");
        close(
            latency.sum,
            exported.latency_sum * scale,
            "latency sum, scaled",
        );
        close(
            latency.sum_squares,
            exported.latency_sum_squares * scale,
            "latency sum of squares, scaled",
        );
    }

    // An experiment without series: no data, and the reason says so.
    match observe(&client, &experiment("search"), started.elapsed()).await {
        Observation::NoData { reason } => {
            assert!(reason.contains("shop/search"), "{reason}");
        }
        other => panic!("expected NoData, got {other:?}"),
    }

    // A user query Prometheus rejects: no data, naming the metric and the field.
    let mut broken = experiment("checkout");
    if let Some(queries) = broken.spec.metrics[1].source.prometheus.as_mut() {
        queries.sum = "sum(shop_latency_seconds_sum{arm=\"{{variant}}\"".to_string();
    }
    match observe(&client, &broken, started.elapsed()).await {
        Observation::NoData { reason } => {
            assert!(
                reason.contains("spec.metrics[latency].source.prometheus.sum"),
                "{reason}"
            );
        }
        other => panic!("expected NoData, got {other:?}"),
    }

    // Prometheus stopped: unreachable, never an error.
    prometheus.pause();
    match observe(&client, &checkout, started.elapsed()).await {
        Observation::Unreachable { error } => assert!(!error.is_empty()),
        other => panic!("expected Unreachable, got {other:?}"),
    }
}
