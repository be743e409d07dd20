//! The data side of the evaluation against OpenCV / mmcv / MMSegmentation: the keep-ratio
//! rescale rule, cv2's fixed-point INTER_LINEAR resize, the preprocessor's normalization and
//! `IoUMetric`.
//!
//! * examples from the spec (§5.1, §7, §9.1) and hand-computed cases;
//! * torch / numpy float32 reduction orders against values printed by torch 2.11 and
//!   numpy 1.26 (hard-coded below);
//! * every bundled `resize-*` and `metric-*` fixture case passes `verify`, and the per-class
//!   table equals the one MMSegmentation logged;
//! * properties (proptest), each named after what it states.

use std::path::{Path, PathBuf};

use ndarray::{arr2, Array2, Array3};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use beit_seg::backend::reference::RefBackend;
use beit_seg::conformance::case::{discover, Case};
use beit_seg::conformance::compare::Status;
use beit_seg::conformance::report::CaseStatus;
use beit_seg::conformance::{run_case_dir, Target, VerifyOptions};
use beit_seg::data::transforms::{normalize, rescale_size, resize_bilinear_u8, ADE20K_MEAN, ADE20K_SCALE, ADE20K_STD};
use beit_seg::metrics::{
    compute_metrics, intersect_and_union, nanmean_f32, numpy_sum_f32, per_class_table, reduce_zero_label,
    summary_percent, torch_sum_f32, AreaTotals, Metrics, ADE20K_CLASSES,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

mod common;
use common::Rng;

fn random_image(rng: &mut Rng, h: usize, w: usize, c: usize) -> Array3<u8> {
    Array3::from_shape_fn((h, w, c), |_| rng.below(256) as u8)
}

// ------------------------------------------------------------------------------- rescale

#[test]
fn rescale_size_examples_of_the_spec() {
    assert_eq!(rescale_size((512, 683), ADE20K_SCALE), (640, 854));
    assert_eq!(rescale_size((683, 512), ADE20K_SCALE), (854, 640));
    assert_eq!(rescale_size((480, 2000), ADE20K_SCALE), (614, 2560));
    assert_eq!(rescale_size((375, 500), ADE20K_SCALE), (640, 853));
    assert_eq!(rescale_size((480, 640), ADE20K_SCALE), (640, 853));
    assert_eq!(rescale_size((1536, 2048), ADE20K_SCALE), (640, 853));
    assert_eq!(rescale_size((640, 640), ADE20K_SCALE), (640, 640));
    // Only max/min of the scale matter.
    assert_eq!(rescale_size((512, 683), (640, 2560)), (640, 854));
}

// ------------------------------------------------------------------------------- resize

#[test]
fn constant_images_stay_constant() {
    for (h, w, c, oh, ow, v) in [
        (7, 5, 3, 13, 3, 255u8),
        (1, 1, 1, 9, 4, 7),
        (20, 30, 4, 11, 53, 128),
        (64, 48, 3, 640, 480, 1),
        (9, 1, 2, 1, 9, 254),
    ] {
        let img = Array3::from_elem((h, w, c), v);
        let out = resize_bilinear_u8(img.view(), (oh, ow));
        assert_eq!(out.dim(), (oh, ow, c));
        assert!(out.iter().all(|&x| x == v), "{h}x{w}x{c} -> {oh}x{ow} of {v}");
    }
}

#[test]
fn exact_2x_downscale_is_the_rounded_2x2_average() {
    // A block image (2x2 blocks) comes back exactly; any image gives (a+b+c+d+2)>>2.
    let mut rng = Rng(7);
    let small = random_image(&mut rng, 5, 6, 3);
    let blocks = Array3::from_shape_fn((10, 12, 3), |(y, x, c)| small[[y / 2, x / 2, c]]);
    assert_eq!(resize_bilinear_u8(blocks.view(), (5, 6)), small);
    let img = random_image(&mut rng, 8, 10, 2);
    let out = resize_bilinear_u8(img.view(), (4, 5));
    for ((y, x, c), &o) in out.indexed_iter() {
        let s: u32 =
            [(0, 0), (0, 1), (1, 0), (1, 1)].iter().map(|&(dy, dx)| img[[2 * y + dy, 2 * x + dx, c]] as u32).sum();
        assert_eq!(o as u32, (s + 2) >> 2, "at {y},{x},{c}");
    }
}

#[test]
fn fixed_point_rounding_matches_cv2_not_the_textbook_formula() {
    // cv2.resize([[248, 194], [190, 207]], (3, 3), INTER_LINEAR) (opencv-python 4.10/4.11):
    // the bottom middle pixel is 198; the textbook rounding (h0*b0 + h1*b1 + 2^21) >> 22 gives 199.
    let img = Array3::from_shape_vec((2, 2, 1), vec![248u8, 194, 190, 207]).unwrap();
    let out = resize_bilinear_u8(img.view(), (3, 3));
    assert_eq!(out.iter().copied().collect::<Vec<_>>(), vec![248, 221, 194, 219, 210, 201, 190, 198, 207]);
}

// ------------------------------------------------------------------------------- normalize

#[test]
fn normalize_flips_bgr_and_divides_in_float32() {
    let img = Array3::from_shape_vec((1, 2, 3), vec![0u8, 128, 255, 10, 20, 30]).unwrap();
    let out = normalize(img.view(), &ADE20K_MEAN, &ADE20K_STD, true);
    assert_eq!(out.dim(), (3, 1, 2));
    // channel 0 (R) comes from BGR channel 2.
    assert_eq!(out[[0, 0, 0]], (255.0f32 - 123.675f32) / 58.395f32);
    assert_eq!(out[[2, 0, 1]], (10.0f32 - 103.53f32) / 57.375f32);
    assert_eq!(out[[1, 0, 0]], (128.0f32 - 116.28f32) / 57.12f32);
    let same = normalize(img.view(), &[0.0; 3], &[1.0; 3], false);
    assert_eq!(same[[0, 0, 1]], 10.0);
}

// ------------------------------------------------------------------------------- metric

#[test]
fn reduce_zero_label_maps_0_to_ignore_and_shifts() {
    let l = arr2(&[[0u8, 1, 150, 255], [254, 2, 0, 151]]);
    assert_eq!(reduce_zero_label(l.view()), arr2(&[[255u8, 0, 149, 255], [253, 1, 255, 150]]));
}

#[test]
fn perfect_prediction_scores_100_on_present_classes() {
    let label = arr2(&[[0u8, 0, 1, 255], [1, 3, 3, 3]]);
    let pred = label.mapv(|v| if v == 255 { 2 } else { v as i64 });
    let a = intersect_and_union(pred.view(), label.view(), 5, 255).unwrap();
    let m = compute_metrics(&a);
    assert_eq!((m.a_acc, m.m_iou, m.m_acc), (100.0, 100.0, 100.0));
    assert_eq!(m.per_class.iou, vec![Some(1.0), Some(1.0), None, Some(1.0), None]);
    assert_eq!(m.per_class.acc, vec![Some(1.0), Some(1.0), None, Some(1.0), None]);
}

#[test]
fn predicted_but_absent_class_has_iou_0_and_acc_nan() {
    // Class 2 never in the ground truth but predicted once: IoU 0 (counted in mIoU), Acc NaN.
    let label = arr2(&[[0u8, 0, 1, 1]]);
    let pred = arr2(&[[0i64, 2, 1, 1]]);
    let m = compute_metrics(&intersect_and_union(pred.view(), label.view(), 3, 255).unwrap());
    assert_eq!(m.per_class.iou, vec![Some(0.5), Some(1.0), Some(0.0)]);
    assert_eq!(m.per_class.acc, vec![Some(0.5), Some(1.0), None]);
    assert_eq!(m.m_iou, 50.0);
    assert_eq!(m.m_acc, 75.0);
    assert_eq!(m.a_acc, 75.0);
}

#[test]
fn no_labelled_pixel_gives_nan_summaries() {
    let label = arr2(&[[255u8, 255]]);
    let pred = arr2(&[[0i64, 1]]);
    let m = compute_metrics(&intersect_and_union(pred.view(), label.view(), 2, 255).unwrap());
    assert!(m.a_acc.is_nan() && m.m_iou.is_nan() && m.m_acc.is_nan());
    let v = serde_json::to_value(&m).unwrap();
    assert!(v["aAcc"].is_null() && v["per_class"]["IoU"][0].is_null());
    let back: Metrics = serde_json::from_value(v).unwrap();
    assert!(back.m_iou.is_nan());
}

#[test]
fn shape_mismatch_is_an_error() {
    let label = Array2::<u8>::zeros((2, 3));
    let pred = Array2::<i64>::zeros((3, 2));
    assert!(intersect_and_union(pred.view(), label.view(), 2, 255).is_err());
}

#[test]
fn summary_rounds_half_to_even_in_float64() {
    // np.round(np.float32(0.03125) * 100, 2) == 3.12 (312.5 → 312), 0.09375 → 9.38.
    assert_eq!(summary_percent(&[0.03125]), 3.12);
    assert_eq!(summary_percent(&[0.09375]), 9.38);
    assert_eq!(summary_percent(&[f32::NAN, 0.5, f32::NAN, 1.0]), 75.0);
}

/// `v[i] = (i * 2654435761) % 30000000` as float32.
fn big_counts(n: usize) -> Vec<f32> {
    (0..n as u64).map(|i| ((i * 2_654_435_761) % 30_000_000) as f32).collect()
}

#[test]
fn torch_sum_order_matches_torch() {
    // torch.from_numpy(v).sum() bits (torch 2.11, CPU); the correctly rounded sum differs for
    // n = 7, 8 and 20000, so the order is really exercised.
    for (n, bits) in [
        (5, 1285613117u32),
        (7, 1290462288),
        (8, 1291843581),
        (150, 1325955320),
        (1000, 1348478730),
        (5000, 1368107706),
        (20000, 1384887668),
    ] {
        assert_eq!(torch_sum_f32(&big_counts(n)).to_bits(), bits, "n = {n}");
    }
}

#[test]
fn nanmean_matches_numpy_float32() {
    // v[i] = ((i * 40503) % 65521) / 65521 as float32, NaN where i % 7 == 3: np.nanmean bits
    // (numpy 1.26; n = 150 differs from the correctly rounded mean).
    for (n, bits, rounded) in
        [(5usize, 1051320564u32, 33.18), (150, 1057078794, 50.68), (1000, 1057033098, 50.41), (3000, 1056969811, 50.03)]
    {
        let v: Vec<f32> = (0..n as u64)
            .map(|i| if i % 7 == 3 { f32::NAN } else { (((i * 40503) % 65521) as f64 / 65521.0) as f32 })
            .collect();
        assert_eq!(nanmean_f32(&v).to_bits(), bits, "n = {n}");
        assert_eq!(summary_percent(&v), rounded, "n = {n}");
    }
    assert_eq!(numpy_sum_f32(&[1.0; 300]), 300.0);
}

#[test]
fn ade20k_class_names() {
    assert_eq!(ADE20K_CLASSES.len(), 150);
    assert_eq!(ADE20K_CLASSES[0], "wall");
    assert_eq!(ADE20K_CLASSES[7], "bed ");
    assert_eq!(ADE20K_CLASSES[149], "flag");
}

// ------------------------------------------------------------------------------- fixtures

fn data_cases() -> Vec<PathBuf> {
    let dirs = discover(&[fixtures()]).unwrap();
    dirs.into_iter()
        .filter(|d| {
            let n = d.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("resize-") || n.starts_with("metric-")
        })
        .collect()
}

#[test]
fn every_bundled_resize_and_metric_case_passes() {
    let dirs = data_cases();
    let kinds: Vec<String> = dirs.iter().map(|d| Case::load(d).unwrap().kind.to_string()).collect();
    assert!(kinds.iter().filter(|k| *k == "resize").count() >= 3, "resize cases: {kinds:?}");
    assert!(kinds.iter().filter(|k| *k == "metric").count() >= 2, "metric cases: {kinds:?}");
    let mut failures = Vec::new();
    for d in &dirs {
        let rep = run_case_dir(d, &Target::Backend(&RefBackend), &VerifyOptions::default());
        if rep.status != CaseStatus::Pass || rep.tensors.iter().any(|t| t.status != Status::Pass) {
            failures.push(format!(
                "{}: {:?} {:?} {:?}",
                rep.name,
                rep.status,
                rep.message,
                rep.first_failure().map(|t| &t.note)
            ));
        }
    }
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}

#[test]
fn per_class_table_equals_the_one_mmseg_logged() {
    let mut seen = 0;
    for d in data_cases() {
        let case = Case::load(&d).unwrap();
        let Some(file) = case.manifest.get("per_class_table").and_then(|v| v.as_str()) else { continue };
        let expected = std::fs::read_to_string(d.join(file)).unwrap();
        let names: Vec<String> =
            case.manifest["classes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let m: Metrics = serde_json::from_value(case.manifest["metrics"].clone()).unwrap();
        assert_eq!(
            per_class_table(&names, &m.iou_f32(), &m.acc_f32()),
            expected.trim_end_matches('\n'),
            "{}",
            case.name
        );
        seen += 1;
    }
    assert!(seen >= 2);
}

// ------------------------------------------------------------------------------- properties

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/data_metric.txt"))),
        ..ProptestConfig::default()
    }
}

