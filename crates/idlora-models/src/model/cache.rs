//! The KV cache of generation.

use burn::tensor::{Int, Tensor};

/// Keys and values of the tokens seen so far, per layer (`[b, kv_heads, t, head_dim]`).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens cached so far (per row).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }

    /// Records that `len` tokens per row are cached (after all layers appended this step's).
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Keeps only the rows in `keep` (batch indices), for dropping finished sequences.
    pub fn retain_rows(&mut self, keep: &Tensor<1, Int>) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, keep.clone());
            *v = v.clone().select(0, keep.clone());
        }
    }
}
