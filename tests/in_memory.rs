//! The in-memory candidate API (a Rust port's own `cargo test`): MMSegmentation's own tensors
//! pass, a perturbed one fails by name, and the verdict is the one a candidate directory gets.

use std::panic::{catch_unwind, AssertUnwindSafe};

use beit_seg::conformance::candidate::{save_outputs, CandidateSource};
use beit_seg::conformance::compare::Status;
use beit_seg::conformance::report::{case_line, CaseStatus};
use beit_seg::conformance::{
    bundled_cases, case_dir, fixtures_dir, run_case, verify_case, AnyArray, Candidate, Case, NameMap, Precision, Scope,
    Target, VerifyOptions, FIXTURES_ENV,
};
use ndarray::ArrayD;

fn perturb_first(tensors: &mut [(String, AnyArray)], name: &str, delta: f32) {
    let (_, a) = tensors.iter_mut().find(|(n, _)| n == name).expect("the tensor is expected");
    match a {
        AnyArray::F32(x) => *x.iter_mut().next().unwrap() += delta,
        AnyArray::F64(x) => *x.iter_mut().next().unwrap() += delta as f64,
        _ => panic!("{name} is not a float tensor"),
    }
}

#[test]
fn the_fixtures_own_tensors_pass_and_a_perturbed_one_fails_by_name() {
    let case = Case::bundled("tiny-whole").unwrap();
    let expected = case.expected().unwrap();
    let r = verify_case(&case.dir, &Candidate::from_tensors(expected.clone()), &VerifyOptions::default());
    r.assert_pass();
    assert_eq!(r.coverage.covered, r.coverage.expected);
    assert!(!r.partial);

    let mut bad = expected;
    perturb_first(&mut bad, "backbone.layers.2.ffn", 1e-2);
    let r = verify_case(&case.dir, &Candidate::from_tensors(bad), &VerifyOptions::default());
    assert_eq!(r.status, CaseStatus::Fail);
    assert_eq!(r.first_failure().unwrap().name, "backbone.layers.2.ffn");
    assert_eq!(r.failed_tensors(), 1, "only the perturbed tensor fails:\n{}", r.text());
    // The panic message names the tensor first, then prints what `verify` prints.
    let msg = catch_unwind(AssertUnwindSafe(|| r.assert_pass())).unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.starts_with("beit-seg: case `tiny-whole` FAIL: first failing tensor `backbone.layers.2.ffn`"), "{msg}");
    assert!(msg.contains(&case_line(&r)), "{msg}");
    assert!(msg.contains("tensor ") && msg.contains("max_abs") && msg.contains("FAIL"), "{msg}");
    assert!(msg.contains("worst at [0, 0, 0]"), "{msg}");
}

#[test]
fn a_closure_receives_the_case_and_its_errors_are_reported() {
    let dir = case_dir("tiny-whole-f64").unwrap();
    // A closure that computes from the case: config, weights and input are all there.
    let target = Candidate::from_fn(|case: &Case| {
        let cfg = case.model_config()?;
        let weights = case.weights()?;
        let x = case.input()?;
        assert_eq!(cfg.backbone.num_layers, 4);
        assert!(weights.iter().any(|(k, a)| k == "backbone.layers.0.attn.qkv.weight" && a.dtype_name() == "float64"));
        assert_eq!(x.dtype_name(), "float64");
        case.expected()
    });
    verify_case(&dir, &target, &VerifyOptions::default()).assert_pass();

    let failing = Candidate::from_fn(|_: &Case| Err::<Vec<(String, AnyArray)>, _>("out of memory on the device"));
    let r = verify_case(&dir, &failing, &VerifyOptions::default());
    assert_eq!(r.status, CaseStatus::Error);
    assert_eq!(
        r.message.as_deref(),
        Some("the candidate failed on case `tiny-whole-f64`: out of memory on the device"),
        "{}",
        r.text()
    );
    assert!(catch_unwind(AssertUnwindSafe(|| r.assert_pass())).is_err());
}

