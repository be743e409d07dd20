//! The libtorch fast path (`--features tch`) against the fixtures and against the reference.
//!
//! * `verify --backend tch` (CPU) passes every bundled `segmentor` case at the reference's
//!   tolerances with 100% coverage (float64 twins in float64);
//! * a differential property test builds random small models (neck or none, UPerHead pool
//!   scales, FCN auxiliary heads, qv_bias, final/patch norm, whole or slide inference, batch
//!   1-2), runs the reference and the tch path with every output recorded, and requires the
//!   same set of module output names and every tensor within 1e-9 (float64) or 1e-4 (float32);
//! * weight problems are reported like the reference's; fp16/bf16 run and stay close to fp32.
//!
//! Run: `LIBTORCH_USE_PYTORCH=1 PATH=<venv>/bin:$PATH cargo test --release --features tch --test fast`.
#![cfg(feature = "tch")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Value};

use beit_seg::array::AnyArray;
use beit_seg::backend::reference::{RefBackend, RefModel};
use beit_seg::backend::tch::{TchBackend, TchModel};
use beit_seg::backend::{Backend, Model as _};
use beit_seg::config::SegmentorConfig;
use beit_seg::conformance::case::{discover, Case, CaseKind, Dtype, Tolerance};
use beit_seg::conformance::compare::{compare_floats, compare_labels, Status};
use beit_seg::conformance::report::CaseStatus;
use beit_seg::conformance::{run_case, Target, VerifyOptions};
use beit_seg::fast::{self, Ctx, Precision};
use beit_seg::reference::segmentor::EncoderDecoder;
use beit_seg::reference::Recorder;
use beit_seg::weights::WeightStore;
use tch::Device;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

// ------------------------------------------------------------------------------- fixtures

#[test]
fn verify_tch_cpu_passes_every_bundled_segmentor_case_with_full_coverage() {
    let backend = TchBackend::new(Device::Cpu, Precision::Fp32).unwrap();
    let dirs = discover(&[fixtures()]).unwrap();
    let mut failures = Vec::new();
    let (mut n, mut f64_cases) = (0, 0);
    for d in &dirs {
        let c = Case::load(d).unwrap();
        if c.kind != CaseKind::Segmentor {
            continue;
        }
        n += 1;
        if c.dtype == Dtype::F64 {
            f64_cases += 1;
        }
        let r = run_case(&c, &Target::Backend(&backend), &VerifyOptions::default());
        assert_eq!(r.run_dtype, c.dtype.name(), "{}: float64 cases must run in float64", c.name);
        if r.status != CaseStatus::Pass || r.covered() != r.tensors.len() {
            let bad: Vec<String> = r
                .tensors
                .iter()
                .filter(|t| t.status != Status::Pass)
                .map(|t| {
                    format!(
                        "  {} {:?}: max_abs {:e} {}",
                        t.name,
                        t.status,
                        t.max_abs,
                        t.note.clone().unwrap_or_default()
                    )
                })
                .collect();
            failures.push(format!("{}: {:?} {}\n{}", c.name, r.status, r.message.unwrap_or_default(), bad.join("\n")));
        }
    }
    assert!(n >= 20, "expected the bundled segmentor cases, found {n}");
    assert!(f64_cases >= 3, "float64 twins are missing");
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}

#[test]
fn weight_problems_are_reported_like_the_reference() {
    let c = Case::load(&fixtures().join("tiny-whole")).unwrap();
    let cfg = SegmentorConfig::from_value(&c.manifest["model"]).unwrap();
    let mut weights = beit_seg::array::read_npz(&c.file_field("weights").unwrap()).unwrap();
    // Drop one key, reshape another, add an unknown one.
    weights.retain(|(k, _)| k != "backbone.layers.1.gamma_2");
    for (k, a) in weights.iter_mut() {
        if k == "decode_head.conv_seg.bias" {
            *a = AnyArray::F32(ArrayD::zeros(IxDyn(&[a.shape()[0] + 1])));
        }
    }
    weights.push(("backbone.extra".into(), AnyArray::F32(ArrayD::zeros(IxDyn(&[2])))));
    let want = EncoderDecoder::<f32>::load(&cfg, WeightStore::from_arrays(weights.clone()))
        .err()
        .expect("reference rejects")
        .to_string();
    let got = fast::EncoderDecoder::load(&cfg, weights, Ctx::new(Device::Cpu, Precision::Fp32))
        .err()
        .expect("tch rejects")
        .to_string();
    assert_eq!(got, want);
    for needle in [
        "missing: `backbone.layers.1.gamma_2`",
        "wrong shape: `decode_head.conv_seg.bias`",
        "unexpected: `backbone.extra`",
    ] {
        assert!(got.contains(needle), "{needle} not in {got}");
    }
}

