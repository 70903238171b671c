//! A classifier made from MiniLM plus a linear head trained on the sentiment set shipped in
//! `data/sentiment`, served with the candle backend and checked on held-out sentences.

mod common;

use std::path::PathBuf;

use common::classifier_training::{
    fit_linear_head, read_examples, train_head, write_classifier_dir,
};
use common::http::post;
use common::sidecar::Sidecar;
use common::{candle_embed_args, minilm_dir, serve_config};
use lexserve_sidecar::encoder::head::softmax;
use lexserve_sidecar::encoder::pipeline::Pipeline;
use serde_json::json;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data/sentiment")
        .join(name)
}

#[test]
fn training_separates_separable_data() {
    let features = vec![
        vec![1.0, 0.0],
        vec![0.9, 0.1],
        vec![0.0, 1.0],
        vec![0.1, 0.9],
    ];
    let labels = vec![0, 0, 1, 1];
    let head = fit_linear_head(&features, &labels, 2, 200, 1.0, 0.0);
    for (x, &y) in features.iter().zip(&labels) {
        let p = softmax(&head.logits(x));
        assert!(p[y] > 0.5);
    }
}

#[tokio::test]
async fn trained_head_classifies_held_out_sentences() {
    let out = std::env::temp_dir().join(format!("lexserve-classifier-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let trained = tokio::task::spawn_blocking({
        let out = out.clone();
        move || {
            let mut pipeline =
                Pipeline::load(&serve_config(&candle_embed_args())).expect("load encoder");
            let examples = read_examples(&data("train.tsv")).expect("training data");
            let trained = train_head(&mut pipeline, &examples).expect("train");
            write_classifier_dir(&minilm_dir(), &trained, &out).expect("write classifier");
            trained
        }
    })
    .await
    .unwrap();
    assert_eq!(trained.labels, vec!["neg", "pos"]);
    assert!(
        trained.train_accuracy >= 0.95,
        "training accuracy {}",
        trained.train_accuracy
    );

    let (sidecar, client) = Sidecar::start_ready(&[
        "--model-uri".into(),
        format!("file://{}", out.display()),
        "--model-format".into(),
        "safetensors".into(),
        "--task".into(),
        "classify".into(),
        "--model-name".into(),
        "sentiment".into(),
    ])
    .await;

    let held_out = read_examples(&data("heldout.tsv")).unwrap();
    let texts: Vec<&str> = held_out.iter().map(|e| e.text.as_str()).collect();
    let mut predictions = Vec::new();
    for chunk in texts.chunks(8) {
        let (status, body) = post(&client, sidecar.url("/predict"), json!({"texts": chunk})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["labels"], json!(["neg", "pos"]));
        for (prediction, probabilities) in body["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(body["probabilities"].as_array().unwrap())
        {
            let p: Vec<f32> = serde_json::from_value(probabilities.clone()).unwrap();
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
            predictions.push(prediction.as_str().unwrap().to_string());
        }
    }
    let correct = held_out
        .iter()
        .zip(&predictions)
        .filter(|(e, p)| &e.label == *p)
        .count();
    assert!(
        correct as f64 / held_out.len() as f64 >= 0.9,
        "held-out accuracy {correct}/{}: {predictions:?}",
        held_out.len()
    );

    // The v2 protocol answers with probabilities and labels; /embed is the wrong task here.
    let (status, body) = post(
        &client,
        sidecar.url("/v2/models/sentiment/infer"),
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["I love it"]}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([1, 2]));
    assert_eq!(body["outputs"][1]["data"], json!(["pos"]));
    let (status, _) = post(&client, sidecar.url("/embed"), json!({"texts": ["a"]})).await;
    assert_eq!(status, 400);

    let metrics = sidecar.metrics(&client).await;
    assert!(
        metrics.contains("lexserve_predictions_total{class=\"pos\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lexserve_prediction_confidence_count{class=\"neg\"}"),
        "{metrics}"
    );
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&out);
}
