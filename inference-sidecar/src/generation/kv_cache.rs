//! The KV cache's memory: one pool of fixed-size blocks per layer, for keys and for values, allocated
//! once from the memory budget. Which blocks belong to which sequence is the block table's business
//! (the scheduler's); this file only knows how to find a token's slot in a block, how big the pool
//! can be, and how a row is stored: f32 as computed, or f16 (half the bytes, so twice the tokens per
//! budget and half the memory each attention step reads; rounded to nearest, as llama.cpp's default
//! cache does).

use half::f16;

use super::block_allocator::BlockId;
pub use lexserve_contract::KvCacheDtype;

/// Shape of what is cached per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Values per token per layer, for keys or for values.
    pub fn row_len(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes the cache holds per token: keys and values, every layer, stored as `dtype`.
    pub fn bytes_per_token(&self, dtype: KvCacheDtype) -> usize {
        2 * self.layers * self.row_len() * dtype.bytes()
    }
}

/// How many blocks of `block_size` tokens, `bytes_per_token` each (the cache's, or the sum of the
/// caches that share one block table), fit in `budget_bytes`.
pub fn blocks_in_budget(bytes_per_token: usize, block_size: usize, budget_bytes: u64) -> usize {
    let per_block = (bytes_per_token * block_size) as u64;
    usize::try_from(budget_bytes / per_block.max(1)).unwrap_or(usize::MAX)
}

/// Keys and values of one layer: `[blocks, block_size, kv_heads, head_dim]` each, row-major.
pub struct LayerRows<T> {
    pub keys: Vec<T>,
    pub values: Vec<T>,
}

/// One layer's pool in the cache's dtype.
pub enum LayerKv {
    F32(LayerRows<f32>),
    F16(LayerRows<f16>),
}

impl LayerKv {
    /// `len` zeroed values each for keys and values. `vec![0; n]` of a primitive is a calloc: pages
    /// are committed by the OS as blocks are first written, so an idle server does not pay for a
    /// cache it has not used yet (f16 rows are allocated as their bits, `u16`, for that reason).
    fn zeroed(dtype: KvCacheDtype, len: usize) -> Self {
        use half::vec::HalfBitsVecExt;
        match dtype {
            KvCacheDtype::F32 => Self::F32(LayerRows {
                keys: vec![0.0; len],
                values: vec![0.0; len],
            }),
            KvCacheDtype::F16 => Self::F16(LayerRows {
                keys: vec![0u16; len].reinterpret_into(),
                values: vec![0u16; len].reinterpret_into(),
            }),
        }
    }
}

pub struct PagedKvCache {
    pub shape: KvShape,
    pub dtype: KvCacheDtype,
    pub block_size: usize,
    pub num_blocks: usize,
    pub layers: Vec<LayerKv>,
}

impl PagedKvCache {
    /// The whole pool, zeroed (and not yet committed: see [`LayerKv`]).
    pub fn new(shape: KvShape, dtype: KvCacheDtype, block_size: usize, num_blocks: usize) -> Self {
        let len = num_blocks * block_size * shape.row_len();
        let layers = (0..shape.layers)
            .map(|_| LayerKv::zeroed(dtype, len))
            .collect();
        Self {
            shape,
            dtype,
            block_size,
            num_blocks,
            layers,
        }
    }

    /// Bytes of key and value storage (what the budget paid for).
    pub fn bytes(&self) -> usize {
        self.num_blocks * self.block_size * self.shape.bytes_per_token(self.dtype)
    }

    /// Tokens the pool can hold.
    pub fn capacity_tokens(&self) -> usize {
        self.num_blocks * self.block_size
    }

    /// Offset of token `position`'s row in a layer's key or value pool.
    pub fn row_offset(&self, blocks: &[BlockId], position: usize) -> usize {
        let block = blocks[position / self.block_size] as usize;
        (block * self.block_size + position % self.block_size) * self.shape.row_len()
    }

    /// Stores one token's key and value rows (`kv_heads * head_dim` each) at `position`, converted
    /// to the cache's dtype.
    pub fn write(
        &mut self,
        layer: usize,
        blocks: &[BlockId],
        position: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let offset = self.row_offset(blocks, position);
        let n = self.shape.row_len();
        match &mut self.layers[layer] {
            LayerKv::F32(rows) => {
                rows.keys[offset..offset + n].copy_from_slice(k);
                rows.values[offset..offset + n].copy_from_slice(v);
            }
            LayerKv::F16(rows) => {
                f32_to_f16(k, &mut rows.keys[offset..offset + n]);
                f32_to_f16(v, &mut rows.values[offset..offset + n]);
            }
        }
    }
}