#[test]
fn a_wrong_patch_grid_is_an_error_not_a_panic() {
    let c = Case::load(&fixtures().join("tiny-whole")).unwrap();
    let cfg = SegmentorConfig::from_value(&c.manifest["model"]).unwrap();
    let weights = beit_seg::array::read_npz(&c.file_field("weights").unwrap()).unwrap();
    let backend = TchBackend::new(Device::Cpu, Precision::Fp32).unwrap();
    let inputs = AnyArray::F32(ArrayD::zeros(IxDyn(&[1, 3, 64, 64])));
    let model = backend.load(&cfg, weights, Dtype::F32).unwrap();
    let err =
        model.run(&inputs, &["seg_logits".to_string()]).expect_err("a 4x4 grid on a 6x8 window fails").to_string();
    assert!(err.contains("patch grid"), "{err}");
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        return;
    }
    let cuda = "cuda".parse::<beit_seg::Device>().expect("a device name");
    let err = TchBackend::new(cuda.into(), Precision::Fp32).err().expect("no GPU here").to_string();
    assert!(err.contains("no CUDA device"), "{err}");
    assert!("tpu".parse::<beit_seg::Device>().is_err());
    assert!(Precision::parse("fp8").is_err());
}

/// The tch Winograd F(2x2, 3x3) convolution equals `F.conv2d` (oneDNN's direct convolution)
/// in float64 on odd and even sizes, 1-row and 1-column outputs, padding 0-2, batch 2, with
/// blocks of one tile row and with one block; float32 within the fp32 rounding of the sums.
#[test]
fn winograd_conv2d_matches_the_direct_convolution() {
    use tch::{Kind, Tensor};
    tch::manual_seed(7);
    let shapes: &[(i64, i64, i64, i64, i64, i64)] = &[
        (2, 5, 3, 7, 9, 1),
        (1, 4, 6, 8, 8, 1),
        (2, 3, 2, 5, 4, 0),
        (1, 6, 4, 6, 3, 2),
        (1, 2, 3, 1, 2, 1),
        (1, 3, 5, 3, 3, 0),
    ];
    for &(b, cin, cout, h, w, p) in shapes {
        for kind in [Kind::Double, Kind::Float] {
            let x = Tensor::randn([b, cin, h, w], (kind, Device::Cpu));
            let wt = Tensor::randn([cout, cin, 3, 3], (kind, Device::Cpu));
            let bias = Tensor::randn([cout], (kind, Device::Cpu));
            let direct = fast::ops::conv2d(&x, &wt, Some(&bias), 1, p, 1).unwrap();
            let wino = fast::winograd::Winograd::new(&wt, kind).unwrap();
            for block in [1, 1 << 25] {
                let y = wino.conv2d_blocked(&x, Some(&bias), p, block).unwrap();
                assert_eq!(y.size(), direct.size(), "shape {b}x{cin}x{h}x{w} pad {p}");
                let err = (&y - &direct).abs().max().double_value(&[]);
                let scale = direct.abs().max().double_value(&[]).max(1.0);
                let bound = if kind == Kind::Double { 1e-13 } else { 1e-5 };
                assert!(err <= bound * scale, "{kind:?} {b}x{cin}x{h}x{w} pad {p} block {block}: error {err:e}");
            }
        }
    }
}

