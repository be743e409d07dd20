//! Hostile and broken input, round 2 (docs/security.md): each test feeds one adversarial input
//! found by the checks of that round and asserts a clear error naming the file, key or value,
//! no panic, and that nothing was written or changed. Device files are never touched: a
//! "device" is a symlink to /dev/null (checked to still be a character device after), a FIFO
//! is made with mkfifo in a temporary directory.

use std::io::{Cursor, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use beit_seg::array::{read_npy, read_npz, AnyArray};
use beit_seg::checkpoint::{write_npz, WriteOptions};
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_beit-seg"))
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("beit-seg-hostile-").tempdir().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `cmd`, killing it after `secs` (a hang is a failure, not a stuck test).
fn run_with_timeout(mut cmd: Command, secs: u64) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("timed out after {secs} s: {}", text(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
}

/// A symlink to /dev/null in `dir`: a character device that is safe to "write".
fn null_link(dir: &Path, name: &str) -> PathBuf {
    let l = dir.join(name);
    std::os::unix::fs::symlink("/dev/null", &l).unwrap();
    l
}

fn dev_null_is_intact() {
    let md = std::fs::metadata("/dev/null").unwrap();
    assert!(md.file_type().is_char_device(), "/dev/null is no longer a character device");
}

/// The pipeline fixture's config, edited.
fn edited_config(dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pipeline-ade-tiny").join("case.json")).unwrap())
            .unwrap();
    edit(&mut v);
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

fn eval_cmd(config: &Path, weights: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args(["eval", "-q", "--config"])
        .arg(config)
        .arg("--checkpoint")
        .arg(weights)
        .arg("--data-root")
        .arg(fixture("pipeline-ade-tiny").join("data"))
        .arg("--out")
        .arg(out);
    c
}

fn pipeline_config() -> PathBuf {
    fixture("pipeline-ade-tiny").join("case.json")
}

fn pipeline_weights() -> PathBuf {
    fixture("pipeline-ade-tiny").join("weights.npz")
}

/// Two `weights.npz` of the pipeline fixture's tensors, in `dir/a` and `dir/b`, written the
/// same way: the second with one bias changed by a tiny amount (the same size on disk,
/// different content).
fn two_weights_differing_in_one_bias(dir: &Path) -> (PathBuf, PathBuf) {
    let w = read_npz(&pipeline_weights()).unwrap();
    let mut w2 = w.clone();
    let (_, a) = w2.iter_mut().find(|(k, a)| k.ends_with(".bias") && a.is_float()).unwrap();
    match a {
        AnyArray::F32(x) => x.iter_mut().take(1).for_each(|v| *v += 1e-3),
        AnyArray::F64(x) => x.iter_mut().take(1).for_each(|v| *v += 1e-3),
        _ => unreachable!(),
    }
    let (pa, pb) = (dir.join("a/weights.npz"), dir.join("b/weights.npz"));
    for (p, w) in [(&pa, &w), (&pb, &w2)] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write_npz(p, w, WriteOptions::default()).unwrap();
    }
    assert_eq!(std::fs::metadata(&pa).unwrap().len(), std::fs::metadata(&pb).unwrap().len());
    (pa, pb)
}

// ------------------------------------------------------------------------------ 10: stdout

/// Item 10: a stdout that cannot be written (here: a file past `ulimit -f 0`, with SIGXFSZ
/// ignored, so every write fails with EFBIG, as a full disk fails with ENOSPC) is a clear error
/// and a non-zero exit, never a panic.
#[test]
fn an_unwritable_stdout_is_an_error_not_a_panic() {
    let d = tmp();
    let out = d.path().join("out.txt");
    let ckpt = fixture("ckpt-unilm-ade").join("upernet_beit_tiny_ade.pth");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 0; exec '{}' inspect '{}' > '{}'",
            env!("CARGO_BIN_EXE_beit-seg"),
            ckpt.display(),
            out.display()
        ))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("writing to standard output") && t.contains("too large"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

// ------------------------------------------------------------------------------ 6, 5: outputs

/// Items 5 and 6: `merge --out` is never one of its inputs (even with --force), never a
/// device (a symlink to /dev/null, even with --force), and never an existing file without
/// --force; nothing is changed in each case.
#[test]
fn merge_never_writes_over_an_input_a_device_or_an_existing_file() {
    let d = tmp();
    let out = d.path().join("run");
    let o = eval_cmd(&pipeline_config(), &pipeline_weights(), &out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let results = out.join("results.jsonl");
    let before = std::fs::read(&results).unwrap();
    // Over an input.
    let o = bin().args(["merge"]).arg(&results).arg("--out").arg(&results).arg("--force").output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("results.jsonl") && t.contains("also an input"), "{t}");
    assert_eq!(std::fs::read(&results).unwrap(), before);
    // Over a device.
    let dev = null_link(d.path(), "dev");
    for force in [false, true] {
        let mut c = bin();
        c.args(["merge"]).arg(&results).arg("--out").arg(&dev);
        if force {
            c.arg("--force");
        }
        let o = c.output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{t}");
        assert!(t.contains("dev") && t.contains("character device"), "{t}");
        assert!(std::fs::symlink_metadata(&dev).unwrap().file_type().is_symlink());
    }
    dev_null_is_intact();
    // Over an existing file: only with --force.
    let mine = d.path().join("mine.json");
    std::fs::write(&mine, "my notes").unwrap();
    let o = bin().args(["merge"]).arg(&results).arg("--out").arg(&mine).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("mine.json") && t.contains("already exists") && t.contains("--force"), "{t}");
    // The I/O error is said once, in words.
    assert!(!t.contains("os error 17"), "{t}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "my notes");
    let o = bin().args(["merge"]).arg(&results).arg("--out").arg(&mine).arg("--force").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read_to_string(&mine).unwrap().contains("beit-seg-eval/1"));
}

/// Item 6: `verify --json/--junit` never replace a device (a symlink to /dev/null) nor an
/// existing file without --force; checked before any case runs.
#[test]
fn verify_reports_are_never_written_over_a_device_or_without_force() {
    let d = tmp();
    let dev = null_link(d.path(), "report");
    for flag in ["--json", "--junit"] {
        let o = bin().args(["verify", "-q", "--force", flag]).arg(&dev).arg(fixture("metric-basic")).output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{flag}: {t}");
        assert!(t.contains("report") && t.contains("character device"), "{t}");
        assert!(std::fs::symlink_metadata(&dev).unwrap().file_type().is_symlink());
    }
    dev_null_is_intact();
    let existing = d.path().join("r.json");
    std::fs::write(&existing, "keep").unwrap();
    let o = bin().args(["verify", "-q", "--json"]).arg(&existing).arg(fixture("metric-basic")).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep");
    let o =
        bin().args(["verify", "-q", "--force", "--json"]).arg(&existing).arg(fixture("metric-basic")).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(std::fs::read_to_string(&existing).unwrap().starts_with('{'));
}

/// Items 5 and 6: `convert` refuses DST = SRC and a device or FIFO DST even with --force.
#[test]
fn convert_never_writes_over_its_source_a_device_or_a_fifo() {
    let d = tmp();
    let src = d.path().join("w.npz");
    std::fs::copy(fixture("tiny-whole").join("weights.npz"), &src).unwrap();
    let before = std::fs::read(&src).unwrap();
    let o = bin().args(["convert", "--force"]).arg(&src).arg(&src).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("w.npz") && t.contains("also an input"), "{t}");
    assert_eq!(std::fs::read(&src).unwrap(), before);
    let dev = null_link(d.path(), "dev.npz");
    let fifo = d.path().join("fifo.npz");
    mkfifo(&fifo);
    for dst in [&dev, &fifo] {
        let o = run_with_timeout(
            {
                let mut c = bin();
                c.args(["convert", "--force"]).arg(&src).arg(dst);
                c
            },
            30,
        );
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{t}");
        assert!(t.contains("not a regular file"), "{t}");
    }
    assert!(std::fs::symlink_metadata(&dev).unwrap().file_type().is_symlink());
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    dev_null_is_intact();
}

