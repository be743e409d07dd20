//! Output names that MMSegmentation's `named_modules()` gives several modules at once.

/// `prefix.name`, or `name` for an empty prefix.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Names (relative to an mmcv `FFN`) that all carry the output of its last linear, `last` being
/// `num_fcs - 1`: the `layers.{last}` Linear, the Dropout `layers.{last+1}`, the `layers`
/// Sequential itself, and the identity `gamma2` / `dropout_layer` modules mmcv wraps around it.
pub fn ffn_output_aliases(last: usize) -> [String; 5] {
    [format!("layers.{last}"), format!("layers.{}", last + 1), "layers".into(), "gamma2".into(), "dropout_layer".into()]
}

/// Names (relative to an mmcv `FFN`) that carry the activation of hidden linear `i`: mmcv
/// shares one activation module (`activate`) between the Sequentials, so `named_modules()`
/// lists it once; `layers.{i}.1` (the activation), `.2` (Dropout) and the Sequential `layers.{i}`
/// hold the same values.
pub fn ffn_hidden_aliases(i: usize) -> [String; 4] {
    ["activate".into(), format!("layers.{i}.1"), format!("layers.{i}.2"), format!("layers.{i}")]
}
