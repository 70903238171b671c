//! The prefix cache: full KV blocks of prompts (and generated text) that sequences computed, kept
//! so that a later sequence starting with the same tokens takes them by reference instead of
//! computing them again (a shared system prompt is prefilled once).
//!
//! Only FULL blocks are cached, as a trie: a node is a block of `block_size` tokens under its parent
//! node (the block before it), so a node stands for ALL the tokens from position 0 to its end. The
//! trie is keyed by the tokens themselves, not a hash of them, so two different prefixes can never
//! be taken for each other.
//!
//! The cache is one holder of each of its blocks (the allocator counts it). A block only the cache
//! holds is idle memory: it is evicted, least recently used leaf first, whenever the scheduler needs
//! a block and the pool has none free, before any running sequence is preempted. So the cache is
//! bounded by the pool, and never costs a running sequence its place.

use std::collections::HashMap;

use super::block_allocator::BlockId;

/// A node of the trie; [`ROOT`] is the empty prefix.
pub type NodeId = u64;

pub const ROOT: NodeId = 0;

#[derive(Debug, Clone)]
struct Node {
    block: BlockId,
    parent: NodeId,
    tokens: Vec<u32>,
    /// Cached blocks that continue this one: a node is evicted only once it has none, so every
    /// cached node stays reachable from the root.
    children: usize,
    last_used: u64,
}

/// What [`PrefixCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new node holding the caller's block: the caller adds the cache as a holder.
    New(NodeId),
    /// The prefix was cached already, in this node's block.
    Existing(NodeId, BlockId),
}

#[derive(Debug, Clone, Default)]
pub struct PrefixCache {
    block_size: usize,
    nodes: HashMap<NodeId, Node>,
    index: HashMap<(NodeId, Vec<u32>), NodeId>,
    next: NodeId,
    clock: u64,
}

impl PrefixCache {
    pub fn new(block_size: usize) -> Self {
        Self {
            block_size,
            next: ROOT + 1,
            ..Self::default()
        }
    }

    /// Blocks the cache holds.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cached nodes and blocks of the longest cached prefix of `tokens`, in order, marked
    /// recently used.
    pub fn lookup(&mut self, tokens: &[u32]) -> Vec<(NodeId, BlockId)> {
        self.clock += 1;
        let mut found = Vec::new();
        let mut parent = ROOT;
        for chunk in tokens.chunks_exact(self.block_size) {
            let Some(&id) = self.index.get(&(parent, chunk.to_vec())) else {
                break;
            };
            let Some(node) = self.nodes.get_mut(&id) else {
                break;
            };
            node.last_used = self.clock;
            found.push((id, node.block));
            parent = id;
        }
        found
    }

    /// Caches `block`, which holds `tokens` (one full block) after the prefix `parent` stands for.
    pub fn insert(&mut self, parent: NodeId, tokens: &[u32], block: BlockId) -> Inserted {
        self.clock += 1;
        let key = (parent, tokens.to_vec());
        if let Some(&id) = self.index.get(&key)
            && let Some(node) = self.nodes.get_mut(&id)
        {
            node.last_used = self.clock;
            return Inserted::Existing(id, node.block);
        }
        let id = self.next;
        self.next += 1;
        if let Some(p) = self.nodes.get_mut(&parent) {
            p.children += 1;
        }
        self.nodes.insert(
            id,
            Node {
                block,
                parent,
                tokens: key.1.clone(),
                children: 0,
                last_used: self.clock,
            },
        );
        self.index.insert(key, id);
        Inserted::New(id)
    }

    /// Drops the least recently used leaf whose block nobody else holds (`refcount` is the
    /// allocator's), and returns its block for the caller to release; `None` if every cached block
    /// is in use.
    pub fn evict(&mut self, refcount: impl Fn(BlockId) -> u32) -> Option<BlockId> {
        let (&id, _) = self
            .nodes
            .iter()
            .filter(|(_, n)| n.children == 0 && refcount(n.block) == 1)
            .min_by_key(|(id, n)| (n.last_used, **id))?;
        let node = self.nodes.remove(&id)?;
        self.index.remove(&(node.parent, node.tokens));
        if let Some(p) = self.nodes.get_mut(&node.parent) {
            p.children -= 1;
        }
        Some(node.block)
    }

    /// Every cached block (for invariants and for reclaiming the pool).
    pub fn blocks(&self) -> impl Iterator<Item = BlockId> + '_ {
        self.nodes.values().map(|n| n.block)
    }

    /// All the tokens the prefix ending in `id` stands for, if `id` is cached.
    pub fn prefix_tokens(&self, mut id: NodeId) -> Option<Vec<u32>> {
        let mut parts = Vec::new();
        while id != ROOT {
            let node = self.nodes.get(&id)?;
            parts.push(node.tokens.as_slice());
            id = node.parent;
        }
        Some(parts.into_iter().rev().flatten().copied().collect())
    }

    /// The node caching `block`, if any.
    pub fn node_of(&self, block: BlockId) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.block == block)
            .map(|(id, _)| *id)
    }

    pub fn clear(&mut self) {
        self.nodes.clear();
        self.index.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_found_block_by_block_and_only_whole() {
        let mut c = PrefixCache::new(2);
        let Inserted::New(a) = c.insert(ROOT, &[1, 2], 10) else {
            panic!("new")
        };
        let Inserted::New(b) = c.insert(a, &[3, 4], 11) else {
            panic!("new")
        };
        assert_eq!(c.lookup(&[1, 2, 3, 4, 5]), vec![(a, 10), (b, 11)]);
        assert_eq!(c.lookup(&[1, 2, 3]), vec![(a, 10)], "only full blocks");
        assert_eq!(c.lookup(&[9, 2, 3, 4]), vec![], "the first block differs");
        // The same block tokens after another prefix are another node.
        assert_eq!(c.lookup(&[3, 4]), vec![]);
        assert_eq!(c.insert(a, &[3, 4], 12), Inserted::Existing(b, 11));
        assert_eq!(c.prefix_tokens(b), Some(vec![1, 2, 3, 4]));
    }

    #[test]
    fn eviction_takes_unused_leaves_least_recent_first() {
        let mut c = PrefixCache::new(1);
        let Inserted::New(a) = c.insert(ROOT, &[1], 0) else {
            panic!()
        };
        let Inserted::New(_) = c.insert(a, &[2], 1) else {
            panic!()
        };
        let Inserted::New(_) = c.insert(ROOT, &[7], 2) else {
            panic!()
        };
        c.lookup(&[1, 2]);
        // Block 2 is the least recently used leaf; block 0 is not a leaf.
        assert_eq!(c.evict(|_| 1), Some(2));
        // Block 1 is in use by a sequence too: not evicted, and its parent is not a leaf.
        assert_eq!(c.evict(|b| if b == 1 { 2 } else { 1 }), None);
        assert_eq!(c.evict(|_| 1), Some(1));
        assert_eq!(c.evict(|_| 1), Some(0));
        assert!(c.is_empty());
        assert_eq!(c.lookup(&[1]), vec![]);
    }
}
