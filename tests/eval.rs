//! The evaluation pipeline (src/eval.rs, src/cli_eval.rs, src/data/{ade20k,image}.rs) on the
//! tiny ADE20K-layout dataset of `fixtures/pipeline-ade-tiny` and on synthetic broken datasets:
//! resuming, sharding + merge, refusal of too-small images, errors naming bad files, and the
//! `pipeline` fixture kind.

use std::path::{Path, PathBuf};

use beit_seg::backend::reference::RefBackend;
use beit_seg::backend::{BackendSpec, Model};
use beit_seg::cli::eval::{build_model, class_names, load_config, settings_for};
use beit_seg::conformance::report::CaseStatus;
use beit_seg::conformance::{run_case_dir, Target, VerifyOptions};
use beit_seg::data::ade20k::{DatasetSpec, Shard};
use beit_seg::data::image;
use beit_seg::eval::{self, EvalSettings, ImageRecord, RunOptions};
use ndarray::{Array2, Array3};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// A fresh temporary directory, removed when the guard drops.
fn tmp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("beit-seg-eval-{name}-")).tempdir().unwrap()
}

struct Setup {
    settings: EvalSettings,
    model: Box<dyn Model>,
    identity: Value,
    data: PathBuf,
    names: Option<Vec<String>>,
}

fn setup(case: &str, aug: Option<&str>) -> Setup {
    let dir = fixture(case);
    let cfg = load_config(Some(&dir.join("case.json")), None).unwrap();
    let settings = settings_for(&cfg, aug).unwrap();
    let model = build_model(&BackendSpec::default(), &cfg.model, &dir.join("weights.npz")).unwrap();
    Setup { settings, model, identity: json!({"case": case}), data: dir.join("data"), names: class_names(&cfg) }
}

fn opts(out: &Path) -> RunOptions {
    RunOptions { out_dir: out.to_path_buf(), ..Default::default() }
}

/// Records without the timing field (which differs between runs).
fn records(path: &Path) -> Vec<ImageRecord> {
    let mut r = eval::read_records(path).unwrap();
    r.iter_mut().for_each(|x| x.seconds = None);
    r.sort_by_key(|x| x.index);
    r
}

fn expected_metrics(case: &str) -> Value {
    let text = std::fs::read_to_string(fixture(case).join("case.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["metrics"].clone()
}

#[test]
fn one_run_reproduces_mmsegmentation_metrics() {
    let s = setup("pipeline-ade-tiny", None);
    let out_guard = tmp("one");
    let out = out_guard.path().to_path_buf();
    let spec = DatasetSpec::ade20k_val(&s.data);
    let r = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &opts(&out)).unwrap();
    assert!(r.complete);
    assert_eq!(r.evaluated, 4);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(r.metrics_path.unwrap()).unwrap()).unwrap();
    assert_eq!(written["metrics"], r.json["metrics"]);
    if image::jpeg_decoder_is_exact() {
        // Bit-exact decoding: the totals and summary numbers are MMSegmentation's.
        let exp = expected_metrics("pipeline-ade-tiny");
        for k in [
            "aAcc",
            "mIoU",
            "mAcc",
            "total_area_intersect",
            "total_area_union",
            "total_area_pred_label",
            "total_area_label",
        ] {
            assert_eq!(r.json["metrics"][k], exp[k], "{k}");
        }
    }
}

#[test]
fn msflip_run_reproduces_the_0x_tta_metrics() {
    let s = setup("pipeline-msflip-tiny", Some("ms-flip"));
    assert!(s.settings.aug.is_some());
    let out_guard = tmp("msflip");
    let out = out_guard.path().to_path_buf();
    let spec = DatasetSpec::ade20k_val(&s.data);
    let r = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &opts(&out)).unwrap();
    assert_eq!(r.evaluated, 2);
    if image::jpeg_decoder_is_exact() {
        let exp = expected_metrics("pipeline-msflip-tiny");
        for k in ["aAcc", "mIoU", "mAcc", "total_area_intersect", "total_area_label"] {
            assert_eq!(r.json["metrics"][k], exp[k], "{k}");
        }
    }
}

