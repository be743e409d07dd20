//! Runners of the checkpoint fixture kinds: `converter` and `relpos_resize`
//! (see docs/fixture-format.md).
//!
//! - `converter`: reads `source` (any of `.pth`/`.bin`, `.safetensors`, `.npz`; float16 and
//!   bfloat16 widened to float32), converts it with [`crate::checkpoint::convert()`] (the
//!   `dialect` hint if given, else detection; `options.img_size` `[h, w]` resizes rel-pos tables
//!   to the window `img_size / patch_size`, patch size 16 unless `options.patch_size` says
//!   otherwise; `options.final_norm` keeps the final norm), and compares with `expected`: every
//!   expected key must be produced with equal values (floats within the case tolerance, integers
//!   exactly); an expected key that is not produced is *not covered*; a produced key that is not
//!   expected fails as `unexpected:<key>`, except derived `relative_position_index` buffers and
//!   keys the conversion report lists as dropped.
//! - `relpos_resize`: resizes `inputs.table` from `src_window` to `dst_window` with
//!   [`crate::checkpoint::resize_rel_pos_table`] and compares with `outputs.table`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ndarray::Ix2;
use serde_json::Value;

use super::{expected_shapes, KindOutcome};
use crate::array::{read_npy, read_npz, AnyArray};
use crate::checkpoint::{
    convert, read_any, resize_rel_pos_table, ConversionReport, ConvertOptions, Dialect, ReadOptions,
};
use crate::conformance::case::{Case, Tolerance};
use crate::conformance::compare::{compare_floats, compare_labels, TensorResult};
use crate::conformance::memory::CandidateRef;
use crate::conformance::{RunError, Target};

fn bad(case: &Case, msg: impl std::fmt::Display) -> RunError {
    RunError::manifest(case, msg)
}

/// The conversion settings of a `converter` case: `dialect` and `options`
/// (`img_size` `[h, w]`, `patch_size` (int or `[ph, pw]`, default 16), `final_norm`).
/// Unknown options are rejected (they might change the result).
pub fn converter_options(case: &Case) -> Result<ConvertOptions, RunError> {
    let dialect = match case.manifest.get("dialect") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => Some(Dialect::from_name(n).ok_or_else(|| {
            let names: Vec<&str> = Dialect::ALL.iter().map(|d| d.name()).collect();
            bad(case, format!("unknown `dialect` `{n}` (known: {})", names.join(", ")))
        })?),
        Some(other) => return Err(bad(case, format!("`dialect` must be a string, got {other}"))),
    };
    let mut opts = ConvertOptions { dialect, ..Default::default() };
    let Some(o) = case.manifest.get("options").filter(|v| !v.is_null()) else {
        return Ok(opts);
    };
    let o = o.as_object().ok_or_else(|| bad(case, "`options` must be an object"))?;
    for k in o.keys() {
        if !matches!(k.as_str(), "img_size" | "patch_size" | "final_norm") {
            return Err(bad(case, format!("unknown option `options.{k}` (known: img_size, patch_size, final_norm)")));
        }
    }
    let pair = |key: &str, v: &Value| -> Result<(usize, usize), RunError> {
        let as_pos = |x: &Value| x.as_u64().filter(|&n| n > 0).map(|n| n as usize);
        match v {
            Value::Array(a) if a.len() == 2 => match (as_pos(&a[0]), as_pos(&a[1])) {
                (Some(h), Some(w)) => Ok((h, w)),
                _ => Err(bad(case, format!("`options.{key}` must hold two positive integers, got {v}"))),
            },
            _ => as_pos(v)
                .map(|n| (n, n))
                .ok_or_else(|| bad(case, format!("`options.{key}` must be [h, w] or a positive integer, got {v}"))),
        }
    };
    let patch = match o.get("patch_size") {
        Some(v) => pair("patch_size", v)?,
        None => (16, 16),
    };
    if let Some(v) = o.get("img_size") {
        let (h, w) = pair("img_size", v)?;
        // BEiT's patch grid: img_size // patch_size (a truncating conv).
        let window = (h / patch.0, w / patch.1);
        if window.0 == 0 || window.1 == 0 {
            return Err(bad(case, format!("`options.img_size` {v} is smaller than one patch")));
        }
        opts.dst_window = Some(window);
    }
    if let Some(v) = o.get("final_norm") {
        opts.final_norm =
            v.as_bool().ok_or_else(|| bad(case, format!("`options.final_norm` must be a boolean, got {v}")))?;
    }
    Ok(opts)
}

