//! The KV cache's memory: one pool of fixed-size blocks per layer, for keys and for values, allocated
//! once from the memory budget. Which blocks belong to which sequence is the block table's business
//! (the scheduler's); this file only knows how to find a token's slot in a block and how big the pool
//! can be.

use super::block_allocator::BlockId;

/// Shape of what is cached per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// f32 values per token per layer, for keys or for values.
    pub fn row_len(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes the cache holds per token: keys and values, every layer, f32.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.layers * self.row_len() * std::mem::size_of::<f32>()
    }
}

/// How many blocks of `block_size` tokens fit in `budget_bytes`.
pub fn blocks_in_budget(shape: KvShape, block_size: usize, budget_bytes: u64) -> usize {
    let per_block = (shape.bytes_per_token() * block_size) as u64;
    usize::try_from(budget_bytes / per_block.max(1)).unwrap_or(usize::MAX)
}

/// Keys and values of one layer: `[blocks, block_size, kv_heads, head_dim]` each, row-major.
pub struct LayerKv {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

pub struct PagedKvCache {
    pub shape: KvShape,
    pub block_size: usize,
    pub num_blocks: usize,
    pub layers: Vec<LayerKv>,
}

impl PagedKvCache {
    /// The whole pool, zeroed. `vec![0.0; n]` is a calloc: pages are committed by the OS as blocks are
    /// first written, so an idle server does not pay for a cache it has not used yet.
    pub fn new(shape: KvShape, block_size: usize, num_blocks: usize) -> Self {
        let len = num_blocks * block_size * shape.row_len();
        let layers = (0..shape.layers)
            .map(|_| LayerKv {
                keys: vec![0.0; len],
                values: vec![0.0; len],
            })
            .collect();
        Self {
            shape,
            block_size,
            num_blocks,
            layers,
        }
    }

    /// Bytes of key and value storage (what the budget paid for).
    pub fn bytes(&self) -> usize {
        self.num_blocks * self.block_size * self.shape.bytes_per_token()
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

    /// Stores one token's key and value rows (`kv_heads * head_dim` each) at `position`.
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
        let layer = &mut self.layers[layer];
        layer.keys[offset..offset + n].copy_from_slice(k);
        layer.values[offset..offset + n].copy_from_slice(v);
    }
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
        assert_eq!(SMOLLM2.bytes_per_token(), 46_080);
        assert_eq!(blocks_in_budget(SMOLLM2, 16, 256 << 20), 364);
        assert_eq!(blocks_in_budget(SMOLLM2, 16, 1000), 0);
        let cache = PagedKvCache::new(SMOLLM2, 16, 4);
        assert_eq!(cache.bytes(), 4 * 16 * 46_080);
        assert_eq!(cache.capacity_tokens(), 64);
    }

    #[test]
    fn rows_land_in_the_tables_blocks() {
        let shape = KvShape {
            layers: 1,
            kv_heads: 1,
            head_dim: 2,
        };
        let mut cache = PagedKvCache::new(shape, 2, 4);
        let table = [3, 1];
        cache.write(0, &table, 0, &[1.0, 1.0], &[2.0, 2.0]);
        cache.write(0, &table, 3, &[5.0, 5.0], &[6.0, 6.0]);
        assert_eq!(cache.row_offset(&table, 0), 3 * 2 * 2);
        assert_eq!(&cache.layers[0].keys[12..14], &[1.0, 1.0]);
        assert_eq!(cache.row_offset(&table, 3), (2 + 1) * 2);
        assert_eq!(&cache.layers[0].values[6..8], &[6.0, 6.0]);
    }
}
