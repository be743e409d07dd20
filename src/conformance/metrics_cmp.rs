//! The comparison rule of the `metrics` object (pipeline and metric cases; see
//! docs/fixture-format.md): `aAcc`, `mIoU`, `mAcc` are percent values MMSegmentation rounds to
//! two decimals, so both sides are rounded to two decimals and must then be equal (a fixture
//! written with numpy ≥ 2 stores the float32 value 18.559999465942383 for 18.56: it still
//! compares equal); per-class `IoU`/`Acc` fractions within 1e-6 (`null` = NaN); area totals
//! exact. With `flips` allowed near-tie label flips (pipelines) every bound widens by what the
//! flips imply.

use ndarray::ArrayD;
use serde_json::{Map, Value};

use super::case::Tolerance;
use super::compare::{compare_floats, Status, TensorResult};
use crate::metrics::Metrics;

/// Our metrics as the fixture format's `metrics` object.
pub fn metrics_json(m: &Metrics) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// `x` rounded to two decimals (half away from zero), as a printed percent value reads.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn num(v: &Value, what: &str) -> Result<f64, String> {
    match v {
        Value::Null => Ok(f64::NAN),
        v => v.as_f64().ok_or_else(|| format!("`{what}` must be a number or null")),
    }
}

fn list(v: &Value, what: &str) -> Result<Vec<f64>, String> {
    v.as_array().ok_or_else(|| format!("`{what}` must be a list"))?.iter().map(|x| num(x, what)).collect()
}

fn vec1(v: Vec<f64>) -> ArrayD<f64> {
    let n = v.len();
    ArrayD::from_shape_vec(vec![n], v).expect("1-D")
}

/// Compares `actual` metrics (the format's `metrics` object: ours, or a candidate's
/// `metrics.json`) with the `expected` one, one [`TensorResult`] per quantity (named
/// `metrics.aAcc`, `metrics.per_class.IoU`, `metrics.total_area_intersect`, ...). Quantities
/// absent from `expected` are not compared; expected ones absent from `actual` are NOT
/// COVERED.
///
/// With `flips == 0`: summary values equal after rounding both to two decimals, per-class
/// fractions within 1e-6, totals exact. With `flips > 0` allowed near-tie flips, each flip may
/// move one pixel between classes: totals may differ by `flips`, per-class fractions by
/// `2·flips / (smallest non-zero expected denominator)` (+1e-6), `aAcc` by
/// `100·flips / total labelled` and `mIoU`/`mAcc` by 100× the per-class bound, plus 0.01 for
/// the rounding of the printed value.
pub fn compare_metrics(actual: &Value, expected: &Value, flips: usize) -> Result<Vec<TensorResult>, String> {
    let obj = expected.as_object().ok_or("`metrics` must be an object")?;
    let act = actual.as_object().ok_or("the produced metrics must be an object")?;
    let bounds = FlipBounds::new(obj, flips)?;
    let mut out = Vec::new();
    compare_summaries(obj, act, &bounds, &mut out)?;
    if let Some(pc) = obj.get("per_class") {
        let pc = pc.as_object().ok_or("`metrics.per_class` must be an object {IoU, Acc}")?;
        compare_per_class(pc, act.get("per_class").and_then(Value::as_object), &bounds, &mut out)?;
    }
    compare_totals(obj, act, flips, &mut out)?;
    if out.is_empty() {
        return Err("`metrics` has none of aAcc, mIoU, mAcc, per_class, total_area_*".into());
    }
    Ok(out)
}

/// How far each quantity may move with `flips` allowed near-tie flips (all 0 without flips).
struct FlipBounds {
    /// `aAcc` (percent).
    acc: f64,
    /// Per-class `IoU` (fraction; `mIoU` is 100× it, plus the rounding).
    iou: f64,
    /// Per-class `Acc` (fraction; `mAcc` is 100× it, plus the rounding).
    class_acc: f64,
    flips: usize,
}

impl FlipBounds {
    /// The bounds implied by `flips` and the expected `total_area_union` / `total_area_label`.
    fn new(obj: &Map<String, Value>, flips: usize) -> Result<Self, String> {
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
        let acc = if flips == 0 || total_label <= 0.0 { 0.0 } else { 100.0 * f / total_label + 0.01 };
        Ok(FlipBounds { acc, iou: frac_bound(&exp_union), class_acc: frac_bound(&exp_label), flips })
    }

    /// The bound of a percent mean (`mIoU`, `mAcc`) of per-class fractions within `b`.
    fn mean(&self, b: f64) -> f64 {
        if self.flips == 0 {
            0.0
        } else {
            100.0 * b + 0.01
        }
    }
}

