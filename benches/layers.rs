//! Criterion benchmarks of the ndarray reference at BEiT-B's real sizes (random weights):
//!
//! * one BEiT-B transformer layer at 640x640: 1601 tokens x 768 channels, 12 heads, 6244-row
//!   relative-position table (~30 GFLOP);
//! * one UPerHead fpn conv (3x3 ConvModule 768 -> 768 + BN + ReLU) at 160x160 (~272 GFLOP).
//!
//! Run: `cargo bench --bench layers` (minutes on 2 cores). Speed is measured here, never in tests.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{Array3, Array4, ArrayD, IxDyn};

use beit_seg::array::AnyArray;
use beit_seg::config::{BeitConfig, HeadConfig, LnConfig};
use beit_seg::model::heads::HeadPlan;
use beit_seg::reference::beit::BeitLayer;
use beit_seg::reference::heads::ConvModule;
use beit_seg::reference::Recorder;
use beit_seg::weights::WeightStore;

/// Deterministic pseudo-random values in [-scale, scale).
fn rand(shape: &[usize], seed: u64, scale: f32) -> ArrayD<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    })
}

fn beit_b_640() -> BeitConfig {
    BeitConfig {
        img_size: (640, 640),
        patch_size: 16,
        in_channels: 3,
        embed_dims: 768,
        num_layers: 12,
        num_heads: 12,
        feedforward_channels: 3072,
        out_indices: vec![3, 5, 7, 11],
        qv_bias: true,
        norm: LnConfig { eps: 1e-6 },
        patch_norm: false,
        final_norm: false,
        num_fcs: 2,
    }
}

fn bench_beit_layer(c: &mut Criterion) {
    let cfg = beit_b_640();
    let p = "backbone.layers.0";
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("gamma_1", vec![768]),
        ("gamma_2", vec![768]),
        ("ln1.weight", vec![768]),
        ("ln1.bias", vec![768]),
        ("attn.q_bias", vec![768]),
        ("attn.v_bias", vec![768]),
        ("attn.relative_position_bias_table", vec![6244, 12]),
        ("attn.qkv.weight", vec![2304, 768]),
        ("attn.proj.weight", vec![768, 768]),
        ("attn.proj.bias", vec![768]),
        ("ln2.weight", vec![768]),
        ("ln2.bias", vec![768]),
        ("ffn.layers.0.0.weight", vec![3072, 768]),
        ("ffn.layers.0.0.bias", vec![3072]),
        ("ffn.layers.1.weight", vec![768, 3072]),
        ("ffn.layers.1.bias", vec![768]),
    ];
    let arrays =
        shapes.iter().enumerate().map(|(i, (k, s))| (format!("{p}.{k}"), AnyArray::F32(rand(s, i as u64, 0.05))));
    let mut ws = WeightStore::<f32>::from_arrays(arrays);
    let layer = BeitLayer::load(&mut ws, p, &cfg);
    ws.finish().expect("complete layer");
    let x: Array3<f32> = rand(&[1, 1601, 768], 99, 1.0).into_dimensionality().expect("3-D");
    let mut g = c.benchmark_group("reference");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(20));
    g.bench_function("beit-b layer, 640 (1601x768, f32)", |b| b.iter(|| layer.forward(&x, p, &mut Recorder::none())));
    g.finish();
}

fn bench_fpn_conv(c: &mut Criterion) {
    let head: HeadConfig = HeadConfig::from_value(
        &serde_json::json!({"type": "UPerHead", "in_channels": [768, 768, 768, 768], "in_index": [0, 1, 2, 3],
                            "channels": 768, "num_classes": 150, "norm_cfg": {"type": "SyncBN", "requires_grad": true}}),
        "decode_head",
    )
    .expect("valid head config");
    let p = "decode_head.fpn_convs.0";
    let mut arrays = vec![(format!("{p}.conv.weight"), AnyArray::F32(rand(&[768, 768, 3, 3], 1, 0.01)))];
    for (i, k) in ["weight", "bias", "running_mean"].iter().enumerate() {
        arrays.push((format!("{p}.bn.{k}"), AnyArray::F32(rand(&[768], 10 + i as u64, 0.5))));
    }
    arrays.push((format!("{p}.bn.running_var"), AnyArray::F32(rand(&[768], 20, 0.5).mapv(|v| v + 1.0))));
    let mut ws = WeightStore::<f32>::from_arrays(arrays);
    let spec = HeadPlan::new(&head).convs().into_iter().find(|c| c.name == "fpn_convs.0").expect("a UPerHead").clone();
    let conv = ConvModule::load(&mut ws, "decode_head", &spec);
    ws.finish().expect("complete module");
    let x: Array4<f32> = rand(&[1, 768, 160, 160], 7, 1.0).into_dimensionality().expect("4-D");
    let mut g = c.benchmark_group("reference");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(60));
    g.bench_function("uperhead fpn conv 3x3 768->768 @160x160 (f32)", |b| {
        b.iter(|| conv.forward(x.view(), p, &mut Recorder::none()))
    });
    g.finish();
}

criterion_group!(benches, bench_beit_layer, bench_fpn_conv);
criterion_main!(benches);