#[test]
fn in_memory_and_directory_candidates_get_the_same_verdict() {
    // One comparison path: the same tensors, written to a directory or handed over in memory,
    // give the same rows (half-precision twin, budget rule included).
    for name in ["tiny-whole", "ppm-nondiv-fp16", "var-no-qv-bias-f64"] {
        let case = Case::bundled(name).unwrap();
        let mut tensors = case.expected().unwrap();
        let victim = tensors[tensors.len() / 2].0.clone();
        perturb_first(&mut tensors, &victim, 0.5);
        let tmp = tempfile::tempdir().unwrap();
        save_outputs(tmp.path(), &tensors, None).unwrap();
        let source = CandidateSource { root: tmp.path().to_path_buf(), names: None };
        let opts = VerifyOptions { as_f32: false, ..Default::default() };
        let from_dir = run_case(&case, &Target::Candidate { source: &source, single: true }, &opts);
        let in_mem = run_case(&case, &Target::InMemory(&Candidate::from_tensors(tensors)), &opts);
        assert_eq!(from_dir.status, CaseStatus::Fail, "{name}");
        assert_eq!(in_mem.status, from_dir.status, "{name}");
        assert_eq!(in_mem.coverage, from_dir.coverage, "{name}");
        let rows = |r: &beit_seg::conformance::CaseReport| {
            r.tensors.iter().map(|t| (t.name.clone(), t.status, t.max_abs.to_bits(), t.violations)).collect::<Vec<_>>()
        };
        assert_eq!(rows(&in_mem), rows(&from_dir), "{name}");
        assert_eq!(in_mem.first_failure().unwrap().name, victim, "{name}");
    }
}

#[test]
fn no_evidence_scope_and_uncovered_apply_unchanged() {
    let case = Case::bundled("tiny-whole").unwrap();
    let expected = case.expected().unwrap();

    // Nothing produced: NO EVIDENCE, never a pass.
    let r = verify_case(&case.dir, &Candidate::from_tensors(Vec::<(String, AnyArray)>::new()), &Default::default());
    assert_eq!(r.status, CaseStatus::NoEvidence);
    // Tensors under other names only: NO EVIDENCE, and the message says a map may be missing.
    let renamed: Vec<(String, AnyArray)> = expected.iter().map(|(n, a)| (format!("vit.{n}"), a.clone())).collect();
    let r = verify_case(&case.dir, &Candidate::from_tensors(renamed.clone()), &Default::default());
    assert_eq!(r.status, CaseStatus::NoEvidence);
    assert!(r.message.as_deref().unwrap().contains("a name map (--names) may be missing"), "{}", r.text());
    // ... which a name map fixes.
    let map = NameMap::parse(
        r#"{"format": "beit-seg-names/1", "description": "prefix", "rules": [{"candidate": "vit.{*rest}", "fixture": "{*rest}"}]}"#,
        "test map",
    )
    .unwrap();
    let target = Candidate::from_tensors(renamed).with_names(map);
    verify_case(&case.dir, &target, &Default::default()).assert_pass();

    // A backbone-only port: in scope it must be complete; the rest is out of scope, not passed.
    let backbone: Vec<(String, AnyArray)> =
        expected.iter().filter(|(n, _)| n.starts_with("backbone")).cloned().collect();
    let whole = verify_case(&case.dir, &Candidate::from_tensors(backbone.clone()), &Default::default());
    assert_eq!(whole.status, CaseStatus::Fail, "uncovered tensors fail without a scope");
    let opts = VerifyOptions { scope: Scope::new(&["backbone".into()], &[]).unwrap(), ..Default::default() };
    let r = verify_case(&case.dir, &Candidate::from_tensors(backbone.clone()), &opts);
    r.assert_pass();
    assert!(r.tensors.iter().any(|t| t.status == Status::OutOfScope));
    assert_eq!(r.coverage.covered, r.coverage.in_scope);
    // Bring-up: half the backbone is a partial pass only with allow_uncovered.
    let half: Vec<(String, AnyArray)> = backbone[..backbone.len() / 2].to_vec();
    let strict = verify_case(&case.dir, &Candidate::from_tensors(half.clone()), &opts);
    assert_eq!(strict.status, CaseStatus::Fail);
    let msg = catch_unwind(AssertUnwindSafe(|| strict.assert_pass())).unwrap_err();
    assert!(msg
        .downcast_ref::<String>()
        .unwrap()
        .contains("expected tensor(s) within the scope not produced by the candidate"));
    let lax = VerifyOptions { allow_uncovered: true, ..opts };
    let r = verify_case(&case.dir, &Candidate::from_tensors(half), &lax);
    r.assert_pass();
    assert!(r.partial);
}

