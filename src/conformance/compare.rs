//! The comparison rules of the fixture format.
//!
//! * Float tensors: element-wise `|a - e| <= atol + rtol * |e|`; NaN equals NaN only.
//! * Label maps (`pred`): equal everywhere, except that a pixel may flip between two classes whose
//!   expected logits are within the float tolerance of each other (a near-tie); near-ties and
//!   flips are counted and reported.

use ndarray::ArrayD;
use serde::Serialize;

use super::case::Tolerance;
use crate::array::AnyArray;
use crate::backend::{OutTensor, Outputs};

/// Outcome of one expected tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Compared, within the rule everywhere.
    Pass,
    /// Compared, and outside the rule somewhere (or of the wrong shape or dtype).
    Fail,
    /// The implementation does not produce this tensor: never counted as passed.
    NotCovered,
    /// Not produced, and outside the scope the user declared (`--scope`, `--ignore`): reported,
    /// never counted as passed, and not held against the coverage within the scope.
    OutOfScope,
}

impl Status {
    /// Whether the tensor was compared (passed or failed): the evidence a verdict rests on.
    pub fn compared(self) -> bool {
        matches!(self, Status::Pass | Status::Fail)
    }
}

/// The comparison of one expected tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorResult {
    /// The fixture name of the tensor (`backbone.layers.0.attn`, `seg_logits`, ...).
    pub name: String,
    /// The verdict on this tensor.
    pub status: Status,
    /// The fixture tensor's shape.
    pub expected_shape: Vec<usize>,
    /// The produced tensor's shape (`None` when not produced).
    pub actual_shape: Option<Vec<usize>>,
    /// Largest `|got − expected|` (NaN when not compared).
    pub max_abs: f64,
    /// Largest `|got − expected| / |expected|` over non-zero expected values (NaN when not
    /// compared).
    pub max_rel: f64,
    /// Elements outside the rule.
    pub violations: usize,
    /// Elements of the expected tensor.
    pub numel: usize,
    /// The rule applied (`rtol`/`atol`, or the budget bounds when `budgeted`).
    pub tolerance: Tolerance,
    /// The largest error as a fraction of what the rule allows at that element
    /// (`|a - e| / (atol + rtol·|e|)`, or error over budget for half-precision twins; at most 1
    /// passes); NaN when nothing was compared.
    pub ratio: f64,
    /// Judged by the half-precision budget rule ([`super::budget`]): `tolerance` then holds the
    /// bounds on the relative RMS error (`rtol`) and the max abs error (`atol`), and `max_rel`
    /// the relative RMS error.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub budgeted: bool,
    /// Labels only: pixels whose expected top classes are within tolerance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub near_ties: Option<usize>,
    /// Labels only: differing pixels that are allowed near-tie flips.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flips: Option<usize>,
    /// Index and values of the worst element, or why the tensor failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl TensorResult {
    /// A row for an expected tensor that was not produced.
    pub fn not_covered(name: &str, expected_shape: &[usize], tol: Tolerance) -> Self {
        TensorResult {
            name: name.to_string(),
            status: Status::NotCovered,
            expected_shape: expected_shape.to_vec(),
            actual_shape: None,
            max_abs: f64::NAN,
            max_rel: f64::NAN,
            violations: 0,
            numel: expected_shape.iter().product(),
            tolerance: tol,
            ratio: f64::NAN,
            budgeted: false,
            near_ties: None,
            flips: None,
            note: Some("not produced".into()),
        }
    }

    /// A row judged by the half-precision budget rule, not yet compared.
    pub fn budgeted(name: &str, expected_shape: &[usize], bounds: Tolerance) -> Self {
        TensorResult { budgeted: true, note: None, ..Self::not_covered(name, expected_shape, bounds) }
    }

    /// A failure of the whole tensor (wrong shape, wrong dtype, not expected): all `numel`
    /// elements count as violations, and `note` says why.
    pub fn whole_failure(
        name: &str,
        expected: &[usize],
        actual: &[usize],
        numel: usize,
        tol: Tolerance,
        note: String,
    ) -> Self {
        TensorResult {
            name: name.to_string(),
            status: Status::Fail,
            expected_shape: expected.to_vec(),
            actual_shape: Some(actual.to_vec()),
            max_abs: f64::NAN,
            max_rel: f64::NAN,
            violations: numel,
            numel,
            tolerance: tol,
            ratio: f64::INFINITY,
            budgeted: false,
            near_ties: None,
            flips: None,
            note: Some(note),
        }
    }

    fn shape_mismatch(name: &str, expected: &[usize], actual: &[usize], tol: Tolerance) -> Self {
        let note = format!("shape mismatch: expected {expected:?}, got {actual:?}");
        Self::whole_failure(name, expected, actual, expected.iter().product(), tol, note)
    }
}

