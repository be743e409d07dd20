//! The built-in model configs (docs/mmseg-beit-upernet.md §1): MMSegmentation 1.2.2
//! `configs/beit/beit-{base,large}_upernet_*_ade20k-640x640.py`, as the `model` dict
//! ([`model_dict`], what `eval --preset` and the bench's PyTorch side read) and as typed configs
//! ([`SegmentorConfig::beit_base_640`], [`SegmentorConfig::beit_large_640`]).

use serde_json::{json, Value};

use super::SegmentorConfig;

/// The preset names `--preset` takes.
pub const NAMES: [&str; 2] = ["beit-base-640", "beit-large-640"];

/// The `model` dict of a preset (`beit-base-640`, `beit-large-640`); `None` for another name.
pub fn model_dict(name: &str) -> Option<Value> {
    let (c, layers, heads, out_indices, init_values, dpr) = match name {
        "beit-base-640" => (768, 12, 12, json!([3, 5, 7, 11]), 0.1, 0.1),
        "beit-large-640" => (1024, 24, 16, json!([7, 11, 15, 23]), 1e-6, 0.2),
        _ => return None,
    };
    let bn = json!({"type": "SyncBN", "requires_grad": true});
    Some(json!({
        "type": "EncoderDecoder",
        "data_preprocessor": {
            "type": "SegDataPreProcessor", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
            "bgr_to_rgb": true, "pad_val": 0, "seg_pad_val": 255, "size": [640, 640]
        },
        "backbone": {
            "type": "BEiT", "img_size": [640, 640], "patch_size": 16, "in_channels": 3, "embed_dims": c,
            "num_layers": layers, "num_heads": heads, "mlp_ratio": 4, "out_indices": out_indices, "qv_bias": true,
            "attn_drop_rate": 0.0, "drop_path_rate": dpr, "norm_cfg": {"type": "LN", "eps": 1e-6},
            "act_cfg": {"type": "GELU"}, "norm_eval": false, "init_values": init_values
        },
        "neck": {"type": "Feature2Pyramid", "embed_dim": c, "rescales": [4, 2, 1, 0.5]},
        "decode_head": {
            "type": "UPerHead", "in_channels": [c, c, c, c], "in_index": [0, 1, 2, 3], "pool_scales": [1, 2, 3, 6],
            "channels": c, "dropout_ratio": 0.1, "num_classes": 150, "norm_cfg": bn, "align_corners": false
        },
        "auxiliary_head": {
            "type": "FCNHead", "in_channels": c, "in_index": 2, "channels": 256, "num_convs": 1, "concat_input": false,
            "dropout_ratio": 0.1, "num_classes": 150, "norm_cfg": bn, "align_corners": false
        },
        "test_cfg": {"mode": "slide", "crop_size": [640, 640], "stride": [426, 426]}
    }))
}

impl SegmentorConfig {
    /// BEiT-B + UPerNet, ADE20K 640x640 (`beit-base-640`).
    pub fn beit_base_640() -> Self {
        Self::from_value(&model_dict("beit-base-640").expect("a preset")).expect("the preset parses")
    }

    /// BEiT-L + UPerNet, ADE20K 640x640 (`beit-large-640`).
    pub fn beit_large_640() -> Self {
        Self::from_value(&model_dict("beit-large-640").expect("a preset")).expect("the preset parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presets_parse() {
        assert_eq!(SegmentorConfig::beit_base_640().backbone.embed_dims, 768);
        assert_eq!(SegmentorConfig::beit_large_640().backbone.num_layers, 24);
        assert!(NAMES.iter().all(|n| model_dict(n).is_some()));
    }
}
