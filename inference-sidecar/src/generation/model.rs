//! The decoder forward: a llama-family network from GGUF weights (quantized matmuls through candle),
//! written for serving. One call runs a batch of rows that belong to different sequences, each at its
//! own position (prefill chunks and decode tokens together); keys and values go to, and are read from,
//! each sequence's blocks in the paged cache. `forward_uncached` recomputes a whole sequence with plain
//! causal attention and no cache: the reference the paged path is tested against.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{D, DType, Device, Module, Tensor};
use thiserror::Error;

use super::block_allocator::BlockId;
use super::kv_cache::{KvShape, PagedKvCache};
use super::paged_attention::{SeqSpan, paged_attention};
use super::quant_matmul::QuantMatrix;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("the GGUF file has no usable {key}: {message}")]
    Metadata { key: String, message: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Compute(#[from] candle_core::Error),
}

/// Hyperparameters read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_length: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

pub type Metadata = HashMap<String, gguf_file::Value>;

pub fn meta_u32(metadata: &Metadata, key: &str) -> Result<u32, ModelError> {
    let value = metadata.get(key).ok_or_else(|| ModelError::Metadata {
        key: key.to_string(),
        message: "missing".into(),
    })?;
    // Writers differ in which integer type they use.
    value
        .to_u32()
        .or_else(|_| value.to_u64().map(|v| v as u32))
        .or_else(|_| value.to_i32().map(|v| v as u32))
        .map_err(|e| ModelError::Metadata {
            key: key.to_string(),
            message: e.to_string(),
        })
}

fn meta_f32(metadata: &Metadata, key: &str) -> Option<f32> {
    metadata.get(key).and_then(|v| v.to_f32().ok())
}

impl DecoderConfig {
    pub fn from_metadata(metadata: &Metadata) -> Result<Self, ModelError> {
        let arch = metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            return Err(ModelError::Unsupported(format!(
                "architecture {arch:?} (this server runs llama-family GGUF decoders)"
            )));
        }
        let key = |k: &str| format!("llama.{k}");
        let hidden = meta_u32(metadata, &key("embedding_length"))? as usize;
        let heads = meta_u32(metadata, &key("attention.head_count"))? as usize;
        let kv_heads =
            meta_u32(metadata, &key("attention.head_count_kv")).map_or(heads, |v| v as usize);
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || !hidden.is_multiple_of(heads)
        {
            return Err(ModelError::Unsupported(format!(
                "{heads} attention heads over {kv_heads} KV heads and {hidden} dimensions"
            )));
        }
        let head_dim = hidden / heads;
        let rope_dim =
            meta_u32(metadata, &key("rope.dimension_count")).map_or(head_dim, |v| v as usize);
        if rope_dim != head_dim {
            return Err(ModelError::Unsupported(format!(
                "partial rotary embeddings ({rope_dim} of {head_dim} dimensions)"
            )));
        }
        let vocab = match meta_u32(metadata, &key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => metadata
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map_or(0, Vec::len),
        };
        Ok(Self {
            layers: meta_u32(metadata, &key("block_count"))? as usize,
            hidden,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context_length: meta_u32(metadata, &key("context_length"))? as usize,
            rope_base: meta_f32(metadata, &key("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: meta_f32(metadata, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        })
    }

    pub fn kv_shape(&self) -> KvShape {
        KvShape {
            layers: self.layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }
}

/// Rotary position embedding tables, GGML's "normal" (interleaved pairs) layout, which is what
/// llama.cpp's converter arranges the q and k weights for.
struct Rope {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    fn new(head_dim: usize, base: f32, positions: usize) -> Self {
        let half = head_dim / 2;
        let theta: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for t in &theta {
                let angle = p as f32 * t;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates `x` (`[rows, heads, head_dim]`) in place, row `r` at `positions[r]`.
    fn apply(&self, x: &mut [f32], heads: usize, positions: &[usize]) {
        let head_dim = 2 * self.half;
        for (row, &p) in x.chunks_mut(heads * head_dim).zip(positions) {
            let cos = &self.cos[p * self.half..(p + 1) * self.half];
            let sin = &self.sin[p * self.half..(p + 1) * self.half];
            for head in row.chunks_mut(head_dim) {
                for i in 0..self.half {
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * cos[i] - b * sin[i];
                    head[2 * i + 1] = a * sin[i] + b * cos[i];
                }
            }
        }
    }

    /// The tables for positions `0..n` as `[n, head_dim / 2]` tensors (for candle's `rope_i`).
    fn tensors(&self, n: usize, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let cos = Tensor::from_slice(&self.cos[..n * self.half], (n, self.half), device)?;
        let sin = Tensor::from_slice(&self.sin[..n * self.half], (n, self.half), device)?;
        Ok((cos, sin))
    }
}

/// A weight matrix applied to `[rows, in]` activations: Q4_1 and Q8_0 through the project's own
/// kernel, anything else through candle; `Stacked` runs several matrices of the same input (a fused
/// projection whose parts could not be stacked into one) and puts their outputs side by side.
enum Linear {
    Quant(QuantMatrix),
    Candle(QMatMul),
    Stacked(Vec<Linear>),
}

impl Linear {
    fn new(tensor: candle_core::quantized::QTensor, weights: Weights) -> candle_core::Result<Self> {
        if weights == Weights::Dequantized {
            return Ok(Self::Candle(QMatMul::Tensor(
                tensor.dequantize(&Device::Cpu)?,
            )));
        }
        match QuantMatrix::from_qtensor(&tensor)? {
            Some(matrix) => Ok(Self::Quant(matrix)),
            None => Ok(Self::Candle(QMatMul::from_qtensor(tensor)?)),
        }
    }

    /// Projections of the same input (q, k and v; gate and up) as one matrix whose output features
    /// are theirs in order: one product per step instead of several, with more columns to spread
    /// over the cores.
    fn stacked(
        tensors: Vec<candle_core::quantized::QTensor>,
        weights: Weights,
    ) -> candle_core::Result<Self> {
        let parts = tensors
            .into_iter()
            .map(|t| Self::new(t, weights))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if parts.iter().all(|p| matches!(p, Self::Quant(_))) {
            let matrices = parts
                .into_iter()
                .map(|p| match p {
                    Self::Quant(m) => m,
                    _ => unreachable!("checked above"),
                })
                .collect();
            return Ok(match QuantMatrix::stack(matrices) {
                Ok(m) => Self::Quant(m),
                Err(matrices) => Self::Stacked(matrices.into_iter().map(Self::Quant).collect()),
            });
        }
        Ok(Self::Stacked(parts))
    }

    /// Whether a row's result is the same bit for bit whatever other rows share the product: the
    /// project's kernel guarantees it (see `quant_matmul`); candle's products do not promise it
    /// (its f32 matmul picks its blocking by shape).
    fn batch_invariant(&self) -> bool {
        match self {
            Self::Quant(_) => true,
            Self::Candle(_) => false,
            Self::Stacked(parts) => parts.iter().all(Self::batch_invariant),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Quant(m) => {
                let (rows, _) = x.dims2()?;
                let data = x.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(m.matmul(&data, rows), (rows, m.out_features()), x.device())
            }
            Self::Stacked(parts) => {
                let outs = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&outs, 1)
            }
        }
    }

    /// [`Self::forward`] on plain rows (`x` is `[rows, in]` row-major; returns `[rows, out]`): the
    /// project's kernels take slices, so the decode path skips the tensor round trip (a copy in, a
    /// copy out and an allocation per product).
    fn forward_rows(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        match self {
            Self::Quant(m) => Ok(m.matmul(x, rows)),
            _ => {
                let x = Tensor::from_slice(x, (rows, x.len() / rows.max(1)), &Device::Cpu)?;
                self.forward(&x)?.flatten_all()?.to_vec1::<f32>()
            }
        }
    }
}

/// `f` on a contiguous f32 CPU tensor's values, borrowed (the norms' weights, read every layer).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("expected a CPU tensor");
    };
    let Some((from, to)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor");
    };
    Ok(f(&cpu.as_slice::<f32>()?[from..to]))
}

/// candle's `rms_norm` on plain rows, the same operations in the same order (so the same bits):
/// `x / sqrt(mean(x^2) + eps) * alpha`, the squares summed left to right.
fn rms_norm_rows(x: &[f32], alpha: &Tensor, eps: f32) -> candle_core::Result<Vec<f32>> {
    with_f32(alpha, |alpha| {
        let n = alpha.len();
        let mut out = vec![0f32; x.len()];
        for (src, dst) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let sum2 = src.iter().map(|&v| v * v).sum::<f32>();
            let m = (sum2 / n as f32 + eps).sqrt();
            for ((d, s), a) in dst.iter_mut().zip(src).zip(alpha) {
                *d = *s / m * *a;
            }
        }
        out
    })
}

/// `x += y`, elementwise.
fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += *b;
    }
}

struct Layer {
    attn_norm: Tensor,
    /// q, k and v stacked: `heads * head_dim + 2 * kv_heads * head_dim` output features.
    qkv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    /// gate and up stacked: twice the feed-forward width.
    gate_up: Linear,
    down: Linear,
}

impl Layer {
    fn mlp(&self, x: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
        let h = candle_nn::ops::rms_norm(x, &self.ffn_norm, eps)?;
        let gate_up = self.gate_up.forward(&h)?;
        let width = gate_up.dim(1)? / 2;
        let gate = candle_nn::ops::silu(&gate_up.narrow(1, 0, width)?)?;
        self.down
            .forward(&(gate * gate_up.narrow(1, width, width)?)?)
    }

    /// [`Self::mlp`] on plain rows, the same operations (candle's silu is `v / (1 + exp(-v))`).
    fn mlp_rows(&self, x: &[f32], rows: usize, eps: f32) -> candle_core::Result<Vec<f32>> {
        let h = rms_norm_rows(x, &self.ffn_norm, eps)?;
        let gate_up = self.gate_up.forward_rows(&h, rows)?;
        let width = gate_up.len() / rows.max(1) / 2;
        let mut act = Vec::with_capacity(rows * width);
        for row in gate_up.chunks_exact(2 * width) {
            let (gate, up) = row.split_at(width);
            act.extend(
                gate.iter()
                    .zip(up)
                    .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u),
            );
        }
        self.down.forward_rows(&act, rows)
    }
}

