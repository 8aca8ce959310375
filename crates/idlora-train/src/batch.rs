//! Micro-batches: a seeded, length-aware order of the examples of each epoch, and padding into the
//! model's input.
//!
//! Length-aware batching shuffles the epoch, then sorts windows of [`BUCKET`] micro-batches by
//! length and cuts them, so that rows of one micro-batch have similar lengths (little padding) while
//! the order stays random at the scale of the epoch. The micro-batches are shuffled again.

use idlora_models::ForwardInput;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::template::Example;

/// Micro-batches per sorting window.
pub const BUCKET: usize = 16;

/// The micro-batches (lists of example indices) of one epoch over `members` (indices into
/// `lengths`). The same arguments always give the same plan.
pub fn epoch_plan(
    members: &[usize],
    lengths: &[usize],
    micro_batch: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed.wrapping_add(0x5851_F42D_4C95_7F2D_u64.wrapping_mul(epoch as u64 + 1)),
    );
    let mut order = members.to_vec();
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    for window in order.chunks_mut(micro_batch.max(1) * BUCKET) {
        // Stable sort on (length, index): ties keep the shuffled order.
        window.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(window.chunks(micro_batch.max(1)).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

/// A padded micro-batch and the positions the loss covers.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The model input (right-padded rows; causal attention keeps padding invisible to real tokens).
    pub input: ForwardInput,
    /// Flat positions `row * seq + t` whose output predicts a target token.
    pub positions: Vec<usize>,
    /// The target token of each position.
    pub targets: Vec<u32>,
    /// Tokens in the batch, padding excluded.
    pub real_tokens: usize,
}

impl Batch {
    /// Tokens the loss is computed on.
    pub fn target_count(&self) -> usize {
        self.targets.len()
    }
}

/// Pads `rows` to the longest one with `pad` on the right. The output at position `t` predicts
/// token `t + 1`; only response tokens are targets.
pub fn collate(rows: &[&Example], pad: u32) -> Batch {
    let seq = rows.iter().map(|e| e.tokens.len()).max().unwrap_or(1).max(1);
    let mut tokens = Vec::with_capacity(rows.len() * seq);
    let mut positions = Vec::new();
    let mut targets = Vec::new();
    for (r, e) in rows.iter().enumerate() {
        tokens.extend_from_slice(&e.tokens);
        tokens.extend(std::iter::repeat_n(pad, seq - e.tokens.len()));
        for t in e.prompt_len..e.tokens.len() {
            positions.push(r * seq + t - 1);
            targets.push(e.tokens[t]);
        }
    }
    let input = ForwardInput {
        tokens,
        batch: rows.len(),
        seq,
        positions: None,
        // Right padding needs no mask: a real token never attends to a later position, so
        // attention keeps its mask-free causal path.
        key_padding: None,
    };
    let real_tokens = rows.iter().map(|e| e.tokens.len()).sum();
    Batch { input, positions, targets, real_tokens }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_pads_right_and_targets_responses() {
        let a = Example { tokens: vec![5, 6, 7, 8], prompt_len: 2 };
        let b = Example { tokens: vec![9, 10], prompt_len: 1 };
        let batch = collate(&[&a, &b], 0);
        assert_eq!(batch.input.tokens, [5, 6, 7, 8, 9, 10, 0, 0]);
        assert_eq!((batch.input.batch, batch.input.seq), (2, 4));
        // Row 0: positions 1, 2 predict 7, 8. Row 1: position 4 (= 1 * 4 + 0) predicts 10.
        assert_eq!(batch.positions, [1, 2, 4]);
        assert_eq!(batch.targets, [7, 8, 10]);
        assert_eq!(batch.real_tokens, 6);
    }

    #[test]
    fn plans_are_seeded_complete_and_length_sorted_per_window() {
        let lengths: Vec<usize> = (0..100).map(|i| (i * 37) % 91 + 1).collect();
        let members: Vec<usize> = (0..100).collect();
        let p1 = epoch_plan(&members, &lengths, 4, 7, 0);
        assert_eq!(p1, epoch_plan(&members, &lengths, 4, 7, 0));
        assert_ne!(p1, epoch_plan(&members, &lengths, 4, 7, 1));
        let mut all: Vec<usize> = p1.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, members);
        assert_eq!(p1.len(), 25);
        for b in &p1 {
            assert!(b.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]]), "{b:?}");
        }
    }
}
