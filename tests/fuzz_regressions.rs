//! Regression inputs of the fuzz targets (`fuzz/fuzz_targets/`), kept in
//! `tests/data/fuzz-regressions/TARGET/`: each must come back as a clear error, never a panic or
//! an abort (docs/security.md, "Fuzzing"). The earlier rounds' inputs are tested where their
//! readers are (`tests/checkpoint.rs`, `tests/image.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use beit_seg::eval::results::read_results;

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions").join(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    assert!(!v.is_empty(), "no regression inputs in {}", dir.display());
    v
}

/// A results header claiming a run of 1e18 (or 2^40) images, or 1e18 classes with every image
/// skipped, made `merge` abort (`memory allocation of 8000000000000000000 bytes failed`, status
/// 134): the run size is now checked against the memory limit when the header is read.
#[test]
fn results_headers_of_absurd_run_sizes_are_errors_not_aborts() {
    for f in inputs("results_reader") {
        let err = read_results(&f).unwrap_err().to_string();
        assert!(err.contains("line 1: a run of") && err.contains("would need"), "{}: {err}", f.display());
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_beit-seg"))
            .arg("merge")
            .arg(&f)
            .arg("--out")
            .arg(dir.path().join("merged.json"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{}: {stderr}", f.display());
        assert!(stderr.contains("would need") && !stderr.contains("memory allocation"), "{}: {stderr}", f.display());
        assert!(!dir.path().join("merged.json").exists());
    }
}

/// A real run's size passes the check: the pipeline fixture's results (5 classes, 4 images) and
/// ADE20K's (150 classes, 2000 images) need a few hundred KB.
#[test]
fn results_headers_of_real_run_sizes_pass_the_check() {
    let dir = tempfile::tempdir().unwrap();
    for (images, classes) in [(4usize, 5usize), (2000, 150), (1_000_000, 3688)] {
        let f = dir.path().join(format!("r{images}.jsonl"));
        std::fs::write(
            &f,
            format!(
                "{{\"beit_seg_results\":2,\"run\":{{}},\"ids\":{{}},\"num_images\":{images},\"num_classes\":{classes},\"shard\":null}}\n"
            ),
        )
        .unwrap();
        let (h, records, torn) = read_results(&f).unwrap();
        assert_eq!((h.num_images, h.num_classes, records.len(), torn), (images, classes, 0, None));
    }
}