/// Splits `[rows, hidden + 2 * kv]` (q, k and v side by side) into the three, row-major each.
fn split_qkv(qkv: &[f32], rows: usize, hidden: usize, kv: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = hidden + 2 * kv;
    let mut q = Vec::with_capacity(rows * hidden);
    let mut k = Vec::with_capacity(rows * kv);
    let mut v = Vec::with_capacity(rows * kv);
    for row in qkv.chunks_exact(width) {
        q.extend_from_slice(&row[..hidden]);
        k.extend_from_slice(&row[hidden..hidden + kv]);
        v.extend_from_slice(&row[hidden + kv..]);
    }
    (q, k, v)
}

/// One sequence's part of a batch.
#[derive(Debug, Clone)]
pub struct SeqChunk<'a> {
    /// Tokens fed this step: a prefill chunk, or the one token sampled last.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`: the sequence's tokens before it are in the cache.
    pub start: usize,
    /// The sequence's block table, covering `start + tokens.len()` positions.
    pub blocks: &'a [BlockId],
    /// How many of the chunk's last rows want their logits (the logits after each of those tokens):
    /// 0 for a prefill chunk that does not reach the end of the known tokens, 1 for an ordinary
    /// decode or a prompt's last chunk, `1 + k` for a decode token followed by `k` drafted tokens
    /// that speculative decoding verifies. At most `tokens.len()`.
    pub logits: usize,
}