#[test]
fn resumed_run_gives_the_same_totals_as_one_run() {
    let s = setup("pipeline-ade-tiny", None);
    let spec = DatasetSpec::ade20k_val(&s.data);
    let full_dir_guard = tmp("resume-full");
    let full_dir = full_dir_guard.path().to_path_buf();
    let full = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &opts(&full_dir)).unwrap();

    let dir_guard = tmp("resume");
    let dir = dir_guard.path().to_path_buf();
    // "Killed" after 2 images ...
    let o = RunOptions { stop_after: Some(2), ..opts(&dir) };
    let part = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &o).unwrap();
    assert!(!part.complete);
    assert!(part.metrics_path.is_none());
    let rpath = eval::results_path(&dir, None);
    assert_eq!(eval::count_lines(&rpath).unwrap(), 3); // header + 2 images
                                                       // ... in the middle of writing the third line.
    let mut text = std::fs::read_to_string(&rpath).unwrap();
    text.push_str("{\"index\":2,\"stem\":\"ade_0003\",\"shape\":[50,9");
    std::fs::write(&rpath, text).unwrap();
    // Restarted: the torn line is dropped, images 2 and 3 are evaluated.
    let resumed = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &opts(&dir)).unwrap();
    assert!(resumed.complete);
    assert_eq!(resumed.totals, full.totals);
    assert_eq!(resumed.json["metrics"], full.json["metrics"]);
    assert_eq!(records(&rpath), records(&eval::results_path(&full_dir, None)));
    // A third start has nothing left to do and gives the same again.
    let again = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &opts(&dir)).unwrap();
    assert_eq!(again.json["metrics"], full.json["metrics"]);
    assert_eq!(eval::count_lines(&rpath).unwrap(), 5);

    // Different settings must not be mixed into the same results file.
    let other =
        eval::evaluate(&s.settings, s.model.as_ref(), &spec, json!({"case": "another"}), &opts(&dir)).unwrap_err();
    // (named by content identity: this identity has no checkpoint hash, so it is hashed whole)
    assert!(other.to_string().contains("another run") && other.to_string().contains("checkpoint"), "{other}");
}

#[test]
fn three_shards_merged_give_the_same_totals_as_one_run() {
    let s = setup("pipeline-ade-tiny", None);
    let spec = DatasetSpec::ade20k_val(&s.data);
    let full_dir_guard = tmp("shard-full");
    let full_dir = full_dir_guard.path().to_path_buf();
    let full = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &opts(&full_dir)).unwrap();

    let dir_guard = tmp("shards");
    let dir = dir_guard.path().to_path_buf();
    let mut files = Vec::new();
    for k in 0..3 {
        let o = RunOptions { shard: Some(Shard { k, n: 3 }), class_names: s.names.clone(), ..opts(&dir) };
        let r = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &o).unwrap();
        assert!(r.complete);
        let idx: Vec<usize> = records(&r.results_path).iter().map(|x| x.index).collect();
        assert!(idx.iter().all(|i| i % 3 == k), "shard {k}: {idx:?}");
        files.push(r.results_path);
    }
    // Merge in any order.
    files.reverse();
    let merged_path = dir.join("merged.json");
    let m = eval::merge(&files, &merged_path, None).unwrap();
    assert_eq!(m.totals, full.totals);
    assert_eq!(m.json["metrics"], full.json["metrics"]);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&merged_path).unwrap()).unwrap();
    assert_eq!(written["metrics"], full.json["metrics"]);
    assert_eq!(written["classes"], json!(["wall", "building", "sky", "floor", "tree"]));

    // A missing shard is an error that says so; a shard given twice too.
    let e = eval::merge(&files[..2], &dir.join("bad.json"), None).unwrap_err().to_string();
    assert!(e.contains("not recorded"), "{e}");
    let twice = vec![files[0].clone(), files[0].clone(), files[1].clone(), files[2].clone()];
    let e = eval::merge(&twice, &dir.join("bad.json"), None).unwrap_err().to_string();
    assert!(e.contains("given twice"), "{e}");
    // Shards of a different run are refused.
    let other_dir_guard = tmp("shards-other");
    let other_dir = other_dir_guard.path().to_path_buf();
    let o = RunOptions { shard: Some(Shard { k: 0, n: 3 }), limit: Some(3), ..opts(&other_dir) };
    let r = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &o).unwrap();
    let mixed = vec![r.results_path, files[0].clone(), files[1].clone()];
    let e = eval::merge(&mixed, &dir.join("bad.json"), None).unwrap_err().to_string();
    assert!(e.contains("not from the same run"), "{e}");
}

