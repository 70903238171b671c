//! Whether `quantize: int8` pays on this CPU: int8 ONNX kernels are fast where the CPU has int8
//! dot-product instructions (AVX-VNNI, AVX-512 VNNI, AMX) and can be slower than fp32 where it has
//! only AVX2 (issue 19 measured int8 at 0.89-0.91x fp32 on an AVX2-only EPYC). So when the model
//! folder holds both forms, the sidecar times both on the same warm-up batches at start-up, exports
//! the times (`lexserve_encoder_variant_seconds{variant,serving,faster}`), and logs which one runs
//! faster here, warning when it serves the slower one. It serves the form `quantize` asks for: the
//! choice (and int8's small accuracy cost) stays the user's. docs/quantization.md says when to choose
//! which, with measured figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::artifacts::{ModelFiles, weight_candidates};
use super::backend::{Encoder, PaddedBatch, load_encoder};
use super::batching::worker::run_batch;
use super::head::OutputHead;
use super::pipeline::Pipeline;
use super::tokenize::TokenizedText;
use crate::config::{Backend, ModelFormat, Quantize, ServeConfig};
use crate::metrics::{Metrics, VariantLabels};

/// A form of the model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Int8,
    Fp32,
}

impl Variant {
    pub fn of(quantize: Quantize) -> Self {
        match quantize {
            Quantize::Int8 => Self::Int8,
            Quantize::None => Self::Fp32,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Int8 => "int8",
            Self::Fp32 => "fp32",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Int8 => Self::Fp32,
            Self::Fp32 => Self::Int8,
        }
    }

    fn quantize(self) -> Quantize {
        match self {
            Self::Int8 => Quantize::Int8,
            Self::Fp32 => Quantize::None,
        }
    }
}

/// The weights of the form `config` does not serve, when there is one to compare with: an ONNX model
/// given as a folder that holds both forms. A uri naming a single file has no other form here.
pub fn alternative(config: &ServeConfig, files: &ModelFiles) -> Option<(Variant, PathBuf)> {
    if config.format != ModelFormat::Onnx || config.backend != Backend::Onnx {
        return None;
    }
    let dir = config.model_uri.local_path(&config.pvc_root).ok()?;
    if !dir.is_dir() {
        return None;
    }
    let other = Variant::of(config.quantize).other();
    weight_candidates(config.format, other.quantize())
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file() && *path != files.weights)
        .map(|path| (other, path))
}

/// Median seconds per warm-up batch of each form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub serving: (Variant, f64),
    pub other: (Variant, f64),
}

/// How much faster the other form must be before the sidecar calls it faster: start-up timings on a
/// busy node are noisy, and a few percent is not worth a warning.
pub const CLEARLY_FASTER: f64 = 0.05;

impl Comparison {
    /// The form that runs faster here, and by how much (its speed over the other's, ≥ 1). A
    /// difference within [`CLEARLY_FASTER`] goes to the form being served.
    pub fn faster(&self) -> (Variant, f64) {
        let (serving, other) = (self.serving.1, self.other.1);
        if other > 0.0 && serving > other * (1.0 + CLEARLY_FASTER) {
            (self.other.0, serving / other)
        } else {
            (
                self.serving.0,
                if serving > 0.0 { other / serving } else { 1.0 },
            )
        }
    }
}

/// Times `serving` and `other` on the same batches of `sample`, alternating which runs first, and
/// returns each one's median batch time. `None` if either fails to run.
pub fn compare(
    serving: (Variant, &mut dyn Encoder),
    other: (Variant, &mut dyn Encoder),
    head: &OutputHead,
    sample: &TokenizedText,
    pad_id: u32,
    rounds: usize,
) -> Option<Comparison> {
    let batch = PaddedBatch::new(std::iter::repeat_n(sample, COMPARE_BATCH), pad_id);
    let (a, b) = (serving.1, other.1);
    // The first pass at a shape allocates: untimed.
    run_batch(a, head, &batch).ok()?;
    run_batch(b, head, &batch).ok()?;
    let mut times = (Vec::new(), Vec::new());
    for round in 0..rounds.max(1) {
        let time = |encoder: &mut dyn Encoder| -> Option<Duration> {
            let started = Instant::now();
            run_batch(encoder, head, &batch).ok()?;
            Some(started.elapsed())
        };
        if round % 2 == 0 {
            times.0.push(time(a)?);
            times.1.push(time(b)?);
        } else {
            times.1.push(time(b)?);
            times.0.push(time(a)?);
        }
    }
    Some(Comparison {
        serving: (serving.0, median(&mut times.0)),
        other: (other.0, median(&mut times.1)),
    })
}