/// fp16 and bf16 are not conformant, but they must run and stay close to fp32 on a fixture.
#[test]
fn half_precisions_run_and_stay_close_to_fp32() {
    let c = Case::load(&fixtures().join("tiny-whole")).unwrap();
    let cfg = SegmentorConfig::from_value(&c.manifest["model"]).unwrap();
    let weights = beit_seg::array::read_npz(&c.file_field("weights").unwrap()).unwrap();
    let inputs = beit_seg::array::read_npy(&c.input_file("inputs").unwrap()).unwrap();
    let img = fast::from_any_array(&inputs, tch::Kind::Float, Device::Cpu).unwrap();
    let run = |p: Precision| {
        let m = fast::EncoderDecoder::load(&cfg, weights.clone(), Ctx::new(Device::Cpu, p)).unwrap();
        let out = m.forward(&img, &mut fast::Recorder::none()).unwrap();
        (fast::to_f64_array(&out.seg_logits).unwrap(), fast::to_i64_array(&out.pred).unwrap())
    };
    let (l32, p32) = run(Precision::Fp32);
    let scale = l32.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (p, rel) in [(Precision::Bf16, 0.1), (Precision::Fp16, 0.02)] {
        let (l, pr) = run(p);
        let err = l.iter().zip(l32.iter()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let agree = pr.iter().zip(p32.iter()).filter(|(a, b)| a == b).count() as f64 / pr.len() as f64;
        assert!(err <= rel * scale, "{}: max |Δlogit| {err} vs max |logit| {scale}", p.name());
        assert!(agree >= 0.8, "{}: argmax agreement {agree}", p.name());
    }
}

/// A fixture case's config, weights and its first input image (1 x C x H x W, float32).
fn first_image_case(name: &str) -> (SegmentorConfig, Vec<(String, AnyArray)>, ndarray::Array4<f32>) {
    let c = Case::load(&fixtures().join(name)).unwrap();
    let cfg = SegmentorConfig::from_value(&c.manifest["model"]).unwrap();
    let weights = beit_seg::array::read_npz(&c.file_field("weights").unwrap()).unwrap();
    let inputs = beit_seg::array::read_npy(&c.input_file("inputs").unwrap()).unwrap();
    let x: ndarray::Array4<f32> = inputs.to_float::<f32>().unwrap().into_dimensionality().unwrap();
    (cfg, weights, x.slice(ndarray::s![0..1, .., .., ..]).to_owned())
}

/// The evaluation adapter gives the reference's logits (slide case, so the batched windows too).
#[test]
fn eval_model_matches_the_reference_model() {
    let (cfg, weights, x) = first_image_case("slide-b2");
    let tch_model = TchModel::new(
        fast::EncoderDecoder::load(&cfg, weights.clone(), Ctx::new(Device::Cpu, Precision::Fp32)).unwrap(),
    );
    let _ = RefBackend;
    let ref_model = RefModel(EncoderDecoder::<f32>::load(&cfg, WeightStore::from_arrays(weights)).unwrap());
    assert!(tch_model.describe().starts_with("tch"));
    let a = tch_model.seg_logits(x.clone()).unwrap();
    let b = ref_model.seg_logits(x).unwrap();
    let r = compare_floats("seg_logits", &a.mapv(f64::from).into_dyn(), &b.mapv(f64::from).into_dyn(), Tolerance::FP32);
    assert_eq!(r.status, Status::Pass, "max_abs {:e} {:?}", r.max_abs, r.note);
}

/// `labels` and `decode_head_logits` (what `bench`, `predict` and `eval` call) are exactly what
/// `run` records under `pred` and `decode_head`, in fp32 and in bf16 (channels-last on the CPU).
#[test]
fn labels_and_head_logits_are_what_run_records() {
    let (cfg, weights, x) = first_image_case("tiny-whole");
    for p in [Precision::Fp32, Precision::Bf16] {
        let m = TchModel::new(fast::EncoderDecoder::load(&cfg, weights.clone(), Ctx::new(Device::Cpu, p)).unwrap());
        let wanted = ["pred".to_string(), "decode_head".to_string()];
        let mut out = m.run(&AnyArray::F32(x.clone().into_dyn()), &wanted).unwrap();
        let Some(beit_seg::backend::OutTensor::Label(pred)) = out.remove("pred") else { panic!("no pred") };
        let Some(beit_seg::backend::OutTensor::Float(head)) = out.remove("decode_head") else { panic!("no head") };
        assert_eq!(m.labels(x.clone()).unwrap().into_dyn(), pred, "{p}: labels");
        assert_eq!(m.decode_head_logits(x.clone()).unwrap().mapv(f64::from).into_dyn(), head, "{p}: head logits");
    }
}

// ------------------------------------------------------------------------------- differential

mod common;
use common::Rng;

impl Rng {
    fn array(&mut self, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || self.uniform(lo, hi))
    }
}

/// A random small segmentor: the JSON `model` dict plus input geometry.
#[derive(Debug, Clone)]
struct Model {
    model: Value,
    batch: usize,
    input: (usize, usize),
    in_channels: usize,
    seed: u64,
}

