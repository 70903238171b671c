//! Talking to a sidecar over HTTP: one client configuration, JSON requests that return the status
//! and the body, and reading a sample from a `/metrics` text.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("http client")
}

/// POSTs `body` as JSON; the status and the JSON answer (`Null` when the answer is not JSON).
pub async fn post(client: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value) {
    let response = client.post(url).json(&body).send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// GETs `url`; the status and the JSON answer (`Null` when the answer is not JSON).
pub async fn get(client: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let response = client.get(url).send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The value of an unlabelled sample (`name value`) in an OpenMetrics text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}
