//! Closed-loop HTTP load generator for the lexserve benchmark (loopback only, bounded in requests
//! and time). `concurrency` clients each send one request at a time, `{"texts": [one sentence]}`,
//! until `requests` have been sent or `max_seconds` have passed; prints one JSON line of results.
//!
//! ```text
//! cargo run --release -p lexserve-sidecar --example loadgen -- \
//!     --url http://127.0.0.1:8080/embed --concurrency 16 --requests 2000 --texts short
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Texts {
    Short,
    Long,
    /// 5 to 256 tokens, a fixed sequence (`texts::mixed`), sent in order.
    Mixed,
}

#[derive(Parser, Debug)]
struct Args {
    /// Endpoint taking `{"texts": [...]}` (must be loopback).
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Total requests (upper bound).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Stop sending after this long, whatever `requests` says.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    #[arg(long, value_enum, default_value = "short")]
    texts: Texts,
    /// Label printed with the results.
    #[arg(long, default_value = "")]
    label: String,
    /// Requests sent (and not measured) before the measurement starts.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Send this header with a distinct value per request (`user-<n>`): the assignment key of an
    /// experiment router keyed by header (`bench/route.sh`).
    #[arg(long)]
    key_header: Option<String>,
}

#[path = "texts.rs"]
mod texts;
use texts::{LONG, SHORT, mixed};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let host_ok = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| args.url.starts_with(prefix));
    if !host_ok {
        return Err(format!("refusing to load a non-loopback url: {}", args.url));
    }
    let pool: Vec<String> = match args.texts {
        Texts::Short => SHORT.iter().map(|s| s.to_string()).collect(),
        Texts::Long => LONG.iter().map(|s| s.to_string()).collect(),
        Texts::Mixed => mixed(),
    };
    let pool: &'static [String] = Vec::leak(pool);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;

    for i in 0..args.warmup {
        let body = serde_json::json!({"texts": [pool[i % pool.len()]]});
        let _ = client.post(&args.url).json(&body).send().await;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.max_seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let client = client.clone();
            let next = Arc::clone(&next);
            let url = args.url.clone();
            let key_header = args.key_header.clone();
            let total = args.requests;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                let mut refused = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total || Instant::now() >= deadline {
                        break;
                    }
                    let body = serde_json::json!({"texts": [pool[i % pool.len()]]});
                    let mut request = client.post(&url).json(&body);
                    if let Some(name) = &key_header {
                        request = request.header(name.as_str(), format!("user-{i}"));
                    }
                    let sent = Instant::now();
                    match request.send().await {
                        Ok(response) if response.status().is_success() => {
                            let _ = response.bytes().await;
                            latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok(response) if response.status().as_u16() == 429 => refused += 1,
                        _ => errors += 1,
                    }
                }
                (latencies, errors, refused)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let (mut errors, mut refused) = (0, 0);
    for worker in workers {
        let (l, e, r) = worker.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        errors += e;
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let result = serde_json::json!({
        "label": args.label,
        "texts": format!("{:?}", args.texts).to_lowercase(),
        "concurrency": args.concurrency,
        "ok": latencies.len(),
        "errors": errors,
        "refused": refused,
        "seconds": elapsed,
        "throughput_rps": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
    });
    println!("{result}");
    Ok(())
}