/// Items 6 and 7: `predict` refuses two inputs with the same output name (naming both), an
/// existing output without --force, and an output that is one of its inputs; nothing written.
#[test]
fn predict_refuses_colliding_existing_and_input_outputs() {
    let d = tmp();
    let img = fixture("pipeline-ade-tiny").join("data/images/validation/ade_0001.jpg");
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::copy(&img, a.join("img.jpg")).unwrap();
    std::fs::copy(&img, b.join("img.jpg")).unwrap();
    let out = d.path().join("o");
    let predict = |images: &[&Path], force: bool| {
        let mut c = bin();
        c.arg("predict").args(images).arg("--config").arg(pipeline_config());
        c.arg("--checkpoint").arg(pipeline_weights()).arg("--out").arg(&out).arg("-q");
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let o = predict(&[&a.join("img.jpg"), &b.join("img.jpg")], false);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("a/img.jpg") && t.contains("b/img.jpg") && t.contains("img.png"), "{t}");
    assert!(!out.exists(), "something was written");
    // An existing output needs --force.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("img_color.png"), "mine").unwrap();
    let o = predict(&[&a.join("img.jpg")], false);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("img_color.png") && t.contains("--force"), "{t}");
    assert_eq!(std::fs::read_to_string(out.join("img_color.png")).unwrap(), "mine");
    assert!(!out.join("img.png").exists());
    // An input is never an output, even with --force: the image `o/x.png` would be replaced by
    // its own label map.
    let inside = out.join("x.png");
    std::fs::copy(fixture("pipeline-ade-tiny").join("data/annotations/validation/ade_0001.png"), &inside).unwrap();
    let before = std::fs::read(&inside).unwrap();
    let o = predict(&[&inside], true);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("x.png") && t.contains("also an input"), "{t}");
    assert_eq!(std::fs::read(&inside).unwrap(), before);
    // With --force the existing output is replaced.
    let o = predict(&[&a.join("img.jpg")], true);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(out.join("img_color.png")).unwrap().starts_with(b"\x89PNG"));
}

