//! Drift monitoring's series, from real sidecar processes serving real models: the live series on
//! the contract's buckets and counting what was sent (unknown tokens checked against the
//! tokenizer itself), and the reference sample's baseline, which must bin exactly as the live
//! histograms do: a server started with the sample exports the same counts that a second server
//! without it shows after being sent the same inputs as requests. Bad sample files stop `serve`,
//! and `/ready` never turns 200 before the baseline is there. No timed assertions.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::classifier_training::{read_examples, train_head, write_classifier_dir};
use common::http::{client, metric_value, post};
use common::sidecar::Sidecar;
use common::{
    SENTENCES, candle_embed_args, minilm_dir, onnx_fp32_embed_args, serve_config, smollm2_args,
};
use lexserve_contract::drift::{
    CENTROID_COSINE_BUCKETS, CONFIDENCE_BUCKETS, EMBEDDING_NORM_BUCKETS, GENERATION_TOKEN_BUCKETS,
    INPUT_TOKEN_BUCKETS, REFERENCE_MAX_BYTES, REFERENCE_MAX_INPUTS, bin_label,
};
use lexserve_sidecar::encoder::pipeline::Pipeline;
use serde_json::json;

/// Texts with characters outside MiniLM's vocabulary (its tokenizer maps them to `[UNK]`).
const UNKNOWN_HEAVY: [&str; 3] = [
    "Launch 🛸🛸 at dawn ☃",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 letters and 🀄 tiles",
    "plain words only here",
];

fn sentiment(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/sentiment")
        .join(name)
}

/// The inputs both servers see: varied sentences, texts with unknown tokens, and one long
/// enough to be truncated.
fn sample_texts() -> Vec<String> {
    let mut texts: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    texts.extend(UNKNOWN_HEAVY.iter().map(|s| s.to_string()));
    for file in ["train.tsv", "heldout.tsv"] {
        texts.extend(
            read_examples(&sentiment(file))
                .unwrap()
                .into_iter()
                .map(|e| e.text),
        );
    }
    texts.push("long input ".repeat(400).trim().to_string());
    texts
}

fn write_reference(name: &str, content: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lexserve-drift-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn reference_args(mut args: Vec<String>, reference: &Path) -> Vec<String> {
    args.extend([
        "--drift-reference".to_string(),
        reference.display().to_string(),
    ]);
    args
}

/// The value of `label="…"` in a sample's label set.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    labels[start..].split('"').next()
}

/// Per-bin counts (not cumulative) of histogram `name`, summed over its other labels, by `le`
/// in exposition order.
fn histogram_bins(text: &str, name: &str) -> Vec<(String, u64)> {
    let prefix = format!("{name}_bucket{{");
    let mut cumulative: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let le = label(labels, "le").unwrap().to_string();
        let value: u64 = value.trim().parse().unwrap();
        match cumulative.iter_mut().find(|(l, _)| *l == le) {
            Some((_, total)) => *total += value,
            None => cumulative.push((le, value)),
        }
    }
    let mut previous = 0;
    cumulative
        .into_iter()
        .map(|(le, total)| {
            let bin = total - previous;
            previous = total;
            (le, bin)
        })
        .collect()
}

/// The `le` labels the contract fixes for `edges`, `+Inf` last.
fn contract_les(edges: &[f64]) -> Vec<String> {
    edges
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .map(bin_label)
        .collect()
}

/// `lexserve_drift_baseline` by feature, then bin: histogram bins by their edge, the others by
/// name (the exposition orders a family's series as it likes).
fn baseline(text: &str) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("lexserve_drift_baseline{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        out.entry(label(labels, "feature").unwrap().to_string())
            .or_default()
            .push((
                label(labels, "bin").unwrap().to_string(),
                value.trim().parse().unwrap(),
            ));
    }
    for bins in out.values_mut() {
        bins.sort_by(
            |(a, _), (b, _)| match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(a), Ok(b)) => a.total_cmp(&b),
                _ => a.cmp(b),
            },
        );
    }
    out
}

