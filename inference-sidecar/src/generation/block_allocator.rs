//! Hands out the KV cache's fixed-size blocks. The pool is sized once from the memory budget; a
//! sequence holds only the blocks its tokens fill (never its maximum context), and gives them back when
//! it finishes, is cancelled, is preempted or loses its client.

use thiserror::Error;

/// Index of a block in the KV cache pool.
pub type BlockId = u32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("block {0} is returned but is not allocated")]
    NotAllocated(BlockId),
}

/// A free list over `0..total`. Allocation is all-or-nothing so a failed request leaves no partial
/// holding behind.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<BlockId>,
    allocated: Vec<bool>,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        // Reversed so that blocks are handed out from 0 upwards (easier to read in a debugger).
        let free = (0..total as BlockId).rev().collect();
        Self {
            free,
            allocated: vec![false; total],
        }
    }

    pub fn total(&self) -> usize {
        self.allocated.len()
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    pub fn used_count(&self) -> usize {
        self.total() - self.free_count()
    }

    /// Share of the pool in use, 0.0 ..= 1.0 (`lexserve_kv_cache_usage_ratio`).
    pub fn usage_ratio(&self) -> f64 {
        if self.total() == 0 {
            return 0.0;
        }
        self.used_count() as f64 / self.total() as f64
    }

    /// `n` blocks, or `None` (and nothing taken) when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let blocks = self.free.split_off(self.free.len() - n);
        for &b in &blocks {
            self.allocated[b as usize] = true;
        }
        Some(blocks)
    }

    /// Returns `blocks` to the pool. A block that is not allocated is an error and nothing is freed,
    /// so a bookkeeping bug shows up instead of corrupting another sequence's cache.
    pub fn release(&mut self, blocks: &[BlockId]) -> Result<(), BlockError> {
        let mut seen = std::collections::HashSet::with_capacity(blocks.len());
        for &b in blocks {
            if !self.allocated.get(b as usize).copied().unwrap_or(false) || !seen.insert(b) {
                return Err(BlockError::NotAllocated(b));
            }
        }
        for &b in blocks {
            self.allocated[b as usize] = false;
            self.free.push(b);
        }
        Ok(())
    }
}

/// Blocks needed to hold `tokens` tokens.
pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut a = BlockAllocator::new(4);
        let first = a.allocate(3).unwrap();
        assert_eq!(first.len(), 3);
        assert_eq!(a.allocate(2), None);
        assert_eq!(a.free_count(), 1);
        a.release(&first).unwrap();
        assert_eq!(a.free_count(), 4);
    }

    #[test]
    fn usage_ratio_counts_blocks_in_use() {
        let mut a = BlockAllocator::new(8);
        assert_eq!(a.usage_ratio(), 0.0);
        let b = a.allocate(2).unwrap();
        assert_eq!(a.usage_ratio(), 0.25);
        let c = a.allocate(6).unwrap();
        assert_eq!(a.usage_ratio(), 1.0);
        a.release(&b).unwrap();
        a.release(&c).unwrap();
        assert_eq!(a.usage_ratio(), 0.0);
        assert_eq!(BlockAllocator::new(0).usage_ratio(), 0.0);
    }

    #[test]
    fn double_release_is_refused() {
        let mut a = BlockAllocator::new(2);
        let b = a.allocate(1).unwrap();
        a.release(&b).unwrap();
        assert_eq!(a.release(&b), Err(BlockError::NotAllocated(b[0])));
        assert_eq!(a.release(&[7]), Err(BlockError::NotAllocated(7)));
        let c = a.allocate(1).unwrap();
        assert!(a.release(&[c[0], c[0]]).is_err());
        assert_eq!(a.used_count(), 1, "a refused release frees nothing");
    }

    #[test]
    fn blocks_round_up() {
        assert_eq!(blocks_for(0, 16), 0);
        assert_eq!(blocks_for(1, 16), 1);
        assert_eq!(blocks_for(16, 16), 1);
        assert_eq!(blocks_for(17, 16), 2);
    }
}
