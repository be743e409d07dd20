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

/// A `.npy` header opening 90 nested `{` (218 bytes, cargo-fuzz `npy_reader`, a timeout) sent
/// npyz's header parser into exponential backtracking (12 levels took over a minute): a header
/// nesting brackets more than 4 deep is now refused before it is parsed, alone and as an `.npz`
/// entry. Real headers (2 deep) still parse.
#[test]
fn npy_headers_nesting_deeply_are_refused_at_once() {
    use std::io::Write;
    for f in inputs("npy_reader") {
        let bytes = std::fs::read(&f).unwrap();
        let t = std::time::Instant::now();
        let err = beit_seg::array::parse_npy(&bytes, &f, None).unwrap_err().to_string();
        assert!(err.contains("nests brackets more than 4 deep"), "{}: {err}", f.display());
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        z.start_file("a.npy", zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(&bytes).unwrap();
        let npz = z.finish().unwrap().into_inner();
        let err = beit_seg::array::parse_npz(&npz, Path::new("nested.npz")).unwrap_err().to_string();
        assert!(err.contains("nests brackets more than 4 deep"), "{}: {err}", f.display());
        assert!(t.elapsed().as_secs_f64() < 5.0, "{}: {:?}", f.display(), t.elapsed());
    }
    let mut header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1), }".to_vec();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(&header);
    npy.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
    let a = beit_seg::array::parse_npy(&npy, Path::new("ok.npy"), None).unwrap();
    assert!(matches!(&a, beit_seg::array::AnyArray::F32(x) if x.shape() == [2, 1] && x[[1, 0]] == 2.0), "{a:?}");
}
