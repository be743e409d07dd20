//! The fixture kinds: what each expects, and how it is produced — by our library or model on a
//! [`Target::Backend`], or read from a candidate ([`Target::Candidate`] directory or
//! [`Target::InMemory`]; one path for both). One file per family:
//! [`segmentor`], [`pipeline`] (model kinds), [`resize`], [`metric`] (data kinds),
//! [`checkpoint`] (`converter`, `relpos_resize`).

pub mod checkpoint;
pub mod metric;
pub mod pipeline;
pub mod resize;
pub mod segmentor;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use super::candidate::CandidateOutputs;
use super::case::{Case, CaseKind, Dtype, Tolerance};
use super::compare::{compare_outputs, TensorResult};
use super::{RunError, Target, VerifyOptions};
use crate::array::AnyArray;
use crate::backend::{OutTensor, Outputs};

/// What running one case gave.
#[derive(Debug, Default)]
pub struct KindOutcome {
    /// One row per expected tensor (and per compared metric), in forward order.
    pub tensors: Vec<TensorResult>,
    /// Candidate tensors that matched no expected name.
    pub unused: Vec<String>,
    /// Extra lines for the report.
    pub notes: Vec<String>,
    /// What our backend produced (for `--save-outputs`).
    pub produced: Option<Vec<(String, AnyArray)>>,
    /// The metrics our library computed (for `--save-outputs`).
    pub produced_metrics: Option<Value>,
}

/// Runs `case` on `target` (`run_dtype`: the case's dtype, or float32 with `--as-f32`).
pub fn run(case: &Case, target: &Target<'_>, opts: &VerifyOptions, run_dtype: Dtype) -> Result<KindOutcome, RunError> {
    match &case.kind {
        CaseKind::Segmentor => segmentor::run(case, target, opts, run_dtype),
        CaseKind::Pipeline => pipeline::run(case, target, opts),
        CaseKind::Metric => metric::run_metric(case, target),
        CaseKind::Resize => resize::run_resize(case, target),
        CaseKind::Converter => checkpoint::run_converter(case, target),
        CaseKind::RelposResize => checkpoint::run_relpos(case, target),
        CaseKind::Unknown(k) => Err(RunError::Skip(format!("kind `{k}` is not known"))),
    }
}

/// An error in the `case.json` of `case`.
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

/// Every expected output of a case, read before any compute (a broken fixture is reported
/// first).
pub fn read_expected(case: &Case) -> Result<Vec<(String, AnyArray)>, RunError> {
    let mut expected = Vec::with_capacity(case.outputs.len());
    for (name, file) in &case.outputs {
        expected.push((name.clone(), case.read_output(file)?));
    }
    Ok(expected)
}

/// Expected shapes by name (what a candidate's name map needs).
pub fn expected_shapes(expected: &[(String, AnyArray)]) -> BTreeMap<String, Vec<usize>> {
    expected.iter().map(|(k, a)| (k.clone(), a.shape().to_vec())).collect()
}

/// Our outputs as arrays (for `--save-outputs`).
pub fn outputs_to_arrays(out: &Outputs) -> Vec<(String, AnyArray)> {
    out.iter()
        .map(|(k, v)| {
            let a = match v {
                OutTensor::Float(a) => AnyArray::F64(a.clone()),
                OutTensor::Label(a) => AnyArray::I64(a.clone()),
            };
            (k.clone(), a)
        })
        .collect()
}

/// The tolerance of output `name`: the case's, or the fp32 rule when a float64 case runs in
/// float32 (`--as-f32`; a per-output override that is looser than the fp32 rule still applies).
pub fn tolerance_for(case: &Case, as_f32: bool, name: &str) -> Tolerance {
    if as_f32 && case.dtype == Dtype::F64 {
        case.tolerances.get(name).copied().filter(|t| t.rtol >= Tolerance::FP32.rtol).unwrap_or(Tolerance::FP32)
    } else {
        case.tolerance_for(name)
    }
}

/// Compares produced outputs with a case's expected ones: by the tolerance rule, or, for a
/// half-precision twin, against its float64 truth by the budget rule ([`super::budget`]).
pub fn compare_case_outputs(
    case: &Case,
    expected: &[(String, AnyArray)],
    produced: &Outputs,
    tol_for: impl Fn(&str) -> Tolerance,
) -> Vec<TensorResult> {
    match &case.half {
        Some(twin) => super::budget::compare_outputs(expected, produced, twin),
        None => compare_outputs(expected, produced, tol_for),
    }
}

/// Compares a candidate's tensors with the expected ones. A float32 candidate tensor for a
/// float64 case fails (it cannot meet float64 tolerances) unless `as_f32`.
pub fn compare_candidate(
    case: &Case,
    expected: &[(String, AnyArray)],
    cand: &CandidateOutputs,
    as_f32: bool,
    tol_for: impl Fn(&str) -> Tolerance,
) -> Vec<TensorResult> {
    let mut produced = Outputs::new();
    let mut too_narrow = Vec::new();
    for (name, (a, _)) in &cand.tensors {
        if matches!(a, AnyArray::F32(_)) && case.dtype == Dtype::F64 && !as_f32 {
            too_narrow.push(name.clone());
            continue;
        }
        let v =
            if a.is_float() { OutTensor::Float(a.to_f64()) } else { OutTensor::Label(a.to_i64().unwrap_or_default()) };
        produced.insert(name.clone(), v);
    }
    let mut results = compare_case_outputs(case, expected, &produced, tol_for);
    for r in &mut results {
        if too_narrow.contains(&r.name) {
            r.status = super::compare::Status::Fail;
            r.actual_shape = cand.tensors.get(&r.name).map(|(a, _)| a.shape().to_vec());
            r.note = Some(
                "the candidate tensor is float32 but the case is float64: pass --as-f32 to compare at the fp32 tolerance"
                    .into(),
            );
        }
    }
    results
}