fn count(text: &str, sample: &str) -> u64 {
    metric_value(text, sample).unwrap_or_else(|| panic!("no {sample} in\n{text}")) as u64
}

/// Sends `texts` to `route` 32 at a time (as the sample runs), checking each answer.
async fn send_all(client: &reqwest::Client, sidecar: &Sidecar, route: &str, texts: &[String]) {
    for chunk in texts.chunks(32) {
        let (status, body) = post(client, sidecar.url(route), json!({ "texts": chunk })).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Polls `/ready`; the first time it is 200, the baseline must already be in `/metrics`.
async fn wait_ready_checking_baseline(sidecar: &Sidecar, client: &reqwest::Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(response) = client.get(sidecar.url("/ready")).send().await
            && response.status() == 200
        {
            let metrics = sidecar.metrics(client).await;
            assert!(
                metrics.contains("lexserve_drift_baseline{"),
                "/ready turned 200 before the baseline was exported:\n{metrics}"
            );
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "never ready; logs: {:?}",
            sidecar.logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn embed_live_series_and_reference_baseline_bin_alike() {
    let texts = sample_texts();
    let reference = write_reference("embed.txt", texts.join("\n").as_bytes());
    let with_reference = Sidecar::start(&reference_args(onnx_fp32_embed_args(), &reference));
    let (plain, client) = Sidecar::start_ready(&onnx_fp32_embed_args()).await;
    let reference_metrics = wait_ready_checking_baseline(&with_reference, &client).await;

    // The live series exist on the contract's buckets before any request; without a reference
    // there is neither a centroid nor a baseline.
    let before = plain.metrics(&client).await;
    for (name, edges) in [
        ("lexserve_input_tokens", &INPUT_TOKEN_BUCKETS[..]),
        ("lexserve_embedding_norm", &EMBEDDING_NORM_BUCKETS[..]),
    ] {
        let les: Vec<String> = histogram_bins(&before, name)
            .into_iter()
            .map(|(le, _)| le)
            .collect();
        assert_eq!(les, contract_les(edges), "{name}");
    }
    assert!(!before.contains("lexserve_embedding_centroid_cosine"));
    assert!(!before.contains("lexserve_drift_baseline"));
    assert_eq!(count(&before, "lexserve_unknown_tokens_total"), 0);

    // The sample ran outside the live series.
    assert_eq!(count(&reference_metrics, "lexserve_input_tokens_count"), 0);
    assert_eq!(
        count(&reference_metrics, "lexserve_embedding_norm_count"),
        0
    );
    assert_eq!(
        count(
            &reference_metrics,
            "lexserve_embedding_centroid_cosine_count"
        ),
        0
    );

    send_all(&client, &plain, "/embed", &texts).await;
    let live = plain.metrics(&client).await;

    // Counts what was sent: every text once, and the unknown tokens as MiniLM's own tokenizer
    // counts them (the long text is truncated by the server, but holds no unknown token).
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(minilm_dir().join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).unwrap();
    let unk = tokenizer.token_to_id("[UNK]").unwrap();
    let expected_unknown: u64 = texts
        .iter()
        .map(|t| {
            let ids = tokenizer.encode(t.as_str(), true).unwrap();
            ids.get_ids().iter().filter(|id| **id == unk).count() as u64
        })
        .sum();
    let in_heavy: u64 = UNKNOWN_HEAVY
        .iter()
        .map(|t| {
            let ids = tokenizer.encode(*t, true).unwrap();
            ids.get_ids().iter().filter(|id| **id == unk).count() as u64
        })
        .sum();
    assert!(in_heavy >= 3, "the test texts must hold unknown tokens");
    assert_eq!(
        count(&live, "lexserve_unknown_tokens_total"),
        expected_unknown
    );
    let n = texts.len() as u64;
    assert_eq!(count(&live, "lexserve_input_tokens_count"), n);
    assert_eq!(count(&live, "lexserve_embedding_norm_count"), n);

    // The baseline equals the live histograms of the same inputs, bin for bin.
    let base = baseline(&reference_metrics);
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        [
            "centroid_cosine",
            "embedding_norm",
            "input_tokens",
            "unknown_tokens"
        ]
    );
    assert_eq!(
        base["input_tokens"],
        histogram_bins(&live, "lexserve_input_tokens")
    );
    assert_eq!(
        base["embedding_norm"],
        histogram_bins(&live, "lexserve_embedding_norm")
    );
    let input_tokens_sum = count(&live, "lexserve_input_tokens_sum");
    assert_eq!(
        base["unknown_tokens"],
        vec![
            ("known".to_string(), input_tokens_sum - expected_unknown),
            ("unknown".to_string(), expected_unknown),
        ]
    );
    let cosines = &base["centroid_cosine"];
    assert_eq!(
        cosines.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(),
        contract_les(&CENTROID_COSINE_BUCKETS)
    );
    assert_eq!(cosines.iter().map(|(_, c)| c).sum::<u64>(), n);

    // With a reference, live embeddings fill the centroid cosine: the same inputs as live
    // requests land in the baseline's bins.
    send_all(&client, &with_reference, "/embed", &texts).await;
    let after = with_reference.metrics(&client).await;
    assert_eq!(
        *cosines,
        histogram_bins(&after, "lexserve_embedding_centroid_cosine")
    );
    assert_eq!(
        base["embedding_norm"],
        histogram_bins(&after, "lexserve_embedding_norm")
    );
    // The baseline gauges stay as the sample left them.
    assert_eq!(baseline(&after), base);
}

#[tokio::test]
async fn classify_reference_baseline_equals_live_histograms() {
    let out =
        std::env::temp_dir().join(format!("lexserve-drift-classifier-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    tokio::task::spawn_blocking({
        let out = out.clone();
        move || {
            let mut pipeline =
                Pipeline::load(&serve_config(&candle_embed_args())).expect("load encoder");
            let examples = read_examples(&sentiment("train.tsv")).expect("training data");
            let trained = train_head(&mut pipeline, &examples).expect("train");
            write_classifier_dir(&minilm_dir(), &trained, &out).expect("write classifier");
        }
    })
    .await
    .unwrap();
    let args = vec![
        "--model-uri".to_string(),
        format!("file://{}", out.display()),
        "--model-format".into(),
        "safetensors".into(),
        "--task".into(),
        "classify".into(),
        "--model-name".into(),
        "sentiment".into(),
    ];
    let texts = sample_texts();
    let reference = write_reference("classify.txt", texts.join("\r\n").as_bytes());
    let with_reference = Sidecar::start(&reference_args(args.clone(), &reference));
    let (plain, client) = Sidecar::start_ready(&args).await;
    let reference_metrics = wait_ready_checking_baseline(&with_reference, &client).await;
    let before = plain.metrics(&client).await;
    assert!(!before.contains("lexserve_embedding_centroid_cosine"));
    assert_eq!(count(&reference_metrics, "lexserve_input_tokens_count"), 0);

    send_all(&client, &plain, "/predict", &texts).await;
    let live = plain.metrics(&client).await;
    let les: Vec<String> = histogram_bins(&live, "lexserve_prediction_confidence")
        .into_iter()
        .map(|(le, _)| le)
        .collect();
    assert_eq!(les, contract_les(&CONFIDENCE_BUCKETS));

    let base = baseline(&reference_metrics);
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        [
            "confidence",
            "input_tokens",
            "predicted_class",
            "unknown_tokens"
        ]
    );
    assert_eq!(
        base["input_tokens"],
        histogram_bins(&live, "lexserve_input_tokens")
    );
    assert_eq!(
        base["confidence"],
        histogram_bins(&live, "lexserve_prediction_confidence")
    );
    let classes: Vec<(String, u64)> = ["neg", "pos"]
        .iter()
        .map(|class| {
            let sample = format!("lexserve_predictions_total{{class=\"{class}\"}}");
            (class.to_string(), count(&live, &sample))
        })
        .collect();
    assert_eq!(base["predicted_class"], classes);
    assert!(classes.iter().all(|(_, n)| *n > 0), "{classes:?}");
    let unknown = count(&live, "lexserve_unknown_tokens_total");
    assert!(unknown > 0);
    assert_eq!(
        base["unknown_tokens"],
        vec![
            (
                "known".to_string(),
                count(&live, "lexserve_input_tokens_sum") - unknown
            ),
            ("unknown".to_string(), unknown),
        ]
    );
}

/// Runs `serve` with `reference` and returns its exit code and stderr; a server that is still
/// running after the bound has started despite the file, which fails the test.
fn serve_refusing(reference: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lexserve-sidecar"))
        .arg("serve")
        .args(reference_args(onnx_fp32_embed_args(), reference))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("ORT_DYLIB_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lexserve-sidecar");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve started with the bad reference {}",
                reference.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn bad_reference_files_stop_serve_naming_the_file_and_the_problem() {
    let too_many = write_reference(
        "too-many.txt",
        "an input\n".repeat(REFERENCE_MAX_INPUTS + 1).as_bytes(),
    );
    let too_big = write_reference(
        "too-big.txt",
        "x".repeat(REFERENCE_MAX_BYTES as usize + 1).as_bytes(),
    );
    let empty = write_reference("empty.txt", b"\n  \n\n");
    let missing = too_many.with_file_name("missing.txt");
    for (path, what) in [
        (
            &too_many,
            format!("more than {REFERENCE_MAX_INPUTS} inputs"),
        ),
        (&too_big, format!("at most {REFERENCE_MAX_BYTES} bytes")),
        (&empty, "is empty".to_string()),
        (&missing, "cannot read".to_string()),
    ] {
        let (code, stderr) = serve_refusing(path);
        assert!(
            code.is_some_and(|c| c != 0),
            "{}: exit {code:?}",
            path.display()
        );
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(&what),
            "{}: expected {what:?} in {stderr}",
            path.display()
        );
    }
    for path in [too_many, too_big, empty] {
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test]
async fn generate_exports_prompt_and_output_tokens_and_a_prompt_baseline() {
    let prompts = [
        "The capital of France is",
        "Write one word about the sea:",
        "Once upon a time, in a small village by the mountains, there lived an old clockmaker who",
    ];
    let reference = write_reference("generate.txt", prompts.join("\n").as_bytes());
    let mut args = smollm2_args();
    args.extend(["--threads", "2", "--max-new-tokens", "16"].map(String::from));
    let sidecar = Sidecar::start(&reference_args(args, &reference));
    let client = client();
    let reference_metrics = wait_ready_checking_baseline(&sidecar, &client).await;
    // Output lengths need generation: a start-up sample gives prompt lengths only.
    let base = baseline(&reference_metrics);
    assert_eq!(base.keys().collect::<Vec<_>>(), ["prompt_tokens"]);
    assert_eq!(count(&reference_metrics, "lexserve_prompt_tokens_count"), 0);
    assert!(!reference_metrics.contains("lexserve_embedding_centroid_cosine_bucket"));

    let mut generated = 0;
    for prompt in prompts {
        let (status, body) = post(
            &client,
            sidecar.url("/generate"),
            json!({"inputs": prompt, "parameters": {"max_new_tokens": 4}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        generated += body["details"]["generated_tokens"].as_u64().unwrap();
    }
    let live = sidecar.metrics(&client).await;
    let prompt_bins = histogram_bins(&live, "lexserve_prompt_tokens");
    assert_eq!(
        prompt_bins
            .iter()
            .map(|(le, _)| le.clone())
            .collect::<Vec<_>>(),
        contract_les(&GENERATION_TOKEN_BUCKETS)
    );
    assert_eq!(base["prompt_tokens"], prompt_bins);
    let output_bins = histogram_bins(&live, "lexserve_output_tokens");
    assert_eq!(
        output_bins
            .iter()
            .map(|(le, _)| le.clone())
            .collect::<Vec<_>>(),
        contract_les(&GENERATION_TOKEN_BUCKETS)
    );
    assert_eq!(count(&live, "lexserve_output_tokens_count"), 3);
    assert_eq!(count(&live, "lexserve_output_tokens_sum"), generated);
}
