//! Hostile or broken fixture cases and candidates (the conformance side of the adversarial
//! checks): a value that cannot be compared is never silently equal, a manifest cannot reach
//! outside its case, and no name or layout makes `verify` panic or repeat itself.

mod common;
use common::copy_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

use beit_seg::array::read_npy;
use beit_seg::backend::reference::RefBackend;
use beit_seg::conformance::candidate::{save_outputs, CandidateSource};
use beit_seg::conformance::case::{discover, Case};
use beit_seg::conformance::report::CaseStatus;
use beit_seg::conformance::{run_case, run_case_dir, Target, VerifyOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// A copy of fixture `name` in `tmp`, with its case.json edited.
fn edited(tmp: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dst = tmp.join(name);
    copy_dir(&fixture(name), &dst);
    let p = dst.join("case.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    dst
}

const REF: Target<'static> = Target::Backend(&RefBackend);

fn write_f32(path: &Path, shape: &[usize], v: f32) {
    let a = beit_seg::array::AnyArray::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(shape), v));
    save_outputs(path.parent().unwrap(), &[(path.file_stem().unwrap().to_string_lossy().into_owned(), a)], None)
        .unwrap();
}

#[test]
fn non_finite_expected_values_are_a_case_error_not_a_pass() {
    let tmp = tempfile::tempdir().unwrap();
    for (tag, v) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let dir = tmp.path().join(tag);
        copy_dir(&fixture("slide-b2"), &dir);
        let logits = dir.join("outputs/seg_logits.npy");
        let shape = read_npy(&logits).unwrap().shape().to_vec();
        write_f32(&logits, &shape, v);
        // Our backend, and a candidate holding the same non-finite values (or 3e38).
        let r = run_case_dir(&dir, &REF, &VerifyOptions::default());
        assert_eq!(r.status, CaseStatus::Error, "{tag}: {:?}", r.message);
        let m = r.message.unwrap();
        assert!(m.contains("seg_logits.npy") && m.contains("not finite"), "{m}");
        let cand = tmp.path().join(format!("cand-{tag}"));
        write_f32(&cand.join("seg_logits.npy"), &shape, if v.is_nan() { v } else { 3e38 });
        let source = CandidateSource { root: cand, names: None };
        let case = Case::load(&dir).unwrap();
        let r = run_case(&case, &Target::Candidate { source: &source, single: true }, &VerifyOptions::default());
        assert_eq!(r.status, CaseStatus::Error, "{tag}: {:?}", r.message);
    }
}

#[test]
fn manifest_values_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |dir: &Path| Case::load(dir).map(|_| ()).unwrap_err().to_string();
    let d = edited(tmp.path(), "tiny-whole", |v| v["kind"] = serde_json::json!(5));
    let m = err(&d);
    assert!(m.contains("`kind` must be a string") && m.contains("got 5"), "{m}");

    let tmp = tempfile::tempdir().unwrap();
    let d = edited(tmp.path(), "tiny-whole", |v| v["tolerance"] = serde_json::json!({"rtol": -1.0, "atol": 1e-4}));
    let m = err(&d);
    assert!(m.contains("`tolerance`") && m.contains("non-negative"), "{m}");

    for evil in ["../../etc/passwd", "/etc/passwd", "outputs/../../x.npy"] {
        let tmp = tempfile::tempdir().unwrap();
        let d = edited(tmp.path(), "tiny-whole", |v| v["outputs"]["seg_logits"] = serde_json::json!(evil));
        let m = err(&d);
        assert!(m.contains("outputs.seg_logits") && m.contains("inside the case directory"), "{evil}: {m}");
        let tmp = tempfile::tempdir().unwrap();
        let d = edited(tmp.path(), "tiny-whole", |v| v["weights"] = serde_json::json!(evil));
        let r = run_case_dir(&d, &REF, &VerifyOptions::default());
        assert_eq!(r.status, CaseStatus::Error);
        assert!(r.message.unwrap().contains("`weights`"), "{evil}");
        let tmp = tempfile::tempdir().unwrap();
        let d = edited(tmp.path(), "tiny-whole", |v| v["inputs"]["inputs"] = serde_json::json!(evil));
        let r = run_case_dir(&d, &REF, &VerifyOptions::default());
        assert_eq!(r.status, CaseStatus::Error);
        assert!(r.message.unwrap().contains("`inputs.inputs`"), "{evil}");
    }
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_runs_each_case_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cases");
    copy_dir(&fixture("metric-basic"), &root.join("a/metric-basic"));
    std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap();
    std::os::unix::fs::symlink(root.join("a/metric-basic"), root.join("again")).unwrap();
    let found = discover(&[root.clone(), root.join("a")]).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn huge_names_do_not_panic_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "x".repeat(70_000);
    let d = edited(tmp.path(), "tiny-whole", |v| {
        let f = v["outputs"]["neck.0"].clone();
        v["outputs"].as_object_mut().unwrap().insert(long.clone(), f);
    });
    let out = Command::new(env!("CARGO_BIN_EXE_beit-seg")).args(["verify", "-v"]).arg(&d).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The extra name is not produced by the reference: the case fails, and nothing panics.
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("xxx...") && !text.contains(&long), "the name is cut in the table");
}

#[test]
fn save_outputs_never_overwrites_silently_and_two_cases_of_one_name_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("saved");
    let run = |extra: &[&str], cases: &[&Path]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_beit-seg"));
        c.args(["verify", "--quiet", "--save-outputs"]).arg(&out).args(extra).args(cases);
        let o = c.output().unwrap();
        (o.status.code(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };
    let case = fixture("metric-basic");
    let slide = fixture("slide-b2");
    let (code, text) = run(&[], &[&slide]);
    assert_eq!(code, Some(0), "{text}");
    let saved = out.join("slide-b2/seg_logits.npy");
    let before = std::fs::read(&saved).unwrap();
    // A second run over the same folder: refused without --force, the file unchanged.
    let (code, text) = run(&[], &[&slide]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("already exists") && text.contains("--force"), "{text}");
    assert_eq!(std::fs::read(&saved).unwrap(), before);
    let (code, text) = run(&["--force"], &[&slide]);
    assert_eq!(code, Some(0), "{text}");
    // Two case directories with the same `name`: refused before anything runs.
    let twin = tmp.path().join("copy");
    copy_dir(&case, &twin);
    let (code, text) = run(&["--force"], &[&case, &twin]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("two cases are named `metric-basic`"), "{text}");
}

#[cfg(unix)]
#[test]
fn a_case_json_or_candidate_file_that_is_a_device_or_fifo_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // case.json -> /dev/zero: an error naming it, not an unbounded read.
    let dir = tmp.path().join("zero");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("case.json")).unwrap();
    let e = Case::load(&dir).unwrap_err().to_string();
    assert!(e.contains("case.json"), "{e}");
    // A candidate's metrics.json that is a FIFO: an error, and nothing blocks.
    let cand = tmp.path().join("cand");
    std::fs::create_dir(&cand).unwrap();
    let st = std::process::Command::new("mkfifo").arg(cand.join("metrics.json")).status().unwrap();
    assert!(st.success());
    let case = Case::load(&fixture("metric-basic")).unwrap();
    let source = CandidateSource { root: cand, names: None };
    let r = run_case(&case, &Target::Candidate { source: &source, single: true }, &VerifyOptions::default());
    assert_eq!(r.status, CaseStatus::Error, "{:?}", r.message);
    assert!(r.message.unwrap().contains("metrics.json"));
}
