//! Runners of the data fixture kinds: `resize`, `metric` and `pipeline`
//! (see docs/fixture-format.md).
//!
//! * `resize`: every output `img.<k>` must equal [`resize_bilinear_u8`] of input `img.<k>` at
//!   `sizes["img.<k>"]` exactly (uint8; 2-D inputs are one-channel images).
//! * `metric`: the pairs `pred.<k>` / `label.<k>` (in manifest order; labels as stored on disk)
//!   go through `reduce_zero_label` (when set) and [`intersect_and_union`]; the totals, the
//!   per-class fractions and the summary numbers are compared with the manifest's `metrics` by
//!   [`compare_metrics`].
//! * `pipeline`: not run here yet (`None`: reported as skipped).

use std::path::PathBuf;

use ndarray::{Array2, ArrayD, Dimension, Ix2, Ix3};
use serde_json::Value;

use super::case::{Case, Tolerance};
use super::compare::{compare_floats, Status, TensorResult};
use super::{Backend, BackendError, VerifyOptions};
use crate::array::{read_npy, AnyArray};
use crate::data::transforms::resize_bilinear_u8;
use crate::metrics::{compute_metrics, intersect_and_union, reduce_zero_label, AreaTotals, Metrics};

/// Runs a `resize`, `metric` or `pipeline` case (`pipeline` runs the model on `backend`);
/// `None` for other kinds (and, for now, for `pipeline`).
pub fn run(
    case: &Case,
    backend: &dyn Backend,
    opts: &VerifyOptions,
) -> Option<Result<Vec<TensorResult>, BackendError>> {
    let _ = (backend, opts);
    match case.kind.as_str() {
        "resize" => Some(run_resize(case)),
        "metric" => Some(run_metric(case)),
        _ => None,
    }
}

fn manifest_err(case: &Case, msg: impl std::fmt::Display) -> BackendError {
    format!("{}: {msg}", case.dir.join("case.json").display()).into()
}

/// The `inputs` object of a case, in manifest order.
fn input_files(case: &Case) -> Result<Vec<(String, PathBuf)>, BackendError> {
    let obj = case
        .manifest
        .get("inputs")
        .and_then(Value::as_object)
        .ok_or_else(|| manifest_err(case, "`inputs` must be an object {name: file}"))?;
    obj.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|f| (k.clone(), case.dir.join(f)))
                .ok_or_else(|| manifest_err(case, format!("`inputs.{k}` must be a file name")))
        })
        .collect()
}

// ----------------------------------------------------------------------------------- resize

const EXACT: Tolerance = Tolerance { rtol: 0.0, atol: 0.0 };

fn as_hwc_u8(a: AnyArray, what: &str) -> Result<ndarray::Array3<u8>, BackendError> {
    match a {
        AnyArray::U8(x) => match x.ndim() {
            2 => Ok(x.into_dimensionality::<Ix2>().map_err(|e| e.to_string())?.insert_axis(ndarray::Axis(2))),
            3 => Ok(x.into_dimensionality::<Ix3>().map_err(|e| e.to_string())?),
            n => Err(format!("{what}: expected an H×W×C (or H×W) uint8 image, got {n} dimensions").into()),
        },
        other => Err(format!("{what}: expected uint8, got {} {:?}", other.dtype_name(), other.shape()).into()),
    }
}

