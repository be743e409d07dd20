//! The half-precision rule: how a half-precision twin (`"precision": "bf16" | "fp16"`,
//! docs/fixture-format.md) turns MMSegmentation's own half-precision error into a verdict.
//!
//! A case made by MMSegmentation under `torch.autocast` carries, per tensor, the float64 truth t
//! and the error of the autocast run against it (the *budget*: `rel_rms`, `max_abs`, `scale`).
//! An implementation's output x of the same tensor passes when
//!
//! * every value is finite (a NaN or inf is never within any budget), and
//! * `‖x − t‖₂ / ‖t‖₂ ≤ F · max(budget.rel_rms, u)` and
//! * `max|x − t| ≤ F · max(budget.max_abs, u · budget.scale)`,
//!
//! with u the unit roundoff of the case's precision (2^-8 bf16, 2^-11 fp16: the floor for
//! tensors MMSegmentation happens to reproduce almost exactly) and F = [`FACTOR`], one constant
//! for every tensor and case, set by the calibration in docs/validating.md ("Reduced-precision
//! ports"). The reported ratio is the larger of the two errors over its bound (≤ 1 passes).
//!
//! Labels (`pred`, `pred.<stem>`) must equal the truth's argmax except at pixels where the
//! truth's logits of the two labels are within `2 · F · max(seg_logits budget.max_abs,
//! u · scale)` of each other (a near-tie at this precision); those flips are counted. Pipeline
//! metrics (`aAcc`, `mIoU`, `mAcc`) must be within `F · budget + 0.01` percent points of the
//! truth's (0.01: the two-decimal rounding).

use std::collections::BTreeMap;

use ndarray::ArrayD;
use serde::Serialize;
use serde_json::Value;

use super::case::Tolerance;
use super::compare::{compare_labels, Status, TensorResult};
use crate::array::AnyArray;
use crate::backend::{OutTensor, Outputs};
use crate::float::Precision;

/// F: how far beyond MMSegmentation's own half-precision error an implementation may be.
/// Chosen by the calibration of docs/validating.md (honest implementations reach at most ~1.5,
/// the planted mistakes that matter are 10x to 1e4x over); never widened per case.
pub const FACTOR: f64 = 4.0;

/// MMSegmentation's own half-precision error of one tensor (the `budget` entry).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Budget {
    /// A float tensor: relative RMS error, max absolute error, max |truth|, non-finite values.
    Float {
        /// `‖x − t‖₂ / ‖t‖₂` (0 when `‖t‖ = 0`).
        rel_rms: f64,
        /// `max |x − t|`.
        max_abs: f64,
        /// `max |t|`.
        scale: f64,
        /// Non-finite values in MMSegmentation's autocast output.
        non_finite: u64,
    },
    /// A label map: the fraction of pixels where autocast's argmax differs from the truth's,
    /// and the number of near-ties.
    Labels {
        /// Fraction of pixels where the autocast argmax differs from the truth's.
        disagree: f64,
        /// Pixels whose truth top-2 logit margin is within twice the logits' `max_abs`.
        near_ties: u64,
    },
    /// Pipeline metrics: |Δ| of aAcc, mIoU, mAcc in percent points.
    Metrics {
        /// |Δ aAcc| (percent points).
        a_acc: f64,
        /// |Δ mIoU| (percent points).
        m_iou: f64,
        /// |Δ mAcc| (percent points).
        m_acc: f64,
    },
}

impl Budget {
    /// Parses one `budget` entry; `what` names it in errors.
    pub fn from_value(v: &Value, what: &str) -> Result<Budget, String> {
        let num = |k: &str| -> Result<f64, String> {
            let x = v.get(k).and_then(Value::as_f64).ok_or_else(|| format!("`{what}.{k}` must be a number"))?;
            if x.is_finite() && x >= 0.0 {
                Ok(x)
            } else {
                Err(format!("`{what}.{k}` must be finite and non-negative, got {x}"))
            }
        };
        if v.get("rel_rms").is_some() {
            Ok(Budget::Float {
                rel_rms: num("rel_rms")?,
                max_abs: num("max_abs")?,
                scale: num("scale")?,
                non_finite: num("non_finite")? as u64,
            })
        } else if v.get("disagree").is_some() {
            Ok(Budget::Labels { disagree: num("disagree")?, near_ties: num("near_ties")? as u64 })
        } else if v.get("mIoU").is_some() {
            Ok(Budget::Metrics { a_acc: num("aAcc")?, m_iou: num("mIoU")?, m_acc: num("mAcc")? })
        } else {
            Err(format!("`{what}` must hold rel_rms/max_abs/scale/non_finite, disagree/near_ties or aAcc/mIoU/mAcc"))
        }
    }

