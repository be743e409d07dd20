//! The reference against the bundled MMSegmentation fixtures (fixtures/*/case.json).
//!
//! * every bundled case passes `verify` with 100% coverage, float64 twins at their tight tolerance;
//! * focused per-module tests feed each module the *expected* (MMSegmentation) input and compare
//!   its output, so a failing module is named even when everything after it also fails;
//! * corrupting one weight element or one config value makes verify fail at the right module.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Array4, ArrayD, Ix4};

use beit_seg::array::{read_npy, read_npz, AnyArray};
use beit_seg::backend::reference::RefBackend;
use beit_seg::backend::Backend;
use beit_seg::config::SegmentorConfig;
use beit_seg::conformance::case::CaseKind;
use beit_seg::conformance::case::{discover, Case, Dtype, Tolerance};
use beit_seg::conformance::compare::compare_outputs;
use beit_seg::conformance::compare::{compare_floats, Status, TensorResult};
use beit_seg::conformance::report::CaseStatus;
use beit_seg::conformance::{run_case, Target, VerifyOptions};
use beit_seg::reference::beit::BeitLayer;
use beit_seg::reference::heads::DecodeHead;
use beit_seg::reference::neck::Feature2Pyramid;
use beit_seg::reference::Recorder;
use beit_seg::weights::WeightStore;
use beit_seg::Float;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn case(name: &str) -> Case {
    Case::load(&fixtures().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn expected(case: &Case, name: &str) -> AnyArray {
    let file = case
        .outputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{}: no expected output {name}", case.name))
        .1
        .clone();
    case.read_output(&file).unwrap()
}

fn fmt_failures(results: &[TensorResult]) -> String {
    results
        .iter()
        .filter(|t| t.status != Status::Pass)
        .map(|t| {
            format!(
                "  {} {:?}: max_abs {:e}, {} violations {}",
                t.name,
                t.status,
                t.max_abs,
                t.violations,
                t.note.clone().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_bundled_case_passes_with_full_coverage() {
    let dirs = discover(&[fixtures()]).unwrap();
    assert!(dirs.len() >= 10, "expected the bundled fixture cases, found {}", dirs.len());
    let mut failures = Vec::new();
    let mut f64_cases = 0;
    for d in &dirs {
        let c = Case::load(d).unwrap();
        if c.kind != CaseKind::Segmentor {
            continue;
        }
        if c.dtype == Dtype::F64 {
            f64_cases += 1;
            assert!(c.tolerance.rtol <= 1e-9, "{}: float64 twins must carry a tight tolerance", c.name);
        }
        let r = run_case(&c, &Target::Backend(&RefBackend), &VerifyOptions::default());
        if r.status != CaseStatus::Pass || r.covered() != r.tensors.len() {
            failures.push(format!(
                "{}: {:?} {}\n{}",
                c.name,
                r.status,
                r.message.clone().unwrap_or_default(),
                fmt_failures(&r.tensors)
            ));
        }
    }
    assert!(f64_cases >= 3, "float64 twins are missing");
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}

/// Loads a case's weights in dtype T (for module-level tests).
fn store<T: Float>(c: &Case) -> WeightStore<T> {
    WeightStore::from_arrays(read_npz(&c.file_field("weights").unwrap()).unwrap())
}

fn model_cfg(c: &Case) -> SegmentorConfig {
    SegmentorConfig::from_value(&c.manifest["model"]).unwrap()
}

fn as4<T: Float>(a: &AnyArray) -> Array4<T> {
    a.to_float::<T>().unwrap().into_dimensionality::<Ix4>().unwrap()
}

fn check<T: Float>(c: &Case, name: &str, actual: &ArrayD<T>) {
    let exp = expected(c, name).to_f64();
    let r = compare_floats(name, &actual.mapv(|v| v.to_f64_exact()), &exp, c.tolerance_for(name));
    assert_eq!(
        r.status,
        Status::Pass,
        "{}: module output `{name}` differs from MMSegmentation: max_abs {:e} ({} violations) {:?}",
        c.name,
        r.max_abs,
        r.violations,
        r.note
    );
}

fn check_recorded<T: Float>(c: &Case, rec: &Recorder<T>, prefix: &str) -> usize {
    let mut n = 0;
    for (name, _) in &c.outputs {
        if name == prefix || name.starts_with(&format!("{prefix}.")) {
            let got = rec.float(name).unwrap_or_else(|| panic!("{}: `{name}` not produced", c.name));
            check(c, name, got);
            n += 1;
        }
    }
    n
}

/// Each BEiT layer, fed MMSegmentation's output of the previous layer.
fn layers_in_isolation<T: Float>(name: &str, min_outputs_per_layer: usize) {
    let c = case(name);
    let cfg = model_cfg(&c);
    let mut ws = store::<T>(&c);
    for i in 1..cfg.backbone.num_layers {
        let layer = BeitLayer::load(&mut ws, &format!("backbone.layers.{i}"), &cfg.backbone);
        let input = expected(&c, &format!("backbone.layers.{}", i - 1))
            .to_float::<T>()
            .unwrap()
            .into_dimensionality::<ndarray::Ix3>()
            .unwrap();
        let mut rec = Recorder::all();
        let prefix = format!("backbone.layers.{i}");
        layer.forward(&input, &prefix, &mut rec);
        assert!(
            check_recorded(&c, &rec, &prefix) >= min_outputs_per_layer,
            "{name}: too few outputs of {prefix} in the fixture"
        );
    }
}

#[test]
fn module_backbone_layers_f32() {
    layers_in_isolation::<f32>("tiny-whole", 8);
}

#[test]
fn module_backbone_layers_f64() {
    layers_in_isolation::<f64>("tiny-whole-f64", 1);
}

#[test]
fn module_backbone_layers_at_640() {
    // 40x40 window: 6244-row tables and a 1601x1601 index.
    layers_in_isolation::<f32>("real-640", 1);
}

/// The neck, fed MMSegmentation's backbone maps.
fn neck_in_isolation<T: Float>(name: &str) {
    let c = case(name);
    let cfg = model_cfg(&c);
    let mut ws = store::<T>(&c);
    let neck = Feature2Pyramid::load(&mut ws, "neck", cfg.neck.as_ref().unwrap());
    let inputs: Vec<Array4<T>> = (0..4).map(|k| as4(&expected(&c, &format!("backbone.{k}")))).collect();
    let mut rec = Recorder::all();
    neck.forward(&inputs, "neck", &mut rec);
    assert!(check_recorded(&c, &rec, "neck") >= 3);
}

#[test]
fn module_neck_f32() {
    neck_in_isolation::<f32>("tiny-whole");
}

#[test]
fn module_neck_rescales_quarter_f64() {
    neck_in_isolation::<f64>("var-rescales-quarter-f64");
}

/// The decode head (UPerHead) and auxiliary head (FCNHead), fed MMSegmentation's neck maps.
fn heads_in_isolation<T: Float>(name: &str) {
    let c = case(name);
    let cfg = model_cfg(&c);
    let mut ws = store::<T>(&c);
    let inputs: Vec<Array4<T>> = (0..4).map(|k| as4(&expected(&c, &format!("neck.{k}")))).collect();
    let head = DecodeHead::load(&mut ws, "decode_head", &cfg.decode_head);
    let mut rec = Recorder::all();
    head.forward(&inputs, "decode_head", &mut rec).unwrap();
    assert!(check_recorded(&c, &rec, "decode_head") >= 10);
    for (k, h) in cfg.auxiliary_heads.iter().enumerate() {
        let p = cfg.aux_prefix(k);
        let aux = DecodeHead::load(&mut ws, &p, h);
        let mut rec = Recorder::all();
        aux.forward(&inputs, &p, &mut rec).unwrap();
        assert!(check_recorded(&c, &rec, &p) >= 2);
    }
}

#[test]
fn module_heads_f32() {
    heads_in_isolation::<f32>("tiny-whole");
}

/// The PSP branch of UPerHead (PPM + bottleneck), fed MMSegmentation's top neck level: it
/// depends on nothing else, so the other levels are zeros here.
fn psp_in_isolation<T: Float>(name: &str) {
    let c = case(name);
    let cfg = model_cfg(&c);
    let mut ws = store::<T>(&c);
    let top = as4::<T>(&expected(&c, "neck.3"));
    let (b, ch, h, w) = top.dim();
    let inputs: Vec<Array4<T>> =
        (0..3).map(|k| Array4::zeros((b, ch, h << (3 - k), w << (3 - k)))).chain([top]).collect();
    let head = DecodeHead::load(&mut ws, "decode_head", &cfg.decode_head);
    let mut rec = Recorder::all();
    head.forward(&inputs, "decode_head", &mut rec).unwrap();
    assert!(check_recorded(&c, &rec, "decode_head.psp_modules") >= 4);
    assert!(check_recorded(&c, &rec, "decode_head.bottleneck") >= 1);
}

#[test]
fn module_ppm_overlapping_bins_f32() {
    psp_in_isolation::<f32>("ppm-nondiv");
}

#[test]
fn module_ppm_overlapping_bins_f64() {
    psp_in_isolation::<f64>("ppm-nondiv-f64");
}

#[test]
fn module_heads_align_corners() {
    heads_in_isolation::<f32>("var-align-corners");
}

#[test]
fn module_heads_fcn_concat_input() {
    heads_in_isolation::<f32>("var-fcn-concat");
}

#[test]
fn rel_pos_index_matches_mmseg_buffer_at_640() {
    let c = case("real-640");
    let arrays = read_npz(&c.file_field("weights").unwrap()).unwrap();
    let stored = arrays
        .iter()
        .find(|(k, _)| k == "backbone.layers.0.attn.relative_position_index")
        .expect("buffer in fixture")
        .1
        .to_i64()
        .unwrap();
    let computed = beit_seg::model::relative_position_index((40, 40));
    assert_eq!(stored.shape(), &[1601, 1601]);
    assert!(stored.iter().zip(computed.iter()).all(|(s, c)| *s == *c as i64));
    assert_eq!(computed[[0, 0]], 6243);
    assert_eq!(computed[[0, 5]], 6241);
    assert_eq!(computed[[5, 0]], 6242);
}

/// Runs a case with modified weights/config and returns the comparison.
fn run_modified(
    c: &Case,
    edit_weights: impl FnOnce(&mut Vec<(String, AnyArray)>),
    edit_model: impl FnOnce(&mut serde_json::Value),
) -> Vec<TensorResult> {
    let mut weights = read_npz(&c.file_field("weights").unwrap()).unwrap();
    edit_weights(&mut weights);
    let mut model_v = c.manifest["model"].clone();
    edit_model(&mut model_v);
    let model = SegmentorConfig::from_value(&model_v).unwrap();
    let inputs = read_npy(&c.input_file("inputs").unwrap()).unwrap();
    let exp: Vec<(String, AnyArray)> = c.outputs.iter().map(|(n, f)| (n.clone(), c.read_output(f).unwrap())).collect();
    let wanted: Vec<String> = exp.iter().map(|(n, _)| n.clone()).collect();
    let produced = RefBackend.load(&model, weights, c.dtype).unwrap().run(&inputs, &wanted).unwrap();
    compare_outputs(&exp, &produced, |n| c.tolerance_for(n))
}

#[test]
fn one_corrupted_v_bias_element_fails_at_that_layers_attention() {
    let c = case("tiny-whole");
    let results = run_modified(
        &c,
        |w| {
            let (_, a) = w.iter_mut().find(|(k, _)| k == "backbone.layers.2.attn.v_bias").unwrap();
            match a {
                AnyArray::F32(x) => x[[3]] += 0.05,
                _ => unreachable!(),
            }
        },
        |_| {},
    );
    let first = results.iter().find(|t| t.status == Status::Fail).expect("verify must fail");
    assert!(first.name.starts_with("backbone.layers.2.attn"), "first failing module is {}", first.name);
    // Everything before layer 2 still passes.
    for t in
        results.iter().filter(|t| t.name.starts_with("backbone.layers.0") || t.name.starts_with("backbone.layers.1."))
    {
        assert_eq!(t.status, Status::Pass, "{}", t.name);
    }
}

#[test]
fn float64_twin_catches_a_wrong_layernorm_eps() {
    // eps 1e-5 instead of 1e-6 moves outputs by ~1e-6: invisible at fp32 tolerance, caught here.
    let c = case("tiny-whole-f64");
    let results = run_modified(&c, |_| {}, |m| m["backbone"]["norm_cfg"]["eps"] = serde_json::json!(1e-5));
    let first = results.iter().find(|t| t.status == Status::Fail).expect("the f64 twin must catch eps 1e-5");
    assert!(first.name.starts_with("backbone.layers.0.ln1"), "first failing module is {}", first.name);
}

#[test]
fn unknown_numerics_key_is_an_error_naming_it() {
    let c = case("tiny-whole");
    let mut m = c.manifest["model"].clone();
    m["decode_head"]["upsample_mode"] = serde_json::json!("nearest");
    let e = SegmentorConfig::from_value(&m).unwrap_err();
    assert_eq!(e.key, "model.decode_head.upsample_mode");
}

#[test]
fn missing_and_wrong_shape_weights_are_listed_together() {
    let c = case("tiny-whole");
    let cfg = model_cfg(&c);
    let mut arrays = read_npz(&c.file_field("weights").unwrap()).unwrap();
    arrays.retain(|(k, _)| k != "backbone.layers.1.gamma_2" && k != "decode_head.conv_seg.bias");
    for (k, a) in arrays.iter_mut() {
        if k == "neck.upsample_2x.0.bias" {
            *a = AnyArray::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[7])));
        }
    }
    arrays.push(("backbone.pos_embed".into(), AnyArray::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 2, 3])))));
    let ws = WeightStore::<f32>::from_arrays(arrays);
    let err = beit_seg::reference::segmentor::EncoderDecoder::load(&cfg, ws).err().expect("must fail").to_string();
    for needle in
        ["backbone.layers.1.gamma_2", "decode_head.conv_seg.bias", "neck.upsample_2x.0.bias", "backbone.pos_embed"]
    {
        assert!(err.contains(needle), "error does not name {needle}:\n{err}");
    }
}