fn run_resize(case: &Case) -> Result<Vec<TensorResult>, BackendError> {
    let inputs = input_files(case)?;
    let sizes = case
        .manifest
        .get("sizes")
        .and_then(Value::as_object)
        .ok_or_else(|| manifest_err(case, "`sizes` must be an object {input: [h, w]}"))?;
    let mut results = Vec::with_capacity(case.outputs.len());
    for (name, out_file) in &case.outputs {
        let (_, in_file) = inputs
            .iter()
            .find(|(k, _)| k == name)
            .ok_or_else(|| manifest_err(case, format!("output `{name}` has no input of the same name")))?;
        let size = sizes
            .get(name)
            .and_then(Value::as_array)
            .and_then(|a| match a.as_slice() {
                [h, w] => Some((h.as_u64()? as usize, w.as_u64()? as usize)),
                _ => None,
            })
            .filter(|&(h, w)| h > 0 && w > 0)
            .ok_or_else(|| manifest_err(case, format!("`sizes.{name}` must be [h, w] with positive integers")))?;
        let raw = read_npy(in_file)?;
        let two_d = raw.shape().len() == 2;
        let img = as_hwc_u8(raw, &format!("{} ({name})", in_file.display()))?;
        let expected = case.read_output(out_file)?;
        let exp_shape = expected.shape().to_vec();
        let exp = match expected {
            AnyArray::U8(x) => x,
            other => {
                return Err(format!(
                    "{}: expected a uint8 image, got {}",
                    case.dir.join(out_file).display(),
                    other.dtype_name()
                )
                .into())
            }
        };
        let out = resize_bilinear_u8(img.view(), size);
        let out: ArrayD<u8> = if two_d { out.index_axis_move(ndarray::Axis(2), 0).into_dyn() } else { out.into_dyn() };
        results.push(compare_exact_u8(name, &out, &exp, &exp_shape, img.dim(), size));
    }
    Ok(results)
}

/// Exact comparison of two uint8 images: the count of differing values and the first one.
fn compare_exact_u8(
    name: &str,
    actual: &ArrayD<u8>,
    expected: &ArrayD<u8>,
    exp_shape: &[usize],
    src: (usize, usize, usize),
    size: (usize, usize),
) -> TensorResult {
    let mut r = compare_floats(name, &actual.mapv(f64::from), &expected.mapv(f64::from), EXACT);
    let what = format!("resize {}x{}x{} -> {}x{}", src.0, src.1, src.2, size.0, size.1);
    if actual.shape() != exp_shape {
        r.note = Some(format!("{what}: {}", r.note.unwrap_or_default()));
        return r;
    }
    let first = actual.indexed_iter().find(|(i, a)| expected[i] != **a);
    r.note = Some(match first {
        None => format!("{what}: all {} values equal", r.numel),
        Some((idx, a)) => format!(
            "{what}: {} of {} values differ; first at {:?}: got {a}, expected {}",
            r.violations,
            r.numel,
            idx.slice(),
            expected[&idx]
        ),
    });
    r
}

// ----------------------------------------------------------------------------------- metric

/// A label map as the metric sees it: 2-D, with leading size-1 axes squeezed (as
/// MMSegmentation's `.squeeze()`).
fn squeeze2<T: Clone>(a: ArrayD<T>, what: &str) -> Result<Array2<T>, BackendError> {
    let shape: Vec<usize> = a.shape().to_vec();
    let keep: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
    let (h, w) = match (shape.len(), keep.len()) {
        (2, _) => (shape[0], shape[1]),
        (_, 2) => (keep[0], keep[1]),
        (n, _) if n > 2 && shape[..n - 2].iter().all(|&d| d == 1) => (shape[n - 2], shape[n - 1]),
        _ => return Err(format!("{what}: expected a 2-D label map, got shape {shape:?}").into()),
    };
    Ok(a.into_shape_with_order((h, w)).map_err(|e| format!("{what}: {e}"))?)
}