    /// The bounds (relative RMS, max abs) an implementation at `p` must meet for a float tensor.
    pub fn float_bounds(&self, p: Precision) -> Option<(f64, f64)> {
        let u = p.unit_roundoff();
        match *self {
            Budget::Float { rel_rms, max_abs, scale, .. } => {
                Some((FACTOR * rel_rms.max(u), FACTOR * max_abs.max(u * scale)))
            }
            _ => None,
        }
    }
}

/// What a half-precision twin holds besides its truth.
#[derive(Debug, Clone)]
pub struct HalfTwin {
    /// The autocast dtype MMSegmentation ran under.
    pub precision: Precision,
    /// Per output name.
    pub budget: BTreeMap<String, Budget>,
    /// MMSegmentation's autocast outputs (name → file), kept for reference and tests.
    pub autocast: Vec<(String, std::path::PathBuf)>,
}

/// Relative RMS error, max abs error and the number of non-finite values of x against t.
pub fn errors(x: &ArrayD<f64>, t: &ArrayD<f64>) -> (f64, f64, usize) {
    let (mut num, mut den, mut max_abs, mut bad) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    for (&a, &e) in x.iter().zip(t.iter()) {
        if !a.is_finite() {
            bad += 1;
            continue;
        }
        let d = a - e;
        num += d * d;
        den += e * e;
        max_abs = max_abs.max(d.abs());
    }
    let rel = if den > 0.0 {
        (num / den).sqrt()
    } else if num > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    (rel, max_abs, bad)
}

/// One float tensor under the budget rule.
pub fn compare_float(name: &str, x: &ArrayD<f64>, t: &ArrayD<f64>, b: &Budget, p: Precision) -> TensorResult {
    let tol = Tolerance { rtol: 0.0, atol: 0.0 };
    let Some((rms_bound, max_bound)) = b.float_bounds(p) else {
        let note = "the budget of a float tensor must hold rel_rms/max_abs/scale".to_string();
        return TensorResult::whole_failure(name, t.shape(), x.shape(), t.len(), tol, note);
    };
    let mut r = TensorResult::budgeted(name, t.shape(), Tolerance { rtol: rms_bound, atol: max_bound });
    r.actual_shape = Some(x.shape().to_vec());
    if x.shape() != t.shape() {
        let note = format!("shape mismatch: expected {:?}, got {:?}", t.shape(), x.shape());
        return TensorResult::whole_failure(name, t.shape(), x.shape(), t.len(), r.tolerance, note);
    }
    let (rel, max_abs, bad) = errors(x, t);
    let Budget::Float { rel_rms: b_rms, max_abs: b_max, .. } = *b else { unreachable!("float_bounds checked") };
    r.max_abs = max_abs;
    r.max_rel = rel;
    r.ratio = if bad > 0 { f64::INFINITY } else { (rel / rms_bound).max(max_abs / max_bound) };
    r.violations = bad;
    let mmseg = format!("MMSegmentation {p}: rel_rms {b_rms:.2e}, max_abs {b_max:.2e}");
    if bad > 0 {
        r.status = Status::Fail;
        r.note = Some(format!("{bad} non-finite value(s) (NaN/inf): never within a budget ({mmseg})"));
    } else if r.ratio > 1.0 {
        r.status = Status::Fail;
        r.violations = 1;
        r.note = Some(format!(
            "rel_rms {rel:.2e} (bound {rms_bound:.2e}), max_abs {max_abs:.2e} (bound {max_bound:.2e}): \
             {:.1}x MMSegmentation's own {p} error ({mmseg})",
            (rel / b_rms.max(p.unit_roundoff())).max(max_abs / b_max.max(f64::MIN_POSITIVE))
        ));
    } else {
        r.status = Status::Pass;
    }
    r
}

