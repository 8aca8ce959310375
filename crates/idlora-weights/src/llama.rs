//! llama.cpp's conventions for `llama`-architecture GGUF files, mapped back to Hugging Face's.
//!
//! llama.cpp renames tensors (`blk.3.attn_q.weight`) and permutes the rows of the query and key
//! projections so that RoPE can rotate interleaved pairs. Everything above this crate works with
//! Hugging Face names and row order, so GGUF tensors are renamed and un-permuted on read.

/// What a GGUF tensor becomes under Hugging Face's conventions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfTensor {
    /// The Hugging Face name (`model.layers.3.self_attn.q_proj.weight`).
    pub name: String,
    /// Heads whose rows llama.cpp interleaved (query: attention heads; key: KV heads), if any.
    pub unpermute_heads: Option<usize>,
}

/// Maps a llama.cpp tensor name to Hugging Face's, given the head counts from the metadata.
/// Names without a Hugging Face counterpart (`rope_freqs.weight`) are returned unchanged.
pub fn hf_name(gguf_name: &str, n_head: usize, n_head_kv: usize) -> HfTensor {
    let plain = |name: String| HfTensor { name, unpermute_heads: None };
    match gguf_name {
        "token_embd.weight" => return plain("model.embed_tokens.weight".into()),
        "output_norm.weight" => return plain("model.norm.weight".into()),
        "output.weight" => return plain("lm_head.weight".into()),
        _ => {}
    }
    let Some(rest) = gguf_name.strip_prefix("blk.") else { return plain(gguf_name.into()) };
    let Some((layer, tail)) = rest.split_once('.') else { return plain(gguf_name.into()) };
    if layer.parse::<usize>().is_err() {
        return plain(gguf_name.into());
    }
    let (module, heads) = match tail {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(n_head)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(n_head_kv)),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return plain(gguf_name.into()),
    };
    HfTensor { name: format!("model.layers.{layer}.{module}"), unpermute_heads: heads }
}

/// Undoes llama.cpp's query/key row permutation in place.
///
/// llama.cpp stores row `h*hd + 2*j + half` where Hugging Face has row `h*hd + half*hd/2 + j`
/// (`hd` the head dimension, `j < hd/2`, `half` 0 or 1). Returns `None` when `rows` is not a
/// multiple of `2 * n_head`.
pub fn unpermute_rows(data: &mut [f32], rows: usize, cols: usize, n_head: usize) -> Option<()> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || data.len() != rows * cols {
        return None;
    }
    let hd = rows / n_head;
    let src = data.to_vec();
    for h in 0..n_head {
        for half in 0..2 {
            for j in 0..hd / 2 {
                let hf = h * hd + half * hd / 2 + j;
                let gg = h * hd + 2 * j + half;
                data[hf * cols..(hf + 1) * cols].copy_from_slice(&src[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_by_hand() {
        // One head of dimension 4, one column: GGUF rows g0..g3 hold HF rows 0, 2, 1, 3.
        let mut rows = vec![10.0, 12.0, 11.0, 13.0];
        unpermute_rows(&mut rows, 4, 1, 1).unwrap();
        assert_eq!(rows, [10.0, 11.0, 12.0, 13.0]);
    }

    /// llama.cpp's `permute` written as numpy does it: reshape(n_head, 2, hd/2, cols), swap axes 1, 2.
    fn permute(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let hd = rows / n_head;
        let mut out = vec![0.0; data.len()];
        for h in 0..n_head {
            for j in 0..hd / 2 {
                for half in 0..2 {
                    let dst = h * hd + j * 2 + half; // position after the swap
                    let src = h * hd + half * hd / 2 + j;
                    out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_permute() {
        let (rows, cols, heads) = (24, 3, 3);
        let original: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut data = permute(&original, rows, cols, heads);
        assert_ne!(data, original);
        unpermute_rows(&mut data, rows, cols, heads).unwrap();
        assert_eq!(data, original);
        assert!(unpermute_rows(&mut data, rows, cols, 5).is_none());
    }

    #[test]
    fn names() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight", 9, 3),
            HfTensor { name: "model.layers.12.self_attn.k_proj.weight".into(), unpermute_heads: Some(3) }
        );
        assert_eq!(hf_name("blk.0.ffn_down.weight", 9, 3).name, "model.layers.0.mlp.down_proj.weight");
        assert_eq!(hf_name("token_embd.weight", 9, 3).name, "model.embed_tokens.weight");
        assert_eq!(hf_name("rope_freqs.weight", 9, 3).name, "rope_freqs.weight");
        assert_eq!(hf_name("blk.x.attn_q.weight", 9, 3).name, "blk.x.attn_q.weight");
    }
}