fn run_metric(case: &Case) -> Result<Vec<TensorResult>, BackendError> {
    let m = &case.manifest;
    let num_classes = m
        .get("num_classes")
        .and_then(Value::as_u64)
        .filter(|&n| n > 0)
        .ok_or_else(|| manifest_err(case, "`num_classes` must be a positive integer"))? as usize;
    let ignore_index = match m.get("ignore_index") {
        None => crate::metrics::IGNORE_INDEX,
        Some(v) => v.as_i64().ok_or_else(|| manifest_err(case, "`ignore_index` must be an integer"))?,
    };
    let reduce = match m.get("reduce_zero_label") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| manifest_err(case, "`reduce_zero_label` must be true or false"))?,
    };
    let expected = m.get("metrics").ok_or_else(|| manifest_err(case, "`metrics` is missing"))?;
    let inputs = input_files(case)?;
    let preds: Vec<&(String, PathBuf)> = inputs.iter().filter(|(k, _)| k.starts_with("pred.")).collect();
    if preds.is_empty() {
        return Err(manifest_err(case, "`inputs` has no `pred.<k>` entries"));
    }
    for (k, _) in &inputs {
        let stem = k
            .strip_prefix("label.")
            .or_else(|| k.strip_prefix("pred."))
            .ok_or_else(|| manifest_err(case, format!("unexpected input `{k}`")))?;
        let other = if k.starts_with("label.") { format!("pred.{stem}") } else { format!("label.{stem}") };
        if !inputs.iter().any(|(n, _)| *n == other) {
            return Err(manifest_err(case, format!("input `{k}` has no `{other}`")));
        }
    }
    let mut totals = AreaTotals::zeros(num_classes);
    for (k, pred_file) in preds {
        let stem = &k["pred.".len()..];
        let label_file = &inputs.iter().find(|(n, _)| *n == format!("label.{stem}")).expect("checked above").1;
        let pred = read_npy(pred_file)?;
        let pred = pred.to_i64().ok_or_else(|| {
            format!("{}: predictions must be integers, got {}", pred_file.display(), pred.dtype_name())
        })?;
        let pred = squeeze2(pred, &pred_file.display().to_string())?;
        let label = read_npy(label_file)?;
        let lwhat = label_file.display().to_string();
        let areas = if reduce {
            // LoadAnnotations: `.astype(np.uint8)` (wrapping), then the uint8 reduction.
            let l = match label {
                AnyArray::U8(x) => x,
                other => other
                    .to_i64()
                    .ok_or_else(|| format!("{lwhat}: labels must be integers, got {}", other.dtype_name()))?
                    .mapv(|v| v as u8),
            };
            let l = reduce_zero_label(squeeze2(l, &lwhat)?.view());
            intersect_and_union(pred.view(), l.view(), num_classes, ignore_index)
        } else {
            let l = label
                .to_i64()
                .ok_or_else(|| format!("{lwhat}: labels must be integers, got {}", label.dtype_name()))?;
            intersect_and_union(pred.view(), squeeze2(l, &lwhat)?.view(), num_classes, ignore_index)
        }
        .map_err(|e| format!("{k}: {e}"))?;
        totals.add(&areas)?;
    }
    let actual = compute_metrics(&totals);
    compare_metrics(&actual, expected, 0).map_err(|e| manifest_err(case, e))
}

/// "Equal" for summary values: both are two-decimal numbers (0.01 apart when they differ), so
/// this only absorbs the last-bit error of a JSON reader that does not round decimals exactly.
const SAME_2DP: f64 = 1e-9;

