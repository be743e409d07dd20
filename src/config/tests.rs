//! Unit tests of the config parsing.

use super::*;
use serde_json::json;

fn base() -> Value {
    json!({
        "backbone": {"type": "BEiT", "img_size": [64, 64], "embed_dims": 32, "num_layers": 2, "num_heads": 2,
                      "out_indices": [0, 1], "norm_cfg": {"type": "LN", "eps": 1e-6}},
        "decode_head": {"type": "FCNHead", "in_channels": 32, "in_index": 1, "channels": 8, "num_classes": 3,
                         "norm_cfg": {"type": "SyncBN", "requires_grad": true}},
        "test_cfg": {"mode": "whole"}
    })
}

#[test]
fn parses_defaults_and_eps() {
    let c = SegmentorConfig::from_value(&base()).unwrap();
    assert_eq!(c.backbone.norm.eps, 1e-6);
    assert_eq!(c.backbone.window(), (4, 4));
    assert_eq!(c.backbone.feedforward_channels, 128);
    assert_eq!(c.decode_head.norm.as_ref().unwrap().eps, 1e-5);
    assert!(c.decode_head.relu);
}

#[test]
fn unknown_numeric_key_is_named() {
    let mut v = base();
    v["backbone"]["layer_scale"] = json!(true);
    let e = SegmentorConfig::from_value(&v).unwrap_err();
    assert_eq!(e.key, "model.backbone.layer_scale");
    let mut v = base();
    v["backbone"]["norm_cfg"]["type"] = json!("GN");
    assert_eq!(SegmentorConfig::from_value(&v).unwrap_err().key, "model.backbone.norm_cfg.type");
    let mut v = base();
    v["backbone"]["act_cfg"] = json!({"type": "GELU", "approximate": "tanh"});
    assert_eq!(SegmentorConfig::from_value(&v).unwrap_err().key, "model.backbone.act_cfg.approximate");
}

#[test]
fn mmseg_default_ln_eps_is_1e_5() {
    let mut v = base();
    v["backbone"]["norm_cfg"] = json!({"type": "LN"});
    assert_eq!(SegmentorConfig::from_value(&v).unwrap().backbone.norm.eps, 1e-5);
}

#[test]
fn non_integer_ffn_width_is_rejected() {
    let mut v = base();
    v["backbone"]["mlp_ratio"] = json!(2.7);
    assert_eq!(SegmentorConfig::from_value(&v).unwrap_err().key, "model.backbone.mlp_ratio");
}