fn fmt_index(shape: &[usize], mut flat: usize) -> String {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        if shape[d] > 0 {
            idx[d] = flat % shape[d];
            flat /= shape[d];
        }
    }
    format!("{idx:?}")
}

/// `; N non-finite value(s) produced` when `actual` holds NaN/inf where `expected` is finite.
fn non_finite_note(actual: &ArrayD<f64>, expected: &ArrayD<f64>) -> String {
    let n = actual.iter().zip(expected.iter()).filter(|(a, e)| !a.is_finite() && e.is_finite()).count();
    if n > 0 {
        format!("; {n} non-finite (NaN/inf) value(s) produced where the fixture is finite")
    } else {
        String::new()
    }
}

/// Compares float tensors (both widened to f64).
pub fn compare_floats(name: &str, actual: &ArrayD<f64>, expected: &ArrayD<f64>, tol: Tolerance) -> TensorResult {
    if actual.shape() != expected.shape() {
        return TensorResult::shape_mismatch(name, expected.shape(), actual.shape(), tol);
    }
    let mut max_abs = 0.0f64;
    let mut max_rel = 0.0f64;
    let mut violations = 0usize;
    let mut ratio = 0.0f64;
    let mut worst: Option<(usize, f64, f64, f64)> = None; // (index, actual, expected, excess)
    for (i, (&a, &e)) in actual.iter().zip(expected.iter()).enumerate() {
        let (diff, ok) = if a.is_nan() || e.is_nan() {
            let same = a.is_nan() && e.is_nan();
            (if same { 0.0 } else { f64::INFINITY }, same)
        } else if a == e {
            (0.0, true) // also equal infinities
        } else {
            let d = (a - e).abs();
            (d, d <= tol.atol + tol.rtol * e.abs())
        };
        if diff > max_abs || diff.is_nan() {
            max_abs = diff;
        }
        if e != 0.0 && e.is_finite() {
            let r = diff / e.abs();
            if r > max_rel {
                max_rel = r;
            }
        }
        if diff > 0.0 {
            let bound = tol.atol + tol.rtol * e.abs();
            let r = if bound > 0.0 { diff / bound } else { f64::INFINITY };
            if r > ratio || r.is_nan() {
                ratio = r;
            }
        }
        if !ok {
            violations += 1;
            let excess = diff - (tol.atol + tol.rtol * e.abs());
            if worst.is_none_or(|w| excess > w.3) {
                worst = Some((i, a, e, excess));
            }
        }
    }
    let note = worst.map(|(i, a, e, _)| {
        format!(
            "worst at {}: got {a:e}, expected {e:e}{}",
            fmt_index(expected.shape(), i),
            non_finite_note(actual, expected)
        )
    });
    TensorResult {
        name: name.to_string(),
        status: if violations == 0 { Status::Pass } else { Status::Fail },
        expected_shape: expected.shape().to_vec(),
        actual_shape: Some(actual.shape().to_vec()),
        max_abs,
        max_rel,
        violations,
        numel: expected.len(),
        tolerance: tol,
        ratio,
        budgeted: false,
        near_ties: None,
        flips: None,
        note,
    }
}

/// Compares label maps (B, H, W). `logits` are the expected logits (B, classes, H, W) that
/// `expected` is the argmax of; without them every difference is a failure.
///
/// A differing pixel is an allowed flip when the expected logits of the two labels are within
/// `2 * (atol + rtol * max(|l_e|, |l_a|))` of each other: each may move by the tolerance.
/// A pixel is a near-tie when its expected top-2 logits are that close.
pub fn compare_labels(
    name: &str,
    actual: &ArrayD<i64>,
    expected: &ArrayD<i64>,
    logits: Option<&ArrayD<f64>>,
    tol: Tolerance,
) -> TensorResult {
    if actual.shape() != expected.shape() {
        return TensorResult::shape_mismatch(name, expected.shape(), actual.shape(), tol);
    }
    // One image: labels H x W with logits C x H x W (pipeline cases) are a batch of one.
    if let Some(l) = logits.filter(|l| expected.ndim() == 2 && l.ndim() == 3 && l.shape()[1..] == *expected.shape()) {
        let one = |a: &ArrayD<i64>| a.view().insert_axis(ndarray::Axis(0)).to_owned();
        let mut r = compare_labels(
            name,
            &one(actual),
            &one(expected),
            Some(&l.view().insert_axis(ndarray::Axis(0)).to_owned()),
            tol,
        );
        r.expected_shape = expected.shape().to_vec();
        r.actual_shape = Some(actual.shape().to_vec());
        return r;
    }
    let logits = logits.filter(|l| {
        l.ndim() == expected.ndim() + 1
            && l.shape()[0] == expected.shape()[0]
            && l.shape()[2..] == expected.shape()[1..]
    });
    let t = tally_labels(actual, expected, logits, tol);
    let note = t.first_bad.or_else(|| (t.flips > 0).then(|| format!("{} near-tie flip(s) allowed", t.flips)));
    TensorResult {
        name: name.to_string(),
        status: if t.violations == 0 { Status::Pass } else { Status::Fail },
        expected_shape: expected.shape().to_vec(),
        actual_shape: Some(actual.shape().to_vec()),
        max_abs: f64::NAN,
        max_rel: f64::NAN,
        violations: t.violations,
        numel: expected.len(),
        tolerance: tol,
        ratio: if t.violations > 0 { f64::INFINITY } else { 0.0 },
        budgeted: false,
        near_ties: logits.map(|_| t.near_ties),
        flips: logits.map(|_| t.flips),
        note,
    }
}

