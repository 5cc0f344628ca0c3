//! A renaming between another program's tensor names and ours: per-layer names under a
//! layer prefix (`model.layers.N.`, `blk.N.`), and top-level names.

/// The pairs (ours, theirs) of one naming.
pub struct NameMap {
    /// Their prefix of layer N's names, before the number (`blk.`).
    pub layer_prefix: &'static str,
    /// (ours after `layers.N.`, theirs after the prefix and `N.`).
    pub layers: &'static [(&'static str, &'static str)],
    /// (ours, theirs) outside the layers.
    pub top: &'static [(&'static str, &'static str)],
}

impl NameMap {
    /// Their name of our parameter `ours`, if it has one.
    pub fn theirs(&self, ours: &str) -> Option<String> {
        if let Some((_, t)) = self.top.iter().find(|(o, _)| *o == ours) {
            return Some((*t).to_string());
        }
        let (layer, rest) = ours.strip_prefix("layers.")?.split_once('.')?;
        let (_, t) = self.layers.iter().find(|(o, _)| *o == rest)?;
        Some(format!("{}{layer}.{t}", self.layer_prefix))
    }

    /// Our name of their tensor `theirs`, if it is a Llama parameter.
    pub fn ours(&self, theirs: &str) -> Option<String> {
        if let Some((o, _)) = self.top.iter().find(|(_, t)| *t == theirs) {
            return Some((*o).to_string());
        }
        let (layer, rest) = theirs.strip_prefix(self.layer_prefix)?.split_once('.')?;
        let (o, _) = self.layers.iter().find(|(_, t)| *t == rest)?;
        Some(format!("layers.{layer}.{o}"))
    }

    /// Checks that a few of our names map to theirs and back (for the namings' tests).
    #[cfg(test)]
    pub fn assert_round_trips(&self) {
        for ours in [
            "tok_embeddings.weight",
            "norm.weight",
            "output.weight",
            "layers.3.attention.compute_key.weight",
            "layers.0.feed_forward.w2.weight",
            "layers.11.ffn_norm.weight",
        ] {
            let theirs = self.theirs(ours).unwrap();
            assert_eq!(self.ours(&theirs).as_deref(), Some(ours), "{theirs}");
        }
    }
}