/// Compares produced outputs with a half twin's truth under its budget, in truth order.
pub fn compare_outputs(truth: &[(String, AnyArray)], produced: &Outputs, twin: &HalfTwin) -> Vec<TensorResult> {
    let p = twin.precision;
    let find = |n: &str| truth.iter().find(|(k, _)| k == n).map(|(_, a)| a);
    let mut rows: Vec<TensorResult> = truth
        .iter()
        .map(|(name, t)| {
            let Some(b) = twin.budget.get(name) else {
                let note = format!("the twin has no budget for `{name}`: it cannot be judged");
                let mut r = TensorResult::not_covered(name, t.shape(), Tolerance { rtol: 0.0, atol: 0.0 });
                r.status = Status::Fail;
                r.note = Some(note);
                return r;
            };
            match (produced.get(name), b) {
                (None, _) => TensorResult::not_covered(name, t.shape(), Tolerance { rtol: 0.0, atol: 0.0 }),
                (Some(OutTensor::Float(x)), Budget::Float { .. }) => compare_float(name, x, &t.to_f64(), b, p),
                (Some(out), Budget::Labels { .. }) => {
                    let labels = match out {
                        OutTensor::Label(a) => Ok(a.clone()),
                        OutTensor::Float(a) => super::compare::labels_from_floats(a),
                    };
                    let logits_name = super::compare::logits_name(name);
                    let logits = find(&logits_name).filter(|l| l.is_float()).map(|l| l.to_f64());
                    // Two labels are a near-tie at this precision when their truth logits are
                    // within the seg_logits bound (compare_labels doubles atol).
                    let atol = twin.budget.get(&logits_name).and_then(|lb| lb.float_bounds(p)).map_or(0.0, |b| b.1);
                    let tol = Tolerance { rtol: 0.0, atol };
                    let truth = match t.to_i64() {
                        Some(l) => Ok(l),
                        None => super::compare::labels_from_floats(&t.to_f64())
                            .map_err(|e| format!("the twin's truth is not a label map: {e}")),
                    };
                    match (labels, truth) {
                        (Ok(a), Ok(e)) => compare_labels(name, &a, &e, logits.as_ref(), tol),
                        (Err(note), _) | (_, Err(note)) => {
                            let n = t.shape().iter().product();
                            TensorResult::whole_failure(name, t.shape(), out.shape(), n, tol, note)
                        }
                    }
                }
                (Some(out), _) => {
                    let note = "an integer tensor where a float is expected (or the reverse)".to_string();
                    let tol = Tolerance { rtol: 0.0, atol: 0.0 };
                    TensorResult::whole_failure(name, t.shape(), out.shape(), t.shape().iter().product(), tol, note)
                }
            }
        })
        .collect();
    for r in &mut rows {
        r.budgeted = true;
    }
    rows
}

/// What `flips` allowed near-tie label flips may move a summary metric by (percent points), from
/// the truth's area totals: each flip moves one pixel between two classes (the fp32 rule of
/// [`super::metrics_cmp`]).
fn flip_allowance(truth: &Value, key: &str, flips: usize) -> f64 {
    if flips == 0 {
        return 0.0;
    }
    let f = flips as f64;
    let totals = |k: &str| -> Vec<f64> {
        truth.get(k).and_then(Value::as_array).map(|v| v.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    };
    let min_pos = |v: &[f64]| v.iter().copied().filter(|&x| x > 0.0).fold(f64::INFINITY, f64::min);
    match key {
        "aAcc" => {
            let total: f64 = totals("total_area_label").iter().sum();
            if total > 0.0 {
                100.0 * f / total
            } else {
                100.0
            }
        }
        "mIoU" => 100.0 * (2.0 * f / min_pos(&totals("total_area_union"))).min(1.0),
        _ => 100.0 * (2.0 * f / min_pos(&totals("total_area_label"))).min(1.0),
    }
}

/// Compares pipeline metrics (`aAcc`, `mIoU`, `mAcc`) with the truth's under the metric budget,
/// widened by what the `flips` allowed near-tie label flips imply.
pub fn compare_metrics(actual: &Value, truth: &Value, b: &Budget, flips: usize) -> Vec<TensorResult> {
    let Budget::Metrics { a_acc, m_iou, m_acc } = *b else { return vec![] };
    [("aAcc", a_acc), ("mIoU", m_iou), ("mAcc", m_acc)]
        .into_iter()
        .filter_map(|(k, budget)| {
            let t = truth.get(k).and_then(Value::as_f64)?;
            let name = format!("metrics.{k}");
            let bound = FACTOR * budget + 0.01 + flip_allowance(truth, k, flips);
            let mut r = TensorResult::budgeted(&name, &[], Tolerance { rtol: 0.0, atol: bound });
            match actual.get(k).and_then(Value::as_f64) {
                None => {
                    r.status = Status::NotCovered;
                    r.note = Some("not produced".into());
                }
                Some(x) => {
                    let d = (x - t).abs();
                    r.actual_shape = Some(vec![]);
                    r.max_abs = d;
                    r.ratio = if d.is_finite() { d / bound } else { f64::INFINITY };
                    r.status = if r.ratio <= 1.0 { Status::Pass } else { Status::Fail };
                    r.violations = usize::from(r.status == Status::Fail);
                    if r.status == Status::Fail {
                        r.note = Some(format!(
                            "{x:.2} against the float64 truth {t:.2}: off by {d:.2} points, bound {bound:.2} \
                             (MMSegmentation's own: {budget:.2}; {flips} near-tie flips allowed)"
                        ));
                    }
                }
            }
            Some(r)
        })
        .collect()
}
