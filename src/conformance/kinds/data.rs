//! Runners of the data fixture kinds: `resize`, `metric` and `pipeline`
//! (see docs/fixture-format.md).
//!
//! * `resize`: every output `img.<k>` must equal [`resize_bilinear_u8`] of input `img.<k>` at
//!   `sizes["img.<k>"]` exactly (uint8; 2-D inputs are one-channel images).
//! * `metric`: the pairs `pred.<k>` / `label.<k>` (in manifest order; labels as stored on disk)
//!   go through `reduce_zero_label` (when set) and [`intersect_and_union`]; the totals, the
//!   per-class fractions and the summary numbers are compared with the manifest's `metrics` by
//!   [`compare_metrics`].
//!
//! With a candidate, `resize` compares its `img.<k>` tensors exactly, `metric` its
//! `metrics.json`.

use std::path::PathBuf;

use ndarray::{Array2, ArrayD, Dimension, Ix2, Ix3};
use serde_json::Value;

use super::{expected_shapes, read_expected, KindOutcome};
use crate::array::{read_npy, AnyArray};
use crate::conformance::case::{Case, Tolerance};
use crate::conformance::compare::{compare_floats, TensorResult};
use crate::conformance::metrics_cmp::{compare_metrics, metrics_json};
use crate::conformance::{RunError, Target};
use crate::data::transforms::resize_bilinear_u8;
use crate::metrics::{compute_metrics, intersect_and_union, reduce_zero_label, AreaTotals};

fn manifest_err(case: &Case, msg: impl std::fmt::Display) -> RunError {
    RunError::manifest(case, msg)
}

/// The `inputs` object of a case, in manifest order.
fn input_files(case: &Case) -> Result<Vec<(String, PathBuf)>, RunError> {
    let obj = case
        .manifest
        .get("inputs")
        .and_then(Value::as_object)
        .ok_or_else(|| manifest_err(case, "`inputs` must be an object {name: file}"))?;
    obj.iter()
        .map(|(k, v)| {
            let f = v.as_str().ok_or_else(|| manifest_err(case, format!("`inputs.{k}` must be a file name")))?;
            let f = crate::conformance::case::inside_case(f)
                .map_err(|m| manifest_err(case, format!("`inputs.{k}`: {m}")))?;
            Ok((k.clone(), case.dir.join(f)))
        })
        .collect()
}

// ----------------------------------------------------------------------------------- resize

const EXACT: Tolerance = Tolerance { rtol: 0.0, atol: 0.0 };

fn as_hwc_u8(a: AnyArray, what: &str) -> Result<ndarray::Array3<u8>, RunError> {
    match a {
        AnyArray::U8(x) => match x.ndim() {
            2 => Ok(x.into_dimensionality::<Ix2>().map_err(|e| e.to_string())?.insert_axis(ndarray::Axis(2))),
            3 => Ok(x.into_dimensionality::<Ix3>().map_err(|e| e.to_string())?),
            n => Err(format!("{what}: expected an H×W×C (or H×W) uint8 image, got {n} dimensions").into()),
        },
        other => Err(format!("{what}: expected uint8, got {} {:?}", other.dtype_name(), other.shape()).into()),
    }
}

/// Runs a `resize` case: OpenCV's INTER_LINEAR from our library, or the candidate's tensors.
pub fn run_resize(case: &Case, target: &Target<'_>) -> Result<KindOutcome, RunError> {
    if let Some(candidate) = target.candidate() {
        let expected = read_expected(case)?;
        let cand = candidate.read(case, &expected_shapes(&expected))?;
        let tensors = expected
            .iter()
            .map(|(name, e)| match cand.tensors.get(name) {
                None => TensorResult::not_covered(name, e.shape(), EXACT),
                Some((a, _)) => compare_floats(name, &a.to_f64(), &e.to_f64(), EXACT),
            })
            .collect();
        return Ok(KindOutcome { tensors, unused: cand.unused, ..Default::default() });
    }
    Ok(KindOutcome { tensors: resize_ours(case)?, ..Default::default() })
}

fn resize_ours(case: &Case) -> Result<Vec<TensorResult>, RunError> {
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
fn squeeze2<T: Clone>(a: ArrayD<T>, what: &str) -> Result<Array2<T>, RunError> {
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

/// Runs a `metric` case: `IoUMetric` from our library, or the candidate's `metrics.json`.
pub fn run_metric(case: &Case, target: &Target<'_>) -> Result<KindOutcome, RunError> {
    let expected = case.manifest.get("metrics").ok_or_else(|| manifest_err(case, "`metrics` is missing"))?;
    let (actual, unused) = match target.candidate() {
        None => (metrics_json(&metric_ours(case)?), Vec::new()),
        Some(candidate) => {
            let cand = candidate.read(case, &Default::default())?;
            let m = cand.metrics.ok_or_else(|| {
                RunError::Input(format!(
                    "{}: no metrics.json (the candidate of a metric case)",
                    cand.location.display()
                ))
            })?;
            (m, cand.unused)
        }
    };
    let tensors = compare_metrics(&actual, expected, 0).map_err(|e| manifest_err(case, e))?;
    Ok(KindOutcome { tensors, unused, ..Default::default() })
}

fn metric_ours(case: &Case) -> Result<crate::metrics::Metrics, RunError> {
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
        totals.add(&areas).map_err(|e| RunError::Input(e.to_string()))?;
    }
    Ok(compute_metrics(&totals))
}