/// Unclear item: `--opacity NaN`, `--limit 0`, `bench --threads 0` and a config with 2 class
/// names for 5 classes are refused with errors naming the value.
#[test]
fn nonsense_flags_and_class_lists_are_refused() {
    let d = tmp();
    let img = fixture("pipeline-ade-tiny").join("data/images/validation/ade_0001.jpg");
    let o = bin()
        .arg("predict")
        .arg(&img)
        .args(["--opacity", "NaN", "--out"])
        .arg(d.path().join("p"))
        .arg("--config")
        .arg(pipeline_config())
        .arg("--checkpoint")
        .arg(pipeline_weights())
        .output()
        .unwrap();
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("--opacity NaN"), "{t}");
    let o =
        eval_cmd(&pipeline_config(), &pipeline_weights(), &d.path().join("e")).args(["--limit", "0"]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("--limit 0"), "{t}");
    let o = bin().args(["bench", "--threads", "0", "--size", "64"]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("--threads 0"), "{t}");
    let cfg = edited_config(d.path(), |v| v["dataset"]["classes"] = json!(["wall", "sky"]));
    let o = eval_cmd(&cfg, &pipeline_weights(), &d.path().join("e2")).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("dataset.classes") && t.contains("2 names") && t.contains("5 classes"), "{t}");
    assert!(!d.path().join("e2").exists());
}

// ------------------------------------------------------------------------------ 14: readers

