//! The `metric` fixture kind (see docs/fixture-format.md): the pairs `pred.<k>` / `label.<k>`
//! (in manifest order; labels as stored on disk) go through `reduce_zero_label` (when set) and
//! [`intersect_and_union`]; the totals, the per-class fractions and the summary numbers are
//! compared with the manifest's `metrics` by [`compare_metrics`]. With a candidate, its
//! `metrics.json` is compared.

use std::path::PathBuf;

use ndarray::{Array2, ArrayD};
use serde_json::Value;

use super::{input_files, manifest_err, KindOutcome};
use crate::array::{read_npy, AnyArray};
use crate::conformance::case::Case;
use crate::conformance::metrics_cmp::{compare_metrics, metrics_json};
use crate::conformance::{RunError, Target};
use crate::metrics::{compute_metrics, intersect_and_union, reduce_zero_label, AreaTotals};

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
