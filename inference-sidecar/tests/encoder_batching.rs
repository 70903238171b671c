//! Length-aware batching and the start-up weight-variant timing, against the real models: an
//! embedding does not depend on the batch it lands in, and a model folder with both the int8 and the
//! fp32 weights gets both timed, the faster one named in `/metrics` and the log. Outcomes are
//! asserted, never durations.

mod common;

use common::http::metric_value;
use common::sidecar::Sidecar;
use common::{
    SENTENCES, minilm_dir, minilm_fp32_onnx, minilm_int8_onnx, onnx_fp32_embed_args, ort_dylib,
    serve_config,
};
use lexserve_sidecar::encoder::head::Inference;
use lexserve_sidecar::encoder::pipeline::Pipeline;
use serde_json::{Value, json};

/// Texts of very different lengths (2 to ~150 tokens), as a mixed workload sends them.
fn mixed_texts() -> Vec<String> {
    let mut texts: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    texts.push(SENTENCES[6].repeat(4));
    texts.push(SENTENCES[9].repeat(6));
    texts
}

fn embedding(result: &Inference) -> &[f32] {
    match result {
        Inference::Embedding(v) => v,
        Inference::Classification { .. } => panic!("an embedding model classified"),
    }
}

fn worst_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn an_embedding_does_not_depend_on_its_batch() {
    // fp32 ONNX: the same 1e-5 golden.rs holds candle and ONNX Runtime to.
    let mut pipeline =
        Pipeline::load(&serve_config(&onnx_fp32_embed_args())).expect("load fp32 ONNX");
    let texts = mixed_texts();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| embedding(&pipeline.run(&[t.as_str()]).expect("run alone")[0]).to_vec())
        .collect();
    // Arrival order padded to the longest (the naive batch), and groups of similar lengths (what
    // length-aware batching forms), in several sizes.
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut by_length: Vec<usize> = (0..texts.len()).collect();
    by_length.sort_by_key(|&i| texts[i].len());
    let mut worst = 0.0f32;
    for size in [2, 3, 5, texts.len()] {
        for order in [(0..texts.len()).collect::<Vec<_>>(), by_length.clone()] {
            for chunk in order.chunks(size) {
                let batch: Vec<&str> = chunk.iter().map(|&i| refs[i]).collect();
                let results = pipeline.run(&batch).expect("run batch");
                for (&i, result) in chunk.iter().zip(&results) {
                    worst = worst.max(worst_difference(embedding(result), &alone[i]));
                }
            }
        }
    }
    eprintln!("fp32: worst difference between a text alone and batched: {worst:e}");
    assert!(worst <= 1e-5, "batched embeddings differ by {worst}");
}

#[tokio::test]
async fn concurrent_mixed_lengths_get_the_answers_they_get_alone() {
    // A queue delay makes texts wait for company, so the concurrent round really shares batches.
    let mut args = onnx_fp32_embed_args();
    args.extend(["--threads", "1", "--max-queue-delay", "200ms"].map(String::from));
    let (sidecar, client) = Sidecar::start_ready(&args).await;
    let embed = |text: String| {
        let client = client.clone();
        let url = sidecar.url("/embed");
        async move {
            let response = client
                .post(url)
                .json(&json!({"texts": [text]}))
                .send()
                .await
                .expect("embed");
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.expect("json");
            body["embeddings"][0]
                .as_array()
                .expect("an embedding")
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect::<Vec<f32>>()
        }
    };
    let texts = mixed_texts();
    let mut alone = Vec::new();
    for text in &texts {
        alone.push(embed(text.clone()).await);
    }
    let before = sidecar.metrics(&client).await;
    let together =
        futures::future::join_all(texts.iter().cloned().map(embed).collect::<Vec<_>>()).await;
    let after = sidecar.metrics(&client).await;
    let count = |text: &str, name: &str| metric_value(text, name).unwrap_or(0.0);
    let batches =
        count(&after, "lexserve_batch_size_count") - count(&before, "lexserve_batch_size_count");
    assert!(
        batches < texts.len() as f64,
        "{} concurrent texts ran in {batches} batches; expected shared batches",
        texts.len()
    );
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        let worst = worst_difference(a, b);
        assert!(worst <= 1e-5, "text {i} differs by {worst} when batched");
    }
}

#[tokio::test]
async fn both_weight_forms_are_timed_at_startup_and_the_faster_is_named() {
    // A model folder holding both forms, as Hugging Face ONNX exports ship them.
    let dir = common::fetch::scratch("variants");
    std::os::unix::fs::symlink(minilm_int8_onnx(), dir.join("model_int8.onnx")).unwrap();
    std::os::unix::fs::symlink(minilm_fp32_onnx(), dir.join("model.onnx")).unwrap();
    let args: Vec<String> = [
        "--model-uri".to_string(),
        format!("file://{}", dir.display()),
        "--model-format".into(),
        "onnx".into(),
        "--tokenizer".into(),
        format!("file://{}", minilm_dir().join("tokenizer.json").display()),
        "--quantize".into(),
        "int8".into(),
        "--ort-dylib-path".into(),
        ort_dylib().display().to_string(),
    ]
    .to_vec();
    let (sidecar, client) = Sidecar::start_ready(&args).await;
    let text = sidecar.metrics(&client).await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("lexserve_encoder_variant_seconds{"))
        .collect();
    assert_eq!(series.len(), 2, "{text}");
    let int8 = series
        .iter()
        .find(|l| l.contains(r#"variant="int8",serving="true""#))
        .unwrap_or_else(|| panic!("the served int8 form is timed: {series:?}"));
    let fp32 = series
        .iter()
        .find(|l| l.contains(r#"variant="fp32",serving="false""#))
        .unwrap_or_else(|| panic!("the fp32 form is timed: {series:?}"));
    for line in [int8, fp32] {
        let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(seconds > 0.0, "{line}");
    }
    let faster: Vec<&&str> = series
        .iter()
        .filter(|l| l.contains(r#"faster="true""#))
        .collect();
    assert_eq!(
        faster.len(),
        1,
        "exactly one form is named faster: {series:?}"
    );
    let faster = if faster[0].contains("int8") {
        "int8"
    } else {
        "fp32"
    };
    let logs = sidecar.logs.lock().unwrap().clone();
    let line = logs
        .iter()
        .find(|l| l.contains("weight variant timed"))
        .unwrap_or_else(|| panic!("no log line on the timing: {logs:?}"));
    assert!(
        line.contains(&format!(r#""faster":"{faster}""#)),
        "the log names the faster form ({faster}): {line}"
    );
    // Serving the slower form is a warning.
    let level = if faster == "int8" { "INFO" } else { "WARN" };
    assert!(line.contains(level), "{line}");
    // The int8 form is the one serving.
    let (status, body) = common::http::post(
        &client,
        sidecar.url("/embed"),
        json!({"texts": ["which form answers?"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
