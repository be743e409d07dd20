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
    let target = Target::Candidate { source: &source, single };
    run_case(case, &target, opts)
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
        .map(|(k, a)| {
            if let Some(i) = k.strip_prefix("backbone.layers.").filter(|r| r.parse::<usize>().is_ok()) {
                (format!("blocks.{i}"), a)
            } else if let Some(j) = k.strip_prefix("backbone.").filter(|r| r.len() == 1) {
                let AnyArray::F32(x) = a else { panic!() };
                let nhwc = x.permuted_axes(vec![0, 2, 3, 1]).as_standard_layout().into_owned();
                (format!("features_nhwc.{j}"), AnyArray::F32(nhwc))
            } else {
                (k, a)
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

/// A candidate named as HF transformers' modules (the built-in `hf` map read backwards) passes
/// with `--names hf`, and fails without it.
#[test]
fn an_hf_named_candidate_passes_with_the_builtin_map() {
    for (name, builtin) in [("tiny-whole-f64", "hf"), ("tiny-whole-f64", "timm")] {
        let case = Case::load(&fixture(name)).unwrap();
        let map = NameMap::load(builtin).unwrap();
        let mut renamed = 0;
        let tensors: Vec<_> = expected_tensors(&case)
            .into_iter()
            .map(|(k, a)| match map.candidate_name(&k) {
                Some((cand, t)) if t.is_empty() && cand != k => {
                    renamed += 1;
                    (cand, a)
                }
                _ => (k, a),
            })
            .collect();
        assert!(renamed >= 10, "{builtin}: only {renamed} names mapped");
        let tmp = tempfile::tempdir().unwrap();
        save_outputs(tmp.path(), &tensors, None).unwrap();
        let r = run(&case, tmp.path(), Some(map), &VerifyOptions::default(), true);
        assert_eq!(r.status, CaseStatus::Pass, "{builtin}: {:?} unused {:?}", r.message, r.unused);
        let r = run(&case, tmp.path(), None, &VerifyOptions::default(), true);
        assert_eq!(r.status, CaseStatus::Fail, "{builtin}");
    }
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

// ------------------------------------------------------------------ no verdict without evidence

/// Runs the CLI; returns (exit code, stdout + stderr).
fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_beit-seg")).args(args).output().expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The case's backbone tensors under a port's own prefix (`backbone.*` held as `vit.*`).
fn backbone_as_vit(case: &Case) -> Vec<(String, AnyArray)> {
    expected_tensors(case)
        .into_iter()
        .filter(|(k, _)| k.starts_with("backbone."))
        .map(|(k, a)| (k.replacen("backbone.", "vit.", 1), a))
        .collect()
}

#[test]
fn nothing_compared_is_never_a_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case::load(&fixture("tiny-whole")).unwrap();
    let allow = VerifyOptions { allow_uncovered: true, ..Default::default() };

    // Only names the case does not know (a backbone held as `.vit`, no name map).
    let renamed = backbone_as_vit(&case);
    let dir = tmp.path().join("vit");
    save_outputs(&dir, &renamed, None).unwrap();
    for opts in [&VerifyOptions::default(), &allow] {
        let r = run(&case, &dir, None, opts, true);
        assert_eq!(r.status, CaseStatus::NoEvidence, "{:?}", r.message);
        assert_eq!(r.coverage.compared, 0);
        assert!(r.message.as_deref().unwrap().contains("name map"), "{:?}", r.message);
    }
    // The same through the CLI: non-zero exit, with and without --allow-uncovered.
    let case_dir = fixture("tiny-whole");
    for extra in [&[][..], &["--allow-uncovered"][..]] {
        let mut args = vec!["verify", "--candidate", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(case_dir.to_str().unwrap());
        let (code, text) = cli(&args);
        assert_eq!(code, 1, "{text}");
        assert!(text.contains("NO EVIDENCE") && text.contains("0 passed, 1 failed"), "{text}");
    }

    // An empty candidate directory, single- and multi-case, with and without --allow-uncovered.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let slide = fixture("slide-b2");
    for extra in [&[][..], &["--allow-uncovered"][..]] {
        for cases in [vec![slide.to_str().unwrap()], vec![slide.to_str().unwrap(), case_dir.to_str().unwrap()]] {
            let mut args = vec!["verify", "--candidate", empty.to_str().unwrap()];
            args.extend_from_slice(extra);
            args.extend(cases.iter().copied());
            let (code, text) = cli(&args);
            assert_ne!(code, 0, "{text}");
            assert!(!text.contains("PASS"), "{text}");
            assert!(text.lines().any(|l| l.starts_with("0 passed")), "{text}");
        }
    }
    let r = run(&Case::load(&slide).unwrap(), &empty, None, &allow, true);
    assert_eq!(r.status, CaseStatus::Error);
    assert!(r.message.as_deref().unwrap().contains("is empty"), "{:?}", r.message);

    // Case subfolders, none for this case, in single-case mode: an error naming what was found.
    let multi = tmp.path().join("multi");
    save_outputs(&multi.join("var-odd-size"), &expected_tensors(&case), None).unwrap();
    for opts in [&VerifyOptions::default(), &allow] {
        let r = run(&case, &multi, None, opts, true);
        assert_eq!(r.status, CaseStatus::Error, "{:?}", r.message);
        let m = r.message.as_deref().unwrap();
        assert!(m.contains("case subfolders") && m.contains("var-odd-size/"), "{m}");
    }
    let (code, text) =
        cli(&["verify", "--allow-uncovered", "--candidate", multi.to_str().unwrap(), case_dir.to_str().unwrap()]);
    assert_eq!(code, 3, "{text}");
    // A file where a candidate directory is expected.
    let file = tmp.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let (code, text) = cli(&["verify", "--candidate", file.to_str().unwrap(), case_dir.to_str().unwrap()]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("is a file"), "{text}");
    // A directory and an archive for the same case: ambiguous, never one chosen silently.
    let both = tmp.path().join("both");
    save_outputs(&both.join("tiny-whole"), &expected_tensors(&case), None).unwrap();
    std::fs::write(both.join("tiny-whole.npz"), b"PK").unwrap();
    let r = run(&case, &both, None, &VerifyOptions::default(), false);
    assert_eq!(r.status, CaseStatus::Error);
    assert!(r.message.as_deref().unwrap().contains("two candidates"), "{:?}", r.message);
}

#[test]
fn a_backbone_port_is_held_to_the_backbone_scope() {
    use beit_seg::conformance::Scope;
    let tmp = tempfile::tempdir().unwrap();
    let case = Case::load(&fixture("tiny-whole")).unwrap();
    let backbone: Vec<_> = expected_tensors(&case).into_iter().filter(|(k, _)| k.starts_with("backbone.")).collect();
    let n_backbone = backbone.len();
    assert!(n_backbone > 10 && n_backbone < case.outputs.len());
    let dir = tmp.path().join("bb");
    save_outputs(&dir, &backbone, None).unwrap();
    let scoped = VerifyOptions { scope: Scope::new(&["backbone".into()], &[]).unwrap(), ..Default::default() };

    let r = run(&case, &dir, None, &scoped, true);
    assert_eq!(r.status, CaseStatus::Pass, "{:?}", r.message);
    assert!(!r.partial);
    assert_eq!((r.coverage.in_scope, r.coverage.covered), (n_backbone, n_backbone));
    assert!(r.tensors.iter().filter(|t| !t.name.starts_with("backbone")).all(|t| t.status == Status::OutOfScope));
    // Without the scope the same port fails (the heads are not produced) ...
    assert_eq!(run(&case, &dir, None, &VerifyOptions::default(), true).status, CaseStatus::Fail);
    // ... and with --allow-uncovered it is a partial pass that says so.
    let allow = VerifyOptions { allow_uncovered: true, ..Default::default() };
    let r = run(&case, &dir, None, &allow, true);
    assert!(r.status == CaseStatus::Pass && r.partial);
    let line = beit_seg::conformance::report::case_line(&r);
    assert!(line.starts_with(&format!("PASS (partial: {n_backbone}/{})", case.outputs.len())), "{line}");

    // One backbone tensor missing: the scope fails it, naming the tensor.
    let missing = "backbone.layers.2.ln2";
    let short: Vec<_> = backbone.iter().filter(|(k, _)| k != missing).cloned().collect();
    let dir2 = tmp.path().join("short");
    save_outputs(&dir2, &short, None).unwrap();
    let r = run(&case, &dir2, None, &scoped, true);
    assert_eq!(r.status, CaseStatus::Fail);
    let t = r.tensors.iter().find(|t| t.name == missing).unwrap();
    assert_eq!(t.status, Status::NotCovered);
    assert!(t.note.as_deref().unwrap().contains("not produced by the candidate"), "{:?}", t.note);
    // --ignore takes it out of the scope again.
    let ignoring =
        VerifyOptions { scope: Scope::new(&["backbone".into()], &["*.ln2".into()]).unwrap(), ..Default::default() };
    assert_eq!(run(&case, &dir2, None, &ignoring, true).status, CaseStatus::Pass);
    // A scope that selects nothing of a case is no evidence (slide cases keep only seg_logits/pred).
    let slide = Case::load(&fixture("slide-b2")).unwrap();
    let r = run(&slide, &dir, None, &scoped, true);
    assert_eq!(r.status, CaseStatus::NoEvidence, "{:?}", r.message);

    // The CLI: the summary line names the scope and the coverage within it; JSON carries it.
    let json = tmp.path().join("r.json");
    let (code, text) = cli(&[
        "verify",
        "--candidate",
        dir.to_str().unwrap(),
        "--scope",
        "backbone",
        "--json",
        json.to_str().unwrap(),
        fixture("tiny-whole").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("scope backbone: {n_backbone}/{n_backbone} covered (100%)")), "{text}");
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["cases"][0]["coverage"]["in_scope"], n_backbone);
    assert_eq!(j["cases"][0]["scope"], "backbone");
}

#[test]
fn a_string_capture_renames_a_prefix_in_one_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case::load(&fixture("tiny-whole")).unwrap();
    let renamed = backbone_as_vit(&case);
    let dir = tmp.path().join("vit");
    save_outputs(&dir, &renamed, None).unwrap();
    let map = NameMap::parse(
        r#"{"format": "beit-seg-names/1", "rules": [{"candidate": "vit.{*rest}", "fixture": "backbone.{*rest}"}]}"#,
        "test",
    )
    .unwrap();
    let scoped = VerifyOptions {
        scope: beit_seg::conformance::Scope::new(&["backbone".into()], &[]).unwrap(),
        ..Default::default()
    };
    let r = run(&case, &dir, Some(map), &scoped, true);
    assert_eq!(r.status, CaseStatus::Pass, "{:?}", r.message);
    assert_eq!(r.coverage.covered, renamed.len());
    assert!(r.unused.is_empty());
}

#[test]
fn labels_plus_a_fraction_are_not_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case::load(&fixture("tiny-whole")).unwrap();
    let tensors: Vec<_> = expected_tensors(&case)
        .into_iter()
        .map(|(k, a)| match (&*k, &a) {
            ("pred", AnyArray::I64(x)) => (k, AnyArray::F64(x.mapv(|v| v as f64 + 0.00005))),
            _ => (k, a),
        })
        .collect();
    let dir = tmp.path().join("c");
    save_outputs(&dir, &tensors, None).unwrap();
    let r = run(&case, &dir, None, &VerifyOptions::default(), true);
    let t = r.tensors.iter().find(|t| t.name == "pred").unwrap();
    assert_eq!(t.status, Status::Fail);
    assert!(t.note.as_deref().unwrap().contains("not an integer"), "{:?}", t.note);
    // Integer-valued floats are fine labels.
    let ints: Vec<_> = expected_tensors(&case)
        .into_iter()
        .map(|(k, a)| match (&*k, &a) {
            ("pred", AnyArray::I64(x)) => (k, AnyArray::F32(x.mapv(|v| v as f32))),
            _ => (k, a),
        })
        .collect();
    let dir = tmp.path().join("ints");
    save_outputs(&dir, &ints, None).unwrap();
    assert_eq!(run(&case, &dir, None, &VerifyOptions::default(), true).status, CaseStatus::Pass);
}
