//! Bad input gets a clear error (or warning) naming the file, key or tensor; never a panic,
//! never a silent pass. (Checkpoint readers: tests/checkpoint.rs; images: tests/image.rs.)

mod common;
use common::copy_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use beit_seg::backend::reference::RefBackend;
use beit_seg::conformance::case::Case;
use beit_seg::conformance::report::CaseStatus;
use beit_seg::conformance::{run_case, Target, VerifyOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_beit-seg"))
}

/// A copy of fixture `name` in a temporary directory, with its case.json edited.
fn edited_case(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(name);
    copy_dir(&fixture(name), &dst);
    let p = dst.join("case.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    (tmp, dst)
}

const REF: Target<'static> = Target::Backend(&RefBackend);

#[test]
fn a_misspelled_manifest_key_is_named_and_fails_with_strict() {
    let (_t, dir) = edited_case("tiny-whole", |v| {
        let tol = v.as_object_mut().unwrap().remove("tolerance").unwrap();
        v["tolerence"] = tol;
    });
    let case = Case::load(&dir).unwrap();
    assert_eq!(case.unknown_keys, vec!["tolerence".to_string()]);
    let r = run_case(&case, &REF, &VerifyOptions::default());
    assert!(r.warnings.iter().any(|w| w.contains("`tolerence`")), "{:?}", r.warnings);
    let r = run_case(&case, &REF, &VerifyOptions { strict: true, ..Default::default() });
    assert_eq!(r.status, CaseStatus::Error);
    assert!(r.message.unwrap().contains("`tolerence`"));
    // `outptus`: no outputs, and the unknown key is named.
    let (_t2, dir2) = edited_case("tiny-whole", |v| {
        let o = v.as_object_mut().unwrap().remove("outputs").unwrap();
        v["outptus"] = o;
    });
    let out = bin().args(["verify", "--quiet"]).arg(&dir2).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`outptus`"), "{stderr}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn an_unknown_kind_is_skipped_and_an_error_with_strict() {
    let (_t, dir) = edited_case("tiny-whole", |v| v["kind"] = "segmentr".into());
    let out = bin().args(["verify", "--quiet"]).arg(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("kind `segmentr` is not known") && stdout.contains("0 passed, 0 failed, 1 skipped"),
        "{stdout}"
    );
    let out = bin().args(["verify", "--quiet", "--strict"]).arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn non_finite_weights_and_inputs_are_refused_by_key_and_count() {
    use beit_seg::array::{read_npy, AnyArray};
    let (_t, dir) = edited_case("var-no-aux", |_| {});
    // NaN in the input.
    let p = dir.join("inputs.npy");
    let AnyArray::F32(mut x) = read_npy(&p).unwrap() else { panic!("float32 input") };
    x.iter_mut().take(3).for_each(|v| *v = f32::NAN);
    beit_seg::conformance::candidate::save_outputs(&dir, &[("inputs".into(), AnyArray::F32(x))], None).unwrap();
    let r = run_case(&Case::load(&dir).unwrap(), &REF, &VerifyOptions::default());
    assert_eq!(r.status, CaseStatus::Error);
    let m = r.message.unwrap();
    assert!(m.contains("inputs.npy") && m.contains("3 NaN"), "{m}");
    // Infinity in a weight.
    let (_t2, dir2) = edited_case("var-no-aux", |_| {});
    let wpath = dir2.join("weights.npz");
    let mut w = beit_seg::array::read_npz(&wpath).unwrap();
    if let AnyArray::F32(a) = &mut w.iter_mut().find(|(k, _)| k == "backbone.layers.0.gamma_1").unwrap().1 {
        a[[0]] = f32::INFINITY;
    }
    beit_seg::checkpoint::write_npz(
        &wpath,
        &w,
        beit_seg::checkpoint::WriteOptions { force: true, ..Default::default() },
    )
    .unwrap();
    let r = run_case(&Case::load(&dir2).unwrap(), &REF, &VerifyOptions::default());
    let m = r.message.unwrap();
    assert!(m.contains("`backbone.layers.0.gamma_1`") && m.contains("1 inf"), "{m}");
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let mut child = bin()
        .args(["inspect"])
        .arg(fixture("ckpt-unilm-ade").join("upernet_beit_tiny_ade.pth"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read nothing and close the pipe, as `| head -0` does.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn missing_paths_are_named_once() {
    let out = bin().args(["verify", "/no/such/case"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stderr.matches("/no/such/case").count(), 1, "{stderr}");
    assert!(!stderr.contains("os error 2): No such file"), "{stderr}");
}

/// A metric fixture whose summary numbers were written by numpy >= 2 (float32-rounded, e.g.
/// 18.559999465942383 for 18.56) passes when every tensor matches; off by 0.01 it fails.
#[test]
fn float32_rounded_fixture_summaries_compare_as_two_decimal_numbers() {
    let orig = Case::load(&fixture("metric-basic")).unwrap();
    let a_acc = orig.manifest["metrics"]["aAcc"].as_f64().unwrap();
    let (_t, dir) = edited_case("metric-basic", |v| {
        for k in ["aAcc", "mIoU", "mAcc"] {
            let x = v["metrics"][k].as_f64().unwrap();
            v["metrics"][k] = serde_json::json!((x as f32) as f64);
        }
    });
    let r = run_case(&Case::load(&dir).unwrap(), &REF, &VerifyOptions::default());
    assert_eq!(r.status, CaseStatus::Pass, "{:?}", r.message);
    let (_t2, dir2) = edited_case("metric-basic", |v| v["metrics"]["aAcc"] = serde_json::json!(a_acc + 0.01));
    let r = run_case(&Case::load(&dir2).unwrap(), &REF, &VerifyOptions::default());
    assert_eq!(r.first_failure().map(|t| t.name.as_str()), Some("metrics.aAcc"));
}