/// An extra dataset entry: stem, image bytes, annotation bytes (None: no annotation file).
type Entry<'a> = (&'a str, Vec<u8>, Option<Vec<u8>>);

/// A dataset in ADE20K layout made of two of the fixture's images plus `extra`.
fn dataset_with(name: &str, extra: &[Entry]) -> (tempfile::TempDir, PathBuf) {
    let root_guard = tmp(name);
    let root = root_guard.path().to_path_buf();
    let spec = DatasetSpec::ade20k_val(&root);
    std::fs::create_dir_all(spec.img_root()).unwrap();
    std::fs::create_dir_all(spec.ann_root()).unwrap();
    let src = DatasetSpec::ade20k_val(fixture("pipeline-ade-tiny").join("data"));
    for stem in ["ade_0001", "ade_0002"] {
        std::fs::copy(src.img_root().join(format!("{stem}.jpg")), spec.img_root().join(format!("{stem}.jpg"))).unwrap();
        std::fs::copy(src.ann_root().join(format!("{stem}.png")), spec.ann_root().join(format!("{stem}.png"))).unwrap();
    }
    for (stem, img, ann) in extra {
        std::fs::write(spec.img_root().join(format!("{stem}.jpg")), img).unwrap();
        if let Some(a) = ann {
            std::fs::write(spec.ann_root().join(format!("{stem}.png")), a).unwrap();
        }
    }
    (root_guard, root)
}

fn png_rgb(h: usize, w: usize) -> Vec<u8> {
    let f = tempfile::Builder::new().suffix(".png").tempfile().unwrap();
    let p = f.path().to_path_buf();
    let img = Array3::from_shape_fn((h, w, 3), |(y, x, c)| ((y * 7 + x * 3 + c * 50) % 256) as u8);
    image::write_rgb_png(&p, img.view()).unwrap();
    std::fs::read(&p).unwrap()
}

fn png_label(h: usize, w: usize) -> Vec<u8> {
    let f = tempfile::Builder::new().suffix(".png").tempfile().unwrap();
    let p = f.path().to_path_buf();
    let lab = Array2::from_shape_fn((h, w), |(y, x)| ((y / 4 + x / 5) % 6) as u8);
    image::write_label_png(&p, lab.view()).unwrap();
    std::fs::read(&p).unwrap()
}

#[test]
fn image_too_small_for_the_crop_is_refused_naming_it() {
    let s = setup("pipeline-ade-tiny", None);
    // 20x100: aspect 5 > 4, Resize(256, 64) gives 51x256 < the 64x64 crop.
    let (_root_guard, root) = dataset_with("small", &[("zz_long", png_rgb(20, 100), Some(png_label(20, 100)))]);
    let spec = DatasetSpec::ade20k_val(&root);
    let out_guard = tmp("small-out");
    let out = out_guard.path().to_path_buf();
    let e = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &opts(&out)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("zz_long.jpg") && msg.contains("51x256") && msg.contains("64x64 slide-inference crop"),
        "{msg}"
    );
    assert!(msg.contains("--skip-bad"), "{msg}");
    // The images before it are recorded: a rerun with --skip-bad in a fresh directory
    // evaluates the others and lists the refused one.
    let out2_guard = tmp("small-out2");
    let out2 = out2_guard.path().to_path_buf();
    let o = RunOptions { skip_bad: true, ..opts(&out2) };
    let r = eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &o).unwrap();
    assert_eq!(r.evaluated, 2);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].stem, "zz_long");
    assert!(r.skipped[0].reason.contains("smaller than"), "{}", r.skipped[0].reason);
    assert_eq!(r.json["images_skipped"][0]["stem"], "zz_long");
}