/// What [`compare_labels`] counts over the pixels.
struct LabelTally {
    near_ties: usize,
    flips: usize,
    violations: usize,
    /// The first pixel that differs and is not an allowed flip.
    first_bad: Option<String>,
}

/// Counts near-ties, allowed flips and violations over the pixels of label maps of one shape;
/// `logits` (B, C, ...) have already been checked to match `expected` (B, ...).
fn tally_labels(
    actual: &ArrayD<i64>,
    expected: &ArrayD<i64>,
    logits: Option<&ArrayD<f64>>,
    tol: Tolerance,
) -> LabelTally {
    let close = |x: f64, y: f64| (x - y).abs() <= 2.0 * (tol.atol + tol.rtol * x.abs().max(y.abs()));
    let mut t = LabelTally { near_ties: 0, flips: 0, violations: 0, first_bad: None };
    let shape = expected.shape();
    let b = shape.first().copied().unwrap_or(1).max(1);
    let per_image = expected.len() / b;
    // Logits as (B, C, P) with P pixels per image, in the same order as the labels.
    let lanes = logits.map(|l| {
        let c = l.shape()[1];
        l.view().into_shape_with_order((b, c, per_image)).expect("checked shape").to_owned()
    });
    for (i, (&a, &e)) in actual.iter().zip(expected.iter()).enumerate() {
        let (bi, p) = (i / per_image.max(1), i % per_image.max(1));
        let lane = lanes.as_ref().map(|l| l.slice(ndarray::s![bi, .., p]));
        if let Some(lane) = &lane {
            let (top, second) = top_two(lane.iter().copied());
            if lane.len() > 1 && close(top, second) {
                t.near_ties += 1;
            }
        }
        if a == e {
            continue;
        }
        let allowed = lane.is_some_and(|lane| {
            a >= 0
                && e >= 0
                && (a as usize) < lane.len()
                && (e as usize) < lane.len()
                && close(lane[e as usize], lane[a as usize])
        });
        if allowed {
            t.flips += 1;
        } else {
            t.violations += 1;
            if t.first_bad.is_none() {
                t.first_bad = Some(format!("first mismatch at {}: got {a}, expected {e}", fmt_index(shape, i)));
            }
        }
    }
    t
}

/// The largest and second largest of `xs` (`-inf` for those missing).
fn top_two(xs: impl Iterator<Item = f64>) -> (f64, f64) {
    let mut top = f64::NEG_INFINITY;
    let mut second = f64::NEG_INFINITY;
    for x in xs {
        if x > top {
            second = top;
            top = x;
        } else if x > second {
            second = x;
        }
    }
    (top, second)
}

/// The logits a label map is the argmax of: `pred` → `seg_logits`, `pred.<stem>` →
/// `seg_logits.<stem>`.
pub fn logits_name(pred: &str) -> String {
    pred.replacen("pred", "seg_logits", 1)
}

/// Float values that stand for labels, as labels: every value must be a finite integer.
pub fn labels_from_floats(a: &ArrayD<f64>) -> Result<ArrayD<i64>, String> {
    if let Some((i, v)) = a.iter().enumerate().find(|(_, v)| !(v.is_finite() && v.fract() == 0.0)) {
        return Err(format!(
            "labels are expected, but the candidate's float tensor holds {v:e} at {} (not an integer)",
            fmt_index(a.shape(), i)
        ));
    }
    Ok(a.mapv(|v| v as i64))
}