/// Reads and converts the `source` of a `converter` case.
pub fn convert_source(case: &Case) -> Result<(Vec<(String, AnyArray)>, ConversionReport), RunError> {
    let opts = converter_options(case)?;
    let source = case.file_field("source")?;
    let state = read_any(&source, ReadOptions { widen_half: true, ..Default::default() })?;
    let (out, report) = convert(state, &opts).map_err(|e| format!("{}: {e}", source.display()))?;
    Ok((out, report))
}

fn read_expected(path: &Path) -> Result<Vec<(String, AnyArray)>, RunError> {
    // `read_npz` errors name the file already.
    Ok(read_npz(path)?)
}

fn unexpected(key: &str, a: &AnyArray, tol: Tolerance) -> TensorResult {
    let note = format!("produced by the converter ({}) but not in expected", a.dtype_name());
    TensorResult::whole_failure(&format!("unexpected:{key}"), &[], a.shape(), a.shape().iter().product(), tol, note)
}

fn dtype_mismatch(key: &str, actual: &AnyArray, expected: &AnyArray, tol: Tolerance) -> TensorResult {
    let note = format!("dtype mismatch: expected {}, got {}", expected.dtype_name(), actual.dtype_name());
    TensorResult::whole_failure(key, expected.shape(), actual.shape(), expected.shape().iter().product(), tol, note)
}

/// Compares one produced tensor with its expected value: floats by the tolerance rule, integer
/// (and bool) tensors exactly; a float where an integer is expected (or the reverse) fails.
pub fn compare_tensor(key: &str, actual: &AnyArray, expected: &AnyArray, tol: Tolerance) -> TensorResult {
    match (actual.is_float(), expected.is_float()) {
        (true, true) => compare_floats(key, &actual.to_f64(), &expected.to_f64(), tol),
        (false, false) => match (actual.to_i64(), expected.to_i64()) {
            (Some(a), Some(e)) => compare_labels(key, &a, &e, None, tol),
            _ => dtype_mismatch(key, actual, expected, tol),
        },
        _ => dtype_mismatch(key, actual, expected, tol),
    }
}

/// The comparison rule of `converter` cases (module docs) for a conversion result against the
/// expected state dict. `tol_for` gives each key's tolerance.
pub fn compare_conversion(
    produced: &[(String, AnyArray)],
    report: &ConversionReport,
    expected: &[(String, AnyArray)],
    tol_for: impl Fn(&str) -> Tolerance,
) -> Vec<TensorResult> {
    let by_name: HashMap<&str, &AnyArray> = produced.iter().map(|(k, a)| (k.as_str(), a)).collect();
    let dropped: HashMap<&str, &str> = report.dropped.iter().map(|(k, why)| (k.as_str(), why.as_str())).collect();
    let expected_names: BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let mut results = Vec::with_capacity(expected.len());
    for (k, e) in expected {
        let tol = tol_for(k);
        match by_name.get(k.as_str()) {
            Some(a) => results.push(compare_tensor(k, a, e, tol)),
            None => {
                let mut r = TensorResult::not_covered(k, e.shape(), tol);
                r.note = Some(match dropped.get(k.as_str()) {
                    Some(why) => format!("not produced: the converter dropped it ({why})"),
                    None => "not produced by the converter".to_string(),
                });
                results.push(r);
            }
        }
    }
    for (k, a) in produced {
        if expected_names.contains(k.as_str())
            || k.contains("relative_position_index")
            || dropped.contains_key(k.as_str())
        {
            continue;
        }
        results.push(unexpected(k, a, tol_for(k)));
    }
    results
}

/// Compares a candidate's tensors with `expected` by [`compare_tensor`] (dtype-aware).
fn candidate_outcome(
    case: &Case,
    expected: &[(String, AnyArray)],
    candidate: CandidateRef<'_>,
) -> Result<KindOutcome, RunError> {
    let cand = candidate.read(case, &expected_shapes(expected))?;
    let tensors = expected
        .iter()
        .map(|(k, e)| match cand.tensors.get(k) {
            Some((a, _)) => compare_tensor(k, a, e, case.tolerance_for(k)),
            None => TensorResult::not_covered(k, e.shape(), case.tolerance_for(k)),
        })
        .collect();
    Ok(KindOutcome { tensors, unused: cand.unused, ..Default::default() })
}

