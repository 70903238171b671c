//! Sending one copy to its candidate and counting what came of it: the request redacted, its
//! model name rewritten to the candidate's, sent with the target's timeout to the same path,
//! query, method and content type; both answers parsed for the route and compared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderValue, Method, StatusCode};
use lexserve_contract::mirror::{ComparisonMode, outcome, side};

use super::answer::parse_answer;
use super::compare::compare;
use super::config::Target;
use super::metrics::MirrorMetrics;
use crate::route::model_name::{inspect, rewrite};

/// A sampled request production has answered in full, waiting for its target's worker.
pub struct Copy {
    pub target: Arc<Target>,
    /// The route's pattern (`/v2/models/{name}/infer`): which answer shape to expect.
    pub route: &'static str,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    /// Production's status (2xx: only those are queued) and answer, as sent to the user.
    pub status: StatusCode,
    pub answer: Vec<Bytes>,
    /// From the request's arrival to the end of production's answer.
    pub production: Duration,
}

/// What every worker shares.
pub struct Delivery {
    pub client: reqwest::Client,
    pub metrics: MirrorMetrics,
    /// The name production serves (what its clients' requests name).
    pub served: String,
    /// The mirror's own low-priority runtime ([`super::background`]): every queue's work runs
    /// there.
    pub background: tokio::runtime::Handle,
}

/// Why a pair was not compared.
enum Failed {
    Production(String),
    Candidate(String),
}

impl Delivery {
    /// Sends `copy` and records the outcome (the task is aborted if its target goes).
    pub async fn deliver(&self, copy: Copy) {
        let shadow = copy.target.spec.shadow.clone();
        match self.exchange(&copy).await {
            Ok(()) => {}
            Err(Failed::Production(reason)) => {
                tracing::debug!(%shadow, %reason, "mirror: production's answer not comparable");
                self.metrics.outcome(&shadow, outcome::PRODUCTION_ERROR);
            }
            Err(Failed::Candidate(reason)) => {
                tracing::debug!(%shadow, %reason, "mirror: candidate failed");
                self.metrics.outcome(&shadow, outcome::CANDIDATE_ERROR);
            }
        }
    }

    async fn exchange(&self, copy: &Copy) -> Result<(), Failed> {
        let target = &copy.target;
        let shadow = &target.spec.shadow;
        if !copy.status.is_success() {
            return Err(Failed::Production(format!("status {}", copy.status)));
        }
        let redacted = target.redactor.redact(&copy.body);
        let body = redacted.as_deref().unwrap_or(&copy.body);
        // The candidate answers only to its own name. A name redaction made unreadable stays as
        // it is (the candidate's 404 then counts against the configuration, visibly).
        let (path, body) = match inspect(&self.served, &copy.path, body) {
            Ok(refs) => {
                let (path, renamed) = rewrite(&refs, &copy.path, body, &target.spec.model);
                (path, renamed.unwrap_or_else(|| body.to_vec()))
            }
            Err(_) => (copy.path.clone(), body.to_vec()),
        };
        let url = match &copy.query {
            Some(query) => format!("{}{path}?{query}", target.server.base),
            None => format!("{}{path}", target.server.base),
        };
        let mut request = self
            .client
            .request(copy.method.clone(), url)
            .timeout(target.timeout)
            .body(body);
        if let Some(content_type) = &copy.content_type {
            request = request.header(CONTENT_TYPE, content_type.clone());
        }
        if let Some(host) = &target.server.host {
            request = request.header(HOST, host.clone());
        }
        let started = Instant::now();
        let answer = async {
            let response = request.send().await?;
            let status = response.status();
            let served_in = server_time(response.headers());
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, served_in, body))
        }
        .await
        .map_err(|e| Failed::Candidate(error_chain(&e)))?;
        let (status, served_in, candidate_body) = answer;
        // The candidate's own time when it says it (a lexserve sidecar does): this thread runs
        // only when the CPU is otherwise idle, so its clock would count the wait for a CPU too.
        let candidate_time = served_in.unwrap_or_else(|| started.elapsed());
        if !status.is_success() {
            return Err(Failed::Candidate(format!("status {status}")));
        }
        let production_body = copy.answer.concat();
        let production = parse_answer(copy.route, &production_body)
            .map_err(|e| Failed::Production(format!("unparsable answer: {e}")))?;
        let candidate = parse_answer(copy.route, &candidate_body)
            .map_err(|e| Failed::Candidate(format!("unparsable answer: {e}")))?;
        let compared = compare(&target.spec.comparison, &production, &candidate)
            .map_err(|e| Failed::Candidate(e.to_string()))?;

        let metrics = &self.metrics;
        metrics.duration(shadow, side::PRODUCTION, copy.production.as_secs_f64());
        metrics.duration(shadow, side::CANDIDATE, candidate_time.as_secs_f64());
        metrics.distance(shadow, compared.distance);
        if matches!(
            target.spec.comparison.mode,
            ComparisonMode::Label | ComparisonMode::TopK
        ) {
            for score in &compared.production_top {
                metrics.confidence(shadow, side::PRODUCTION, *score);
            }
            for score in &compared.candidate_top {
                metrics.confidence(shadow, side::CANDIDATE, *score);
            }
        }
        metrics.outcome(
            shadow,
            if compared.agree {
                outcome::AGREE
            } else {
                outcome::DISAGREE
            },
        );
        Ok(())
    }
}

/// An error with its causes (reqwest's own message hides whether it was a timeout or a refusal).
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The server's own time from a `Server-Timing` header's `app;dur=<ms>` metric (what a lexserve
/// sidecar sends with every inference answer).
fn server_time(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    let metric = crate::http::routes::SERVER_TIMING_METRIC;
    headers
        .get_all("server-timing")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|entry| {
            let mut parts = entry.split(';').map(str::trim);
            if parts.next()? != metric {
                return None;
            }
            let ms: f64 = parts.find_map(|p| p.strip_prefix("dur="))?.parse().ok()?;
            (ms.is_finite() && ms >= 0.0).then(|| std::time::Duration::from_secs_f64(ms / 1000.0))
        })
}

#[cfg(test)]
mod server_timing_tests {
    use super::server_time;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("server-timing", HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn the_app_metric_duration_is_read_and_anything_else_ignored() {
        let ms = |values: &[&str]| server_time(&headers(values)).map(|d| d.as_secs_f64() * 1000.0);
        assert_eq!(ms(&["app;dur=12.5"]), Some(12.5));
        assert_eq!(ms(&["db;dur=3, app;desc=\"x\";dur=7"]), Some(7.0));
        assert_eq!(ms(&["cache;dur=1", "app;dur=2"]), Some(2.0));
        assert_eq!(ms(&["app"]), None);
        assert_eq!(ms(&["app;dur=-1"]), None);
        assert_eq!(ms(&["app;dur=x"]), None);
        assert_eq!(ms(&[]), None);
    }
}