/// `dst[i] = src[i]` rounded to the nearest f16 (ties to even), eight at a time with F16C's
/// `vcvtps2ph` where the CPU has it.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: F16C is present; the lengths are equal (checked above).
        done = unsafe { f32_to_f16_f16c(src, dst) };
    }
    for (d, s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = f16::from_f32(*s);
    }
}

/// Converts the leading multiple of 8 of `src` into `dst`; returns how many it converted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c")]
unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [f16]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len() / 8 * 8;
    let (ps, pd) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: every access covers 8 values below `n <= src.len() == dst.len()`; f16 is 2 bytes, so
    // 8 of them are one unaligned 128-bit store.
    unsafe {
        for i in (0..n).step_by(8) {
            let half = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(ps.add(i)));
            _mm_storeu_si128(pd.add(i).cast::<__m128i>(), half);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: KvShape = KvShape {
        layers: 30,
        kv_heads: 3,
        head_dim: 64,
    };

    #[test]
    fn sizes_follow_the_model() {
        // 2 (K and V) x 30 layers x 3 heads x 64 dims x 4 bytes.
        assert_eq!(SMOLLM2.bytes_per_token(KvCacheDtype::F32), 46_080);
        assert_eq!(
            blocks_in_budget(SMOLLM2.bytes_per_token(KvCacheDtype::F32), 16, 256 << 20),
            364
        );
        assert_eq!(
            blocks_in_budget(SMOLLM2.bytes_per_token(KvCacheDtype::F32), 16, 1000),
            0
        );
        let cache = PagedKvCache::new(SMOLLM2, KvCacheDtype::F32, 16, 4);
        assert_eq!(cache.bytes(), 4 * 16 * 46_080);
        assert_eq!(cache.capacity_tokens(), 64);
    }

    #[test]
    fn f16_halves_the_bytes_and_doubles_the_blocks() {
        // 2 bytes a value: llama.cpp's figure for SmolLM2 with its default f16 cache.
        assert_eq!(SMOLLM2.bytes_per_token(KvCacheDtype::F16), 23_040);
        assert_eq!(
            blocks_in_budget(SMOLLM2.bytes_per_token(KvCacheDtype::F16), 16, 256 << 20),
            728
        );
        let cache = PagedKvCache::new(SMOLLM2, KvCacheDtype::F16, 16, 4);
        assert_eq!(cache.bytes(), 4 * 16 * 23_040);
        assert!(matches!(&cache.layers[0], LayerKv::F16(rows) if rows.keys.len() == 4 * 16 * 192));
    }

    /// The F16C conversion and the portable one round alike, bit for bit: ties to even, subnormals,
    /// overflow to infinity, signed zeros; lengths that leave a scalar tail.
    #[test]
    fn f16_rows_round_to_nearest_on_every_path() {
        let mut src = crate::generation::test_values(1000, 3, 20.0);
        src.extend([
            0.0,
            -0.0,
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            6.0e-8,
            -3.0e-6,
            65504.0,
            65520.0,
            -1.0e6,
            f32::INFINITY,
        ]);
        for len in [src.len(), 8, 13, 3] {
            let mut got = vec![f16::ZERO; len];
            f32_to_f16(&src[..len], &mut got);
            for (g, s) in got.iter().zip(&src) {
                assert_eq!(g.to_bits(), f16::from_f32_const(*s).to_bits(), "{s}");
            }
        }
        let mut ties = [f16::ZERO; 2];
        f32_to_f16(
            &[1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)],
            &mut ties,
        );
        assert_eq!(ties.map(f16::to_f32), [1.0, 1.0 + 2f32.powi(-9)]);
    }

    #[test]
    fn rows_land_in_the_tables_blocks() {
        let shape = KvShape {
            layers: 1,
            kv_heads: 1,
            head_dim: 2,
        };
        for dtype in [KvCacheDtype::F32, KvCacheDtype::F16] {
            let mut cache = PagedKvCache::new(shape, dtype, 2, 4);
            let table = [3, 1];
            cache.write(0, &table, 0, &[1.0, 1.0], &[2.0, 2.0]);
            cache.write(0, &table, 3, &[5.0, 5.0], &[6.5, 6.5]);
            assert_eq!(cache.row_offset(&table, 0), 3 * 2 * 2);
            assert_eq!(cache.row_offset(&table, 3), (2 + 1) * 2);
            let (keys, values): (Vec<f32>, Vec<f32>) = match &cache.layers[0] {
                LayerKv::F32(rows) => (rows.keys.clone(), rows.values.clone()),
                LayerKv::F16(rows) => (
                    rows.keys.iter().map(|x| x.to_f32()).collect(),
                    rows.values.iter().map(|x| x.to_f32()).collect(),
                ),
            };
            assert_eq!(&keys[12..14], &[1.0, 1.0], "{dtype:?}");
            assert_eq!(&values[6..8], &[6.5, 6.5], "{dtype:?}");
        }
    }
}
