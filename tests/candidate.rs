//! `verify --candidate`: validating an implementation that is not ours. Candidates are built
//! from the fixtures' own expected tensors (MMSegmentation's values), then broken on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;

use beit_seg::array::{read_npy, AnyArray};
use beit_seg::conformance::candidate::{save_outputs, CandidateSource};
use beit_seg::conformance::case::Case;
use beit_seg::conformance::compare::Status;
use beit_seg::conformance::names::NameMap;
use beit_seg::conformance::report::CaseStatus;
use beit_seg::conformance::{run_case, Target, VerifyOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// The case's expected tensors, as a candidate would write them.
fn expected_tensors(case: &Case) -> Vec<(String, AnyArray)> {
    case.outputs.iter().map(|(n, f)| (n.clone(), read_npy(&case.dir.join(f)).unwrap())).collect()
}

fn run(
    case: &Case,
    root: &Path,
    names: Option<NameMap>,
    opts: &VerifyOptions,
    single: bool,
) -> beit_seg::conformance::report::CaseReport {
    let source = CandidateSource { root: root.to_path_buf(), names };
    run_case(case, &Target::Candidate { source: &source, single }, opts)
}

fn perturb(a: &AnyArray, delta: f64) -> AnyArray {
    match a {
        AnyArray::F32(x) => {
            let mut y = x.clone();
            if let Some(v) = y.iter_mut().next() {
                *v += delta as f32;
            }
            AnyArray::F32(y)
        }
        AnyArray::F64(x) => {
            let mut y = x.clone();
            if let Some(v) = y.iter_mut().next() {
                *v += delta;
            }
            AnyArray::F64(y)
        }
        other => other.clone(),
    }
}

#[test]
fn correct_candidate_passes_and_planted_errors_are_named() {
    let case = Case::load(&fixture("tiny-whole")).unwrap();
    let tensors = expected_tensors(&case);
    let tmp = tempfile::tempdir().unwrap();
    let opts = VerifyOptions::default();

    let good = tmp.path().join("good");
    save_outputs(&good, &tensors, None).unwrap();
    let r = run(&case, &good, None, &opts, true);
    assert_eq!(r.status, CaseStatus::Pass, "{:?}", r.message);
    assert_eq!(r.covered(), tensors.len());

    // One element of one module output off by 1e-2 (atol 1e-4): that tensor fails, and is the
    // first failure.
    let target = "backbone.layers.1.attn";
    let bad: Vec<_> =
        tensors.iter().map(|(k, a)| (k.clone(), if k == target { perturb(a, 1e-2) } else { a.clone() })).collect();
    let dir = tmp.path().join("bad");
    save_outputs(&dir, &bad, None).unwrap();
    let r = run(&case, &dir, None, &opts, true);
    assert_eq!(r.status, CaseStatus::Fail);
    assert_eq!(r.first_failure().unwrap().name, target);
    assert_eq!(r.failed_tensors(), 1);
    assert_eq!(r.first_failure().unwrap().violations, 1);

    // A missing tensor is NOT COVERED (fails unless allowed); an extra one is listed as unused.
    let mut partial: Vec<_> = tensors.iter().filter(|(k, _)| k != "decode_head.fpn_bottleneck").cloned().collect();
    partial.push(("my_port.extra".into(), tensors[0].1.clone()));
    let dir = tmp.path().join("partial");
    save_outputs(&dir, &partial, None).unwrap();
    let r = run(&case, &dir, None, &opts, true);
    assert_eq!(r.status, CaseStatus::Fail);
    let t = r.tensors.iter().find(|t| t.name == "decode_head.fpn_bottleneck").unwrap();
    assert_eq!(t.status, Status::NotCovered);
    assert_eq!(r.unused, vec!["my_port.extra".to_string()]);
    let r = run(&case, &dir, None, &VerifyOptions { allow_uncovered: true, ..Default::default() }, true);
    assert_eq!(r.status, CaseStatus::Pass);

    // A wrong shape is a per-tensor failure that says so.
    let wrong: Vec<_> = tensors
        .iter()
        .map(|(k, a)| {
            if k == "neck.0" {
                let AnyArray::F32(x) = a else { panic!("float32 case") };
                let n = x.len();
                (k.clone(), AnyArray::F32(x.clone().into_shape_with_order(vec![n]).unwrap()))
            } else {
                (k.clone(), a.clone())
            }
        })
        .collect();
    let dir = tmp.path().join("wrong");
    save_outputs(&dir, &wrong, None).unwrap();
    let r = run(&case, &dir, None, &opts, true);
    let t = r.tensors.iter().find(|t| t.name == "neck.0").unwrap();
    assert_eq!(t.status, Status::Fail);
    assert!(t.note.as_deref().unwrap().contains("shape mismatch"), "{:?}", t.note);
}

#[test]
fn float64_case_needs_as_f32_for_a_float32_candidate() {
    let case = Case::load(&fixture("tiny-whole-f64")).unwrap();
    let f32s: Vec<_> = expected_tensors(&case)
        .into_iter()
        .map(|(k, a)| (k, if let AnyArray::F64(x) = &a { AnyArray::F32(x.mapv(|v| v as f32)) } else { a }))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    save_outputs(tmp.path(), &f32s, None).unwrap();
    let r = run(&case, tmp.path(), None, &VerifyOptions::default(), true);
    assert_eq!(r.status, CaseStatus::Fail);
    assert!(r.first_failure().unwrap().note.as_deref().unwrap().contains("--as-f32"));
    let r = run(&case, tmp.path(), None, &VerifyOptions { as_f32: true, ..Default::default() }, true);
    assert_eq!(r.status, CaseStatus::Pass, "{:?}", r.message);
}

#[test]
fn a_name_map_renames_and_relays_tensors() {
    // A port that names layers like timm and stores the four feature maps as NHWC.
    let case = Case::load(&fixture("tiny-whole")).unwrap();
    let map = NameMap::parse(
        r#"{"format": "beit-seg-names/1", "rules": [
            {"candidate": "blocks.{i}", "fixture": "backbone.layers.{i}"},
            {"candidate": "features_nhwc.{k}", "fixture": "backbone.{k}", "transform": [{"op": "nhwc_to_nchw"}]},
            {"candidate": "debug.{k}", "fixture": null}]}"#,
        "test",
    )
    .unwrap();
    let renamed: Vec<_> = expected_tensors(&case)
        .into_iter()
        .filter_map(|(k, a)| {
            if let Some(i) = k.strip_prefix("backbone.layers.").filter(|r| r.parse::<usize>().is_ok()) {
                Some((format!("blocks.{i}"), a))
            } else if let Some(j) = k.strip_prefix("backbone.").filter(|r| r.len() == 1) {
                let AnyArray::F32(x) = a else { panic!() };
                let nhwc = x.permuted_axes(vec![0, 2, 3, 1]).as_standard_layout().into_owned();
                Some((format!("features_nhwc.{j}"), AnyArray::F32(nhwc)))
            } else {
                Some((k, a))
            }
        })
        .chain([("debug.0".to_string(), AnyArray::F32(ndarray::ArrayD::zeros(vec![2])))])
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    save_outputs(tmp.path(), &renamed, None).unwrap();
    let r = run(&case, tmp.path(), Some(map), &VerifyOptions::default(), true);
    assert_eq!(r.status, CaseStatus::Pass, "{:?}", r.message);
    assert!(r.unused.is_empty());
    // Without the map the renamed tensors are unused and the fixture names not covered.
    let r = run(&case, tmp.path(), None, &VerifyOptions::default(), true);
    assert_eq!(r.status, CaseStatus::Fail);
    assert!(r.unused.iter().any(|u| u == "blocks.0"));
}