/// Item 14: a .npy, .safetensors, checkpoint or results file that is a symlink to a device is
/// refused by name at once (not read to the end), and a FIFO does not block.
#[test]
fn devices_and_fifos_are_refused_by_every_reader() {
    let d = tmp();
    let zero = d.path().join("zero.npy");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let t0 = Instant::now();
    let e = read_npy(&zero).unwrap_err().to_string();
    assert!(e.contains("zero.npy") && e.contains("character device"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let fifo = d.path().join("pipe.npy");
    mkfifo(&fifo);
    let e = read_npy(&fifo).unwrap_err().to_string();
    assert!(e.contains("pipe.npy") && e.contains("FIFO"), "{e}");
    // inspect of a FIFO (any extension) and of a device: an error, no hang.
    for (name, p) in [("pipe.npy", fifo.clone()), ("zero.npy", zero.clone())] {
        let mut c = bin();
        c.arg("inspect").arg(&p);
        let o = run_with_timeout(c, 30);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{t}");
        assert!(t.contains(name) && t.contains("not a regular file"), "{t}");
    }
    let st = d.path().join("w.safetensors");
    mkfifo(&st);
    let mut c = bin();
    c.arg("inspect").arg(&st);
    let o = run_with_timeout(c, 30);
    assert!(text(&o).contains("FIFO"), "{}", text(&o));
    // A results file that is a FIFO: merge says so, without blocking.
    let r = d.path().join("results.jsonl");
    mkfifo(&r);
    let mut c = bin();
    c.arg("merge").arg(&r).arg("--out").arg(d.path().join("m.json"));
    let o = run_with_timeout(c, 30);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("results.jsonl") && t.contains("FIFO"), "{t}");
    // An image that is a FIFO is a bad image: eval --skip-bad lists it and goes on.
    let data = d.path().join("data");
    for sub in ["images/validation", "annotations/validation"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    let src = fixture("pipeline-ade-tiny").join("data");
    std::fs::copy(src.join("images/validation/ade_0001.jpg"), data.join("images/validation/ade_0001.jpg")).unwrap();
    std::fs::copy(src.join("annotations/validation/ade_0001.png"), data.join("annotations/validation/ade_0001.png"))
        .unwrap();
    mkfifo(&data.join("images/validation/ade_0002.jpg"));
    std::fs::copy(src.join("annotations/validation/ade_0002.png"), data.join("annotations/validation/ade_0002.png"))
        .unwrap();
    let mut c = bin();
    c.args(["eval", "-q", "--skip-bad", "--config"]).arg(pipeline_config()).arg("--checkpoint").arg(pipeline_weights());
    c.arg("--data-root").arg(&data).arg("--out").arg(d.path().join("out"));
    let o = run_with_timeout(c, 120);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("skipped ade_0002") && t.contains("FIFO"), "{t}");
}

/// Unclear item: a truncated .npy names the bytes it declares and the bytes there are.
#[test]
fn a_truncated_npy_names_expected_and_actual_bytes() {
    let d = tmp();
    let p = d.path().join("t.npy");
    let good = std::fs::read(fixture("tiny-whole").join("inputs.npy")).unwrap();
    std::fs::write(&p, &good[..good.len() - 10]).unwrap();
    let e = read_npy(&p).unwrap_err().to_string();
    assert!(e.contains("t.npy") && e.contains("truncated") && e.contains("bytes of data"), "{e}");
    assert!(!e.contains("failed to fill whole buffer"), "{e}");
}

// ------------------------------------------------------------------------------ 2: NaN

/// Item 2: `data_preprocessor.std` of 0 and a LayerNorm eps of -1 are refused naming the key;
/// eval writes nothing.
#[test]
fn zero_std_and_negative_eps_are_refused_by_key() {
    let d = tmp();
    let cfg = edited_config(d.path(), |v| v["model"]["data_preprocessor"]["std"] = json!([0, 0, 0]));
    let o = eval_cmd(&cfg, &pipeline_weights(), &d.path().join("o1")).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("model.data_preprocessor.std[0]") && t.contains("> 0"), "{t}");
    assert!(!d.path().join("o1").exists());
    let cfg = edited_config(d.path(), |v| v["model"]["backbone"]["norm_cfg"]["eps"] = json!(-1));
    let o = eval_cmd(&cfg, &pipeline_weights(), &d.path().join("o2")).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("model.backbone.norm_cfg.eps") && t.contains("-1"), "{t}");
    let cfg = edited_config(d.path(), |v| v["model"]["decode_head"]["norm_cfg"]["eps"] = json!(0));
    let o = eval_cmd(&cfg, &pipeline_weights(), &d.path().join("o3")).output().unwrap();
    assert!(text(&o).contains("model.decode_head.norm_cfg.eps"), "{}", text(&o));
}

/// A model whose logits are NaN at one pixel.
struct NanModel;

impl beit_seg::backend::Model for NanModel {
    fn describe(&self) -> String {
        "nan".into()
    }
    fn run(
        &self,
        _inputs: &AnyArray,
        _wanted: &[String],
    ) -> Result<beit_seg::backend::Outputs, beit_seg::backend::BackendError> {
        unreachable!()
    }
    fn seg_logits(&self, input: ndarray::Array4<f32>) -> Result<ndarray::Array4<f32>, beit_seg::backend::BackendError> {
        let (_, _, h, w) = input.dim();
        let mut x = ndarray::Array4::<f32>::zeros((1, 5, h, w));
        x[[0, 2, 1, 1]] = f32::NAN;
        Ok(x)
    }
}