/// Compares computed metrics with a format `metrics` object (`aAcc`, `mIoU`, `mAcc` in percent,
/// `per_class` {`IoU`, `Acc`} fractions with `null` for NaN, `total_area_*`), one
/// [`TensorResult`] per quantity, named `metrics.aAcc`, `metrics.per_class.IoU`,
/// `metrics.total_area_intersect`, ...; quantities absent from `expected` are not compared.
///
/// With `flips == 0` (the `metric` kind, or a pipeline without label flips): summary values
/// equal (to 1e-9, i.e. as two-decimal numbers), per-class fractions within 1e-6, totals exact. With `flips > 0` allowed near-tie
/// flips (pipelines), each flip may move one pixel between classes: totals may differ by
/// `flips`, per-class fractions by `2·flips / (smallest non-zero expected denominator)` (+1e-6),
/// `aAcc` by `100·flips / total labelled` and `mIoU`/`mAcc` by 100× the per-class bound, plus
/// 0.01 for the rounding of the printed value.
pub fn compare_metrics(actual: &Metrics, expected: &Value, flips: usize) -> Result<Vec<TensorResult>, String> {
    let obj = expected.as_object().ok_or("`metrics` must be an object")?;
    let num = |v: &Value, what: &str| -> Result<f64, String> {
        match v {
            Value::Null => Ok(f64::NAN),
            v => v.as_f64().ok_or_else(|| format!("`{what}` must be a number or null")),
        }
    };
    let list = |v: &Value, what: &str| -> Result<Vec<f64>, String> {
        v.as_array().ok_or_else(|| format!("`{what}` must be a list"))?.iter().map(|x| num(x, what)).collect()
    };
    let f = flips as f64;
    let min_pos = |v: &[f64]| v.iter().copied().filter(|&x| x > 0.0).fold(f64::INFINITY, f64::min);
    let exp_list = |key: &str| obj.get(key).map(|v| list(v, &format!("metrics.{key}"))).transpose();
    let exp_union = exp_list("total_area_union")?;
    let exp_label = exp_list("total_area_label")?;
    let frac_bound = |den: &Option<Vec<f64>>| -> f64 {
        if flips == 0 {
            0.0
        } else {
            den.as_ref().map_or(1.0, |d| (2.0 * f / min_pos(d)).min(1.0))
        }
    };
    let total_label = exp_label.as_ref().map_or(0.0, |l| l.iter().sum::<f64>());
    let acc_bound = if flips == 0 || total_label <= 0.0 { SAME_2DP } else { 100.0 * f / total_label + 0.01 };
    let (iou_bound, class_acc_bound) = (frac_bound(&exp_union), frac_bound(&exp_label));
    let mean_bound = |b: f64| if flips == 0 { SAME_2DP } else { 100.0 * b + 0.01 };

    let mut out = Vec::new();
    let summaries = [
        ("aAcc", actual.a_acc, acc_bound),
        ("mIoU", actual.m_iou, mean_bound(iou_bound)),
        ("mAcc", actual.m_acc, mean_bound(class_acc_bound)),
    ];
    for (key, got, bound) in summaries {
        if let Some(v) = obj.get(key) {
            let e = num(v, &format!("metrics.{key}"))?;
            let tol = Tolerance { rtol: 0.0, atol: bound };
            let mut r = compare_floats(
                &format!("metrics.{key}"),
                &ndarray::arr0(got).into_dyn(),
                &ndarray::arr0(e).into_dyn(),
                tol,
            );
            r.note =
                Some(format!("got {got}, expected {e} (percent, rounded to 2 decimals as MMSegmentation returns it)"));
            out.push(r);
        }
    }
    if let Some(pc) = obj.get("per_class") {
        let pc = pc.as_object().ok_or("`metrics.per_class` must be an object {IoU, Acc}")?;
        for (key, got, bound) in
            [("IoU", &actual.per_class.iou, iou_bound), ("Acc", &actual.per_class.acc, class_acc_bound)]
        {
            if let Some(v) = pc.get(key) {
                let e = list(v, &format!("metrics.per_class.{key}"))?;
                let got: Vec<f64> = got.iter().map(|x| x.unwrap_or(f64::NAN)).collect();
                let tol = Tolerance { rtol: 0.0, atol: 1e-6 + bound };
                let mut r = compare_floats(
                    &format!("metrics.per_class.{key}"),
                    &ArrayD::from_shape_vec(vec![got.len()], got).expect("1-D"),
                    &ArrayD::from_shape_vec(vec![e.len()], e).expect("1-D"),
                    tol,
                );
                if r.status == Status::Pass {
                    r.note = Some("per-class fraction (NaN = null where the class is absent)".into());
                }
                out.push(r);
            }
        }
    }
    let t = &actual.totals;
    for (key, got) in [
        ("total_area_intersect", &t.intersect),
        ("total_area_union", &t.union),
        ("total_area_pred_label", &t.pred_label),
        ("total_area_label", &t.label),
    ] {
        if let Some(v) = obj.get(key) {
            let e = list(v, &format!("metrics.{key}"))?;
            let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
            let tol = Tolerance { rtol: 0.0, atol: f };
            let mut r = compare_floats(
                &format!("metrics.{key}"),
                &ArrayD::from_shape_vec(vec![got.len()], got).expect("1-D"),
                &ArrayD::from_shape_vec(vec![e.len()], e).expect("1-D"),
                tol,
            );
            if r.status == Status::Pass {
                r.note = Some(if flips == 0 {
                    "pixel counts, exact".into()
                } else {
                    format!("pixel counts, within {flips} allowed flip(s)")
                });
            }
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err("`metrics` has none of aAcc, mIoU, mAcc, per_class, total_area_*".into());
    }
    Ok(out)
}