/// Runs a `converter` case: our converter, or the candidate's converted tensors (then a tensor
/// the fixture does not expect is listed as unused, not failed).
pub fn run_converter(case: &Case, target: &Target<'_>) -> Result<KindOutcome, RunError> {
    if let Some(candidate) = target.candidate() {
        let expected = read_expected(&case.file_field("expected")?)?;
        return candidate_outcome(case, &expected, candidate);
    }
    Ok(KindOutcome { tensors: converter_ours(case)?, ..Default::default() })
}

fn converter_ours(case: &Case) -> Result<Vec<TensorResult>, RunError> {
    let expected_path = case.file_field("expected")?;
    // Read the expected file first: a broken fixture is reported before any work.
    let expected = read_expected(&expected_path)?;
    if expected.is_empty() {
        return Err(format!("{}: no tensors", expected_path.display()).into());
    }
    let (produced, report) = convert_source(case)?;
    Ok(compare_conversion(&produced, &report, &expected, |k| case.tolerance_for(k)))
}

fn window_field(case: &Case, key: &str) -> Result<(usize, usize), RunError> {
    let v = case.manifest.get(key).ok_or_else(|| bad(case, format!("`{key}` ([h, w]) is missing")))?;
    let a =
        v.as_array().filter(|a| a.len() == 2).ok_or_else(|| bad(case, format!("`{key}` must be [h, w], got {v}")))?;
    match (a[0].as_u64(), a[1].as_u64()) {
        (Some(h), Some(w)) if h > 0 && w > 0 => Ok((h as usize, w as usize)),
        _ => Err(bad(case, format!("`{key}` must hold two positive integers, got {v}"))),
    }
}

/// Runs a `relpos_resize` case: our resize, or the candidate's `table`.
pub fn run_relpos(case: &Case, target: &Target<'_>) -> Result<KindOutcome, RunError> {
    if let Some(candidate) = target.candidate() {
        return candidate_outcome(case, &super::read_expected(case)?, candidate);
    }
    Ok(KindOutcome { tensors: relpos_ours(case)?, ..Default::default() })
}

fn relpos_ours(case: &Case) -> Result<Vec<TensorResult>, RunError> {
    let src_window = window_field(case, "src_window")?;
    let dst_window = window_field(case, "dst_window")?;
    let input_path = case.input_file("table")?;
    let table = read_npy(&input_path)?;
    if case.outputs.is_empty() {
        return Err(bad(case, "`outputs` is empty (expected {\"table\": file})"));
    }
    let mut expected = Vec::with_capacity(case.outputs.len());
    for (name, file) in &case.outputs {
        expected.push((name.clone(), case.read_output(file)?));
    }
    let in_err = |e: &dyn std::fmt::Display| -> RunError { format!("{}: {e}", input_path.display()).into() };
    let resized =
        match &table {
            AnyArray::F32(a) => {
                let t = a.clone().into_dimensionality::<Ix2>().map_err(|_| {
                    in_err(&format!("a table is 2-D (rows, heads), this one has shape {:?}", a.shape()))
                })?;
                AnyArray::F32(resize_rel_pos_table(&t, src_window, dst_window).map_err(|e| in_err(&e))?.into_dyn())
            }
            AnyArray::F64(a) => {
                let t = a.clone().into_dimensionality::<Ix2>().map_err(|_| {
                    in_err(&format!("a table is 2-D (rows, heads), this one has shape {:?}", a.shape()))
                })?;
                AnyArray::F64(resize_rel_pos_table(&t, src_window, dst_window).map_err(|e| in_err(&e))?.into_dyn())
            }
            other => {
                return Err(in_err(&format!("a table must be float32 or float64, this one is {}", other.dtype_name())))
            }
        };
    Ok(expected
        .iter()
        .map(|(name, e)| {
            let tol = case.tolerance_for(name);
            if name == "table" {
                compare_tensor(name, &resized, e, tol)
            } else {
                TensorResult::not_covered(name, e.shape(), tol)
            }
        })
        .collect())
}