/// Item 2: non-finite logits are an error naming the image and `seg_logits`, never metrics.
#[test]
fn non_finite_logits_are_an_error_not_metrics() {
    use beit_seg::cli::eval::{load_config, settings_for};
    use beit_seg::data::ade20k::DatasetSpec;
    let cfg = load_config(Some(&pipeline_config()), None).unwrap();
    let settings = settings_for(&cfg, None).unwrap();
    let d = tmp();
    let spec = DatasetSpec::ade20k_val(fixture("pipeline-ade-tiny").join("data"));
    let opts = beit_seg::eval::RunOptions { out_dir: d.path().to_path_buf(), ..Default::default() };
    let e = beit_seg::eval::evaluate(&settings, &NanModel, &spec, json!({"case": "nan"}), &opts).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("ade_0001.jpg") && m.contains("seg_logits") && m.contains("NaN"), "{m}");
    assert!(!d.path().join("metrics.json").exists());
    let img = beit_seg::data::image::read_bgr(&spec.img_root().join("ade_0001.jpg")).unwrap();
    let e = beit_seg::eval::predict(&settings, &NanModel, img.view(), "x.jpg").unwrap_err().to_string();
    assert!(e.contains("x.jpg") && e.contains("seg_logits"), "{e}");
}

// ------------------------------------------------------------------------------ 3, 4: runs