#[test]
fn metric_candidate_compares_two_decimal_summaries() {
    let case = Case::load(&fixture("metric-basic")).unwrap();
    let mut m = case.manifest["metrics"].clone();
    let tmp = tempfile::tempdir().unwrap();
    // A float32-rounded summary (as numpy >= 2 stores it) is the same two-decimal number.
    let a_acc = m["aAcc"].as_f64().unwrap();
    m["aAcc"] = serde_json::json!((a_acc as f32) as f64);
    save_outputs(tmp.path(), &[], Some(&m)).unwrap();
    let r = run(&case, tmp.path(), None, &VerifyOptions::default(), true);
    assert_eq!(r.status, CaseStatus::Pass, "{:?} {:?}", r.message, r.tensors);
    m["aAcc"] = serde_json::json!(a_acc + 0.01);
    save_outputs(tmp.path(), &[], Some(&m)).unwrap();
    let r = run(&case, tmp.path(), None, &VerifyOptions::default(), true);
    assert_eq!(r.first_failure().unwrap().name, "metrics.aAcc");
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_beit-seg"))
}

#[test]
fn cli_several_cases_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["tiny-whole", "var-no-aux"] {
        let case = Case::load(&fixture(name)).unwrap();
        save_outputs(&tmp.path().join(name), &expected_tensors(&case), None).unwrap();
    }
    let out = bin()
        .args(["verify", "--quiet", "--candidate"])
        .arg(tmp.path())
        .arg(fixture("tiny-whole"))
        .arg(fixture("var-no-aux"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 passed, 0 failed, 0 skipped"), "{stdout}");
    assert_eq!(out.status.code(), Some(0));
    // A case with no candidate directory: named, and exit 3 (could not check).
    let out =
        bin().args(["verify", "--quiet", "--candidate"]).arg(tmp.path()).arg(fixture("var-odd-size")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("var-odd-size"), "{stdout}");
    // Single case: DIR itself holds the tensors, so no subdirectory is needed; here it has none.
    assert_ne!(out.status.code(), Some(0));
    // A directory with no case in it is an error, never silently ignored.
    let out = bin().args(["verify"]).arg(fixture("tiny-whole")).arg(tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("contains no fixture case"));
    // A usage error is exit 2.
    let out = bin().args(["verify", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