/// Timed batches per form at start-up (about a second in all on 2 cores).
const ROUNDS: usize = 7;

/// At start-up: when the model folder holds the other form too, loads it, times both on batches of
/// `sample`, exports the times and logs which runs faster on this CPU (a warning when the served form
/// is the slower one). The other form is dropped afterwards.
pub fn report(
    pipeline: &mut Pipeline,
    config: &ServeConfig,
    metrics: &Metrics,
    sample: &TokenizedText,
) -> Option<Comparison> {
    let (other, path) = alternative(config, &pipeline.files)?;
    let files = ModelFiles {
        weights: path.clone(),
        ..pipeline.files.clone()
    };
    let loaded = load_encoder(
        config.backend,
        &files,
        config.task,
        config.threads,
        config.ort_dylib_path.as_deref(),
    );
    let mut encoder = match loaded {
        Ok(encoder) => encoder,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot load the other form of the weights to compare speeds");
            return None;
        }
    };
    let serving = Variant::of(config.quantize);
    let pad_id = pipeline.tokenizer.pad_id();
    let comparison = compare(
        (serving, pipeline.encoder.as_mut()),
        (other, encoder.as_mut()),
        &pipeline.head,
        sample,
        pad_id,
        ROUNDS,
    )?;
    let (faster, speedup) = comparison.faster();
    for (variant, seconds) in [comparison.serving, comparison.other] {
        metrics
            .encoder_variant_seconds
            .get_or_create(&VariantLabels {
                variant: variant.label().into(),
                serving: (variant == serving).to_string(),
                faster: (variant == faster).to_string(),
            })
            .set(seconds);
    }
    let (serving_ms, other_ms) = (comparison.serving.1 * 1e3, comparison.other.1 * 1e3);
    if faster == serving {
        tracing::info!(
            serving = serving.label(),
            faster = faster.label(),
            speedup = format!("{speedup:.2}"),
            serving_ms = format!("{serving_ms:.1}"),
            other_ms = format!("{other_ms:.1}"),
            "weight variant timed against the other form on this CPU: the served one is not slower"
        );
    } else {
        let quantize = match faster {
            Variant::Int8 => "int8",
            Variant::Fp32 => "none",
        };
        tracing::warn!(
            serving = serving.label(),
            faster = faster.label(),
            speedup = format!("{speedup:.2}"),
            serving_ms = format!("{serving_ms:.1}"),
            other_ms = format!("{other_ms:.1}"),
            "weight variant timed against the other form on this CPU: the other one runs faster here \
             (set runtime.quantize: {quantize} to serve it; see docs/quantization.md)"
        );
    }
    Some(comparison)
}

/// Texts per timed batch: a batch as the server runs them under load.
pub const COMPARE_BATCH: usize = 8;

fn median(times: &mut [Duration]) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(0.0, Duration::as_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(serving: f64, other: f64) -> Comparison {
        Comparison {
            serving: (Variant::Int8, serving),
            other: (Variant::Fp32, other),
        }
    }

    #[test]
    fn the_other_form_is_faster_only_beyond_the_margin() {
        // int8 served at 11 ms a batch, fp32 at 10 ms: fp32 runs 1.1x as fast.
        let (faster, speedup) = comparison(0.011, 0.010).faster();
        assert_eq!(faster, Variant::Fp32);
        assert!((speedup - 1.1).abs() < 1e-9);
        // Within 5%: the served form keeps it.
        assert_eq!(comparison(0.0104, 0.010).faster().0, Variant::Int8);
        // The served form faster: says by how much.
        let (faster, speedup) = comparison(0.005, 0.010).faster();
        assert_eq!((faster, speedup), (Variant::Int8, 2.0));
    }

    #[test]
    fn medians_ignore_one_slow_outlier() {
        let mut times = [3, 100, 4, 5, 4].map(Duration::from_millis);
        assert_eq!(median(&mut times), 0.004);
    }
}
