//! Half-precision twins (`"precision": "bf16" | "fp16"`): an implementation is judged against
//! MMSegmentation's own half-precision error ([`beit_seg::conformance::budget`]). Candidates are
//! built from the twin's own autocast outputs (MMSegmentation's values), then broken on purpose.

use std::path::{Path, PathBuf};

use beit_seg::array::{read_npy, read_npz, AnyArray};
use beit_seg::conformance::candidate::{save_outputs, CandidateSource};
use beit_seg::conformance::case::Case;
use beit_seg::conformance::report::CaseStatus;
use beit_seg::conformance::{run_case, Target, VerifyOptions};
use beit_seg::Precision;
use half::f16;
use ndarray::{ArrayD, Axis};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// MMSegmentation's autocast outputs of a half twin, as a candidate would write them.
fn autocast_outputs(case: &Case) -> Vec<(String, AnyArray)> {
    let twin = case.half.as_ref().expect("a half twin");
    twin.autocast.iter().map(|(n, f)| (n.clone(), read_npy(&case.dir.join(f)).unwrap())).collect()
}

fn judge(case: &Case, tensors: &[(String, AnyArray)], claim: Precision) -> beit_seg::conformance::report::CaseReport {
    let tmp = tempfile::tempdir().unwrap();
    save_outputs(tmp.path(), tensors, None).unwrap();
    let source = CandidateSource { root: tmp.path().to_path_buf(), names: None };
    let opts = VerifyOptions { precision: Some(claim), ..Default::default() };
    let target = Target::Candidate { source: &source, single: true };
    run_case(case, &target, &opts)
}

#[test]
fn mmsegmentations_own_autocast_outputs_pass_every_half_twin() {
    for base in
        ["tiny-whole", "real-640", "ppm-nondiv", "slide-b2", "var-final-norm", "var-align-corners", "stress-massive"]
    {
        for (tag, p) in [("bf16", Precision::Bf16), ("fp16", Precision::Fp16)] {
            let case = Case::load(&fixture(&format!("{base}-{tag}"))).unwrap();
            let r = judge(&case, &autocast_outputs(&case), p);
            assert_eq!(r.status, CaseStatus::Pass, "{base}-{tag}: {:?}", r.message);
            assert_eq!(r.coverage.compared, case.outputs.len());
            // By construction, MMSegmentation's own error is at most 1/F of the bound.
            let worst = r.worst().unwrap().ratio;
            assert!(worst <= 1.0 / beit_seg::conformance::budget::FACTOR + 1e-9, "{base}-{tag}: {worst}");
        }
    }
}

#[test]
fn a_claimed_precision_runs_only_its_twins() {
    let case = Case::load(&fixture("tiny-whole-bf16")).unwrap();
    let r = judge(&case, &autocast_outputs(&case), Precision::Fp16);
    assert_eq!(r.status, CaseStatus::Skipped, "{:?}", r.message);
    let fp32 = Case::load(&fixture("tiny-whole")).unwrap();
    let r = judge(&fp32, &[], Precision::Bf16);
    assert_eq!(r.status, CaseStatus::Skipped);
}

#[test]
fn a_non_finite_value_fails_whatever_the_budget() {
    let case = Case::load(&fixture("tiny-whole-fp16")).unwrap();
    let mut t = autocast_outputs(&case);
    let target = "backbone.layers.0.attn";
    for (k, a) in &mut t {
        if k == target {
            let AnyArray::F32(x) = a else { panic!("float32") };
            if let Some(v) = x.iter_mut().nth(5) {
                *v = f32::INFINITY;
            }
        }
    }
    let r = judge(&case, &t, Precision::Fp16);
    assert_eq!(r.status, CaseStatus::Fail);
    let f = r.first_failure().unwrap();
    assert_eq!(f.name, target);
    assert!(f.note.as_deref().unwrap().contains("non-finite"), "{:?}", f.note);
}

/// LayerNorm over the last axis with its statistics accumulated in float16, as a port that runs
/// LayerNorm in fp16 computes it.
fn layer_norm_f16_stats(x: &ArrayD<f32>, w: &ArrayD<f32>, b: &ArrayD<f32>, eps: f32) -> ArrayD<f32> {
    let c = *x.shape().last().unwrap();
    let mut out = x.clone();
    for mut row in out.lanes_mut(Axis(x.ndim() - 1)) {
        let h: Vec<f16> = row.iter().map(|&v| f16::from_f32(v)).collect();
        let mut sum = f16::ZERO;
        for &v in &h {
            sum += v;
        }
        let mean = sum / f16::from_f32(c as f32);
        let mut sq = f16::ZERO;
        for &v in &h {
            sq += (v - mean) * (v - mean);
        }
        let var = sq / f16::from_f32(c as f32);
        let denom = (var + f16::from_f32(eps)).to_f32().sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v = f16::from_f32(((h[i] - mean).to_f32() / denom) * w[i] + b[i]).to_f32();
        }
    }
    out
}

#[test]
fn layer_norm_statistics_in_fp16_fail_at_that_layer_norm_on_the_stress_case() {
    let case = Case::load(&fixture("stress-massive-fp16")).unwrap();
    let weights: Vec<(String, AnyArray)> = read_npz(&case.dir.join("weights.npz")).unwrap();
    let get = |k: &str| match weights.iter().find(|(n, _)| n == k).map(|(_, a)| a) {
        Some(AnyArray::F32(a)) => a.clone(),
        _ => panic!("{k}"),
    };
    let mut t = autocast_outputs(&case);
    let input = match &t.iter().find(|(n, _)| n == "backbone.layers.0").unwrap().1 {
        AnyArray::F32(a) => a.clone(),
        _ => panic!("float32"),
    };
    let planted =
        layer_norm_f16_stats(&input, &get("backbone.layers.1.ln1.weight"), &get("backbone.layers.1.ln1.bias"), 1e-6);
    for (k, a) in &mut t {
        if k == "backbone.layers.1.ln1" {
            *a = AnyArray::F32(planted.clone());
        }
    }
    let r = judge(&case, &t, Precision::Fp16);
    assert_eq!(r.status, CaseStatus::Fail);
    let f = r.first_failure().unwrap();
    assert_eq!(f.name, "backbone.layers.1.ln1");
    assert!(f.ratio > 100.0, "{}", f.ratio);
    assert_eq!(r.failed_tensors(), 1, "only the planted tensor is wrong");
}

#[test]
fn an_fp32_implementation_is_within_every_half_budget() {
    // The reference in float32 on a half twin: far inside the budget, and said so.
    use beit_seg::backend::reference::RefBackend;
    let case = Case::load(&fixture("stress-massive-bf16")).unwrap();
    let r = run_case(&case, &Target::Backend(&RefBackend), &VerifyOptions::default());
    assert_eq!(r.status, CaseStatus::Pass, "{:?}", r.message);
    assert_eq!((r.dtype.as_str(), r.run_dtype.as_str()), ("bf16", "float32"));
    assert!(r.tensors.iter().all(|t| t.budgeted));
}