#[allow(clippy::type_complexity)]
fn model() -> impl Strategy<Value = Model> {
    let backbone = (
        prop::sample::select(vec![8usize, 12, 16]),
        1usize..=2,
        prop::sample::select(vec![1.0f64, 2.0, 2.5]),
        2usize..=3,
        (any::<bool>(), any::<bool>(), any::<bool>()),
        1usize..=3,
    );
    let neck = prop::option::of(any::<bool>()); // Some(quarter rescales?) or no neck
    let head = (prop::sample::subsequence(vec![1usize, 2, 3, 6], 1..=3), 3usize..=6, 2usize..=4, any::<bool>());
    let aux =
        prop::option::of((0usize..=2, any::<bool>(), prop::sample::select(vec![1usize, 3]), 1usize..=2, -2i64..=-1));
    let test = (prop::option::of((1usize..=40, 1usize..=40)), 0usize..=20, 0usize..=20);
    (backbone, neck, head, aux, test, 1usize..=2, any::<u64>()).prop_map(
        |((embed, heads, mlp, num_fcs, (qv_bias, final_norm, patch_norm), in_ch), neck, (pool, channels, classes, align), aux, (slide, eh, ew), batch, seed)| {
            let (layers, out_idx, window, rescales) = match neck {
                // The neck needs 4 maps; the quarter rescales need a 4x4 grid for MaxPool(4).
                Some(quarter) => (4usize, vec![0i64, 1, 2, 3], if quarter { (64, 80) } else { (32, 48) }, Some(quarter)),
                None => (2, vec![0, 1], (32, 48), None),
            };
            let n_maps = out_idx.len();
            let bn = json!({"type": "BN", "requires_grad": true});
            let mut m = json!({
                "backbone": {
                    "type": "BEiT", "img_size": [window.0, window.1], "patch_size": 16, "in_channels": in_ch,
                    "embed_dims": embed, "num_layers": layers, "num_heads": heads, "mlp_ratio": mlp, "num_fcs": num_fcs,
                    "out_indices": out_idx, "qv_bias": qv_bias, "final_norm": final_norm, "patch_norm": patch_norm,
                    "norm_cfg": {"type": "LN", "eps": 1e-6},
                },
                "decode_head": {
                    "type": "UPerHead", "in_channels": vec![embed; n_maps], "in_index": (0..n_maps as i64).collect::<Vec<_>>(),
                    "pool_scales": pool, "channels": channels, "num_classes": classes, "norm_cfg": bn, "align_corners": align,
                },
            });
            if let Some(quarter) = rescales {
                let r = if quarter { json!([2, 1, 0.5, 0.25]) } else { json!([4, 2, 1, 0.5]) };
                m["neck"] = json!({"type": "Feature2Pyramid", "embed_dim": embed, "rescales": r, "norm_cfg": bn});
            }
            if let Some((num_convs, concat, k, dil, idx)) = aux {
                let ch = if num_convs == 0 { embed } else { channels };
                m["auxiliary_head"] = json!({
                    "type": "FCNHead", "in_channels": embed, "in_index": idx, "channels": ch, "num_convs": num_convs,
                    "concat_input": concat && num_convs > 0, "kernel_size": k, "dilation": dil, "num_classes": classes,
                    "norm_cfg": bn, "align_corners": align,
                });
            }
            let input = match slide {
                Some(stride) => {
                    m["test_cfg"] = json!({"mode": "slide", "crop_size": [window.0, window.1], "stride": [stride.0.min(window.0), stride.1.min(window.1)]});
                    (window.0 + eh, window.1 + ew)
                }
                None => {
                    m["test_cfg"] = json!({"mode": "whole"});
                    // Whole inference: any size with the same patch grid (truncated remainders).
                    (window.0 + eh % 16, window.1 + ew % 16)
                }
            };
            Model { model: m, batch, input, in_channels: in_ch, seed }
        },
    )
}

impl Model {
    fn config(&self) -> SegmentorConfig {
        SegmentorConfig::from_value(&self.model)
            .unwrap_or_else(|e| panic!("generated config invalid: {e}\n{}", self.model))
    }

