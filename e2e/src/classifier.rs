//! A classifier model for the cluster tests, made on the spot: MiniLM (safetensors, candle) with
//! a linear head over its pooled embedding, two classes split by a fixed direction. Which side of
//! the direction an embedding falls decides the class, so every text gets a real, deterministic
//! prediction with a confidence. `swapped` swaps the head's rows: the same encoder and labels,
//! every prediction the other class (a candidate that disagrees with production everywhere).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;

/// The classes, in the head's row order.
pub const LABELS: [&str; 2] = ["complaint", "praise"];

/// Writes the classifier's model directory under `dir` (encoder files hard-linked from the cached
/// MiniLM) and returns it.
pub fn direction_classifier(dir: &Path, swapped: bool) -> Result<PathBuf> {
    let out = dir.join(if swapped {
        "classifier-swapped"
    } else {
        "classifier"
    });
    std::fs::create_dir_all(out.join("1_Pooling"))
        .with_context(|| format!("creating {}", out.display()))?;
    let minilm = lexserve_testkit::locate(lexserve_testkit::MINILM)
        .map_err(anyhow::Error::msg)
        .context("MiniLM")?;
    for name in [
        "model.safetensors",
        "tokenizer.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
        "modules.json",
    ] {
        let (from, to) = (minilm.join(name), out.join(name));
        if from.is_file() && !to.exists() && std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(minilm.join("config.json"))?)
            .context("MiniLM's config.json")?;
    config["id2label"] = json!({"0": LABELS[0], "1": LABELS[1]});
    std::fs::write(out.join("config.json"), config.to_string())?;
    let hidden = 384;
    let direction: Vec<f32> = (0..hidden as u64).map(|i| (draw(i) - 0.5) as f32).collect();
    let negated: Vec<f32> = direction.iter().map(|x| -x).collect();
    let weight = if swapped {
        [negated, direction].concat()
    } else {
        [direction, negated].concat()
    };
    write_head(
        &out.join("classifier.safetensors"),
        &weight,
        &[0.0, 0.0],
        hidden,
    )?;
    Ok(out)
}

/// Writes a linear head (`weight` [2, hidden], `bias` [2], f32) in the safetensors format: an
/// 8-byte header length, the JSON header, the little-endian data.
fn write_head(path: &Path, weight: &[f32], bias: &[f32], hidden: usize) -> Result<()> {
    let weight_bytes = weight.len() * 4;
    let header = json!({
        "weight": {"dtype": "F32", "shape": [2, hidden], "data_offsets": [0, weight_bytes]},
        "bias": {"dtype": "F32", "shape": [2], "data_offsets": [weight_bytes, weight_bytes + bias.len() * 4]},
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    for x in weight.iter().chain(bias) {
        bytes.extend(x.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// A deterministic draw in [0, 1) (splitmix64).
pub fn draw(i: u64) -> f64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
