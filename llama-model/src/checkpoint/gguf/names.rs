//! llama.cpp's tensor names and ours. llama.cpp's converter stores q/k rows in Meta's
//! interleaved-pair order, the order our RoPE uses, so no row moves.

use crate::checkpoint::name_map::NameMap;

/// Per-layer names: (ours after `layers.N.`, llama.cpp's after `blk.N.`).
const LAYER_NAMES: [(&str, &str); 9] = [
    ("attention.compute_query.weight", "attn_q.weight"),
    ("attention.compute_key.weight", "attn_k.weight"),
    ("attention.compute_value.weight", "attn_v.weight"),
    ("attention.compute_output.weight", "attn_output.weight"),
    ("feed_forward.w1.weight", "ffn_gate.weight"),
    ("feed_forward.w2.weight", "ffn_down.weight"),
    ("feed_forward.w3.weight", "ffn_up.weight"),
    ("attention_norm.weight", "attn_norm.weight"),
    ("ffn_norm.weight", "ffn_norm.weight"),
];

/// Top-level names: (ours, llama.cpp's).
const TOP_NAMES: [(&str, &str); 3] = [
    ("tok_embeddings.weight", "token_embd.weight"),
    ("norm.weight", "output_norm.weight"),
    ("output.weight", "output.weight"),
];

/// The embedding's GGUF name.
pub const EMBEDDING: &str = "token_embd.weight";
/// The (untied) head's GGUF name.
pub const HEAD: &str = "output.weight";

/// llama.cpp's naming.
const GGUF_NAMES: NameMap = NameMap {
    layer_prefix: "blk.",
    layers: &LAYER_NAMES,
    top: &TOP_NAMES,
};

/// The GGUF name of our parameter `ours`, if it has one.
pub fn to_gguf(ours: &str) -> Option<String> {
    GGUF_NAMES.theirs(ours)
}

/// Our name of the GGUF tensor `name`, if it is a Llama parameter.
pub fn from_gguf(name: &str) -> Option<String> {
    GGUF_NAMES.ours(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        GGUF_NAMES.assert_round_trips();
        assert_eq!(
            to_gguf("layers.2.feed_forward.w1.weight").as_deref(),
            Some("blk.2.ffn_gate.weight")
        );
        assert_eq!(from_gguf("rope_freqs.weight"), None);
    }
}