#[test]
fn input_grid_other_than_the_window_is_a_clear_error() {
    let c = case("tiny-whole");
    let cfg = model_cfg(&c);
    let model = beit_seg::reference::segmentor::EncoderDecoder::<f32>::load(&cfg, store(&c)).unwrap();
    let img = Array4::<f32>::zeros((1, 3, 64, 64));
    let e = model.forward(&img, &mut Recorder::none()).err().expect("must fail").to_string();
    assert!(e.contains("patch grid") && e.contains("window"), "{e}");
}

#[test]
fn slide_output_shape_and_pred_agree() {
    let c = case("slide-b2");
    let r = run_case(&c, &Target::Backend(&RefBackend), &VerifyOptions::default());
    assert_eq!(r.status, CaseStatus::Pass, "{:?}\n{}", r.message, fmt_failures(&r.tensors));
    let pred = expected(&c, "pred").to_i64().unwrap();
    let logits = expected(&c, "seg_logits").to_f64();
    assert_eq!(pred.shape()[0], 2, "batch 2");
    assert_eq!(&logits.shape()[2..], &pred.shape()[1..]);
    let _: Array3<i64> = pred.into_dimensionality().unwrap();
    let _ = Tolerance::FP32;
}

/// `labels` and `decode_head_logits` (what `bench`, `predict` and `eval` call) are exactly what
/// `run` records under `pred` and `decode_head`: labels on a whole and a slide (two-window) case,
/// the head logits on the whole one (slide windows are not recorded).
#[test]
fn ref_labels_and_head_logits_are_what_run_records() {
    for (name, whole) in [("tiny-whole", true), ("slide-b2", false)] {
        let c = Case::load(&fixtures().join(name)).unwrap();
        let cfg = SegmentorConfig::from_value(&c.manifest["model"]).unwrap();
        let weights = read_npz(&c.file_field("weights").unwrap()).unwrap();
        let x: Array4<f32> = read_npy(&c.input_file("inputs").unwrap())
            .unwrap()
            .to_float::<f32>()
            .unwrap()
            .into_dimensionality()
            .unwrap();
        let x = x.slice(ndarray::s![0..1, .., .., ..]).to_owned();
        let m = RefBackend.load(&cfg, weights, beit_seg::float::Dtype::F32).unwrap();
        let wanted = ["pred".to_string(), "decode_head".to_string()];
        let mut out = m.run(&AnyArray::F32(x.clone().into_dyn()), &wanted).unwrap();
        let Some(beit_seg::backend::OutTensor::Label(pred)) = out.remove("pred") else { panic!("{name}: no pred") };
        assert_eq!(m.labels(x.clone()).unwrap().into_dyn(), pred, "{name}: labels");
        if whole {
            let Some(beit_seg::backend::OutTensor::Float(head)) = out.remove("decode_head") else {
                panic!("{name}: no decode_head")
            };
            assert_eq!(m.decode_head_logits(x).unwrap().mapv(f64::from).into_dyn(), head, "{name}: head logits");
        }
    }
}