#[test]
fn bad_dataset_files_are_reported_by_name() {
    let s = setup("pipeline-ade-tiny", None);
    // (entry, the file the error must name)
    let cases: Vec<(Entry, &str)> = vec![
        (("c_noann", png_rgb(64, 80), None), "c_noann.png"),
        (
            ("d_corrupt", b"\xff\xd8\xff\xe0 this is not really a JPEG".to_vec(), Some(png_label(64, 80))),
            "d_corrupt.jpg",
        ),
        (("e_rgbann", png_rgb(64, 80), Some(png_rgb(64, 80))), "e_rgbann.png"),
        (("f_size", png_rgb(64, 80), Some(png_label(60, 80))), "f_size.png"),
        (("g_text", b"hello".to_vec(), Some(png_label(64, 80))), "g_text.jpg"),
    ];
    for ((stem, img, ann), named) in &cases {
        let (_root_guard, root) = dataset_with(&format!("bad-{stem}"), &[(stem, img.clone(), ann.clone())]);
        let spec = DatasetSpec::ade20k_val(&root);
        let out = tmp(&format!("bad-{stem}-out"));
        let e =
            eval::evaluate(&s.settings, s.model.as_ref(), &spec, s.identity.clone(), &opts(out.path())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(named), "{stem}: the error does not name {named}: {msg}");
        if *stem == "e_rgbann" {
            assert!(msg.contains("8-bit single-channel"), "{msg}");
        }
    }
    // All of them at once with --skip-bad: the good images are evaluated, the bad ones listed
    // with their reasons, and the totals equal those of the good images alone.
    let extra: Vec<Entry> = cases.iter().map(|(e, _)| e.clone()).collect();
    let (_root_guard, root) = dataset_with("bad-all", &extra);
    let out_guard = tmp("bad-all-out");
    let out = out_guard.path().to_path_buf();
    let o = RunOptions { skip_bad: true, ..opts(&out) };
    let r =
        eval::evaluate(&s.settings, s.model.as_ref(), &DatasetSpec::ade20k_val(&root), s.identity.clone(), &o).unwrap();
    assert_eq!(r.evaluated, 2);
    let skipped: Vec<&str> = r.skipped.iter().map(|x| x.stem.as_str()).collect();
    assert_eq!(skipped, vec!["c_noann", "d_corrupt", "e_rgbann", "f_size", "g_text"]);
    let (_good_guard, good) = dataset_with("good-only", &[]);
    let g = eval::evaluate(
        &s.settings,
        s.model.as_ref(),
        &DatasetSpec::ade20k_val(&good),
        s.identity.clone(),
        &opts(tmp("good-out").path()),
    )
    .unwrap();
    assert_eq!(r.totals, g.totals);
}

#[test]
fn unsupported_test_transform_is_refused_by_name() {
    let tp = json!([{"type": "LoadImageFromFile"}, {"type": "RandomFlip", "prob": 0.5}, {"type": "PackSegInputs"}]);
    let e = eval::TestPipeline::from_value(&tp, true).unwrap_err().to_string();
    assert!(e.contains("RandomFlip"), "{e}");
    let tp = json!([{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}, {"type": "Resize", "scale": [256, 64], "keep_ratio": true}]);
    let e = eval::TestPipeline::from_value(&tp, true).unwrap_err().to_string();
    assert!(e.contains("LoadAnnotations before Resize"), "{e}");
}

#[test]
fn pipeline_fixture_cases_run() {
    let opts = VerifyOptions::default();
    for case in ["pipeline-ade-tiny", "pipeline-msflip-tiny"] {
        let rep = run_case_dir(&fixture(case), &Target::Backend(&RefBackend), &opts);
        assert_eq!(rep.status, CaseStatus::Pass, "{case}: {:?}", rep.message);
    }
}

#[test]
fn presets_build_the_real_configs() {
    for (name, c, layers) in [("beit-base-640", 768, 12), ("beit-large-640", 1024, 24)] {
        let cfg = load_config(None, Some(name)).unwrap();
        assert_eq!(cfg.model.backbone.embed_dims, c);
        assert_eq!(cfg.model.backbone.num_layers, layers);
        assert_eq!(cfg.model.backbone.window(), (40, 40));
        let s = settings_for(&cfg, Some("ms-flip")).unwrap();
        assert_eq!(s.aug, Some(eval::MsFlip::ade20k()));
        assert_eq!(s.crop, Some((640, 640)));
        assert_eq!(s.num_classes, 150);
        assert_eq!(s.preprocess, eval::Preprocess::ade20k());
        // 512x683 (a typical ADE20K size) -> 640x854; aspect 5 is refused.
        let single = settings_for(&cfg, None).unwrap();
        assert_eq!(single.plan((512, 683)), vec![((640, 854), false)]);
        assert!(single.check_size("x.jpg", (400, 2000)).is_err());
    }
}