    /// Random weights for every parameter (the fixture generator's scales), as f64 arrays.
    fn weights(&self, cfg: &SegmentorConfig) -> Vec<(String, AnyArray)> {
        let mut rng = Rng(self.seed);
        EncoderDecoder::<f64>::parameter_shapes(cfg)
            .into_iter()
            .map(|(k, shape)| {
                let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
                let a = if k.ends_with("running_var") {
                    rng.array(&shape, 0.5, 2.0)
                } else if shape.len() == 1 && k.ends_with(".weight") {
                    rng.array(&shape, 0.5, 1.5)
                } else if shape.len() >= 2 && !k.ends_with("relative_position_bias_table") && !k.ends_with("cls_token")
                {
                    let s = (3.0 / fan_in as f64).sqrt();
                    rng.array(&shape, -s, s)
                } else {
                    rng.array(&shape, -0.5, 0.5)
                };
                (k, AnyArray::F64(a))
            })
            .collect()
    }

    fn inputs(&self) -> ArrayD<f64> {
        Rng(self.seed ^ 0x5EED).array(&[self.batch, self.in_channels, self.input.0, self.input.1], -2.0, 2.0)
    }
}

fn to_f32(a: &AnyArray) -> AnyArray {
    AnyArray::F32(a.to_f64().mapv(|v| v as f32))
}

/// Runs both implementations with every output recorded and compares them name by name.
fn differential(m: &Model, precision: Precision, tol: Tolerance) -> Result<(), TestCaseError> {
    let cfg = m.config();
    let weights64 = m.weights(&cfg);
    let inputs64 = m.inputs();
    let (weights, inputs): (Vec<(String, AnyArray)>, AnyArray) = match precision {
        Precision::Fp64 => (weights64, AnyArray::F64(inputs64)),
        _ => (weights64.iter().map(|(k, a)| (k.clone(), to_f32(a))).collect(), to_f32(&AnyArray::F64(inputs64))),
    };
    // Reference.
    let (ref_floats, ref_ints) = match precision {
        Precision::Fp64 => {
            let model = EncoderDecoder::<f64>::load(&cfg, WeightStore::from_arrays(weights.clone())).unwrap();
            let mut rec = Recorder::<f64>::all();
            let x = inputs.to_float::<f64>().unwrap().into_dimensionality().unwrap();
            model.forward(&x, &mut rec).unwrap();
            rec.into_parts()
        }
        _ => {
            let model = EncoderDecoder::<f32>::load(&cfg, WeightStore::from_arrays(weights.clone())).unwrap();
            let mut rec = Recorder::<f32>::all();
            let x = inputs.to_float::<f32>().unwrap().into_dimensionality().unwrap();
            model.forward(&x, &mut rec).unwrap();
            let (floats, ints) = rec.into_parts();
            (floats.into_iter().map(|(k, v)| (k, v.mapv(|x| x as f64))).collect(), ints)
        }
    };
    // tch.
    let ctx = Ctx::new(Device::Cpu, precision);
    let model = fast::EncoderDecoder::load(&cfg, weights, ctx).unwrap();
    let mut rec = fast::Recorder::all();
    let x = fast::from_any_array(&inputs, precision.kind(), Device::Cpu).unwrap();
    model.forward(&x, &mut rec).unwrap();

    let ref_names: BTreeSet<&String> = ref_floats.keys().chain(ref_ints.keys()).collect();
    let tch_names: BTreeSet<&String> = rec.names().collect();
    prop_assert_eq!(&ref_names, &tch_names, "recorded output names differ");
    for (name, want) in &ref_floats {
        let got = fast::to_f64_array(rec.get(name).expect("recorded")).unwrap();
        let r = compare_floats(name, &got, want, tol);
        prop_assert!(
            r.status == Status::Pass,
            "{}: max_abs {:e}, {} violations, {:?}",
            name,
            r.max_abs,
            r.violations,
            r.note
        );
    }
    for (name, want) in &ref_ints {
        let got = fast::to_i64_array(rec.get(name).expect("recorded")).unwrap();
        let r = compare_labels(name, &got, want, ref_floats.get("seg_logits"), tol);
        prop_assert!(r.status == Status::Pass, "{}: {} violations, {:?}", name, r.violations, r.note);
    }
    Ok(())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/fast.txt"))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    fn tch_matches_the_reference_on_every_module_output_in_float64(m in model()) {
        differential(&m, Precision::Fp64, Tolerance { rtol: 1e-9, atol: 1e-9 })?;
    }

    #[test]
    fn tch_matches_the_reference_on_every_module_output_in_float32(m in model()) {
        differential(&m, Precision::Fp32, Tolerance { rtol: 1e-4, atol: 1e-4 })?;
    }
}
