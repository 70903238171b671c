//! The Prometheus that setup.sh provisions runs, scrapes and answers queries.

use std::time::Duration;

use lexserve_e2e::prometheus::Prometheus;
use lexserve_e2e::wait::{self, Poll};

#[tokio::test]
async fn prometheus_scrapes_and_answers_queries() {
    let prometheus = Prometheus::start(&[]).await.expect("prometheus");
    let client = reqwest::Client::new();
    let query = format!("{}/api/v1/query?query=up", prometheus.url());
    let value = wait::until(
        "a first scrape of Prometheus itself",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let body: serde_json::Value = client.get(&query).send().await?.json().await?;
            let value = body["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_string);
            Ok(match value {
                Some(v) => Poll::Ready(v),
                None => Poll::pending(body),
            })
        },
    )
    .await
    .expect("up{job=prometheus}");
    assert_eq!(value, "1");
}