/// Compares expected tensors with produced ones, in expected (forward) order. Label maps named
/// `pred` / `pred.<stem>` use the expected `seg_logits` / `seg_logits.<stem>` for the near-tie
/// rule; an expected tensor that is not produced is NOT COVERED.
pub fn compare_outputs(
    expected: &[(String, AnyArray)],
    produced: &Outputs,
    tol_for: impl Fn(&str) -> Tolerance,
) -> Vec<TensorResult> {
    let find = |n: &str| expected.iter().find(|(k, _)| k == n).map(|(_, a)| a);
    // The expected logits (and their tolerance) a label map `pred` / `pred.<stem>` is the
    // argmax of, for the near-tie rule.
    let logits_for = |name: &str| {
        let logits_name = logits_name(name);
        let logits = find(&logits_name).filter(|l| l.is_float()).map(|l| l.to_f64());
        (logits, tol_for(&logits_name))
    };
    expected
        .iter()
        .map(|(name, exp)| {
            let tol = tol_for(name);
            match (produced.get(name), exp.is_float()) {
                (None, _) => TensorResult::not_covered(name, exp.shape(), tol),
                (Some(OutTensor::Float(a)), true) => compare_floats(name, a, &exp.to_f64(), tol),
                (Some(OutTensor::Label(a)), false) => {
                    let (logits, ltol) = logits_for(name);
                    compare_labels(name, a, &exp.to_i64().unwrap_or_default(), logits.as_ref(), ltol)
                }
                (Some(OutTensor::Float(a)), false) => match labels_from_floats(a) {
                    // Labels written as floats are fine when every value is an integer; they are
                    // then compared as labels (a label map plus 0.00005 is not a label map).
                    Ok(a) => {
                        let (logits, ltol) = logits_for(name);
                        compare_labels(name, &a, &exp.to_i64().unwrap_or_default(), logits.as_ref(), ltol)
                    }
                    Err(note) => {
                        let numel = exp.shape().iter().product();
                        TensorResult::whole_failure(name, exp.shape(), a.shape(), numel, tol, note)
                    }
                },
                (Some(OutTensor::Label(a)), true) => compare_floats(name, &a.mapv(|v| v as f64), &exp.to_f64(), tol),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{arr1, ArrayD};

    fn d(v: &[f64]) -> ArrayD<f64> {
        arr1(v).into_dyn()
    }

    #[test]
    fn float_rule_is_atol_plus_rtol() {
        let tol = Tolerance { rtol: 1e-3, atol: 1e-6 };
        let r = compare_floats("x", &d(&[1.0009, 0.0]), &d(&[1.0, 0.0]), tol);
        assert_eq!(r.status, Status::Pass);
        let r = compare_floats("x", &d(&[1.0011, 2e-6]), &d(&[1.0, 0.0]), tol);
        assert_eq!(r.violations, 2);
        assert_eq!(r.status, Status::Fail);
        assert!(r.note.unwrap().starts_with("worst at [0]"));
    }

    #[test]
    fn nan_only_equals_nan() {
        let tol = Tolerance { rtol: 1.0, atol: 1.0 };
        assert_eq!(compare_floats("x", &d(&[f64::NAN]), &d(&[f64::NAN]), tol).status, Status::Pass);
        assert_eq!(compare_floats("x", &d(&[0.0]), &d(&[f64::NAN]), tol).status, Status::Fail);
        assert_eq!(compare_floats("x", &d(&[f64::NAN]), &d(&[0.0]), tol).status, Status::Fail);
    }

    #[test]
    fn shape_mismatch_fails() {
        let tol = Tolerance::FP32;
        let r = compare_floats("x", &d(&[1.0]), &d(&[1.0, 2.0]), tol);
        assert_eq!(r.status, Status::Fail);
    }

    #[test]
    fn label_flip_allowed_only_at_near_tie() {
        let tol = Tolerance { rtol: 0.0, atol: 1e-3 };
        // B=1, C=2, H=1, W=2: pixel 0 is a near-tie, pixel 1 is not.
        let logits = ndarray::Array4::from_shape_vec((1, 2, 1, 2), vec![1.0, 5.0, 1.0005, 0.0]).unwrap().into_dyn();
        let expected = ndarray::Array3::from_shape_vec((1, 1, 2), vec![1i64, 0]).unwrap().into_dyn();
        let flipped = ndarray::Array3::from_shape_vec((1, 1, 2), vec![0i64, 0]).unwrap().into_dyn();
        let r = compare_labels("pred", &flipped, &expected, Some(&logits), tol);
        assert_eq!((r.status, r.flips, r.near_ties), (Status::Pass, Some(1), Some(1)));
        let wrong = ndarray::Array3::from_shape_vec((1, 1, 2), vec![1i64, 1]).unwrap().into_dyn();
        let r = compare_labels("pred", &wrong, &expected, Some(&logits), tol);
        assert_eq!(r.status, Status::Fail);
        let r = compare_labels("pred", &flipped, &expected, None, tol);
        assert_eq!(r.status, Status::Fail);
    }
}