/// Random (pred, label) images: labels in 0..n or 255 (ignored), predictions in -1..=n+1
/// (out-of-range ones included).
fn random_images(seed: u64, n: usize, count: usize) -> Vec<(Array2<i64>, Array2<u8>)> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let h = 1 + rng.below(9);
            let w = 1 + rng.below(9);
            let label = Array2::from_shape_fn((h, w), |_| if rng.below(8) == 0 { 255 } else { rng.below(n) as u8 });
            let pred = Array2::from_shape_fn((h, w), |(y, x)| {
                let r = rng.below(10);
                if r < 5 && label[[y, x]] != 255 {
                    label[[y, x]] as i64
                } else {
                    rng.below(n + 3) as i64 - 1
                }
            });
            (pred, label)
        })
        .collect()
}

fn totals_of(images: &[(Array2<i64>, Array2<u8>)], n: usize) -> AreaTotals {
    let per: Vec<AreaTotals> =
        images.iter().map(|(p, l)| intersect_and_union(p.view(), l.view(), n, 255).unwrap()).collect();
    AreaTotals::sum(n, &per).unwrap()
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

proptest! {
    #![proptest_config(config(256))]

    /// Renaming classes by a permutation (in predictions and labels alike) permutes every
    /// per-class total and fraction exactly and keeps aAcc; mIoU / mAcc only change by the
    /// float32 summation order of the mean (≤ 1e-6 before rounding).
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn metric_is_invariant_under_a_consistent_relabelling_of_classes(seed in any::<u64>(), n in 2usize..12, count in 1usize..5) {
        let images = random_images(seed, n, count);
        let mut rng = Rng(seed ^ 0xABCD);
        let mut perm: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        let relabelled: Vec<(Array2<i64>, Array2<u8>)> = images
            .iter()
            .map(|(p, l)| {
                let p2 = p.mapv(|v| if (0..n as i64).contains(&v) { perm[v as usize] as i64 } else { v });
                let l2 = l.mapv(|v| if (v as usize) < n { perm[v as usize] as u8 } else { v });
                (p2, l2)
            })
            .collect();
        let (a, b) = (totals_of(&images, n), totals_of(&relabelled, n));
        let (ma, mb) = (compute_metrics(&a), compute_metrics(&b));
        for c in 0..n {
            let pc = perm[c];
            prop_assert!(same_f32(a.intersect[c], b.intersect[pc]) && same_f32(a.union[c], b.union[pc]));
            prop_assert!(same_f32(a.pred_label[c], b.pred_label[pc]) && same_f32(a.label[c], b.label[pc]));
            prop_assert_eq!(ma.per_class.iou[c], mb.per_class.iou[pc]);
            prop_assert_eq!(ma.per_class.acc[c], mb.per_class.acc[pc]);
        }
        prop_assert!(ma.a_acc == mb.a_acc || (ma.a_acc.is_nan() && mb.a_acc.is_nan()));
        let (ia, ib) = (nanmean_f32(&ma.iou_f32()), nanmean_f32(&mb.iou_f32()));
        prop_assert!((ia - ib).abs() <= 1e-6 || (ia.is_nan() && ib.is_nan()));
        prop_assert!((ma.m_iou - mb.m_iou).abs() <= 0.01 + 1e-9 || (ma.m_iou.is_nan() && mb.m_iou.is_nan()));
    }

    /// Totals of two groups of images added together equal the totals of one pass over all
    /// images (and so do the metrics).
    #[test]
    fn adding_totals_of_two_groups_equals_one_pass(seed in any::<u64>(), n in 1usize..10, count in 2usize..7, split in 0usize..7) {
        let images = random_images(seed, n, count);
        let k = split.min(count);
        let mut groups = totals_of(&images[..k], n);
        groups.add(&totals_of(&images[k..], n)).unwrap();
        let one = totals_of(&images, n);
        prop_assert_eq!(&groups, &one);
        prop_assert_eq!(compute_metrics(&groups), compute_metrics(&one));
    }

    /// Whatever is predicted on pixels whose label is ignore_index changes no total.
    #[test]
    fn ignored_pixels_never_change_any_total(seed in any::<u64>(), n in 1usize..10, count in 1usize..5) {
        let images = random_images(seed, n, count);
        let mut rng = Rng(!seed);
        let changed: Vec<(Array2<i64>, Array2<u8>)> = images
            .iter()
            .map(|(p, l)| {
                let mut p2 = p.clone();
                ndarray::Zip::from(&mut p2).and(l).for_each(|pv, &lv| {
                    if lv == 255 {
                        *pv = rng.below(300) as i64 - 20;
                    }
                });
                (p2, l.clone())
            })
            .collect();
        prop_assert_eq!(totals_of(&images, n), totals_of(&changed, n));
    }

    /// Resizing a constant image to any size gives that constant everywhere.
    #[test]
    fn resize_of_a_constant_image_is_constant(
        v in any::<u8>(), h in 1usize..40, w in 1usize..40, c in 1usize..5, oh in 1usize..90, ow in 1usize..90,
    ) {
        let img = Array3::from_elem((h, w, c), v);
        let out = resize_bilinear_u8(img.view(), (oh, ow));
        prop_assert_eq!(out.dim(), (oh, ow, c));
        prop_assert!(out.iter().all(|&x| x == v));
    }

    /// The rescaled size keeps the aspect (each side within half a pixel of the exact scaled
    /// side), fits in 2560x640 (long x short), and reaches one of the two bounds.
    #[test]
    fn rescale_output_follows_the_rule(h in 1usize..6000, w in 1usize..6000) {
        let (nh, nw) = rescale_size((h, w), ADE20K_SCALE);
        let sf = f64::min(2560.0 / h.max(w) as f64, 640.0 / h.min(w) as f64);
        prop_assert!((nh as f64 - h as f64 * sf).abs() <= 0.5 + 1e-9, "{} vs {}", nh, h as f64 * sf);
        prop_assert!((nw as f64 - w as f64 * sf).abs() <= 0.5 + 1e-9, "{} vs {}", nw, w as f64 * sf);
        prop_assert!(nh.max(nw) <= 2560 && nh.min(nw) <= 640);
        prop_assert!(nh.max(nw) == 2560 || nh.min(nw) == 640);
        // The order of the sides is kept; rounding may make two unequal sides equal (5516x5517
        // -> 640x640, as mmcv's rule gives), so the order is compared non-strictly both ways.
        prop_assert!(h < w || nh >= nw, "{}x{} -> {}x{}", h, w, nh, nw);
        prop_assert!(h > w || nh <= nw, "{}x{} -> {}x{}", h, w, nh, nw);
    }
}