/// `aAcc`, `mIoU`, `mAcc`: both rounded to two decimals, then equal (or within the flip bound).
fn compare_summaries(
    obj: &Map<String, Value>,
    act: &Map<String, Value>,
    bounds: &FlipBounds,
    out: &mut Vec<TensorResult>,
) -> Result<(), String> {
    let flips = bounds.flips;
    for (key, bound) in
        [("aAcc", bounds.acc), ("mIoU", bounds.mean(bounds.iou)), ("mAcc", bounds.mean(bounds.class_acc))]
    {
        let Some(v) = obj.get(key) else { continue };
        let name = format!("metrics.{key}");
        let tol = Tolerance { rtol: 0.0, atol: bound };
        let e = num(v, &name)?;
        let Some(g) = act.get(key) else {
            out.push(TensorResult::not_covered(&name, &[], tol));
            continue;
        };
        let g = num(g, &format!("produced {name}"))?;
        // Two-decimal numbers: round both, then compare (exactly, or within the flip bound).
        let (gr, er) = (round2(g), round2(e));
        let mut r = compare_floats(&name, &ndarray::arr0(gr).into_dyn(), &ndarray::arr0(er).into_dyn(), tol);
        if flips == 0 && !gr.is_nan() && !er.is_nan() && (gr - er).abs() < 1e-9 {
            r.status = Status::Pass;
            r.violations = 0;
            r.max_abs = 0.0;
            r.max_rel = 0.0;
        }
        r.note = Some(format!("got {g}, expected {e} (percent, compared as two-decimal numbers: {gr:.2} vs {er:.2})"));
        out.push(r);
    }
    Ok(())
}

/// `per_class.IoU` and `per_class.Acc`: fractions within 1e-6 (plus the flip bound).
fn compare_per_class(
    pc: &Map<String, Value>,
    apc: Option<&Map<String, Value>>,
    bounds: &FlipBounds,
    out: &mut Vec<TensorResult>,
) -> Result<(), String> {
    for (key, bound) in [("IoU", bounds.iou), ("Acc", bounds.class_acc)] {
        let Some(v) = pc.get(key) else { continue };
        let name = format!("metrics.per_class.{key}");
        let tol = Tolerance { rtol: 0.0, atol: 1e-6 + bound };
        let e = list(v, &name)?;
        let Some(g) = apc.and_then(|a| a.get(key)) else {
            out.push(TensorResult::not_covered(&name, &[e.len()], tol));
            continue;
        };
        let g = list(g, &format!("produced {name}"))?;
        let mut r = compare_floats(&name, &vec1(g), &vec1(e), tol);
        if r.status == Status::Pass {
            r.note = Some("per-class fraction (NaN = null where the class is absent)".into());
        }
        out.push(r);
    }
    Ok(())
}

/// The `total_area_*` pixel counts: exact, or within `flips`.
fn compare_totals(
    obj: &Map<String, Value>,
    act: &Map<String, Value>,
    flips: usize,
    out: &mut Vec<TensorResult>,
) -> Result<(), String> {
    for key in ["total_area_intersect", "total_area_union", "total_area_pred_label", "total_area_label"] {
        let Some(v) = obj.get(key) else { continue };
        let name = format!("metrics.{key}");
        let tol = Tolerance { rtol: 0.0, atol: flips as f64 };
        let e = list(v, &name)?;
        let Some(g) = act.get(key) else {
            out.push(TensorResult::not_covered(&name, &[e.len()], tol));
            continue;
        };
        let g = list(g, &format!("produced {name}"))?;
        let mut r = compare_floats(&name, &vec1(g), &vec1(e), tol);
        if r.status == Status::Pass {
            r.note = Some(if flips == 0 {
                "pixel counts, exact".into()
            } else {
                format!("pixel counts, within {flips} allowed flip(s)")
            });
        }
        out.push(r);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries_compare_as_two_decimal_numbers() {
        // numpy >= 2 keeps np.round(float32 * 100, 2) in float32: 18.56 is stored as below.
        let exp = json!({"aAcc": 18.559999465942383, "mIoU": 3.0, "mAcc": 12.34});
        let got = json!({"aAcc": 18.56, "mIoU": 3.0, "mAcc": 12.34});
        assert!(compare_metrics(&got, &exp, 0).unwrap().iter().all(|r| r.status == Status::Pass));
        let off = json!({"aAcc": 18.57, "mIoU": 3.0, "mAcc": 12.34});
        let r = compare_metrics(&off, &exp, 0).unwrap();
        assert_eq!(r[0].status, Status::Fail);
        assert!(r[1..].iter().all(|r| r.status == Status::Pass));
        let missing = json!({"aAcc": 18.56});
        assert_eq!(compare_metrics(&missing, &exp, 0).unwrap()[1].status, Status::NotCovered);
    }
}
