//! Unit tests of the evaluation settings and the ms+flip plan.

use super::predict::softmax_classes;
use super::*;
use crate::config::SegmentorConfig;
use ndarray::Array4;

#[test]
fn ms0_scales_and_sizes() {
    let a = MsFlip::ade20k();
    assert_eq!(a.scales(), vec![(1280, 320), (1920, 480), (2560, 640), (3200, 800), (3840, 960), (4480, 1120)]);
    // 512x683: short sides 640, 640, 640, 800, 960, 1120 (the long-side cap is dropped).
    let shorts: Vec<usize> = a.augs((512, 683)).iter().step_by(2).map(|((h, w), _)| (*h).min(*w)).collect();
    assert_eq!(shorts, vec![640, 640, 640, 800, 960, 1120]);
    assert_eq!(a.augs((512, 683)).len(), 12);
    // A portrait image.
    assert_eq!(ms0_resize((683, 512), (2560, 640), Some(640)), (854, 640));
    // Without min_size it is mmcv.imrescale.
    assert_eq!(ms0_resize((512, 683), (1280, 320), None), (320, 427));
}

#[test]
fn softmax_sums_to_one() {
    let mut x = Array4::from_shape_fn((1, 3, 2, 2), |(_, c, y, x)| (c * 3 + y + x) as f32 * 0.7 - 2.0);
    softmax_classes(&mut x);
    for y in 0..2 {
        for xx in 0..2 {
            let s: f32 = (0..3).map(|c| x[[0, c, y, xx]]).sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
    }
}

#[test]
fn too_small_is_refused_by_name() {
    let cfg = serde_json::json!({
        "backbone": {"type": "BEiT", "img_size": [64, 64], "embed_dims": 32, "num_layers": 4, "num_heads": 2, "out_indices": [0, 1, 2, 3]},
        "neck": {"type": "Feature2Pyramid", "embed_dim": 32, "rescales": [4, 2, 1, 0.5]},
        "decode_head": {"type": "UPerHead", "in_channels": [32, 32, 32, 32], "in_index": [0, 1, 2, 3], "channels": 16, "num_classes": 5},
        "test_cfg": {"mode": "slide", "crop_size": [64, 64], "stride": [43, 43]}
    });
    let m = SegmentorConfig::from_value(&cfg).unwrap();
    let pipe = TestPipeline { resize: ResizeSpec::KeepRatio { scale: (256, 64) }, reduce_zero_label: true };
    let s = EvalSettings::new(&m, &cfg, pipe, None).unwrap();
    assert!(s.check_size("ok.jpg", (64, 200)).is_ok());
    let e = s.check_size("long.jpg", (20, 100)).unwrap_err();
    assert!(e.is_bad_input());
    let msg = e.to_string();
    assert!(msg.contains("long.jpg") && msg.contains("51x256") && msg.contains("64x64"), "{msg}");
}