pub struct DecoderModel {
    pub config: DecoderConfig,
    device: Device,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    rope: Rope,
}

/// How the weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Weights {
    /// As stored (Q4_1, Q8_0, ...): what serving uses.
    #[default]
    Quantized,
    /// Expanded to f32 at load. The quantized matmuls round their input rows to int8, so two
    /// computations that differ in the last bit can differ by a rounding step downstream; with f32
    /// weights they cannot, which makes exact comparisons of two forward paths possible.
    Dequantized,
}

impl DecoderModel {
    pub fn load<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        weights: Weights,
    ) -> Result<Self, ModelError> {
        let config = DecoderConfig::from_metadata(&content.metadata)?;
        let device = Device::Cpu;
        let mut tensor = |name: &str| content.tensor(reader, name, &device);
        let embeddings = tensor("token_embd.weight")?.dequantize(&device)?;
        let norm = tensor("output_norm.weight")?.dequantize(&device)?;
        // Small models tie the output projection to the embeddings.
        let output = match tensor("output.weight") {
            Ok(t) => t,
            Err(_) => tensor("token_embd.weight")?,
        };
        let output = Linear::new(output, weights)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut part = |name: &str| tensor(&format!("blk.{i}.{name}.weight"));
            let qkv = vec![part("attn_q")?, part("attn_k")?, part("attn_v")?];
            let gate_up = vec![part("ffn_gate")?, part("ffn_up")?];
            let (wo, down) = (part("attn_output")?, part("ffn_down")?);
            let qkv = Linear::stacked(qkv, weights)?;
            let gate_up = Linear::stacked(gate_up, weights)?;
            let (wo, down) = (Linear::new(wo, weights)?, Linear::new(down, weights)?);
            layers.push(Layer {
                attn_norm: tensor(&format!("blk.{i}.attn_norm.weight"))?.dequantize(&device)?,
                ffn_norm: tensor(&format!("blk.{i}.ffn_norm.weight"))?.dequantize(&device)?,
                qkv,
                wo,
                gate_up,
                down,
            });
        }
        let rope = Rope::new(config.head_dim, config.rope_base, config.context_length);
        Ok(Self {
            config,
            device,
            embeddings,
            layers,
            norm,
            output,
            rope,
        })
    }

    /// Whether the logits of a row of a step are, bit for bit, those of the same token fed alone:
    /// true when every weight product runs through the batch-invariant kernel (the attention, the
    /// norms and the rest are per row). Speculative decoding is exact only then.
    pub fn rows_are_independent(&self) -> bool {
        self.output.batch_invariant()
            && self.layers.iter().all(|l| {
                [&l.qkv, &l.wo, &l.gate_up, &l.down]
                    .iter()
                    .all(|m| m.batch_invariant())
            })
    }

    fn embed(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::from_slice(ids, ids.len(), &self.device)?;
        self.embeddings.index_select(&ids, 0)
    }

    /// Logits `[rows, vocab]` for the hidden states of `rows`.
    fn logits(&self, hidden: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
        let h = candle_nn::ops::rms_norm(hidden, &self.norm, self.config.rms_eps)?;
        self.output.forward(&h)?.to_dtype(DType::F32)?.to_vec2()
    }

    /// Runs one step for `chunks`, storing their keys and values in `cache`. Returns the logits after
    /// each of the last `logits` tokens of every chunk, in chunk order and row order within a chunk.
    /// A row's logits do not depend on the other rows of the step (the matmul tiles and the paged
    /// attention are batch-invariant), so a chunk of several rows gives, row for row, what feeding
    /// its tokens one step at a time would.
    pub fn forward(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut PagedKvCache,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        // The whole step runs on one of rayon's workers, so that the step's few hundred parallel
        // loops are split among the workers directly instead of each one being handed to the pool
        // from outside and waited for (a thread wake-up per loop, several percent of a decode step).
        rayon::scope(|_| self.forward_on_pool(chunks, cache))
    }

    fn forward_on_pool(
        &self,
        chunks: &[SeqChunk<'_>],
        cache: &mut PagedKvCache,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(chunks.len());
        let mut logit_rows = Vec::new();
        for chunk in chunks {
            let first = ids.len();
            ids.extend_from_slice(chunk.tokens);
            positions.extend(chunk.start..chunk.start + chunk.tokens.len());
            spans.push(SeqSpan {
                rows: first..ids.len(),
                start: chunk.start,
                blocks: chunk.blocks,
            });
            let wanted = chunk.logits.min(chunk.tokens.len());
            logit_rows.extend((ids.len() - wanted..ids.len()).map(|r| r as u32));
        }
        if let Some(&p) = positions.iter().max()
            && p >= c.context_length
        {
            return Err(ModelError::Unsupported(format!(
                "position {p} is past the model's context of {}",
                c.context_length
            )));
        }
        let rows = ids.len();
        let row_len = c.kv_heads * c.head_dim;
        // The layers work on plain rows (`[rows, hidden]`): a decode step is a few hundred small
        // operations, and candle's per-operation allocations and copies were a tenth of one.
        let mut x = self.embed(&ids)?.flatten_all()?.to_vec1::<f32>()?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm_rows(&x, &layer.attn_norm, c.rms_eps)?;
            let qkv = layer.qkv.forward_rows(&h, rows)?;
            let (mut q, mut k, v) = split_qkv(&qkv, rows, c.hidden, row_len);
            self.rope.apply(&mut q, c.heads, &positions);
            self.rope.apply(&mut k, c.kv_heads, &positions);
            for span in &spans {
                for (row, position) in span.rows.clone().zip(span.start..) {
                    let at = row * row_len..(row + 1) * row_len;
                    cache.write(l, span.blocks, position, &k[at.clone()], &v[at]);
                }
            }
            let attn = paged_attention(&q, c.heads, &spans, cache, l);
            add_into(&mut x, &layer.wo.forward_rows(&attn, rows)?);
            let mlp = layer.mlp_rows(&x, rows, c.rms_eps)?;
            add_into(&mut x, &mlp);
        }
        let x = Tensor::from_vec(x, (rows, c.hidden), &self.device)?;
        if logit_rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = logit_rows.len();
        let last = x.index_select(&Tensor::from_vec(logit_rows, n, &self.device)?, 0)?;
        Ok(self.logits(&last)?)
    }

    /// Logits after every position of `tokens`, recomputed from scratch with ordinary causal attention
    /// (candle matmuls over contiguous keys): no cache, no blocks.
    pub fn forward_uncached(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        let c = &self.config;
        let t = tokens.len();
        let group = c.heads / c.kv_heads;
        let (cos, sin) = self.rope.tensors(t, &self.device)?;
        let mut mask = vec![0f32; t * t];
        for i in 0..t {
            for j in i + 1..t {
                mask[i * t + j] = f32::NEG_INFINITY;
            }
        }
        let mask = Tensor::from_vec(mask, (t, t), &self.device)?
            .unsqueeze(0)?
            .repeat((group, 1, 1))?
            .reshape((1, 1, group * t, t))?;
        let mut x = self.embed(tokens)?;
        for layer in &self.layers {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, c.rms_eps)?;
            let qkv = layer.qkv.forward(&h)?;
            let kv = c.kv_heads * c.head_dim;
            let heads = |from: usize, n: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, from, n * c.head_dim)?
                    .reshape((1, t, n, c.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = candle_nn::rotary_emb::rope_i(&heads(0, c.heads)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&heads(c.hidden, c.kv_heads)?, &cos, &sin)?;
            let v = heads(c.hidden + kv, c.kv_heads)?;
            // Query heads that share a KV head are stacked along the rows.
            let q = q.reshape((1, c.kv_heads, group * t, c.head_dim))?;
            let scores = (q.matmul(&k.t()?)? / (c.head_dim as f64).sqrt())?;
            let scores = scores.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let attn = probs
                .matmul(&v)?
                .reshape((1, c.heads, t, c.head_dim))?
                .transpose(1, 2)?
                .reshape((t, c.hidden))?;
            x = (x + layer.wo.forward(&attn)?)?;
            x = (&x + layer.mlp(&x, c.rms_eps)?)?;
        }
        Ok(self.logits(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::kv_cache::KvCacheDtype;

    /// A small llama with deterministic pseudo-random f32 weights: 2 layers, 6 query heads over 2 KV
    /// heads of 8 dimensions.
    fn tiny_model() -> DecoderModel {
        let config = DecoderConfig {
            layers: 2,
            hidden: 48,
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
            vocab: 50,
            context_length: 64,
            rope_base: 10_000.0,
            rms_eps: 1e-5,
        };
        let device = Device::Cpu;
        let mut state = 1u64;
        let mut weights = |rows: usize, cols: usize| {
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
                })
                .collect();
            Tensor::from_vec(data, (rows, cols), &device).unwrap()
        };
        let h = config.hidden;
        let kv = config.kv_heads * config.head_dim;
        let ones = Tensor::ones(h, DType::F32, &device).unwrap();
        let layers = (0..config.layers)
            .map(|_| Layer {
                attn_norm: ones.clone(),
                qkv: Linear::Stacked(vec![
                    Linear::Candle(QMatMul::Tensor(weights(h, h))),
                    Linear::Candle(QMatMul::Tensor(weights(kv, h))),
                    Linear::Candle(QMatMul::Tensor(weights(kv, h))),
                ]),
                wo: Linear::Candle(QMatMul::Tensor(weights(h, h))),
                ffn_norm: ones.clone(),
                gate_up: Linear::Stacked(vec![
                    Linear::Candle(QMatMul::Tensor(weights(64, h))),
                    Linear::Candle(QMatMul::Tensor(weights(64, h))),
                ]),
                down: Linear::Candle(QMatMul::Tensor(weights(h, 64))),
            })
            .collect();
        DecoderModel {
            embeddings: weights(config.vocab, h),
            output: Linear::Candle(QMatMul::Tensor(weights(config.vocab, h))),
            norm: ones,
            layers,
            rope: Rope::new(config.head_dim, config.rope_base, config.context_length),
            device,
            config,
        }
    }

    #[test]
    fn paged_forward_equals_uncached_forward_on_a_tiny_model() {
        let model = tiny_model();
        let tokens: Vec<u32> = vec![3, 17, 9, 41, 0, 22, 8, 8, 30];
        let full = model.forward_uncached(&tokens).unwrap();
        let mut cache = PagedKvCache::new(model.config.kv_shape(), KvCacheDtype::F32, 2, 16);
        let blocks: Vec<BlockId> = vec![7, 3, 12, 0, 9];
        // Prefill 4, then one token at a time.
        let mut got = model
            .forward(
                &[SeqChunk {
                    tokens: &tokens[..4],
                    start: 0,
                    blocks: &blocks,
                    logits: 1,
                }],
                &mut cache,
            )
            .unwrap();
        for p in 4..tokens.len() {
            let next = model
                .forward(
                    &[SeqChunk {
                        tokens: &tokens[p..=p],
                        start: p,
                        blocks: &blocks,
                        logits: 1,
                    }],
                    &mut cache,
                )
                .unwrap();
            got.extend(next);
        }
        for (i, logits) in got.iter().enumerate() {
            let reference = &full[3 + i];
            for (a, b) in logits.iter().zip(reference) {
                assert!((a - b).abs() < 1e-4, "position {}: {a} vs {b}", 3 + i);
            }
        }
    }

    /// The decode path's plain-row layer math (rms_norm, the feed-forward's silu and product, the
    /// residual adds) gives candle's bits exactly, not just close: the same operations in the same
    /// order, so the paged path's outputs did not move when it left candle's tensors.
    #[test]
    fn plain_row_layer_math_equals_candles_bit_for_bit() {
        let model = tiny_model();
        let (rows, h) = (3, model.config.hidden);
        let x: Vec<f32> = (0..rows * h)
            .map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0)
            .collect();
        let tensor = Tensor::from_slice(&x, (rows, h), &Device::Cpu).unwrap();
        let layer = &model.layers[0];
        let alpha: Vec<f32> = (0..h).map(|i| 0.5 + i as f32 / h as f32).collect();
        let alpha = Tensor::from_vec(alpha, h, &Device::Cpu).unwrap();
        let ours = rms_norm_rows(&x, &alpha, 1e-5).unwrap();
        let theirs = candle_nn::ops::rms_norm(&tensor, &alpha, 1e-5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours, theirs, "rms_norm");
        let ours = layer.mlp_rows(&x, rows, 1e-5).unwrap();
        let theirs = layer
            .mlp(&tensor, 1e-5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(ours, theirs, "mlp");
        let mut ours = x.clone();
        add_into(&mut ours, &theirs);
        let sum = (&tensor + layer.mlp(&tensor, 1e-5).unwrap()).unwrap();
        assert_eq!(ours, sum.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn rope_matches_candles_interleaved_rope() {
        let (heads, t, d) = (3, 5, 8);
        let rope = Rope::new(d, 100_000.0, 16);
        let x: Vec<f32> = (0..heads * t * d)
            .map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0)
            .collect();
        // Ours works on [t, heads, d]; candle's on [1, heads, t, d].
        let mut ours = x.clone();
        let positions: Vec<usize> = (0..t).collect();
        rope.apply(&mut ours, heads, &positions);
        let device = Device::Cpu;
        let (cos, sin) = rope.tensors(t, &device).unwrap();
        let theirs = Tensor::from_vec(x, (1, t, heads, d), &device)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let theirs = candle_nn::rotary_emb::rope_i(&theirs, &cos, &sin)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norms() {
        let rope = Rope::new(4, 10_000.0, 8);
        let mut x = vec![1.0, 0.0, 0.0, 1.0];
        rope.apply(&mut x, 1, &[0]);
        assert_eq!(x, vec![1.0, 0.0, 0.0, 1.0], "position 0 is the identity");
        let mut y = vec![1.0, 2.0, 3.0, 4.0];
        rope.apply(&mut y, 1, &[5]);
        let norm = |v: &[f32]| (v[0] * v[0] + v[1] * v[1], v[2] * v[2] + v[3] * v[3]);
        let (a, b) = norm(&y);
        assert!((a - 5.0).abs() < 1e-4 && (b - 25.0).abs() < 1e-4, "{y:?}");
        // The first pair turns by 5 radians (theta_0 = 1).
        assert!((y[0] - (5f32.cos() - 2.0 * 5f32.sin())).abs() < 1e-5);
    }
}
