//! Hands out the KV cache's fixed-size blocks. The pool is sized once from the memory budget; a
//! sequence holds only the blocks its tokens fill (never its maximum context), and gives them back when
//! it finishes, is cancelled, is preempted or loses its client.
//!
//! Blocks are reference-counted: a full block of a prompt prefix is held by every sequence that
//! shares the prefix and by the prefix cache ([`super::prefix_cache`]), and returns to the pool
//! when its last holder releases it.

use thiserror::Error;

/// Index of a block in the KV cache pool.
pub type BlockId = u32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("block {0} is returned but is not allocated")]
    NotAllocated(BlockId),
    #[error("block {0} is shared but is not allocated")]
    ShareUnallocated(BlockId),
}

/// A free list over `0..total` and a holder count per block. Allocation is all-or-nothing so a
/// failed request leaves no partial holding behind.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<BlockId>,
    /// Holders of each block; 0 means free.
    refs: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(total: usize) -> Self {
        // Reversed so that blocks are handed out from 0 upwards (easier to read in a debugger).
        let free = (0..total as BlockId).rev().collect();
        Self {
            free,
            refs: vec![0; total],
        }
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Holders of `block` (0: free).
    pub fn refcount(&self, block: BlockId) -> u32 {
        self.refs.get(block as usize).copied().unwrap_or(0)
    }

    /// Blocks with more than one holder (`lexserve_kv_cache_shared_blocks`).
    pub fn shared_count(&self) -> usize {
        self.refs.iter().filter(|&&r| r > 1).count()
    }

    /// One more holder for each of `blocks`, which must all be allocated (nothing changes otherwise).
    pub fn share(&mut self, blocks: &[BlockId]) -> Result<(), BlockError> {
        if let Some(&b) = blocks.iter().find(|&&b| self.refcount(b) == 0) {
            return Err(BlockError::ShareUnallocated(b));
        }
        for &b in blocks {
            self.refs[b as usize] += 1;
        }
        Ok(())
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    pub fn used_count(&self) -> usize {
        self.total() - self.free_count()
    }

    /// Share of the pool in use, 0.0 ..= 1.0.
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
            self.refs[b as usize] = 1;
        }
        Some(blocks)
    }

    /// Drops one holder of each of `blocks`; a block whose last holder left returns to the pool.
    /// Releasing a block more often than it has holders is an error and nothing is released, so a
    /// bookkeeping bug shows up instead of corrupting another sequence's cache.
    pub fn release(&mut self, blocks: &[BlockId]) -> Result<(), BlockError> {
        let mut times = std::collections::HashMap::<BlockId, u32>::with_capacity(blocks.len());
        for &b in blocks {
            let n = times.entry(b).or_default();
            *n += 1;
            if *n > self.refcount(b) {
                return Err(BlockError::NotAllocated(b));
            }
        }
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            *r -= 1;
            if *r == 0 {
                self.free.push(b);
            }
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
    fn a_shared_block_is_freed_by_its_last_holder() {
        let mut a = BlockAllocator::new(2);
        let b = a.allocate(1).unwrap();
        a.share(&b).unwrap();
        a.share(&b).unwrap();
        assert_eq!(a.refcount(b[0]), 3);
        assert_eq!(a.shared_count(), 1);
        a.release(&b).unwrap();
        a.release(&b).unwrap();
        assert_eq!(a.used_count(), 1, "one holder left");
        assert_eq!(a.shared_count(), 0);
        a.release(&b).unwrap();
        assert_eq!(a.used_count(), 0);
        assert_eq!(a.release(&b), Err(BlockError::NotAllocated(b[0])));
        assert_eq!(a.share(&b), Err(BlockError::ShareUnallocated(b[0])));
        // Releasing more times than there are holders, in one call, frees nothing.
        let c = a.allocate(1).unwrap();
        a.share(&c).unwrap();
        assert!(a.release(&[c[0], c[0], c[0]]).is_err());
        assert_eq!(a.refcount(c[0]), 2);
    }

    #[test]
    fn blocks_round_up() {
        assert_eq!(blocks_for(0, 16), 0);
        assert_eq!(blocks_for(1, 16), 1);
        assert_eq!(blocks_for(16, 16), 1);
        assert_eq!(blocks_for(17, 16), 2);
    }
}