/// Item 3: two checkpoints of equal size that differ in one bias are two runs: resume and
/// merge refuse records of the other, naming both identities; the results file is unchanged.
#[test]
fn runs_are_identified_by_checkpoint_content() {
    let d = tmp();
    let (w1, w2) = two_weights_differing_in_one_bias(d.path());
    let out = d.path().join("run");
    let o = eval_cmd(&pipeline_config(), &w1, &out).args(["--shard", "0/2"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let shard0 = out.join("results.shard-0-of-2.jsonl");
    let before = std::fs::read(&shard0).unwrap();
    // Resume with the other checkpoint.
    let o = eval_cmd(&pipeline_config(), &w2, &out).args(["--shard", "0/2"]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("different checkpoint") && t.matches("sha256").count() >= 2, "{t}");
    assert_eq!(std::fs::read(&shard0).unwrap(), before);
    // Merge a shard of each.
    let o = eval_cmd(&pipeline_config(), &w2, &out).args(["--shard", "1/2"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = bin()
        .arg("merge")
        .arg(&shard0)
        .arg(out.join("results.shard-1-of-2.jsonl"))
        .arg("--out")
        .arg(d.path().join("m.json"))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("different checkpoint") && t.contains("shard-0-of-2") && t.contains("shard-1-of-2"), "{t}");
    assert!(!d.path().join("m.json").exists());
    // The same weights under another name are the same run (identity by content).
    let renamed = d.path().join("renamed.npz");
    std::fs::copy(&w1, &renamed).unwrap();
    let o = eval_cmd(&pipeline_config(), &renamed, &out).args(["--shard", "0/2"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Item 4: a tampered record (intersect 1e9, a negative area, a wrong class count) is an error
/// naming the file, line and field, in merge and on resume.
#[test]
fn tampered_records_are_refused_by_line_and_field() {
    let d = tmp();
    let out = d.path().join("run");
    let o = eval_cmd(&pipeline_config(), &pipeline_weights(), &out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let results = out.join("results.jsonl");
    let good = std::fs::read_to_string(&results).unwrap();
    let tamper = |edit: &dyn Fn(&mut Value)| {
        let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
        let mut v: Value = serde_json::from_str(&lines[2]).unwrap();
        edit(&mut v);
        lines[2] = serde_json::to_string(&v).unwrap();
        let p = d.path().join("t.jsonl");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    };
    for (edit, field) in [
        (Box::new(|v: &mut Value| v["intersect"][0] = json!(1e9)) as Box<dyn Fn(&mut Value)>, "intersect"),
        (Box::new(|v: &mut Value| v["label"][1] = json!(-5.0)), "label[1]"),
        (Box::new(|v: &mut Value| v["union"].as_array_mut().unwrap().push(json!(0))), "union"),
    ] {
        let p = tamper(&*edit);
        let o = bin().arg("merge").arg(&p).arg("--out").arg(d.path().join("m.json")).output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{t}");
        assert!(t.contains("t.jsonl") && t.contains("line 3") && t.contains(field), "{t}");
        assert!(!d.path().join("m.json").exists());
    }
    // On resume too.
    std::fs::copy(tamper(&|v: &mut Value| v["pred_label"][0] = json!(1e9)), &results).unwrap();
    let o = eval_cmd(&pipeline_config(), &pipeline_weights(), &out).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("results.jsonl") && t.contains("line 3") && t.contains("pred_label"), "{t}");
}

// ------------------------------------------------------------------------------ 13: pickle

fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, b) in entries {
        z.start_file(*name, o).unwrap();
        z.write_all(b).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// Item 13: 50 M MARK (or BINGET) opcodes count toward the machine's one per-file budget and
/// are refused, not pushed until memory runs out.
#[test]
fn marks_and_memo_gets_count_toward_the_pickle_budget() {
    for op in [&b"("[..], &b"h\x00"[..]] {
        let mut p = vec![0x80, 2, b'N', b'q', 0];
        let n = 50_000_001;
        p.reserve(n * op.len());
        for _ in 0..n {
            p.extend_from_slice(op);
        }
        p.push(b'.');
        let z = stored_zip(&[("archive/data.pkl", &p)]);
        let e = beit_seg::checkpoint::load_pth_bytes(&z, Path::new("marks.pth"), Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("marks.pth") && e.contains("50000000"), "{e}");
    }
}

/// Pickle of `{'k0': view, 'k1': view, ...}`: `n` views of `size` elements with stride 0 over
/// one 4-float storage.
fn zero_stride_views(n: usize, size: u32) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for i in 0..n {
        let k = format!("k{i}");
        p.push(b'X');
        p.extend_from_slice(&(k.len() as u32).to_le_bytes());
        p.extend_from_slice(k.as_bytes());
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQK\x00J");
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(b"\x85K\x00\x85\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// Item 13: zero-stride views count against one budget per file, not per view: six views of
/// 4 M elements of one 4-float storage with a 64 MiB memory limit (8 M elements of expansion)
/// are refused at the third, naming it.
#[test]
fn zero_stride_views_share_one_expansion_budget_per_file() {
    let d = tmp();
    let p = zero_stride_views(6, 4 << 20);
    let storage = [0u8; 16];
    let z = stored_zip(&[("archive/data.pkl", &p), ("archive/data/0", &storage)]);
    let f = d.path().join("views.pth");
    std::fs::write(&f, z).unwrap();
    let o = bin().arg("inspect").arg(&f).env("BEIT_SEG_MAX_MEMORY", "64M").output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("views.pth") && t.contains("`k2`") && t.contains("refusing to expand"), "{t}");
    // Two such views fit.
    let z = stored_zip(&[("archive/data.pkl", &zero_stride_views(2, 4 << 20)), ("archive/data/0", &storage)]);
    std::fs::write(&f, z).unwrap();
    let o = bin().arg("inspect").arg(&f).env("BEIT_SEG_MAX_MEMORY", "64M").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Unclear items: a forbidden global under `meta` is named and refused in the state-dict path
/// (and at the top level says what it is, not "a object"); duplicate zip entries are refused
/// naming the entry.
#[test]
fn forbidden_globals_anywhere_and_duplicate_entries_are_named() {
    // {'state_dict': {}, 'meta': os.system('true')}
    let mut p = vec![0x80, 2, b'}', b'(', b'X', 10, 0, 0, 0];
    p.extend_from_slice(b"state_dict}X\x04\x00\x00\x00metacos\nsystem\nX\x04\x00\x00\x00true\x85Ru.");
    let z = stored_zip(&[("archive/data.pkl", &p)]);
    let d = tmp();
    let f = d.path().join("meta.pth");
    std::fs::write(&f, &z).unwrap();
    let o = bin().arg("inspect").arg(&f).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("meta.pth") && t.contains("os.system") && t.contains("`meta`"), "{t}");
    // At the top level.
    let p = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.";
    std::fs::write(&f, stored_zip(&[("archive/data.pkl", p)])).unwrap();
    let o = bin().arg("inspect").arg(&f).output().unwrap();
    let t = text(&o);
    assert!(t.contains("os.system") && !t.contains("a object"), "{t}");
    // Duplicate entries: two entries renamed to the same name after writing.
    let mut z = stored_zip(&[("x.npy", b"AAAA"), ("y.npy", b"BBBB")]);
    let pat = b"y.npy";
    let mut i = 0;
    while i + pat.len() <= z.len() {
        if &z[i..i + pat.len()] == pat {
            z[i] = b'x';
        }
        i += 1;
    }
    let f = d.path().join("dup.npz");
    std::fs::write(&f, &z).unwrap();
    let e = read_npz(&f).unwrap_err().to_string();
    assert!(e.contains("dup.npz") && e.contains("`x.npy`") && e.contains("more than once"), "{e}");
}

/// Unclear item: a key with a path in it is never written as an .npz entry name.
#[test]
fn npz_entry_names_never_hold_paths() {
    let d = tmp();
    let p = d.path().join("o.npz");
    let a = AnyArray::F32(ArrayD::zeros(IxDyn(&[2])));
    let e = write_npz(&p, &[("../../evil".into(), a)], WriteOptions::default()).unwrap_err().to_string();
    assert!(e.contains("../../evil") && e.contains("path separator"), "{e}");
    assert!(!p.exists());
}

// ------------------------------------------------------------------------------ 12, 11: sizes

/// Item 12: sizes from a flag or config are checked, with the memory they need, before
/// anything is allocated: `convert --img-size 1000000`, `num_layers 1e8`, a relative-position
/// window of 100000 (img_size 1.6 M), a Resize scale of 4e9, a large image.
#[test]
fn absurd_sizes_are_refused_with_the_memory_they_need() {
    let d = tmp();
    let src = fixture("ckpt-official").join("beit_tiny_patch16_64_ft.pth");
    let dst = d.path().join("big.pth");
    let o = bin().args(["convert", "--img-size", "1000000"]).arg(&src).arg(&dst).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("--img-size 1000000") && t.contains("would need") && t.contains("GiB"), "{t}");
    assert!(!dst.exists());
    for (edit, what) in [
        (
            Box::new(|v: &mut Value| v["model"]["backbone"]["num_layers"] = json!(1e8)) as Box<dyn Fn(&mut Value)>,
            "num_layers 100000000",
        ),
        (Box::new(|v: &mut Value| v["model"]["backbone"]["img_size"] = json!([1600000, 1600000])), "img_size"),
    ] {
        let cfg = edited_config(d.path(), |v| edit(v));
        let o = eval_cmd(&cfg, &pipeline_weights(), &d.path().join("o")).output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{t}");
        assert!(t.contains(what) && t.contains("would need"), "{t}");
    }
    let img = fixture("pipeline-ade-tiny").join("data/images/validation/ade_0001.jpg");
    let cfg = edited_config(d.path(), |v| v["dataset"]["test_pipeline"][1]["scale"] = json!([4e9 as u64, 4e9 as u64]));
    let o = bin()
        .arg("predict")
        .arg(&img)
        .arg("--config")
        .arg(&cfg)
        .arg("--checkpoint")
        .arg(pipeline_weights())
        .arg("--out")
        .arg(d.path().join("p"))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("ade_0001.jpg") && t.contains("would need") && t.contains("Resize"), "{t}");
    // A 3000x3000 PNG with a 64 MiB limit (its logits alone are 180 MB).
    let big = d.path().join("big.png");
    beit_seg::data::image::write_label_png(&big, ndarray::Array2::<u8>::zeros((3000, 3000)).view()).unwrap();
    let o = bin()
        .arg("predict")
        .arg(&big)
        .arg("--config")
        .arg(pipeline_config())
        .arg("--checkpoint")
        .arg(pipeline_weights())
        .arg("--out")
        .arg(d.path().join("p2"))
        .env("BEIT_SEG_MAX_MEMORY", "64M")
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("big.png") && t.contains("3000x3000") && t.contains("BEIT_SEG_MAX_MEMORY"), "{t}");
}

/// Item 11: config values and flags that used to panic: pool_scales with a 0, `bench --size
/// 17` (a 1x1 patch grid, empty after max pooling), a 65,536-character key in `inspect`.
#[test]
fn values_that_used_to_panic_are_errors() {
    let d = tmp();
    let cfg = edited_config(d.path(), |v| v["model"]["decode_head"]["pool_scales"] = json!([0, 1, 2, 3]));
    let o = eval_cmd(&cfg, &pipeline_weights(), &d.path().join("o")).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("model.decode_head.pool_scales") && !t.contains("panicked"), "{t}");
    let o = bin().args(["bench", "--size", "17", "--iters", "1", "--warmup", "0"]).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("img_size") && t.contains("1x1 patch grid") && !t.contains("panicked"), "{t}");
    let key = "k".repeat(65_536);
    let one = AnyArray::F32(ArrayD::zeros(IxDyn(&[1])));
    // Too long for a zip entry name: refused by the .npz writer (the zip crate would panic).
    let e = write_npz(&d.path().join("long.npz"), &[(key.clone(), one.clone())], WriteOptions::default()).unwrap_err();
    assert!(e.to_string().contains("too long"), "{e}");
    let p = d.path().join("long.safetensors");
    beit_seg::checkpoint::write_safetensors(&p, &[(key, one)], WriteOptions::default()).unwrap();
    let o = bin().arg("inspect").arg(&p).output().unwrap();
    let t = text(&o);
    assert!(
        o.status.success() && t.contains("1 tensors") && !t.contains("panicked"),
        "{}",
        &t[t.len().saturating_sub(500)..]
    );
}

// ------------------------------------------------------------------------------ 8: lock

/// Item 8: a second eval on a results file another eval holds is refused ("another eval is
/// writing"), and writes nothing.
#[test]
fn a_second_eval_on_a_locked_results_file_is_refused() {
    let d = tmp();
    let out = d.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let results = out.join("results.jsonl");
    let f = std::fs::OpenOptions::new().create(true).append(true).open(&results).unwrap();
    assert!(beit_seg::files::try_lock(&f, true).unwrap());
    let o = eval_cmd(&pipeline_config(), &pipeline_weights(), &out).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("results.jsonl") && t.contains("another eval is writing"), "{t}");
    assert_eq!(std::fs::metadata(&results).unwrap().len(), 0);
    drop(f);
    let o = eval_cmd(&pipeline_config(), &pipeline_weights(), &out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

// ------------------------------------------------------------------------------ 9: signals

/// Item 9: SIGINT during a write removes the temporary file (exit 130, nothing at DST), and a
/// written file gets `0666 & !umask`, as a normal create.
#[test]
fn sigint_removes_temporary_files_and_outputs_follow_the_umask() {
    let d = tmp();
    let src = fixture("tiny-whole").join("weights.npz");
    let dst = d.path().join("out.npz");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec '{}' convert '{}' '{}'", env!("CARGO_BIN_EXE_beit-seg"), src.display(), dst.display()))
        .env("BEIT_SEG_TEST_STALL_WRITE_MS", "20000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let temp_exists =
        || std::fs::read_dir(d.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp-"));
    while !temp_exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!temp_exists(), "a temporary file is left");
    assert!(!dst.exists());
    // Mode: umask 027 gives 0640.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 027; exec '{}' convert '{}' '{}'",
            env!("CARGO_BIN_EXE_beit-seg"),
            src.display(),
            dst.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::metadata(&dst).unwrap().permissions().mode() & 0o777, 0o640);
}

/// Item 6 (eval outputs): a `metrics.json` in `--out` that no run of this results file wrote
/// is kept unless --force, and nothing is created; a `--save-pred` into the annotation
/// directory would replace an input and is refused even with --force.
#[test]
fn eval_keeps_foreign_outputs_and_never_writes_over_its_inputs() {
    let d = tmp();
    let out = d.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.json"), "mine").unwrap();
    let o = eval_cmd(&pipeline_config(), &pipeline_weights(), &out).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("metrics.json") && t.contains("--force"), "{t}");
    assert_eq!(std::fs::read_to_string(out.join("metrics.json")).unwrap(), "mine");
    assert!(!out.join("results.jsonl").exists());
    // --save-pred into a copy of the annotation directory: the first label map is an input.
    let data = d.path().join("data");
    for sub in ["images/validation", "annotations/validation"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    let src = fixture("pipeline-ade-tiny").join("data");
    std::fs::copy(src.join("images/validation/ade_0001.jpg"), data.join("images/validation/ade_0001.jpg")).unwrap();
    let ann = data.join("annotations/validation/ade_0001.png");
    std::fs::copy(src.join("annotations/validation/ade_0001.png"), &ann).unwrap();
    let before = std::fs::read(&ann).unwrap();
    let mut c = bin();
    c.args(["eval", "-q", "--force", "--config"]).arg(pipeline_config()).arg("--checkpoint").arg(pipeline_weights());
    c.arg("--data-root").arg(&data).arg("--out").arg(d.path().join("o2"));
    c.arg("--save-pred").arg(data.join("annotations/validation"));
    let o = c.output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains("ade_0001.png") && t.contains("also an input"), "{t}");
    assert_eq!(std::fs::read(&ann).unwrap(), before);
}
