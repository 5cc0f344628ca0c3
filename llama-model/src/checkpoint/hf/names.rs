//! Hugging Face tensor names and the exercise's, and the row order of q/k projections.
//!
//! HF's conversion script stores `q_proj`/`k_proj` rows permuted for its rotate-half RoPE:
//! within each head, the rows of the pairs' first elements come first, then the second
//! elements (`view(heads, head_dim/2, 2, in).transpose(1, 2)`). Our RoPE rotates
//! interleaved pairs `(2j, 2j+1)`, so the loader puts the rows back: HF row
//! `h·head_dim + i·head_dim/2 + j` is our row `h·head_dim + 2j + i`. Only rows move, so the
//! result is exact.

use crate::checkpoint::name_map::NameMap;

/// Per-layer names: (ours after `layers.N.`, HF's after `model.layers.N.`).
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attention.compute_query.weight", "self_attn.q_proj.weight"),
    ("attention.compute_key.weight", "self_attn.k_proj.weight"),
    ("attention.compute_value.weight", "self_attn.v_proj.weight"),
    ("attention.compute_output.weight", "self_attn.o_proj.weight"),
    ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
    ("feed_forward.w2.weight", "mlp.down_proj.weight"),
    ("feed_forward.w3.weight", "mlp.up_proj.weight"),
    ("attention_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
];

/// Top-level names: (ours, HF's).
const TOP_NAMES: [(&str, &str); 3] = [
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// HF's naming.
const HF_NAMES: NameMap = NameMap {
    layer_prefix: "model.layers.",
    layers: &LAYER_NAMES,
    top: &TOP_NAMES,
};

/// The HF name of our parameter `ours`, if it has one.
pub fn to_hf(ours: &str) -> Option<String> {
    HF_NAMES.theirs(ours)
}

/// Our name of the HF tensor `hf`, if it is a Llama parameter.
pub fn from_hf(hf: &str) -> Option<String> {
    HF_NAMES.ours(hf)
}

/// Whether HF tensor `hf` is a buffer `transformers` once saved that is not a parameter
/// (the rotary `inv_freq`, recomputed from the config).
pub fn is_ignored_buffer(hf: &str) -> bool {
    hf.ends_with("rotary_emb.inv_freq")
}

/// Which RoPE-permuted projection our parameter `ours` is: `Some(true)` for a query,
/// `Some(false)` for a key, `None` otherwise.
pub fn rope_rows(ours: &str) -> Option<bool> {
    if ours.ends_with(".attention.compute_query.weight") {
        Some(true)
    } else if ours.ends_with(".attention.compute_key.weight") {
        Some(false)
    } else {
        None
    }
}

/// Put the rows of a `[heads·head_dim, cols]` q/k matrix stored in HF's half-split order
/// back in interleaved-pair order (see the module docs).
pub fn unpermute_rows(data: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    move_rows(data, heads, cols, false)
}

/// The inverse of [`unpermute_rows`]: our interleaved-pair rows in HF's half-split order,
/// as HF's conversion script stores them (for writing HF folders and PEFT adapters).
pub fn permute_rows(data: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    move_rows(data, heads, cols, true)
}

/// Move whole rows between HF's order (row `h·head_dim + i·head_dim/2 + j`) and ours (row
/// `h·head_dim + 2j + i`): towards HF's when `to_hf`.
fn move_rows(data: &[f32], heads: usize, cols: usize, to_hf: bool) -> Vec<f32> {
    let rows = data.len() / cols.max(1);
    let head_dim = rows / heads.max(1);
    let half = head_dim / 2;
    let mut out = vec![0.0f32; data.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf = (h * head_dim + i * half + j) * cols;
                let ours = (h * head_dim + 2 * j + i) * cols;
                let (from, to) = if to_hf { (ours, hf) } else { (hf, ours) };
                out[to..to + cols].copy_from_slice(&data[from..from + cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        HF_NAMES.assert_round_trips();
        assert_eq!(
            to_hf("layers.2.feed_forward.w1.weight").as_deref(),
            Some("model.layers.2.mlp.gate_proj.weight")
        );
        assert_eq!(
            from_hf("model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
        assert_eq!(from_hf("classifier.weight"), None);
    }

    #[test]
    fn unpermute_inverts_the_conversion_scripts_permute() {
        // HF's permute of 2 heads of head_dim 4, one column: interleaved rows
        // [a0 a1 b0 b1 | c0 c1 d0 d1] are stored as [a0 b0 a1 b1 | c0 d0 c1 d1].
        let ours = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let hf = [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
        assert_eq!(unpermute_rows(&hf, 2, 1), ours);
        // Whole rows move: two columns.
        let hf2: Vec<f32> = hf.iter().flat_map(|v| [*v, -v]).collect();
        let ours2: Vec<f32> = ours.iter().flat_map(|v| [*v, -v]).collect();
        assert_eq!(unpermute_rows(&hf2, 2, 2), ours2);
        assert_eq!(permute_rows(&ours, 2, 1), hf);
        assert_eq!(permute_rows(&ours2, 2, 2), hf2);
    }
}