#[test]
fn precision_and_as_f32_options() {
    // An fp16 port is judged on the fp16 twins (MMSegmentation's own error as the budget) and
    // skipped elsewhere; a skip is not a pass.
    let twin = Case::bundled("tiny-whole-fp16").unwrap();
    let autocast: Vec<(String, AnyArray)> = twin
        .half
        .as_ref()
        .unwrap()
        .autocast
        .iter()
        .map(|(n, f)| (n.clone(), beit_seg::array::read_npy(&twin.dir.join(f)).unwrap()))
        .collect();
    let fp16 = VerifyOptions { precision: Some(Precision::Fp16), ..Default::default() };
    let r = verify_case(&twin.dir, &Candidate::from_tensors(autocast.clone()), &fp16);
    r.assert_pass();
    assert!(r.tensors.iter().all(|t| t.budgeted));
    let r = verify_case(case_dir("tiny-whole").unwrap(), &Candidate::from_tensors(autocast), &fp16);
    assert_eq!(r.status, CaseStatus::Skipped);
    assert!(catch_unwind(AssertUnwindSafe(|| r.assert_pass())).is_err());

    // float32 tensors for a float64 case: refused unless as_f32.
    let case = Case::bundled("tiny-whole-f64").unwrap();
    let f32s: Vec<(String, ArrayD<f32>)> =
        case.expected().unwrap().into_iter().map(|(n, a)| (n, a.to_float::<f32>().unwrap())).collect();
    let r = verify_case(&case.dir, &Candidate::from_tensors(f32s.clone()), &Default::default());
    assert_eq!(r.status, CaseStatus::Fail);
    assert!(r.first_failure().unwrap().note.as_deref().unwrap().contains("pass --as-f32"));
    let r =
        verify_case(&case.dir, &Candidate::from_tensors(f32s), &VerifyOptions { as_f32: true, ..Default::default() });
    r.assert_pass();
    assert_eq!(r.run_dtype, "float32");
}

#[test]
fn model_free_kinds_take_in_memory_tensors_and_metrics() {
    // A resize case (tensors) and a metric case (metrics only).
    let resize = Case::bundled("resize-up").unwrap();
    verify_case(&resize.dir, &Candidate::from_tensors(resize.expected().unwrap()), &Default::default()).assert_pass();
    let metric = Case::bundled("metric-basic").unwrap();
    let metrics = metric.manifest["metrics"].clone();
    let target = Candidate::from_tensors(Vec::<(String, AnyArray)>::new()).with_metrics(metrics);
    verify_case(&metric.dir, &target, &Default::default()).assert_pass();
}

#[test]
fn case_access_without_the_cli() {
    let root = fixtures_dir().unwrap();
    assert_eq!(root, std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"));
    let all = bundled_cases().unwrap();
    assert!(all.iter().any(|d| d.ends_with("tiny-whole")));
    assert!(all.len() > 60, "{}", all.len());
    let case = Case::bundled("var-out-indices").unwrap();
    let cfg = case.model_config().unwrap();
    assert_eq!(cfg.backbone.out_indices, vec![1, 3, 4, 5]);
    assert_eq!(case.model_json().unwrap()["backbone"]["num_heads"], 4);
    assert_eq!(case.input().unwrap().shape(), &[1, 3, 64, 96]);
    assert_eq!(case.expected_names()[0], "backbone.patch_embed.projection");
    let err = Case::bundled("no-such-case").unwrap_err().to_string();
    assert!(err.contains("no case `no-such-case`"), "{err}");
    // A checkpoint in another dialect is converted to MMSegmentation names.
    let unilm = Case::bundled("ckpt-unilm-ade-segmentor").unwrap();
    assert!(unilm.weights().unwrap().iter().any(|(k, _)| k == "backbone.layers.0.ln1.weight"));
    // The environment variable wins (read at run time), and a wrong one is named.
    let probe = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fixtures_env_probe"])
        .env(FIXTURES_ENV, "/nonexistent/fixtures")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success() && stdout.contains("1 passed"), "{stdout}");
}

/// Run by `case_access_without_the_cli` in a child process with `BEIT_SEG_FIXTURES` set; a no-op
/// otherwise.
#[test]
fn fixtures_env_probe() {
    if std::env::var_os(FIXTURES_ENV).is_none() {
        return;
    }
    let err = fixtures_dir().unwrap_err().to_string();
    assert_eq!(err, "BEIT_SEG_FIXTURES=/nonexistent/fixtures: not a directory");
}
